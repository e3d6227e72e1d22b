//! Components as OCI artifacts, in the layout wasm components use (the CNCF TAG Runtime wasm
//! artifact: an OCI image manifest whose config is `application/vnd.wasm.config.v0+json` and whose
//! one layer is the component, `application/wasm`), and cosign's signature artifacts beside them.
//! Resolve a tag, pull by digest (checking every digest), push. Pushes (the authors' side) go
//! through `oci-client`; the daemon's pulls are plain GETs, the registry's token exchange
//! included, whose bodies are read against a bound: oci-client reads manifests, tokens and error
//! answers whole (`res.bytes()`/`text()` in its `pull_manifest_raw`, `fetch_manifest_digest`,
//! `pull_blob` and `auth`), so a registry could make it allocate whatever it sends.

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    OciDescriptor, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::plugin::cache::sha256_hex;
use crate::plugin::source::signature::{CosignSignature, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE};
use crate::plugin::source::{Bound, MAX_SMALL_BLOB, SourceError};

/// The wasm artifact's config media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The wasm artifact's layer media type.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The config media type of cosign's signature artifacts.
const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The scheme of an OCI source.
pub const SCHEME: &str = "oci://";
/// A manifest is read up to this bound.
const MANIFEST: Bound = Bound { limit: MAX_SMALL_BLOB, what: "its manifest", by: "a manifest may have" };
/// The signature layers read from one signature artifact (cosign writes one per signature).
const MAX_SIGNATURES: usize = 16;
/// How much of a registry's error answer is kept for the message.
const MAX_ERROR_TEXT: usize = 1024;
/// A token answer is read up to this bound.
const TOKEN: Bound =
    Bound { limit: MAX_SMALL_BLOB, what: "its registry's token answer", by: "a token answer may have" };

/// One artifact reference and the clients for its registry.
pub struct OciRef {
    reference: Reference,
    /// Pushes (the authors' side).
    client: Client,
    /// Pulls, each body read against a bound.
    http: reqwest::Client,
    /// `scheme://registry/v2/repository`, where pulls go.
    base: String,
    /// The `Authorization` of pulls, once the registry asked for one (a 401).
    authorization: Mutex<Option<HeaderValue>>,
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
        let (protocol, scheme) = if is_loopback(reference.registry()) {
            (ClientProtocol::HttpsExcept(vec![reference.registry().to_string()]), "http")
        } else {
            (ClientProtocol::Https, "https")
        };
        let (connect_timeout, read_timeout) = (std::time::Duration::from_secs(5), std::time::Duration::from_secs(30));
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(connect_timeout),
            read_timeout: Some(read_timeout),
            // One request per blob: components are a few MiB, and not every registry answers
            // the chunked protocol's intermediate steps with a Location.
            use_monolithic_push: true,
            ..Default::default()
        });
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .user_agent(concat!("vkhost/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(&format!("cannot build its HTTP client: {e}")))?;
        let base = format!("{scheme}://{}/v2/{}", reference.resolve_registry(), reference.repository());
        Ok(OciRef { reference, client, http, base, authorization: Mutex::new(None), auth: auth_from_env() })
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

    fn http_error(&self, e: &reqwest::Error) -> SourceError {
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        SourceError::Registry {
            reference: self.display(),
            unreachable: e.is_connect() || e.is_timeout() || e.is_request(),
            message,
        }
    }

    /// Sends a pull request for `path` (`manifests/<ref>`, `blobs/<digest>`) in the repository;
    /// when the registry answers 401, authorizes and sends it once more.
    async fn request(&self, method: Method, path: &str, accept: &str) -> Result<reqwest::Response, SourceError> {
        let url = format!("{}/{path}", self.base);
        let response = self.send(&method, &url, accept).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response.headers().get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        let challenge = challenge.and_then(Challenge::parse);
        drop(response);
        self.authorize(challenge).await?;
        self.send(&method, &url, accept).await
    }

    async fn send(&self, method: &Method, url: &str, accept: &str) -> Result<reqwest::Response, SourceError> {
        let authorization = self.authorization.lock().unwrap().clone();
        let mut request = self.http.request(method.clone(), url).header(ACCEPT, accept);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.map_err(|e| self.http_error(&e))
    }

    /// The `Authorization` of the requests that follow a 401: a token from the realm a Bearer
    /// challenge names (asked with the Basic credentials, if any), else the Basic credentials.
    async fn authorize(&self, challenge: Option<Challenge>) -> Result<(), SourceError> {
        let basic = match &self.auth {
            RegistryAuth::Basic(user, password) => Some((user.as_str(), password.as_str())),
            _ => None,
        };
        let value = match challenge {
            Some(challenge) => Some(format!("Bearer {}", self.token(&challenge, basic).await?)),
            None => basic.map(|(user, password)| format!("Basic {}", B64.encode(format!("{user}:{password}")))),
        };
        *self.authorization.lock().unwrap() = value.and_then(|v| HeaderValue::from_str(&v).ok()).map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Ok(())
    }

    /// A pull token from the challenge's realm (the distribution spec's token exchange).
    async fn token(&self, challenge: &Challenge, basic: Option<(&str, &str)>) -> Result<String, SourceError> {
        let refused =
            |message: String| SourceError::Registry { reference: self.display(), unreachable: false, message };
        let mut url = reqwest::Url::parse(&challenge.realm)
            .map_err(|e| refused(format!("its token realm {:?} is not a URL: {e}", challenge.realm)))?;
        // Credentials go over TLS, or to this machine.
        if url.scheme() != "https" && !(url.scheme() == "http" && url.host_str().is_some_and(is_loopback)) {
            return Err(refused(format!("its token realm {} is neither https nor on this machine", challenge.realm)));
        }
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("scope", &format!("repository:{}:pull", self.reference.repository()));
            if let Some(service) = &challenge.service {
                query.append_pair("service", service);
            }
        }
        let mut request = self.http.get(url);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| self.http_error(&e))?;
        if !response.status().is_success() {
            return Err(self.refused(response).await);
        }
        let body = self.read_body(response, TOKEN, &self.display()).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("its token realm {} answered no JSON token: {e}", challenge.realm)))?;
        answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| refused(format!("its token realm {} answered no token", challenge.realm)))
    }

    /// A registry's answer other than success, with the start of what it said.
    async fn refused(&self, mut response: reqwest::Response) -> SourceError {
        let head = format!("{} answered {}", response.url(), response.status());
        let mut text = Vec::new();
        while text.len() < MAX_ERROR_TEXT
            && let Ok(Some(chunk)) = response.chunk().await
        {
            text.extend_from_slice(&chunk);
        }
        text.truncate(MAX_ERROR_TEXT);
        let text = String::from_utf8_lossy(&text);
        let message = if text.trim().is_empty() { head } else { format!("{head}: {}", text.trim()) };
        SourceError::Registry { reference: self.display(), unreachable: false, message }
    }

    /// GETs `path` and reads the body within `bound` (`reference` names what is refused).
    /// `None`: the registry has no such thing (404).
    async fn get(
        &self,
        path: &str,
        accept: &str,
        bound: Bound,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        let response = self.request(Method::GET, path, accept).await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.refused(response).await),
            _ => {}
        }
        self.read_body(response, bound, reference).await.map(Some)
    }

    /// A body within `bound`: refused by a declared length over it before a byte is read, and as
    /// soon as the bytes sent go past it.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        bound: Bound,
        reference: &str,
    ) -> Result<Vec<u8>, SourceError> {
        let declared = response.content_length();
        if let Some(length) = declared
            && length > bound.limit
        {
            return Err(bound.refuse(reference.into(), Some(length)));
        }
        let mut body = Vec::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.http_error(&e))? {
            if (body.len() + chunk.len()) as u64 > bound.limit {
                return Err(bound.refuse(reference.into(), None));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `get`, where a 404 is an error.
    async fn get_found(&self, path: &str, accept: &str, bound: Bound, reference: &str) -> Result<Vec<u8>, SourceError> {
        self.get(path, accept, bound, reference).await?.ok_or_else(|| SourceError::Registry {
            reference: self.display(),
            unreachable: false,
            message: format!("{}/{path} answered 404 Not Found", self.base),
        })
    }

    /// The manifest digest the reference names now: the pinned one, or the tag's current one.
    pub async fn resolve(&self) -> Result<String, SourceError> {
        if let Some(digest) = self.reference.digest() {
            return Ok(digest.to_string());
        }
        let path = format!("manifests/{}", self.reference.tag().unwrap_or("latest"));
        let accept = [
            OCI_IMAGE_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ]
        .join(", ");
        let head = self.request(Method::HEAD, &path, &accept).await?;
        if !head.status().is_success() {
            return Err(self.refused(head).await);
        }
        let header = head.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let digest = match header {
            Some(digest) => digest,
            // A registry that does not name it: the digest of the manifest's bytes.
            None => format!("sha256:{}", sha256_hex(&self.get_found(&path, &accept, MANIFEST, &self.display()).await?)),
        };
        if !is_sha256_digest(&digest) {
            return Err(SourceError::Artifact {
                reference: self.display(),
                why: format!("the registry answered digest {digest:?}, not sha256:<hex>"),
            });
        }
        Ok(digest)
    }

    /// Pulls the manifest at `digest` and its component layer, checking both digests and the
    /// wasm artifact layout. A layer larger than `max` is refused by its declared size before it
    /// is pulled, and its bytes are read up to that declared size only, whatever the registry
    /// sends.
    pub(crate) async fn pull(&self, digest: &str, max: Bound) -> Result<Vec<u8>, SourceError> {
        let pinned = self.pinned(digest);
        let artifact = |why: String| SourceError::Artifact { reference: pinned.clone(), why };
        let raw = self.get_found(&format!("manifests/{digest}"), OCI_IMAGE_MEDIA_TYPE, MANIFEST, &pinned).await?;
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
        if !is_sha256_digest(&layer.digest) {
            return Err(artifact(format!("its layer's digest {:?} is not sha256:<hex>", layer.digest)));
        }
        let declared =
            u64::try_from(layer.size).map_err(|_| artifact(format!("its layer declares the size {}", layer.size)))?;
        if declared > max.limit {
            return Err(max.refuse(pinned, Some(declared)));
        }
        // A registry may send more than it declared: no more than that is read.
        let sent = Bound { limit: declared, by: "its manifest declares", ..max };
        let bytes = self.get_found(&format!("blobs/{}", layer.digest), "*/*", sent, &pinned).await?;
        if format!("sha256:{}", sha256_hex(&bytes)) != layer.digest {
            return Err(artifact(format!("the component layer does not have its digest {}", layer.digest)));
        }
        Ok(bytes)
    }

    /// The cosign signatures stored for `digest` (`sha256-<hex>.sig`); none when the tag is absent.
    /// Their payloads are read up to the sizes their manifest declares, MAX_SMALL_BLOB in all.
    pub async fn signatures(&self, digest: &str) -> Result<Vec<CosignSignature>, SourceError> {
        let tag = signature_tag(digest);
        let name = format!("{}:{tag}", self.repository());
        let artifact = |why: String| SourceError::Artifact { reference: name.clone(), why };
        let Some(raw) = self.get(&format!("manifests/{tag}"), OCI_IMAGE_MEDIA_TYPE, MANIFEST, &name).await? else {
            return Ok(Vec::new());
        };
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).map_err(|e| artifact(format!("not an OCI image manifest: {e}")))?;
        let mut out = Vec::new();
        let mut budget = MAX_SMALL_BLOB;
        let layers = manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE);
        for layer in layers.take(MAX_SIGNATURES) {
            let Some(signature) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
                continue;
            };
            let Some(size) = u64::try_from(layer.size).ok().filter(|s| *s <= budget) else { continue };
            if !is_sha256_digest(&layer.digest) {
                continue;
            }
            let bound = Bound { limit: size, what: "a signature payload", by: "its manifest declares" };
            let payload = self.get_found(&format!("blobs/{}", layer.digest), "*/*", bound, &name).await?;
            if format!("sha256:{}", sha256_hex(&payload)) != layer.digest {
                return Err(artifact(format!("a signature payload does not have its digest {}", layer.digest)));
            }
            budget -= size;
            out.push(CosignSignature { payload, signature: signature.clone() });
        }
        Ok(out)
    }

    /// Pushes `component` as a wasm artifact under the reference's tag; returns its manifest digest.
    /// With `sign` (the cosign signature of a manifest digest), the manifest goes up by digest and
    /// is signed before the tag names it: a daemon polling the tag never sees the version unsigned
    /// (and refuses it for good).
    pub async fn push(
        &self,
        component: &[u8],
        title: &str,
        sign: Option<&dyn Fn(&str) -> CosignSignature>,
    ) -> Result<String, SourceError> {
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
        if let Some(sign) = sign {
            let digest = format!("sha256:{}", sha256_hex(&serde_json::to_vec(&manifest).expect("json")));
            self.push_manifest(&self.by_digest(&digest), &manifest).await?;
            self.push_signature(&digest, &sign(&digest)).await?;
        }
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

/// A registry's `WWW-Authenticate: Bearer realm="…",service="…"` challenge.
#[derive(Debug, PartialEq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

impl Challenge {
    /// The Bearer challenge of a `WWW-Authenticate` value (RFC 7235 parameters, quoted or not);
    /// none for another scheme or without a realm.
    fn parse(header: &str) -> Option<Challenge> {
        let (scheme, mut rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let (mut realm, mut service) = (None, None);
        loop {
            rest = rest.trim_start().trim_start_matches(',').trim_start();
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let after = after.trim_start();
            let value = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => value.push(chars.next()?.1),
                        (i, '"') => break i + 1,
                        (_, c) => value.push(c),
                    }
                };
                rest = &quoted[end..];
                value
            } else {
                let end = after.find(',').unwrap_or(after.len());
                rest = &after[end..];
                after[..end].trim().to_string()
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "service" => service = Some(value),
                _ => {}
            }
        }
        Some(Challenge { realm: realm?, service })
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
    fn bearer_challenges_name_their_realm_and_service() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:vk/cube:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example.com/token");
        assert_eq!(c.service.as_deref(), Some("registry.example.com"));
        let c = Challenge::parse(r#"bearer  service=reg, realm="https://a.example/t\"x""#).unwrap();
        assert_eq!((c.realm.as_str(), c.service.as_deref()), (r#"https://a.example/t"x"#, Some("reg")));
        for other in [r#"Basic realm="registry""#, r#"Bearer service="reg""#, r#"Bearer realm="unterminated"#, "Bearer"]
        {
            assert_eq!(Challenge::parse(other), None, "{other}");
        }
    }

    #[test]
    fn signature_tags_follow_cosign() {
        assert_eq!(signature_tag("sha256:abcd"), "sha256-abcd.sig");
    }
}
