//! Request parameters as the gateway sees them: one flat map of `Key`, `Key.N`, `Key.N.Sub`
//! strings, whether the client sent a form body, a JSON body or query parameters.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// Flattened request parameters, sorted by key (byte order), as the signature needs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub BTreeMap<String, String>);

impl Params {
    /// Merges the query string and the body. Body keys win: the SDKs repeat only `Action` in
    /// the query, so the two never disagree for a real client.
    pub fn parse(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let mut map = BTreeMap::new();
        if let Some(q) = query {
            for (k, v) in form_pairs(q.as_bytes())? {
                map.insert(k, v);
            }
        }
        let looks_json = content_type.is_some_and(|c| c.contains("json"))
            || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if looks_json && !body.is_empty() {
            let value: Value =
                serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))?;
            let Value::Object(obj) = value else {
                return Err(ApiError::invalid("body", "a JSON body must be an object"));
            };
            for (k, v) in obj {
                flatten_json(&k, &v, &mut map);
            }
        } else if !body.is_empty() {
            for (k, v) in form_pairs(body)? {
                map.insert(k, v);
            }
        }
        // The SDKs drop empty values before signing; so does the gateway.
        map.retain(|_, v| !v.is_empty());
        Ok(Params(map))
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Params(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.get(key).ok_or_else(|| ApiError::MissingParam(key.to_string()))
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .or_else(|_| v.parse::<f64>().map(|f| f as i64))
                .map(Some)
                .map_err(|_| ApiError::invalid(key, format!("{v:?} is not an integer"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") | Some("True") | Some("1") => Ok(Some(true)),
            Some("false") | Some("False") | Some("0") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(key, format!("{v:?} is not true or false"))),
        }
    }

    /// `Key.0`, `Key.1`... in index order; a bare `Key` counts as a one-element list.
    pub fn list(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}.");
        let mut items: Vec<(usize, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                rest.parse::<usize>().ok().map(|i| (i, v.clone()))
            })
            .collect();
        items.sort_by_key(|(i, _)| *i);
        let mut out: Vec<String> = items.into_iter().map(|(_, v)| v).collect();
        if let Some(v) = self.get(key) {
            out.insert(0, v.to_string());
        }
        out
    }
}

fn form_pairs(raw: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(raw)
        .map_err(|e| ApiError::invalid("body", format!("not a valid form encoding: {e}")))
}

/// Flattens JSON the way the SDK encoders do: objects as `Key.Sub`, arrays as `Key.N`,
/// booleans lower case, whole floats as integers.
fn flatten_json(key: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            out.insert(key.to_string(), b.to_string());
        }
        Value::Number(n) => {
            let s = match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
                _ => n.to_string(),
            };
            out.insert(key.to_string(), s);
        }
        Value::String(s) => {
            out.insert(key.to_string(), s.clone());
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_json(&format!("{key}.{i}"), item, out);
            }
        }
        Value::Object(obj) => {
            for (k, v) in obj {
                flatten_json(&format!("{key}.{k}"), v, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_json_arrays_structs_and_floats_like_the_sdk_encoder() {
        let body = br#"{"Action":"DescribeEIP","EIPIds":["eip-1","eip-2"],"Tags":[{"Key":"a","Value":"b"}],"Limit":10.0,"Force":true,"Empty":""}"#;
        let p = Params::parse(None, Some("application/json"), body).unwrap();
        assert_eq!(p.get("EIPIds.1"), Some("eip-2"));
        assert_eq!(p.get("Tags.0.Key"), Some("a"));
        assert_eq!(p.get("Limit"), Some("10"));
        assert_eq!(p.get("Force"), Some("true"));
        assert_eq!(p.get("Empty"), None);
        assert_eq!(p.list("EIPIds"), vec!["eip-1", "eip-2"]);
    }

    #[test]
    fn merges_action_from_query_with_form_body() {
        let p = Params::parse(
            Some("Action=GetCubePod"),
            Some("application/x-www-form-urlencoded"),
            b"Region=cn-bj2&CubeId=cube-1",
        )
        .unwrap();
        assert_eq!(p.get("Action"), Some("GetCubePod"));
        assert_eq!(p.get("CubeId"), Some("cube-1"));
    }
}
