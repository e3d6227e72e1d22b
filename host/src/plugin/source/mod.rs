//! Where a plugin version comes from, and why it may be trusted: a file (`path`) or an OCI
//! artifact (`source = "oci://…"`), each checked against the configured public key before it
//! reaches the loader. `Source::fetch` yields a verified component (bytes and provenance); the
//! handle compiles and swaps it in through its one reload path. Pulled artifacts are kept by
//! digest in the cache directory, so a daemon starts when the registry is down.

pub mod oci;
pub mod publish;
pub mod signature;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

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
}

impl SourceError {
    /// Whether the component was refused for its signature (missing or wrong).
    pub fn is_signature(&self) -> bool {
        matches!(self, SourceError::Signature { .. })
    }
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
    /// Where pulled artifacts are kept by digest (`<cache_dir>/oci`), when the cache is usable.
    cache: Option<PathBuf>,
    poll: Duration,
}

#[derive(Debug)]
enum Kind {
    Path(PathBuf),
    Oci(OciRef),
}

impl Source {
    /// A source from `[plugin]`: `path` (empty: unset) or `source`, exactly one; the key versions
    /// must be signed by; the cache dir (pulled versions go under `oci/`); the tag poll interval.
    /// `PluginSettings::source` passes its fields.
    pub fn new(
        path: &Path,
        source: Option<&str>,
        public_key: Option<&Path>,
        cache_dir: Option<PathBuf>,
        poll_interval_ms: u64,
    ) -> Result<Self, SourceError> {
        let kind = match (source, path.as_os_str().is_empty()) {
            (Some(source), true) => Kind::Oci(OciRef::parse(source)?),
            (None, false) => Kind::Path(path.to_path_buf()),
            _ => return Err(SourceError::PathOrSource),
        };
        let verifier = public_key.map(Verifier::from_file).transpose()?;
        let cache = cache_dir.map(|d| d.join("oci"));
        Ok(Source { kind, verifier, cache, poll: Duration::from_millis(poll_interval_ms) })
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
        let bytes = tokio::fs::read(path).await.map_err(|source| SourceError::Io { path: path.into(), source })?;
        let verified_by = match &self.verifier {
            None => None,
            Some(v) => {
                let sig_path = signature::detached_signature_path(path);
                let refused = |error| SourceError::Signature { reference: path.display().to_string(), error };
                let sig = match tokio::fs::read_to_string(&sig_path).await {
                    Ok(sig) => sig,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(refused(SignatureError::Missing(format!(
                            "no detached signature {} (write it with `vkhost plugin sign`)",
                            sig_path.display()
                        ))));
                    }
                    Err(source) => return Err(SourceError::Io { path: sig_path, source }),
                };
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
            Some(dir) => read_cached(dir, &digest).await,
            None => None,
        };
        let (bytes, signatures) = match cached {
            Some((bytes, sigs)) if self.verifier.is_none() || !sigs.is_empty() => (bytes, sigs),
            _ => {
                let bytes = r.pull(&digest).await?;
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
        let Some((bytes, signatures)) = read_cached(dir, &digest).await else { return Err(offline(error)) };
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

/// The component and signatures kept for `digest`, if the cache has them intact.
async fn read_cached(dir: &Path, digest: &str) -> Option<(Vec<u8>, Vec<CosignSignature>)> {
    if crate::plugin::cache::private_dir(dir).is_err() {
        return None;
    }
    let hex = hex_of(digest);
    let bytes = tokio::fs::read(dir.join(format!("{hex}.wasm"))).await.ok()?;
    let sigs = match tokio::fs::read(dir.join(format!("{hex}.sig.json"))).await {
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
}
