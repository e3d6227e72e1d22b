//! Compiled components on disk, so a restart or a reload of an unchanged file skips Cranelift.
//! Entries are keyed by the SHA-256 of the component bytes and the engine's compatibility hash;
//! only files this cache wrote are ever deserialized (deserializing is trusted native code).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Origin {
    /// Compiled by Cranelift (and written to the cache).
    Compiled,
    /// Read from the cache (a Cranelift build).
    Cache,
    /// Compiled by the baseline compiler (Winch), not cached: a stand-in until the Cranelift
    /// build is ready.
    Baseline,
}

#[derive(Debug, Clone)]
pub struct Compiled {
    pub component: Component,
    pub origin: Origin,
    pub took: Duration,
    pub sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    // DefaultHasher's output is stable for one build of the host, which is all a cache key for
    // this engine's artefacts needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn entry_path(dir: &Path, sha256: &str, engine: &Engine) -> PathBuf {
    dir.join(format!("{sha256}-{}.cwasm", engine_key(engine)))
}

/// Returns the compiled component, from the cache when possible, else compiled by `baseline`
/// when given (falling back to `engine` if the baseline compiler cannot take the component),
/// else by `engine`, the optimizing one. Blocking: call it from `spawn_blocking`. A cache that
/// cannot be read or written only costs a compile.
pub fn load_or_compile(
    engine: &Engine,
    baseline: Option<&Engine>,
    bytes: &[u8],
    dir: Option<&Path>,
) -> Result<Compiled, String> {
    let started = Instant::now();
    let sha256 = sha256_hex(bytes);
    if let Some(dir) = dir {
        let path = entry_path(dir, &sha256, engine);
        if path.is_file() {
            // SAFETY: the file name carries the hash of the source bytes and of the engine's
            // settings, and only `store` below writes into this directory (created 0700).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    return Ok(Compiled { component, origin: Origin::Cache, took: started.elapsed(), sha256 });
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component"),
            }
        }
    }
    if let Some(baseline) = baseline {
        match Component::new(baseline, bytes) {
            Ok(component) => {
                return Ok(Compiled { component, origin: Origin::Baseline, took: started.elapsed(), sha256 });
            }
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), "baseline compiler refused the component; using Cranelift")
            }
        }
    }
    let component = Component::new(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Some(dir) = dir
        && let Err(e) = store(dir, &entry_path(dir, &sha256, engine), &component)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not cache the compiled component");
    }
    Ok(Compiled { component, origin: Origin::Compiled, took: started.elapsed(), sha256 })
}

fn store(dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let blob = component.serialize().map_err(std::io::Error::other)?;
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), rand::random::<u64>()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&blob)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
