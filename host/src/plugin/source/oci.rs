//! Components as OCI artifacts, in the layout wasm components use (the CNCF TAG Runtime wasm
//! artifact: an OCI image manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is the component, `application/wasm`), and cosign's signature artifacts beside them.
//! A thin layer over `oci-client`: resolve a tag, pull by digest (checking every digest), push.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

use crate::plugin::cache::sha256_hex;
use crate::plugin::source::SourceError;
use crate::plugin::source::signature::{CosignSignature, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE};

/// The wasm artifact's config media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The wasm artifact's layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The config media type of cosign's signature artifacts.
const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The scheme of an OCI source.
pub const SCHEME: &str = "oci://";
/// The largest manifest or signature payload read.
const MAX_SMALL_BLOB: usize = 4 << 20;

/// One artifact reference and a client for its registry.
pub struct OciRef {
    reference: Reference,
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OciRef({})", self.display())
    }
}

/// Whether a registry host is on this machine: the only ones spoken to over plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl OciRef {
    /// Parses `oci://registry/repository:tag` or `oci://registry/repository@sha256:<hex>`. The
    /// registry must be named (no implicit Docker Hub).
    pub fn parse(source: &str) -> Result<Self, SourceError> {
        let bad = |why: &str| SourceError::Reference { reference: source.into(), why: why.into() };
        let rest = source.strip_prefix(SCHEME).ok_or_else(|| bad("it must start with oci://"))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("it names no repository after the registry"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("the registry must be a host name (with a dot or a port) or localhost"));
        }
        if path.is_empty() {
            return Err(bad("it names no repository after the registry"));
        }
        let reference: Reference = rest.parse().map_err(|e| bad(&format!("{e}")))?;
        // No implicit `latest`: what runs is named.
        let named = path.contains('@') || path.rsplit('/').next().is_some_and(|last| last.contains(':'));
        if !named {
            return Err(bad("it names neither a tag (`:tag`) nor a digest (`@sha256:…`)"));
        }
        if let Some(digest) = reference.digest()
            && !is_sha256_digest(digest)
        {
            return Err(bad("the digest must be sha256:<64 hex digits>"));
        }
        let protocol = if is_loopback(reference.registry()) {
            ClientProtocol::HttpsExcept(vec![reference.registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            read_timeout: Some(std::time::Duration::from_secs(30)),
            // One request per blob: components are a few MiB, and not every registry answers
            // the chunked protocol's intermediate steps with a Location.
            use_monolithic_push: true,
            ..Default::default()
        });
        Ok(OciRef { reference, client, auth: auth_from_env() })
    }

    /// The reference as configured, `oci://…`.
    pub fn display(&self) -> String {
        format!("{SCHEME}{}", self.reference.whole())
    }

    /// `registry/repository`, as cosign names it in a signature.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.reference.registry(), self.reference.repository())
    }

    /// The digest the reference pins, if it pins one.
    pub fn pinned_digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// `oci://registry/repository@digest`: what runs, whatever the tag says later.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{SCHEME}{}@{digest}", self.repository())
    }

    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            digest.to_string(),
        )
    }

    fn by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.reference.registry().to_string(), self.reference.repository().to_string(), tag.into())
    }

    fn error(&self, e: oci_client::errors::OciDistributionError) -> SourceError {
        let unreachable = matches!(&e, oci_client::errors::OciDistributionError::RequestError(r)
            if r.is_connect() || r.is_timeout() || r.is_request());
        SourceError::Registry { reference: self.display(), unreachable, message: format!("{e}") }
    }

    /// The manifest digest the reference names now: the pinned one, or the tag's current one.
    pub async fn resolve(&self) -> Result<String, SourceError> {
        if let Some(digest) = self.reference.digest() {
            return Ok(digest.to_string());
        }
        let digest = self.client.fetch_manifest_digest(&self.reference, &self.auth).await.map_err(|e| self.error(e))?;
        if !is_sha256_digest(&digest) {
            return Err(SourceError::Artifact {
                reference: self.display(),
                why: format!("the registry answered digest {digest:?}, not sha256:<hex>"),
            });
        }
        Ok(digest)
    }

    /// Pulls the manifest at `digest` and its component layer, checking both digests and the
    /// wasm artifact layout.
    pub async fn pull(&self, digest: &str) -> Result<Vec<u8>, SourceError> {
        let reference = self.by_digest(digest);
        let artifact = |why: String| SourceError::Artifact { reference: self.pinned(digest), why };
        let (raw, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| self.error(e))?;
        if format!("sha256:{}", sha256_hex(&raw)) != digest {
            return Err(artifact("the manifest's bytes do not have the digest they were asked by".into()));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).map_err(|e| artifact(format!("not an OCI image manifest: {e}")))?;
        if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(artifact(format!(
                "its config media type is {}, not {WASM_CONFIG_MEDIA_TYPE} (push it with `vkhost plugin push`)",
                manifest.config.media_type
            )));
        }
        let layers: Vec<&OciDescriptor> =
            manifest.layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE).collect();
        let [layer] = layers.as_slice() else {
            return Err(artifact(format!("it has {} {WASM_LAYER_MEDIA_TYPE} layers, not one", layers.len())));
        };
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0).min(256 << 20));
        self.client.pull_blob(&reference, *layer, &mut bytes).await.map_err(|e| self.error(e))?;
        if format!("sha256:{}", sha256_hex(&bytes)) != layer.digest {
            return Err(artifact(format!("the component layer does not have its digest {}", layer.digest)));
        }
        Ok(bytes)
    }

    /// The cosign signatures stored for `digest` (`sha256-<hex>.sig`); none when the tag is absent.
    pub async fn signatures(&self, digest: &str) -> Result<Vec<CosignSignature>, SourceError> {
        let tag = signature_tag(digest);
        let reference = self.by_tag(&tag);
        let raw = match self.client.pull_manifest_raw(&reference, &self.auth, &[OCI_IMAGE_MEDIA_TYPE]).await {
            Ok((raw, _)) => raw,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(e)),
        };
        let manifest: OciImageManifest = serde_json::from_slice(&raw).map_err(|e| SourceError::Artifact {
            reference: format!("{}:{tag}", self.repository()),
            why: format!("not an OCI image manifest: {e}"),
        })?;
        let mut out = Vec::new();
        for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE) {
            let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
                continue;
            };
            if layer.size > MAX_SMALL_BLOB as i64 {
                continue;
            }
            let mut payload = Vec::new();
            self.client.pull_blob(&reference, layer, &mut payload).await.map_err(|e| self.error(e))?;
            out.push(CosignSignature { payload, signature: signature.clone() });
        }
        Ok(out)
    }

    /// Pushes `component` as a wasm artifact under the reference's tag; returns its manifest digest.
    pub async fn push(&self, component: &[u8], title: &str) -> Result<String, SourceError> {
        let layer_digest = format!("sha256:{}", sha256_hex(component));
        let config = serde_json::to_vec(&json!({
            "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        }))
        .expect("json");
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": WASM_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": WASM_LAYER_MEDIA_TYPE, "digest": layer_digest, "size": component.len(),
                "annotations": {"org.opencontainers.image.title": title},
            }],
        });
        self.push_blob(component.to_vec(), &layer_digest).await?;
        self.push_blob(config, &config_digest).await?;
        self.push_manifest(&self.reference, &manifest).await
    }

    /// Pushes a cosign signature artifact for `digest`, replacing any other.
    pub async fn push_signature(&self, digest: &str, signature: &CosignSignature) -> Result<String, SourceError> {
        let config = b"{}".to_vec();
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let payload_digest = format!("sha256:{}", sha256_hex(&signature.payload));
        let annotations: BTreeMap<&str, &str> = [(SIGNATURE_ANNOTATION, signature.signature.as_str())].into();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": SIGNATURE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
            "layers": [{
                "mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "digest": payload_digest,
                "size": signature.payload.len(), "annotations": annotations,
            }],
        });
        self.push_blob(signature.payload.clone(), &payload_digest).await?;
        self.push_blob(config, &config_digest).await?;
        self.push_manifest(&self.by_tag(&signature_tag(digest)), &manifest).await
    }

    async fn push_blob(&self, data: Vec<u8>, digest: &str) -> Result<(), SourceError> {
        self.client.store_auth_if_needed(self.reference.resolve_registry(), &self.auth).await;
        self.client.push_blob(&self.reference, data, digest).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn push_manifest(&self, reference: &Reference, manifest: &serde_json::Value) -> Result<String, SourceError> {
        let body = serde_json::to_vec(manifest).expect("json");
        let digest = format!("sha256:{}", sha256_hex(&body));
        let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        self.client.push_manifest_raw(reference, body, content_type).await.map_err(|e| self.error(e))?;
        Ok(digest)
    }
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

pub fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::ServerError { code, .. } => *code == 404,
        E::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| matches!(e.code, oci_client::errors::OciErrorCode::ManifestUnknown))
        }
        _ => false,
    }
}

/// Registry credentials from `VKHOST_REGISTRY_USERNAME` and `VKHOST_REGISTRY_PASSWORD`
/// (anonymous without them).
fn auth_from_env() -> RegistryAuth {
    match (std::env::var("VKHOST_REGISTRY_USERNAME"), std::env::var("VKHOST_REGISTRY_PASSWORD")) {
        (Ok(user), Ok(password)) if !user.is_empty() => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_a_repository_and_a_tag_or_digest() {
        let r = OciRef::parse("oci://127.0.0.1:5000/vk/cube:stable").unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/vk/cube");
        assert_eq!(r.pinned_digest(), None);
        let hex = "a".repeat(64);
        let r = OciRef::parse(&format!("oci://registry.example.com/vk/cube@sha256:{hex}")).unwrap();
        assert_eq!(r.pinned_digest(), Some(format!("sha256:{hex}").as_str()));
        assert_eq!(r.pinned(&format!("sha256:{hex}")), format!("oci://registry.example.com/vk/cube@sha256:{hex}"));
        for (bad, says) in [
            ("127.0.0.1:5000/vk/cube:1", "oci://"),
            ("oci://cube:1", "repository"),
            ("oci://vk/cube:1", "registry must be"),
            ("oci://r.example/vk/cube@sha256:abc", "invalid"),
            ("oci://r.example/vk/cube", "neither a tag"),
        ] {
            let err = OciRef::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn only_loopback_registries_are_spoken_to_in_plain_http() {
        for host in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.3.2.1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1:5000", "registry.example.com", "localhost.example.com:5000", "[::2]:80"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn signature_tags_follow_cosign() {
        assert_eq!(signature_tag("sha256:abcd"), "sha256-abcd.sig");
    }
}
