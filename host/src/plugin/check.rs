//! `vkhost plugin check`: everything a load does (the source's size and signature checks, contract,
//! compile, typecheck, metadata, config validation) on one file or OCI artifact, through the
//! daemon's own source (`PluginSettings::source`), outside any daemon, with a report an author can
//! read.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::plugin::error::LoadError;
use crate::plugin::loaded::{self, Compile, LoadReport, host_contracts};
use crate::plugin::runtime::PluginRuntime;
use crate::plugin::settings::PluginSettings;
use crate::plugin::v0_2_0::PluginInfo;

/// What `check` found about a plugin that loaded.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub info: PluginInfo,
    pub load: LoadReport,
    pub host_contracts: Vec<String>,
    /// `None` when no config was given.
    pub smoke: Option<SmokeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmokeResult {
    pub node: String,
    /// The plugin's normalised config, credentials replaced by `<redacted>` (see [`redact`]).
    pub normalized: String,
    pub took_ms: f64,
}

/// Loads `path` as the daemon would and, with a config, validates it as `node`'s config. A file
/// that is not a component, targets another contract, traps, or rejects the config is an error.
pub async fn check(path: &Path, config: Option<serde_json::Value>, node: &str) -> Result<CheckReport, LoadError> {
    check_with(PluginSettings::new(path), config, node).await
}

/// `check` with explicit settings (limits, cache directory).
pub async fn check_with(
    settings: PluginSettings,
    config: Option<serde_json::Value>,
    node: &str,
) -> Result<CheckReport, LoadError> {
    let rt = PluginRuntime::new()?;
    // The compile time shown is Cranelift's: the build that serves.
    let component = settings.source()?.fetch().await?;
    let loaded = loaded::load(&rt, &settings, component, Compile::Optimized).await?;
    let smoke = match config {
        None => None,
        Some(config) => {
            let config = config.to_string();
            let started = Instant::now();
            let normalized =
                loaded.validate_config(node, &config).await.map_err(|source| LoadError::ConfigRejected {
                    plugin: loaded.info.name.clone(),
                    version: loaded.info.version.clone(),
                    node: node.to_owned(),
                    source,
                })?;
            Some(SmokeResult {
                node: node.to_owned(),
                normalized: redact(&normalized),
                took_ms: started.elapsed().as_secs_f64() * 1e3,
            })
        }
    };
    Ok(CheckReport {
        info: loaded.info.clone(),
        load: loaded.report.clone(),
        host_contracts: host_contracts().iter().map(ToString::to_string).collect(),
        smoke,
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.load;
        writeln!(f, "plugin      {} {}", self.info.name, self.info.version)?;
        writeln!(f, "            {}", self.info.description)?;
        // A pulled artifact is named by the digest it was pulled at (`l.path` is that reference).
        let pulled = l.source.as_ref().filter(|s| s.digest.is_some());
        let label = if pulled.is_some() { "artifact" } else { "file" };
        writeln!(f, "{label:<12}{} ({} bytes, sha256 {})", l.path.display(), l.size_bytes, &l.sha256[..16])?;
        if let Some(s) = pulled {
            if s.offline {
                writeln!(
                    f,
                    "            the registry cannot be reached: the copy of {} last pulled, from the cache",
                    s.source
                )?;
            } else if s.source != s.pinned {
                writeln!(f, "            pulled from {}", s.source)?;
            }
        }
        match l.source.as_ref().and_then(|s| s.verified_by.as_deref()) {
            Some(key) => writeln!(f, "signature   verified with {key}")?,
            None => writeln!(f, "signature   not checked (pass --public-key KEY.pub)")?,
        }
        writeln!(
            f,
            "contract    vk:provider@{} (declared {}; host implements {})",
            l.contract,
            self.info.contract_version,
            self.host_contracts.join(", ")
        )?;
        if l.contract.starts_with("0.1.") {
            writeln!(
                f,
                "            runs through the 0.1 adapter: plan, finalize and port-forward answer unsupported; update is not told what changed"
            )?;
        }
        let origin = match l.origin {
            crate::plugin::cache::Origin::Compiled => "compiled",
            crate::plugin::cache::Origin::Cache => "from cache",
            crate::plugin::cache::Origin::Baseline => "baseline compiler",
        };
        writeln!(f, "compile     {:.1} ms ({origin}); load total {:.1} ms", l.compile_ms, l.total_ms)?;
        match &self.smoke {
            None => writeln!(f, "config      not checked (pass --config FILE.toml)")?,
            Some(s) => {
                writeln!(f, "config      accepted for node {} in {:.1} ms: {}", s.node, s.took_ms, s.normalized)?
            }
        }
        write!(f, "result      OK")
    }
}

/// Whether a config key names a credential, whatever the plugin calls it: `private_key`,
/// `password`, `api_token`, `client_secret`, `kubeconfig`, `auth`…
fn is_credential(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("key")
        || key == "auth"
        || ["secret", "password", "passwd", "token", "credential", "kubeconfig", "cert", "private"]
            .iter()
            .any(|word| key.contains(word))
}

/// The plugin's normalised config for printing: every credential's value (at any depth) becomes
/// `"<redacted>"`. A config that is not JSON is not shown at all: it could be anything.
pub fn redact(normalized: &str) -> String {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if is_credential(k) && !v.is_null() {
                        *v = serde_json::Value::String("<redacted>".into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(normalized) {
        Ok(mut v) => {
            walk(&mut v);
            v.to_string()
        }
        Err(_) => format!("<{} bytes, not JSON: not shown>", normalized.len()),
    }
}

/// Reads a node's provider config for `check`: JSON if the file ends in `.json`, else TOML (the
/// table that goes under `[nodes.provider]` in the daemon's config).
pub fn read_config_file(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()));
    }
    let value: toml::Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::to_value(value).map_err(|e| format!("{}: {e}", path.display()))
}

/// Used by the CLI to say which plugin (a file or a reference, as given) a failure concerns when
/// the error itself does not.
pub fn describe_failure(plugin: &str, error: &LoadError) -> String {
    match error {
        LoadError::Settings(_) | LoadError::Runtime(_) => format!("{plugin}: {error}"),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_normalised_config_are_redacted_at_any_depth() {
        let normalized = serde_json::json!({
            "region": "cn-bj2", "public_key": "PUBKEY-1", "private_key": "PRIVKEY-2", "kubeconfig": "KCFG-3",
            "registries": [{"host": "h", "password": "PW-4"}], "db": {"api_token": "TOK-5", "Client_Secret": "CS-6"},
            "max_pods": 200,
        })
        .to_string();
        let shown = redact(&normalized);
        for secret in ["PUBKEY-1", "PRIVKEY-2", "KCFG-3", "PW-4", "TOK-5", "CS-6"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["private_key"], "<redacted>");
        assert_eq!((v["region"].as_str(), v["max_pods"].as_u64()), (Some("cn-bj2"), Some(200)));
        assert!(!redact("private_key = hunter2").contains("hunter2"));
    }
}
