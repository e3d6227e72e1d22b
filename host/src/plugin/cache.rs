//! Compiled components on disk, so a restart or a reload of an unchanged file skips Cranelift.
//! Entries are keyed by the SHA-256 of the component bytes and the engine's compatibility hash;
//! only files this cache wrote are ever deserialized (deserializing is trusted native code), so
//! the directory is used only when nobody else can write into it: owned by the daemon's user and
//! not writable by group or others. Otherwise components are compiled in memory.

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
    let dir = dir.and_then(|dir| match private_dir(dir) {
        Ok(()) => Some(dir),
        Err(why) => {
            tracing::warn!(
                dir = %dir.display(),
                "not using the compiled-component cache: {why}; compiling in memory (fix: \
                 `chown <daemon user> DIR && chmod 700 DIR`, or set plugin.cache_dir to a private directory)"
            );
            None
        }
    });
    if let Some(dir) = dir {
        let path = entry_path(dir, &sha256, engine);
        if path.is_file()
            && let Err(why) = owned_by_us(&path)
        {
            tracing::warn!(path = %path.display(), "ignoring cached component: {why}");
        } else if path.is_file() {
            // SAFETY: the file name carries the hash of the source bytes and of the engine's
            // settings, and only `store` below writes into this directory, which `private_dir`
            // checked nobody else can write to; the file itself is ours and only ours to write.
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

/// Creates `dir` (0700) if missing, then checks nobody but this process's user can write into
/// it; the reason when someone can.
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| format!("cannot create it: {e}"))?;
    owned_by_us(dir)
}

/// `path` (followed if a symlink) is owned by the effective user and not group- or
/// other-writable.
#[cfg(unix)]
fn owned_by_us(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat it: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("it is owned by uid {}, not by the daemon's uid {me}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!("its mode is {mode:o}: group or others may write to it"));
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_by_us(_: &Path) -> Result<(), String> {
    Err("ownership cannot be checked on this platform".into())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const WAT: &str = "(component)";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vkhost-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_new_cache_directory_is_private_and_serves_the_second_load() {
        let engine = Engine::default();
        let bytes = wat_bytes();
        let dir = scratch("private").join("components");
        assert_eq!(load_or_compile(&engine, None, &bytes, Some(&dir)).unwrap().origin, Origin::Compiled);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(load_or_compile(&engine, None, &bytes, Some(&dir)).unwrap().origin, Origin::Cache);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_world_writable_cache_directory_is_neither_read_nor_written() {
        let engine = Engine::default();
        let bytes = wat_bytes();
        let dir = scratch("shared");
        std::fs::create_dir_all(&dir).unwrap();
        // Someone else planted an entry where the cache would look.
        let planted = entry_path(&dir, &sha256_hex(&bytes), &engine);
        let component = Component::new(&engine, &bytes).unwrap();
        std::fs::write(&planted, component.serialize().unwrap()).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let before: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();

        let compiled = load_or_compile(&engine, None, &bytes, Some(&dir)).unwrap();
        assert_eq!(compiled.origin, Origin::Compiled, "the planted file was deserialized");
        let after: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "the cache wrote into a directory others can write");
        assert!(private_dir(&dir).unwrap_err().contains("777"));

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(load_or_compile(&engine, None, &bytes, Some(&dir)).unwrap().origin, Origin::Cache);
        // A group-writable entry in a private directory is not trusted either.
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(load_or_compile(&engine, None, &bytes, Some(&dir)).unwrap().origin, Origin::Compiled);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The smallest component, as text (wasmtime's `wat` feature compiles it).
    fn wat_bytes() -> Vec<u8> {
        WAT.as_bytes().to_vec()
    }
}
