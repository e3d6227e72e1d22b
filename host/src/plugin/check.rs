//! `vkhost plugin check`: everything a load does (contract, compile, typecheck, metadata, config
//! validation) on one file, outside any daemon, with a report an author can read.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::plugin::error::LoadError;
use crate::plugin::loaded::{self, Compile, LoadReport, host_contracts};
use crate::plugin::runtime::PluginRuntime;
use crate::plugin::settings::PluginSettings;
use crate::plugin::since_v0_1_0::PluginInfo;

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
    /// The plugin's normalised config.
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
    let loaded = loaded::load(&rt, &settings, Compile::Optimized).await?;
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
            Some(SmokeResult { node: node.to_owned(), normalized, took_ms: started.elapsed().as_secs_f64() * 1e3 })
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
        writeln!(f, "file        {} ({} bytes, sha256 {})", l.path.display(), l.size_bytes, &l.sha256[..16])?;
        writeln!(
            f,
            "contract    vk:provider@{} (declared {}; host implements {})",
            l.contract,
            self.info.contract_version,
            self.host_contracts.join(", ")
        )?;
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

/// Used by the CLI to say which file a failure concerns when the error itself does not.
pub fn describe_failure(path: &Path, error: &LoadError) -> String {
    match error {
        LoadError::Settings(_) | LoadError::Runtime(_) => format!("{}: {error}", path.display()),
        _ => error.to_string(),
    }
}
