//! The operator's settings for one provider plugin: the `[plugin]` table of the daemon's config.
//! Every limit has a default so the smallest valid table is `path = "..."` (or `source = "oci://..."`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::imports::budget::BudgetSettings;

use crate::plugin::rollout::RolloutSettings;
use crate::plugin::source::{Source, SourceError};

/// How to load and confine one provider plugin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// The component file (`cube.wasm`); watched for hot reload. Empty when `source` is set.
    #[serde(default)]
    pub path: PathBuf,
    /// The component as an OCI artifact instead of a file: `oci://registry/repository:tag` (the
    /// tag is polled and a new digest hot-reloaded) or `oci://registry/repository@sha256:<hex>`
    /// (pinned). Plain HTTP for loopback registries only.
    #[serde(default)]
    pub source: Option<String>,
    /// How often an OCI tag is asked for its digest, in milliseconds; 0 never asks (a reload
    /// then comes from `POST /plugin/reload`).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A PEM ECDSA P-256 public key (cosign's): when set, every version must be signed by it (an
    /// OCI artifact with cosign's signature tag, a file with a detached `<path>.sig`) or it is
    /// refused, and the running version stays.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// The largest component accepted, MiB: a file or OCI layer over it is refused before it is
    /// read (a registry cannot make the daemon allocate what it names), and the running version
    /// stays.
    #[serde(default = "default_max_component_mib")]
    pub max_component_mib: u64,
    /// URL prefixes the plugin may reach through the `http` import and hand back as stream targets,
    /// e.g. `https://api.example.com/` (scheme, host, port and path prefix are all compared).
    #[serde(default)]
    pub allowed_urls: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// The `[plugin.egress]` table: the plugin's cloud-API budget (none by default).
    #[serde(default)]
    pub egress: BudgetSettings,
    /// Where compiled components are cached; `$XDG_CACHE_HOME/vkcube/components` by default. Used
    /// only when owned by the daemon's user and not group/other-writable (see `cache`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Compile a file the cache has not seen with the baseline compiler (Winch) first, so a load
    /// or hot reload takes a fraction of the time; the Cranelift build replaces it in the
    /// background. Off: every new file waits for Cranelift.
    #[serde(default = "yes")]
    pub baseline_compile: bool,
    /// How a new version reaches the nodes (`[plugin.rollout]`); absent: every node at once.
    #[serde(default)]
    pub rollout: Option<RolloutSettings>,
}

fn yes() -> bool {
    true
}

fn default_poll_interval_ms() -> u64 {
    30_000
}

fn default_max_component_mib() -> u64 {
    crate::plugin::source::MAX_COMPONENT_MIB
}

/// Resource limits applied to every call, each in a fresh instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory a single call may grow to.
    pub memory_mib: u64,
    /// Time the guest may spend running its own code in one call (host I/O does not count).
    pub cpu_deadline_ms: u64,
    /// Wall-clock bound of one call, host I/O included; also the ceiling of each `http.send`.
    pub call_timeout_ms: u64,
    /// Host memory the plugin may hold in its `kv` store: key and value bytes plus 160 per entry.
    pub kv_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: 64, cpu_deadline_ms: 1_000, call_timeout_ms: 10_000, kv_max_bytes: 16 << 20 }
    }
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
    pub fn cpu_deadline(&self) -> Duration {
        Duration::from_millis(self.cpu_deadline_ms)
    }
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }
}

impl PluginSettings {
    /// Settings with default limits, no egress and the default cache: what `vkhost plugin check`
    /// and tests start from.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PluginSettings {
            path: path.into(),
            source: None,
            poll_interval_ms: default_poll_interval_ms(),
            public_key: None,
            max_component_mib: default_max_component_mib(),
            allowed_urls: Vec::new(),
            limits: Limits::default(),
            egress: BudgetSettings::default(),
            cache_dir: None,
            baseline_compile: true,
            rollout: None,
        }
    }

    /// Where this plugin's versions come from (`path` or `source`, the key, the cache).
    pub fn source(&self) -> Result<Source, SourceError> {
        Source::new(
            &self.path,
            self.source.as_deref(),
            self.public_key.as_deref(),
            self.effective_cache_dir(),
            self.poll_interval_ms,
            self.max_component_mib,
        )
    }

    /// The cache directory in effect: the configured one, else the XDG cache home.
    pub fn effective_cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("vkcube").join("components"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_table_gets_default_limits() {
        let s: PluginSettings = toml::from_str(r#"path = "/opt/cube.wasm""#).unwrap();
        assert_eq!(s.limits, Limits::default());
        assert!(s.allowed_urls.is_empty());
    }

    #[test]
    fn partial_limits_keep_other_defaults() {
        let s: PluginSettings = toml::from_str(
            "path = \"p.wasm\"\nallowed_urls = [\"https://api.example.com/\"]\n[limits]\nmemory_mib = 32\n",
        )
        .unwrap();
        assert_eq!(s.limits.memory_mib, 32);
        assert_eq!(s.limits.cpu_deadline_ms, Limits::default().cpu_deadline_ms);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<PluginSettings>("path = \"p.wasm\"\nallowed_url = []\n").unwrap_err();
        assert!(err.to_string().contains("allowed_url"), "{err}");
        let err = toml::from_str::<PluginSettings>("path = \"p\"\n[limits]\nmemory = 1\n").unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }
}
