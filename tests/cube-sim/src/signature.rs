//! The gateway's request signature: SHA-1 over the sorted `key` + `value` pairs plus the
//! private key, lowercase hex.

use sha1::{Digest, Sha1};

use crate::params::Params;

/// Signs every parameter except `Signature` (the map is already sorted by byte order).
pub fn sign(params: &Params, private_key: &str) -> String {
    let mut hasher = Sha1::new();
    for (k, v) in &params.0 {
        if k == "Signature" {
            continue;
        }
        hasher.update(k.as_bytes());
        hasher.update(v.as_bytes());
    }
    hasher.update(private_key.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_signature_vector() {
        let params = Params::from_pairs([
            ("Action", "DescribeUHostInstance"),
            ("Limit", "10"),
            ("PublicKey", "ucloudsomeone@example.com1296235120854146120"),
            ("Region", "cn-bj2"),
        ]);
        assert_eq!(
            sign(&params, "46f09bb9fab4f12dfc160dae12273d5332b5debe"),
            "cba5cf5ec4d4233d206b1b54951e3787350a642f"
        );
    }

    #[test]
    fn ignores_an_existing_signature_parameter() {
        let mut params = Params::from_pairs([("Action", "X"), ("PublicKey", "p")]);
        let before = sign(&params, "k");
        params.0.insert("Signature".into(), "whatever".into());
        assert_eq!(sign(&params, "k"), before);
    }
}
