//! The daemon's TOML configuration: the cluster, the virtual nodes, the plugin and its limits, the
//! kubelet API, client rate limits, high availability and logging. `config.example.toml` documents
//! every key; a wrong key or value fails at load with the key and what is accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::apiclient::ApiLimits;
use crate::kubelet::KubeletConfig;
use crate::plugin::PluginSettings;

/// Most virtual nodes one cluster may have (guide: at most 8).
pub const MAX_VIRTUAL_NODES: usize = 8;
/// Most pods one virtual node may hold (guide: at most 200).
pub const MAX_PODS_PER_NODE: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
    #[error("config: secret {key}: {message}")]
    Secret { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The cluster id, `uk8s-` and 8 lowercase letters or digits; part of every node name.
    pub cluster_id: String,
    /// Kubeconfig to use; in-cluster config or `$KUBECONFIG` when absent.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    pub plugin: PluginSettings,
    #[serde(default)]
    pub kubelet: KubeletConfig,
    #[serde(default)]
    pub api: ApiLimits,
    #[serde(default)]
    pub ha: HaSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub pods: PodSettings,
    #[serde(rename = "nodes")]
    pub nodes: Vec<NodeSettings>,
}

/// One virtual node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// A stable key for this node within the daemon (letters, digits, `-`): the node is found
    /// again by it across restarts, so its generated name never changes.
    pub id: String,
    /// Extra labels (the node always has `type=virtual-kubelet`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Value of the `virtual-kubelet.io/provider` taint; defaults to the plugin's name.
    #[serde(default)]
    pub taint_value: Option<String>,
    /// Pod capacity of the node, 1..=200.
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// The provider's own settings, passed to the plugin as JSON.
    #[serde(default)]
    pub provider: toml::Table,
    /// Values injected into `provider` from the environment or files, never written in the
    /// config itself: `private_key = { env = "CUBE_PRIVATE_KEY" }` or `{ file = "/run/key" }`.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

fn default_max_pods() -> u32 {
    MAX_PODS_PER_NODE
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// Pod controller tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSettings {
    /// Pods synced at once per node (each pod is always synced serially).
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// Seconds between listings of the provider's instances (status news for the controller,
    /// the orphan sweep's input); every 250 ms while an instance made in the last minute is starting
    /// (every second while the plugin's calls wait for its `[plugin.egress]` budget).
    #[serde(default = "default_status_sync")]
    pub status_sync_seconds: u64,
    /// Seconds between orphan sweeps (instances no pod owns are deleted: they cost money).
    #[serde(default = "default_orphan_sweep")]
    pub orphan_sweep_seconds: u64,
    /// Longest wait between retries of a transiently failing pod.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u64,
}

fn default_workers() -> u16 {
    64
}
fn default_status_sync() -> u64 {
    10
}
fn default_orphan_sweep() -> u64 {
    60
}
fn default_max_backoff() -> u64 {
    60
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            workers: default_workers(),
            status_sync_seconds: default_status_sync(),
            orphan_sweep_seconds: default_orphan_sweep(),
            max_backoff_seconds: default_max_backoff(),
        }
    }
}

/// High availability: replicas of the daemon elect one actor per node through a Lease.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSettings {
    /// Namespace of the election Leases.
    #[serde(default = "default_ha_namespace")]
    pub namespace: String,
    /// Seconds a leader's claim lasts without renewal; a standby takes over after it.
    #[serde(default = "default_lease_seconds")]
    pub lease_duration_seconds: u32,
    /// This replica's identity; defaults to `$POD_NAME`, else hostname and process id.
    #[serde(default)]
    pub identity: Option<String>,
}

fn default_ha_namespace() -> String {
    "kube-node-lease".into()
}
fn default_lease_seconds() -> u32 {
    15
}

impl Default for HaSettings {
    fn default() -> Self {
        Self { namespace: default_ha_namespace(), lease_duration_seconds: default_lease_seconds(), identity: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `vkhost=debug,info`; `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_log_level() }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The admin/metrics HTTP endpoint (Prometheus `/metrics`, plugin reload).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// `host:port`; empty disables it. Loopback by default: `/metrics` and `GET /plugin` answer
    /// anyone who can reach the port.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// A file holding the bearer token `POST /plugin/reload` requires (at least 16 bytes). Without
    /// it, the mutating admin routes are disabled.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:10255".into()
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token_file: None }
    }
}

impl DaemonConfig {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: DaemonConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { path: path.into(), key: key.into(), message };
        if !is_cluster_id(&self.cluster_id) {
            return Err(invalid(
                "cluster_id",
                format!(
                    "is {:?}, but must be `uk8s-` followed by 8 lowercase letters or digits, e.g. uk8s-a1b2c3d4",
                    self.cluster_id
                ),
            ));
        }
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "no [[nodes]] given: configure at least one virtual node".into()));
        }
        if self.nodes.len() > MAX_VIRTUAL_NODES {
            return Err(invalid(
                "nodes",
                format!("{} nodes configured, but a cluster has at most {MAX_VIRTUAL_NODES}", self.nodes.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let key = |k: &str| format!("nodes[{i}].{k}");
            let id_ok = !node.id.is_empty()
                && node.id.len() <= 40
                && node.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !id_ok {
                return Err(invalid(
                    &key("id"),
                    format!("is {:?}, but must be 1-40 lowercase letters, digits or '-'", node.id),
                ));
            }
            if !seen.insert(node.id.clone()) {
                return Err(invalid(&key("id"), format!("{:?} is used by two nodes", node.id)));
            }
            if node.max_pods == 0 || node.max_pods > MAX_PODS_PER_NODE {
                return Err(invalid(
                    &key("max_pods"),
                    format!("is {}, but must be between 1 and {MAX_PODS_PER_NODE}", node.max_pods),
                ));
            }
            if let Some(value) = &node.taint_value
                && let Err(why) = check_label_value(value)
            {
                return Err(invalid(
                    &key("taint_value"),
                    format!(
                        "is {value:?}, but a taint value must be a valid Kubernetes label value ({why}): at most 63 characters, ASCII letters, digits, '-', '_' and '.', starting and ending with a letter or digit; Kubernetes refuses any other in taints and tolerations alike. Use e.g. {:?}, and the same value in the pods' tolerations",
                        suggest_label_value(value)
                    ),
                ));
            }
            for k in node.secrets.keys() {
                if node.provider.contains_key(k) {
                    return Err(invalid(
                        &key(&format!("secrets.{k}")),
                        "is also set in provider: give it in one place only".into(),
                    ));
                }
            }
        }
        if let Some(rollout) = &self.plugin.rollout {
            let ids: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
            rollout.check(&ids).map_err(|(key, message)| invalid(&key, message))?;
        }
        if self.plugin.max_component_mib == 0 {
            return Err(invalid(
                "plugin.max_component_mib",
                "is 0, which refuses every component: leave it out for the 256 MiB default".into(),
            ));
        }
        if self.api.qps == 0 || self.api.burst == 0 {
            return Err(invalid("api", "qps and burst must be at least 1".into()));
        }
        if self.api.node_cert_lifetime_seconds < 600 {
            return Err(invalid(
                "api.node_cert_lifetime_seconds",
                format!(
                    "is {}, but must be at least 600 (the shortest lifetime a CertificateSigningRequest may ask for)",
                    self.api.node_cert_lifetime_seconds
                ),
            ));
        }
        if self.ha.lease_duration_seconds < 5 {
            return Err(invalid("ha.lease_duration_seconds", "must be at least 5".into()));
        }
        Ok(())
    }
}

impl NodeSettings {
    /// The provider config as JSON, with secrets filled in from their sources.
    pub fn provider_json(&self) -> Result<serde_json::Value, ConfigError> {
        self.provider_json_with(|var| std::env::var(var).ok())
    }

    /// [`Self::provider_json`] with the environment lookup given, so tests never mutate the
    /// process environment (other threads read it).
    pub fn provider_json_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<serde_json::Value, ConfigError> {
        let mut table = self.provider.clone();
        for (key, source) in &self.secrets {
            let value = match source {
                SecretSource::Env(var) => env(var).ok_or_else(|| ConfigError::Secret {
                    key: key.clone(),
                    message: format!("environment variable {var} is not set"),
                })?,
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Secret {
                        key: key.clone(),
                        message: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_string(),
            };
            table.insert(key.clone(), toml::Value::String(value));
        }
        serde_json::to_value(&table).map_err(|e| ConfigError::Secret { key: "provider".into(), message: e.to_string() })
    }
}

/// Checks a Kubernetes label value (taint values follow the same rule); the error says what breaks it.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!("{} characters", value.len()));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        return Err(format!("{c:?} is not allowed"));
    }
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !edge(value.chars().next()) || !edge(value.chars().last()) {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A label value close to `value`: its allowed characters, or for a name in Chinese characters
/// (the guide's brand, 安联云) its reading in Latin letters.
pub fn suggest_label_value(value: &str) -> String {
    if value == "安联云" {
        return "anlianyun".into();
    }
    let kept: String = value.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(63).collect();
    let kept = kept.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if kept.is_empty() { "cube".into() } else { kept }
}

/// `uk8s-` followed by 8 lowercase letters or digits.
pub fn is_cluster_id(s: &str) -> bool {
    s.strip_prefix("uk8s-")
        .is_some_and(|rest| rest.len() == 8 && rest.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiclient::NodeCredentials;

    const MINIMAL: &str = r#"
cluster_id = "uk8s-a1b2c3d4"
[plugin]
path = "/tmp/example.wasm"
[[nodes]]
id = "bj"
"#;

    #[test]
    fn the_documented_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
        let c = DaemonConfig::load(&path).unwrap();
        assert_eq!(c.nodes[0].taint_value.as_deref(), Some("cube"));
        assert_eq!(c.nodes[0].provider["zone"].as_str(), Some("cn-bj2-05"));
        assert!(c.nodes[0].secrets.contains_key("private_key"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// The documented example with some lines' values replaced by anything, or lines dropped:
        /// parsed or refused with a message, never a panic.
        #[test]
        fn any_edit_of_the_example_config_parses_or_is_refused(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::option::of("\\PC{0,40}")),
                1..6,
            ),
        ) {
            let example = include_str!("../../config.example.toml");
            let mut lines: Vec<String> = example.lines().map(str::to_string).collect();
            for (at, value) in edits {
                let i = at.index(lines.len());
                match value {
                    Some(v) => {
                        let key = lines[i].split_once('=').map(|(k, _)| k.to_string()).unwrap_or_default();
                        lines[i] = format!("{key}= {v}");
                    }
                    None => { lines.remove(i); }
                }
            }
            if let Err(e) = DaemonConfig::parse(&lines.join("\n"), Path::new("t.toml")) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = DaemonConfig::parse(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(c.nodes[0].max_pods, 200);
        assert_eq!(c.api.qps, 500);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn rejects_cluster_id_of_the_wrong_shape_naming_the_key() {
        let text = MINIMAL.replace("uk8s-a1b2c3d4", "prod");
        let err = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("cluster_id") && err.contains("uk8s-"), "{err}");
    }

    #[test]
    fn rejects_more_than_200_pods_per_node() {
        let text = format!("{MINIMAL}max_pods = 201\n");
        let err = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("nodes[0].max_pods") && err.contains("200"), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_enum_values_naming_the_accepted_ones() {
        let err = DaemonConfig::parse(&format!("{MINIMAL}colour = 1\n"), Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let text = MINIMAL.replace("[plugin]", "[log]\nformat = \"xml\"\n[plugin]");
        let err = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("xml") && err.contains("json"), "{err}");
    }

    #[test]
    fn secrets_are_filled_from_the_environment_and_files() {
        let dir = std::env::temp_dir().join(format!("vkcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "s3cret\n").unwrap();
        let text = format!(
            "{MINIMAL}[nodes.provider]\nregion = \"cn-bj2\"\n[nodes.secrets]\npublic_key = {{ env = \"VKHOST_TEST_PUBLIC_KEY\" }}\nprivate_key = {{ file = \"{}\" }}\n",
            dir.join("key").display()
        );
        let c = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap();
        let env = |var: &str| (var == "VKHOST_TEST_PUBLIC_KEY").then(|| "pub".to_string());
        let json = c.nodes[0].provider_json_with(env);
        let _ = std::fs::remove_dir_all(&dir);
        let json = json.unwrap();
        assert_eq!(json["public_key"], "pub");
        assert_eq!(json["private_key"], "s3cret");
        assert_eq!(json["region"], "cn-bj2");
    }

    #[test]
    fn nodes_get_their_own_credentials_unless_told_to_share_the_daemons() {
        let c = DaemonConfig::parse(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(c.api.node_credentials, NodeCredentials::Csr);
        let shared = MINIMAL.replace("[plugin]", "[api]\nnode_credentials = \"shared\"\n[plugin]");
        assert_eq!(
            DaemonConfig::parse(&shared, Path::new("t.toml")).unwrap().api.node_credentials,
            NodeCredentials::Shared
        );
        let bad = MINIMAL.replace("[plugin]", "[api]\nnode_credentials = \"token\"\n[plugin]");
        let err = DaemonConfig::parse(&bad, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("csr") && err.contains("shared"), "{err}");
        let short = MINIMAL.replace("[plugin]", "[api]\nnode_cert_lifetime_seconds = 60\n[plugin]");
        let err = DaemonConfig::parse(&short, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("api.node_cert_lifetime_seconds") && err.contains("600"), "{err}");
    }

    #[test]
    fn a_taint_value_kubernetes_would_refuse_is_named_with_the_rule_and_a_suggestion() {
        for (value, suggestion) in [("安联云", "anlianyun"), ("-cube!", "cube"), ("云", "cube")] {
            let text = format!("{MINIMAL}taint_value = \"{value}\"\n");
            let err = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains("nodes[0].taint_value") && err.contains("valid Kubernetes label value"), "{err}");
            assert!(err.contains(&format!("e.g. {suggestion:?}")), "{err}");
        }
        let long = "a".repeat(64);
        assert!(DaemonConfig::parse(&format!("{MINIMAL}taint_value = \"{long}\"\n"), Path::new("t.toml")).is_err());
        for ok in ["cube", "anlianyun", "an-link.cloud_1", ""] {
            assert!(
                DaemonConfig::parse(&format!("{MINIMAL}taint_value = \"{ok}\"\n"), Path::new("t.toml")).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn a_rollout_naming_an_unknown_canary_node_is_refused_naming_the_key_and_the_ids() {
        let with = |canaries: &str| {
            MINIMAL.replace("[[nodes]]", &format!("[plugin.rollout]\ncanary_nodes = {canaries}\n[[nodes]]"))
        };
        let c = DaemonConfig::parse(&with("[\"bj\"]"), Path::new("t.toml")).unwrap();
        assert_eq!(c.plugin.rollout.unwrap().canary_nodes, ["bj"]);
        let err = DaemonConfig::parse(&with("[\"gz\"]"), Path::new("t.toml")).unwrap_err().to_string();
        assert!(
            err.contains("plugin.rollout.canary_nodes[0]") && err.contains("\"gz\"") && err.contains("\"bj\""),
            "{err}"
        );
    }

    #[test]
    fn a_component_bound_of_zero_is_refused_at_load_naming_the_key() {
        let with = |mib: u64| MINIMAL.replace("[[nodes]]", &format!("max_component_mib = {mib}\n[[nodes]]"));
        assert_eq!(DaemonConfig::parse(&with(8), Path::new("t.toml")).unwrap().plugin.max_component_mib, 8);
        let err = DaemonConfig::parse(&with(0), Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("plugin.max_component_mib") && err.contains("refuses every component"), "{err}");
    }

    #[test]
    fn missing_secret_names_its_variable() {
        let text = format!("{MINIMAL}[nodes.secrets]\nprivate_key = {{ env = \"VKHOST_TEST_UNSET_VAR\" }}\n");
        let c = DaemonConfig::parse(&text, Path::new("t.toml")).unwrap();
        let err = c.nodes[0].provider_json_with(|_| None).unwrap_err().to_string();
        assert!(err.contains("VKHOST_TEST_UNSET_VAR"), "{err}");
    }
}
