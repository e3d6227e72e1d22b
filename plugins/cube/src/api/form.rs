//! Request parameters: one flat, sorted map (`Key`, `Key.N`, `Key.N.Sub`), form-encoded.

use std::collections::BTreeMap;

/// Flattened parameters in key (byte) order, as the signature needs them. Empty values are dropped,
/// as the SDKs do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.insert(key, value.to_string());
        self
    }

    pub fn set_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    pub fn insert(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_string(), value);
        }
    }

    /// `Key.0`, `Key.1`, …
    pub fn list<S: ToString>(mut self, key: &str, items: impl IntoIterator<Item = S>) -> Self {
        for (i, v) in items.into_iter().enumerate() {
            self.insert(&format!("{key}.{i}"), v.to_string());
        }
        self
    }

    /// `Key.N.Sub` for a list of structs given as (sub-key, value) pairs.
    pub fn structs(mut self, key: &str, items: &[Vec<(&str, String)>]) -> Self {
        for (i, fields) in items.iter().enumerate() {
            for (sub, v) in fields {
                self.insert(&format!("{key}.{i}.{sub}"), v.clone());
            }
        }
        self
    }

    pub fn extend(mut self, other: &Params) -> Self {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        let mut p = Params::new();
        for (k, v) in map {
            p.insert(&k, v);
        }
        p
    }

    /// `application/x-www-form-urlencoded`, keys in order.
    pub fn encode(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v))).collect::<Vec<_>>().join("&")
    }
}

/// Percent-encodes everything but the unreserved characters (RFC 3986).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_lists_and_structs_and_drops_empty_values() {
        let p = Params::new()
            .set("Action", "DescribeEIP")
            .set("Empty", "")
            .set_opt("Missing", None::<String>)
            .set("Limit", 10)
            .list("EIPIds", ["eip-a", "eip-b"])
            .structs(
                "Tags",
                &[vec![("Key", "a".into()), ("Value", "1".into())], vec![("Key", "b".into()), ("Value", "".into())]],
            );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["Action", "EIPIds.0", "EIPIds.1", "Limit", "Tags.0.Key", "Tags.0.Value", "Tags.1.Key"]);
    }

    #[test]
    fn form_encodes_in_key_order() {
        let p = Params::new().set("Pod", "YQ==+/").set("Action", "CreateCubePod").set("Name", "a b&c");
        assert_eq!(p.encode(), "Action=CreateCubePod&Name=a%20b%26c&Pod=YQ%3D%3D%2B%2F");
        assert_eq!(urlencode("ws://h/x?token=T&y=1 2"), "ws%3A%2F%2Fh%2Fx%3Ftoken%3DT%26y%3D1%202");
        assert_eq!(urlencode("中"), "%E4%B8%AD");
    }
}
