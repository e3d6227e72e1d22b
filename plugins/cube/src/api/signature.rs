//! The request signature: SHA-1 over the sorted `key` + `value` pairs followed by the private key.

use sha1::{Digest, Sha1};

use super::form::Params;

/// Signs every parameter but `Signature` (which must not be in `params` yet).
pub fn sign(params: &Params, private_key: &str) -> String {
    let mut h = Sha1::new();
    for (k, v) in params.iter().filter(|(k, _)| *k != "Signature") {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    h.update(private_key.as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_vector() {
        let p = Params::new()
            .set("Action", "DescribeUHostInstance")
            .set("Region", "cn-bj2")
            .set("Limit", "10")
            .set("PublicKey", "ucloudsomeone@example.com1296235120854146120");
        assert_eq!(sign(&p, "46f09bb9fab4f12dfc160dae12273d5332b5debe"), "cba5cf5ec4d4233d206b1b54951e3787350a642f");
    }

    #[test]
    fn ignores_an_existing_signature_and_depends_on_every_value() {
        let p = Params::new().set("Action", "GetCubePod").set("Uid", "u1");
        let s = sign(&p, "k");
        assert_eq!(sign(&p.clone().set("Signature", "x"), "k"), s);
        assert_ne!(sign(&p.clone().set("Uid", "u2"), "k"), s);
        assert_ne!(sign(&p, "k2"), s);
    }
}
