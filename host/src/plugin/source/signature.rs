//! Keyed signatures of plugin components, in the formats cosign reads and writes: ECDSA P-256 with
//! SHA-256, DER-encoded, base64 on the wire. An OCI artifact is signed through cosign's
//! simple-signing payload (which names the manifest digest) stored under the `sha256-<hex>.sig`
//! tag; a component file through a detached `<file>.sig` holding the base64 signature of the
//! file's bytes (what `cosign sign-blob --key` and `openssl dgst -sha256 -sign` print).

use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The annotation of a cosign signature layer that carries the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a cosign signature layer (its blob is the simple-signing payload).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The `critical.type` of a cosign container signature.
const COSIGN_TYPE: &str = "cosign container image signature";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: not a PEM public key (expected `-----BEGIN PUBLIC KEY-----`, an ECDSA P-256 key as `cosign generate-key-pair`, `vkhost plugin keygen` or `openssl ec -pubout` write it)"
    )]
    NotAPublicKey { path: PathBuf },
    #[error(
        "{path}: not an unencrypted ECDSA P-256 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`, as `vkhost plugin keygen` or `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` write it); cosign's encrypted keys: `cosign import-key-pair` the other way round is not supported"
    )]
    NotAPrivateKey { path: PathBuf },
}

/// The public key signatures are checked against (`[plugin] public_key`).
#[derive(Clone)]
pub struct Verifier {
    spki: Vec<u8>,
    path: PathBuf,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({}, {})", self.path.display(), self.fingerprint())
    }
}

/// Why a signature was refused, said so an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned: {0}")]
    Missing(String),
    #[error("signature does not verify with the configured public key {key}: {why}")]
    Invalid { key: String, why: String },
}

impl Verifier {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an ECDSA P-256 key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        Self::from_pem(&pem).ok_or_else(|| KeyError::NotAPublicKey { path: path.into() }).map(|mut v| {
            v.path = path.into();
            v
        })
    }

    fn from_pem(pem: &[u8]) -> Option<Self> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).ok()?;
        // A key that verifies nothing is refused now, not at the first artifact.
        signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki.as_ref()).ok()?;
        Some(Verifier { spki: spki.as_ref().to_vec(), path: PathBuf::new() })
    }

    /// `sha256:<hex>` of the key's DER, as the admin endpoint and errors name it.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", &hex::encode(Sha256::digest(&self.spki))[..16])
    }

    /// The key's file and fingerprint, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), self.fingerprint())
    }

    fn check(&self, message: &[u8], signature_b64: &str) -> Result<(), SignatureError> {
        let invalid = |why: &str| SignatureError::Invalid { key: self.describe(), why: why.into() };
        let der = B64.decode(signature_b64.trim()).map_err(|_| invalid("the signature is not base64"))?;
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.spki)
            .verify(message, &der)
            .map_err(|_| invalid("signed by another key, or the content was changed after signing"))
    }

    /// Checks a detached signature (base64 DER) of a component file's bytes.
    pub fn verify_blob(&self, bytes: &[u8], signature_b64: &str) -> Result<(), SignatureError> {
        self.check(bytes, signature_b64)
    }

    /// Checks that one of `signatures` (payload, base64 signature) is a valid cosign signature of
    /// `manifest_digest` by this key.
    pub fn verify_cosign(&self, manifest_digest: &str, signatures: &[CosignSignature]) -> Result<(), SignatureError> {
        let mut last = SignatureError::Missing(format!("no signature layer for {manifest_digest}"));
        for sig in signatures {
            if let Err(e) = self.check(&sig.payload, &sig.signature) {
                last = e;
                continue;
            }
            // The signature is the key's: only now is the payload worth reading.
            match serde_json::from_slice::<SimpleSigning>(&sig.payload) {
                Ok(p)
                    if p.critical.kind == COSIGN_TYPE && p.critical.image.docker_manifest_digest == manifest_digest =>
                {
                    return Ok(());
                }
                Ok(p) => {
                    last = SignatureError::Invalid {
                        key: self.describe(),
                        why: format!(
                            "the signed payload names {} ({}), not {manifest_digest}",
                            p.critical.image.docker_manifest_digest, p.critical.kind
                        ),
                    }
                }
                Err(e) => {
                    last = SignatureError::Invalid { key: self.describe(), why: format!("unreadable payload: {e}") }
                }
            }
        }
        Err(last)
    }
}

/// One signature layer of a cosign signature artifact: the payload blob and its annotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CosignSignature {
    #[serde(with = "b64_bytes")]
    pub payload: Vec<u8>,
    pub signature: String,
}

mod b64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// cosign's simple-signing payload (the parts that are checked).
#[derive(Debug, Serialize, Deserialize)]
struct SimpleSigning {
    critical: Critical,
    #[serde(default)]
    optional: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The payload cosign signs for `repository` (`registry/repo`) at `manifest_digest`.
pub fn simple_signing_payload(repository: &str, manifest_digest: &str) -> Vec<u8> {
    let payload = SimpleSigning {
        critical: Critical {
            identity: Identity { docker_reference: repository.into() },
            image: Image { docker_manifest_digest: manifest_digest.into() },
            kind: COSIGN_TYPE.into(),
        },
        optional: None,
    };
    serde_json::to_vec(&payload).expect("plain structs serialize")
}

/// An author's private key, for `vkhost plugin push --key` and `vkhost plugin sign`.
pub struct Signer {
    key: EcdsaKeyPair,
}

impl Signer {
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| KeyError::NotAPrivateKey { path: path.into() })?;
        let key = EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_der())
            .map_err(|_| KeyError::NotAPrivateKey { path: path.into() })?;
        Ok(Signer { key })
    }

    /// A new key pair: (PKCS#8 private key PEM, public key PEM).
    pub fn generate() -> (String, String) {
        let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("the system RNG works");
        let private = key.to_pkcs8v1().expect("a fresh key serializes");
        let public = key.public_key().as_der().expect("a fresh key serializes");
        (pem("PRIVATE KEY", private.as_ref()), pem("PUBLIC KEY", public.as_ref()))
    }

    /// The base64 DER signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        let sig = self.key.sign(&SystemRandom::new(), message).expect("signing with a valid key");
        B64.encode(sig.as_ref())
    }

    /// The public key, PEM.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", self.key.public_key().as_der().expect("a valid key serializes").as_ref())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Where a component file's detached signature lives: `<file>.sig`.
pub fn detached_signature_path(component: &Path) -> PathBuf {
    let mut name = component.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Signer, Verifier) {
        let (private, public) = Signer::generate();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            PrivateKeyDer::from_pem_slice(private.as_bytes()).unwrap().secret_der(),
        )
        .unwrap();
        (Signer { key }, Verifier::from_pem(public.as_bytes()).unwrap())
    }

    #[test]
    fn a_detached_signature_verifies_only_the_signed_bytes_with_the_signing_key() {
        let (signer, verifier) = pair();
        let sig = signer.sign(b"component bytes");
        verifier.verify_blob(b"component bytes", &sig).unwrap();
        assert!(matches!(verifier.verify_blob(b"component byteZ", &sig), Err(SignatureError::Invalid { .. })));
        let (_, other) = pair();
        assert!(matches!(other.verify_blob(b"component bytes", &sig), Err(SignatureError::Invalid { .. })));
        assert!(verifier.verify_blob(b"component bytes", "not base64!").is_err());
    }

    #[test]
    fn a_cosign_signature_must_name_the_manifest_digest_it_is_checked_for() {
        let (signer, verifier) = pair();
        let digest = "sha256:aaaa";
        let payload = simple_signing_payload("127.0.0.1:5000/vk/cube", digest);
        let sig = CosignSignature { signature: signer.sign(&payload), payload };
        verifier.verify_cosign(digest, std::slice::from_ref(&sig)).unwrap();
        // A valid signature of another version does not sign this one.
        let err = verifier.verify_cosign("sha256:bbbb", std::slice::from_ref(&sig)).unwrap_err();
        assert!(err.to_string().contains("names sha256:aaaa"), "{err}");
        assert!(matches!(verifier.verify_cosign(digest, &[]), Err(SignatureError::Missing(_))));
    }

    #[test]
    fn the_payload_has_cosigns_shape() {
        let payload: serde_json::Value =
            serde_json::from_slice(&simple_signing_payload("r.example/vk/cube", "sha256:ab")).unwrap();
        assert_eq!(payload["critical"]["type"], "cosign container image signature");
        assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], "sha256:ab");
        assert_eq!(payload["critical"]["identity"]["docker-reference"], "r.example/vk/cube");
    }

    #[test]
    fn keys_in_other_formats_are_refused() {
        assert!(Verifier::from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_none());
        assert!(Verifier::from_pem(b"hello").is_none());
    }
}
