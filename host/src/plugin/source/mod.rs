//! Where a plugin version comes from, and why it may be trusted: a file (`path`) or an OCI
//! artifact (`source = "oci://…"`), each checked against the configured public key before it
//! reaches the loader. `Source::fetch` yields a verified component (bytes and provenance); the
//! handle compiles and swaps it in through its one reload path. Pulled artifacts are kept by
//! digest in the cache directory, so a daemon starts when the registry is down. Every read is
//! bounded (`Bound`): what a registry, a tag's owner or a file names or sends beyond it is refused
//! before it is held in memory.

pub mod oci;
pub mod publish;
pub mod signature;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use oci::OciRef;
use signature::{CosignSignature, SignatureError, Verifier};

/// Why no component came from the source. On reload the running version stays.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("plugin settings: set exactly one of `path` and `source` in [plugin]")]
    PathOrSource,
    #[error("plugin source {reference}: {why}")]
    Reference { reference: String, why: String },
    #[error("plugin.public_key {0}")]
    Key(#[from] signature::KeyError),
    #[error("plugin file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("plugin {reference}: the registry {}: {message}", if *.unreachable { "cannot be reached" } else { "refused" })]
    Registry { reference: String, unreachable: bool, message: String },
    #[error("plugin {reference} is not a wasm component artifact: {why}")]
    Artifact { reference: String, why: String },
    #[error("plugin {reference} refused: {error}")]
    Signature { reference: String, error: SignatureError },
    #[error("plugin {reference}: {error}; and no pulled copy is cached to start from ({cache})")]
    Offline { reference: String, error: Box<SourceError>, cache: String },
    /// More bytes than a `Bound` allows: `size` as declared (or found on disk), none when they
    /// went on past it.
    #[error("plugin {reference} refused: {}", too_large(what, *size, *limit, by))]
    TooLarge { reference: String, what: &'static str, size: Option<u64>, limit: u64, by: &'static str },
}

fn too_large(what: &str, size: Option<u64>, limit: u64, by: &str) -> String {
    match size {
        Some(size) => format!("{what} is {size} bytes, more than the {limit} bytes {by}"),
        None => format!("{what} is longer than the {limit} bytes {by}"),
    }
}

impl SourceError {
    /// Whether the component was refused for its signature (missing or wrong).
    pub fn is_signature(&self) -> bool {
        matches!(self, SourceError::Signature { .. })
    }
}

/// The largest component a source hands to the loader unless `[plugin] max_component_mib` says
/// otherwise. A version is held in memory whole (then compiled), so a layer or file over the bound
/// is refused before it is read: a registry, or whoever moves the tag, cannot make the daemon
/// allocate what it names. Components are a few MiB (the Python example, an interpreter inside,
/// is 18 MiB), so this leaves room for far larger ones.
pub const MAX_COMPONENT_MIB: u64 = 256;

/// The largest manifest, cosign signature payload or detached signature read (they are a few
/// hundred bytes).
pub(crate) const MAX_SMALL_BLOB: u64 = 4 << 20;

/// A limit on the bytes of one thing read, and how a refusal names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    pub limit: u64,
    /// What is read: `its component layer`.
    pub what: &'static str,
    /// Whose limit it is: `[plugin] max_component_mib allows`.
    pub by: &'static str,
}

impl Bound {
    /// A component of at most `bytes`, the operator's bound.
    fn component(what: &'static str, bytes: u64) -> Bound {
        Bound { limit: bytes, what, by: "[plugin] max_component_mib allows" }
    }

    /// `reference` refused: `size` is what it declared (or was found to be), none when the bytes
    /// went on past the limit.
    pub(crate) fn refuse(&self, reference: String, size: Option<u64>) -> SourceError {
        SourceError::TooLarge { reference, what: self.what, size, limit: self.limit, by: self.by }
    }
}

/// The bytes of `path`, up to `bound`: a file over it is refused by its size before a byte is read,
/// and the read stops past the limit should the file grow meanwhile.
async fn read_file(path: &Path, bound: Bound) -> Result<Vec<u8>, SourceError> {
    let io = |source| SourceError::Io { path: path.into(), source };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let size = file.metadata().await.map_err(io)?.len();
    if size > bound.limit {
        return Err(bound.refuse(path.display().to_string(), Some(size)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(bound.limit + 1).read_to_end(&mut bytes).await.map_err(io)?;
    if bytes.len() as u64 > bound.limit {
        return Err(bound.refuse(path.display().to_string(), None));
    }
    Ok(bytes)
}

/// What a version was loaded from: shown by `GET /plugin`, on the node annotation and in Events.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Provenance {
    /// The source as configured: the file, or `oci://registry/repository:tag`.
    pub source: String,
    /// The OCI manifest digest that runs (`sha256:…`); none for a file.
    pub digest: Option<String>,
    /// What runs, as a reference that cannot move: `oci://registry/repository@sha256:…`, or the
    /// file's path.
    pub pinned: String,
    /// The key whose signature was verified (`path (sha256:fingerprint)`); none without
    /// `public_key`.
    pub verified_by: Option<String>,
    /// The registry could not be reached: this came from the cache of pulled artifacts.
    pub offline: bool,
}

/// A component that passed the source's checks, ready to compile.
pub struct Verified {
    pub bytes: Arc<[u8]>,
    pub provenance: Provenance,
}

impl Verified {
    /// Version `digest` of `r` (pulled now, or from the cache when `offline`), checked.
    fn pulled(r: &OciRef, digest: String, bytes: Vec<u8>, verified_by: Option<String>, offline: bool) -> Verified {
        Verified {
            bytes: bytes.into(),
            provenance: Provenance {
                source: r.display(),
                pinned: r.pinned(&digest),
                digest: Some(digest),
                verified_by,
                offline,
            },
        }
    }
}

/// The configured source of the plugin's versions.
#[derive(Debug)]
pub struct Source {
    kind: Kind,
    verifier: Option<Verifier>,
    /// The largest component accepted, bytes.
    max_component: u64,
    /// Where pulled artifacts are kept by digest (`<cache_dir>/oci`), when the cache is usable.
    cache: Option<PathBuf>,
    poll: Duration,
}

#[derive(Debug)]
enum Kind {
    Path(PathBuf),
    Oci(Box<OciRef>),
}

impl Source {
    /// A source from `[plugin]`: `path` (empty: unset) or `source`, exactly one; the key versions
    /// must be signed by; the cache dir (pulled versions go under `oci/`); the tag poll interval;
    /// the largest component accepted. `PluginSettings::source` passes its fields.
    pub fn new(
        path: &Path,
        source: Option<&str>,
        public_key: Option<&Path>,
        cache_dir: Option<PathBuf>,
        poll_interval_ms: u64,
        max_component_mib: u64,
    ) -> Result<Self, SourceError> {
        let kind = match (source, path.as_os_str().is_empty()) {
            (Some(source), true) => Kind::Oci(Box::new(OciRef::parse(source)?)),
            (None, false) => Kind::Path(path.to_path_buf()),
            _ => return Err(SourceError::PathOrSource),
        };
        let verifier = public_key.map(Verifier::from_file).transpose()?;
        let cache = cache_dir.map(|d| d.join("oci"));
        Ok(Source {
            kind,
            verifier,
            max_component: max_component_mib.saturating_mul(1 << 20),
            cache,
            poll: Duration::from_millis(poll_interval_ms),
        })
    }

    /// How often to ask the registry for the tag's digest: for a tag with polling on only.
    pub fn poll_interval(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Oci(r) if r.pinned_digest().is_none() && !self.poll.is_zero() => Some(self.poll),
            _ => None,
        }
    }

    /// The file a path source reads (the watcher stats it and its detached signature).
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Path(p) => Some(p),
            Kind::Oci(_) => None,
        }
    }

    /// The digest the tag names now (polling).
    pub async fn resolve(&self) -> Result<Option<String>, SourceError> {
        match &self.kind {
            Kind::Path(_) => Ok(None),
            Kind::Oci(r) => r.resolve().await.map(Some),
        }
    }

    /// The newest version the source offers, verified. For an OCI source whose registry cannot be
    /// reached: the version last pulled for the reference, from the cache (re-verified).
    pub async fn fetch(&self) -> Result<Verified, SourceError> {
        match &self.kind {
            Kind::Path(path) => self.fetch_file(path).await,
            Kind::Oci(r) => match self.pull(r).await {
                Err(e @ SourceError::Registry { unreachable: true, .. }) if self.cache.is_some() => {
                    self.last_pulled(r, e).await
                }
                other => other,
            },
        }
    }

    async fn fetch_file(&self, path: &Path) -> Result<Verified, SourceError> {
        let bytes = read_file(path, Bound::component("the file", self.max_component)).await?;
        let verified_by = match &self.verifier {
            None => None,
            Some(v) => {
                let sig_path = signature::detached_signature_path(path);
                let refused = |error| SourceError::Signature { reference: path.display().to_string(), error };
                let bound = Bound { limit: MAX_SMALL_BLOB, what: "the detached signature", by: "a signature may have" };
                let sig = match read_file(&sig_path, bound).await {
                    Ok(sig) => sig,
                    Err(SourceError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                        return Err(refused(SignatureError::Missing(format!(
                            "no detached signature {} (write it with `vkhost plugin sign`)",
                            sig_path.display()
                        ))));
                    }
                    Err(e) => return Err(e),
                };
                let sig = String::from_utf8_lossy(&sig);
                v.verify_blob(&bytes, &sig).map_err(refused)?;
                Some(v.describe())
            }
        };
        let display = path.display().to_string();
        Ok(Verified {
            bytes: bytes.into(),
            provenance: Provenance {
                source: display.clone(),
                digest: None,
                pinned: display,
                verified_by,
                offline: false,
            },
        })
    }

    async fn pull(&self, r: &OciRef) -> Result<Verified, SourceError> {
        let digest = r.resolve().await?;
        // A version pulled before is not downloaded again (a restart, a tag moved back).
        let cached = match &self.cache {
            Some(dir) => read_cached(dir, &digest, self.max_component).await,
            None => None,
        };
        let (bytes, signatures) = match cached {
            Some((bytes, sigs)) if self.verifier.is_none() || !sigs.is_empty() => (bytes, sigs),
            _ => {
                let bytes = r.pull(&digest, Bound::component("its component layer", self.max_component)).await?;
                let sigs = if self.verifier.is_some() { r.signatures(&digest).await? } else { Vec::new() };
                (bytes, sigs)
            }
        };
        let verified_by = self.verify(r, &digest, &signatures)?;
        if let Some(dir) = &self.cache
            && let Err(e) = write_cached(dir, &r.display(), &digest, &bytes, &signatures)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not keep the pulled plugin for offline starts");
        }
        Ok(Verified::pulled(r, digest, bytes, verified_by, false))
    }

    fn verify(&self, r: &OciRef, digest: &str, signatures: &[CosignSignature]) -> Result<Option<String>, SourceError> {
        let Some(v) = &self.verifier else { return Ok(None) };
        v.verify_cosign(digest, signatures).map_err(|error| {
            let error = match error {
                SignatureError::Missing(_) if signatures.is_empty() => SignatureError::Missing(format!(
                    "no cosign signature at {}:{} (sign with `vkhost plugin push --key` or `cosign sign --key`)",
                    r.repository(),
                    oci::signature_tag(digest)
                )),
                other => other,
            };
            SourceError::Signature { reference: r.pinned(digest), error }
        })?;
        Ok(Some(v.describe()))
    }

    async fn last_pulled(&self, r: &OciRef, error: SourceError) -> Result<Verified, SourceError> {
        let dir = self.cache.as_deref().expect("called with a cache");
        let offline = |error| SourceError::Offline {
            reference: r.display(),
            error: Box::new(error),
            cache: dir.display().to_string(),
        };
        let digest = match r.pinned_digest() {
            Some(d) => Some(d.to_string()),
            None => std::fs::read_to_string(ref_path(dir, &r.display())).ok().map(|d| d.trim().to_string()),
        };
        let Some(digest) = digest.filter(|d| oci::is_sha256_digest(d)) else { return Err(offline(error)) };
        let Some((bytes, signatures)) = read_cached(dir, &digest, self.max_component).await else {
            return Err(offline(error));
        };
        let verified_by = self.verify(r, &digest, &signatures)?;
        tracing::warn!(
            source = %r.display(), %digest, %error,
            "registry unreachable: starting the plugin version last pulled, from the cache"
        );
        Ok(Verified::pulled(r, digest, bytes, verified_by, true))
    }
}

/// The watcher's memory of a polled tag: a digest that was refused is not tried again (no Event
/// every interval for the same unsigned push) until the tag moves on, and an unreachable
/// registry is logged once, not at every poll.
#[derive(Debug, Default)]
pub(crate) struct TagPoll {
    /// The digest being tried, then the one refused.
    trying: Option<String>,
    refused: Option<String>,
    unreachable: bool,
}

impl TagPoll {
    /// Whether the tag names a digest other than the active and the refused one.
    pub(crate) async fn moved(&mut self, source: &Source, active: Option<Provenance>) -> bool {
        let digest = match source.resolve().await {
            Ok(Some(digest)) => digest,
            Ok(None) => return false,
            Err(e) => {
                if !self.unreachable {
                    tracing::warn!(error = %e, "cannot ask the registry for the plugin's tag; the running version stays");
                }
                self.unreachable = true;
                return false;
            }
        };
        if self.unreachable {
            tracing::info!(%digest, "the registry answers again");
            self.unreachable = false;
        }
        let active = active.and_then(|p| p.digest);
        if active.as_deref() == Some(digest.as_str()) || self.refused.as_deref() == Some(digest.as_str()) {
            return false;
        }
        tracing::info!(from = ?active, to = %digest, "the plugin's tag moved");
        self.trying = Some(digest);
        true
    }

    /// Records how the reload `moved` asked for went.
    pub(crate) fn settle(&mut self, ok: bool) {
        let tried = self.trying.take();
        self.refused = if ok { None } else { tried };
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn ref_path(dir: &Path, reference: &str) -> PathBuf {
    dir.join("refs").join(&crate::plugin::cache::sha256_hex(reference.as_bytes())[..32])
}

/// The component and signatures kept for `digest`, if the cache has them intact (and within
/// `max_component` bytes).
async fn read_cached(dir: &Path, digest: &str, max_component: u64) -> Option<(Vec<u8>, Vec<CosignSignature>)> {
    if crate::plugin::cache::private_dir(dir).is_err() {
        return None;
    }
    let hex = hex_of(digest);
    let bytes =
        read_file(&dir.join(format!("{hex}.wasm")), Bound::component("the cached copy", max_component)).await.ok()?;
    // The payloads (at most MAX_SMALL_BLOB in all) in base64, in JSON.
    let bound = Bound { limit: 2 * MAX_SMALL_BLOB, what: "its cached signatures", by: "signatures may have" };
    let sigs = match read_file(&dir.join(format!("{hex}.sig.json")), bound).await {
        Ok(raw) => serde_json::from_slice(&raw).ok()?,
        Err(_) => Vec::new(),
    };
    Some((bytes, sigs))
}

/// Keeps a pulled artifact by digest and records it as the reference's last pull.
fn write_cached(
    dir: &Path,
    reference: &str,
    digest: &str,
    bytes: &[u8],
    signatures: &[CosignSignature],
) -> Result<(), String> {
    crate::plugin::cache::private_dir(dir)?;
    crate::plugin::cache::private_dir(&dir.join("refs"))?;
    let hex = hex_of(digest);
    let write = |name: PathBuf, data: &[u8]| -> Result<(), String> {
        let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), rand::random::<u64>()));
        std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &name)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: {e}", name.display())
        })
    };
    let wasm = dir.join(format!("{hex}.wasm"));
    if !wasm.is_file() {
        write(wasm, bytes)?;
    }
    if !signatures.is_empty() {
        write(dir.join(format!("{hex}.sig.json")), &serde_json::to_vec(signatures).expect("json"))?;
    }
    write(ref_path(dir, reference), digest.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::settings::PluginSettings;

    #[test]
    fn exactly_one_of_path_and_source_is_accepted() {
        let mut s = PluginSettings::new("cube.wasm");
        assert!(s.source().unwrap().path().is_some());
        s.source = Some("oci://127.0.0.1:5000/vk/cube:1".into());
        assert!(matches!(s.source(), Err(SourceError::PathOrSource)));
        s.path = PathBuf::new();
        let source = s.source().unwrap();
        assert_eq!(source.poll_interval(), Some(Duration::from_millis(30_000)));
        s.poll_interval_ms = 0;
        assert_eq!(s.source().unwrap().poll_interval(), None);
        s.source = None;
        assert!(matches!(s.source(), Err(SourceError::PathOrSource)));
    }

    #[test]
    fn the_component_bound_is_256_mib_unless_configured() {
        let s: PluginSettings = toml::from_str(r#"path = "c.wasm""#).unwrap();
        assert_eq!(s.source().unwrap().max_component, 256 << 20);
        let s: PluginSettings = toml::from_str("path = \"c.wasm\"\nmax_component_mib = 8\n").unwrap();
        assert_eq!(s.source().unwrap().max_component, 8 << 20);
    }

    #[tokio::test]
    async fn a_file_over_its_bound_is_refused_by_its_size() {
        let dir = std::env::temp_dir().join(format!("vkhost-source-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.wasm");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        let bound = |limit| Bound::component("the file", limit);
        assert_eq!(read_file(&path, bound(100)).await.unwrap().len(), 100);
        let err = read_file(&path, bound(99)).await.unwrap_err();
        assert!(matches!(err, SourceError::TooLarge { size: Some(100), limit: 99, .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "plugin {} refused: the file is 100 bytes, more than the 99 bytes [plugin] max_component_mib allows",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
