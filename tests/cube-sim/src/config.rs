//! The simulator's configuration: key pairs, the regions/zones/VPCs it accepts, registries,
//! quotas, lifecycle delays and faults. Read from TOML (`--config`) and CLI flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The UHub registry host, always allowed.
pub const UHUB: &str = "uhub.service.ucloud.cn";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen; loopback only. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// API key pairs accepted by the gateway.
    pub keys: Vec<KeyPair>,
    /// Regions and their zones. Empty: the guide's regions (cn-bj2, cn-gd) with zones -01..-09.
    pub regions: Vec<Region>,
    /// Accepted `ProjectId`s. Empty: any project id (and none) is accepted.
    pub projects: Vec<String>,
    /// Accepted VPC ids for CreateCubePod. Empty: any id starting with `uvnet-`.
    pub vpcs: Vec<String>,
    /// Accepted subnet ids. Empty: any id starting with `subnet-`.
    pub subnets: Vec<String>,
    /// Self-hosted registries (host or host:port) images may come from, besides UHub.
    pub registries: Vec<String>,
    pub quotas: Quotas,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
    pub faults: Faults,
    pub network: Network,
    /// Where instances, EIPs and disks are kept across restarts (JSON). None: memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("static address"),
            keys: Vec::new(),
            regions: Vec::new(),
            projects: Vec::new(),
            vpcs: Vec::new(),
            subnets: Vec::new(),
            registries: Vec::new(),
            quotas: Quotas::default(),
            lifecycle: Lifecycle::default(),
            limits: Limits::default(),
            faults: Faults::default(),
            network: Network::default(),
            state_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub public: String,
    pub private: String,
}

impl std::str::FromStr for KeyPair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Public keys may contain ':'? They do not in practice; the private key is hex.
        let (public, private) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not PUBLIC:PRIVATE"))?;
        if public.is_empty() || private.is_empty() {
            return Err(format!("{s:?} is not PUBLIC:PRIVATE"));
        }
        Ok(KeyPair { public: public.to_string(), private: private.to_string() })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub max_instances: usize,
    /// Total CPU of live instances, in millicores.
    pub max_cpu_millis: u64,
    pub max_eips: usize,
    pub max_disks: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas { max_instances: 1000, max_cpu_millis: 1_000_000, max_eips: 200, max_disks: 200 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    /// Time an instance reports `Pending` after create/reboot/renew.
    pub pending_ms: u64,
    /// Time it then reports `ContainerCreating` before `Running`.
    pub creating_ms: u64,
    /// Up to this much more `ContainerCreating`, a share fixed per instance (from its CubeId), so
    /// instances start in `pending_ms + creating_ms` to that plus this, as a real cloud's do.
    pub creating_jitter_ms: u64,
    /// Containers (by name, or `*`) that crash one second after each start.
    pub crash_containers: Vec<String>,
    /// Seconds between restarts of a crashing container (the back-off, kept flat).
    pub crash_interval_secs: u64,
    /// Time a deleted instance still exists, `Terminating`, before it is gone (0: at once).
    pub deleting_ms: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            pending_ms: 200,
            creating_ms: 800,
            creating_jitter_ms: 0,
            crash_containers: Vec::new(),
            crash_interval_secs: 10,
            deleting_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted base64 `Pod` parameter, bytes.
    pub max_pod_base64_bytes: usize,
    /// Largest accepted base64 `KubeConfig` parameter, bytes.
    pub max_kubeconfig_base64_bytes: usize,
    /// ConfigMap + Secret data one pod may mount, bytes (decoded).
    pub max_config_bytes: usize,
    /// Ephemeral storage per container, bytes.
    pub max_ephemeral_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pod_base64_bytes: 48 << 20,
            max_kubeconfig_base64_bytes: 1 << 20,
            max_config_bytes: 30 << 20,
            max_ephemeral_bytes: 10 << 30,
        }
    }
}

/// Pod addresses, and whether containers answer on them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Instances get addresses of this IPv4 network (/8 to /24), in order of creation.
    pub pod_cidr: String,
    /// Listen on each instance's pod address for the containers the simulator serves (`nginx`
    /// images: HTTP on their `containerPort`s, or 80) while the instance lives, so port
    /// forwarding reaches them. Needs a loopback `pod_cidr` (Linux routes all of 127.0.0.0/8 to
    /// the loopback device), e.g. `127.77.0.0/16`; ports under 1024 need root (or
    /// `net.ipv4.ip_unprivileged_port_start`).
    pub serve: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network { pod_cidr: "10.23.0.0/16".into(), serve: false }
    }
}

impl Network {
    /// The checked pool; serving needs it on loopback, like everything the simulator listens on.
    pub fn pool(&self) -> Result<crate::network::Cidr, String> {
        let cidr: crate::network::Cidr = self.pod_cidr.parse().map_err(|e| format!("network.pod_cidr: {e}"))?;
        if self.serve && !cidr.network.is_loopback() {
            return Err(format!(
                "network.serve listens on pod addresses, which must then be loopback (127.0.0.0/8), not {}",
                self.pod_cidr
            ));
        }
        Ok(cidr)
    }
}

/// Faults to inject; replaceable at run time through `POST /_sim/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every API answer.
    pub latency_ms: u64,
    /// Per action (or `*`): probability of answering with an error instead of doing the call.
    pub errors: BTreeMap<String, ErrorFault>,
    /// The next `count` calls (of `actions`, or all when empty) answer `ret_code` (150 or 153).
    pub burst: Option<Burst>,
    /// Per action (or `*`): probability of dropping the connection without an answer.
    pub drop_rate: BTreeMap<String, f64>,
    /// The next `count` CreateCubePod calls make the instance but the client never learns it
    /// in time: the connection is dropped (`mode = "drop"`) or the answer comes `delay_ms` late.
    pub create_timeouts: Option<CreateTimeouts>,
    /// The gateway's throttle: calls past `per_second` (with a bucket of `burst`) answer
    /// `ret_code` (153 by default), as a cloud's API gateway throttles an account.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    #[serde(default = "one")]
    pub burst: u32,
    #[serde(default = "default_throttle_code")]
    pub ret_code: i64,
}

fn one() -> u32 {
    1
}

fn default_throttle_code() -> i64 {
    153
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorFault {
    pub rate: f64,
    #[serde(default = "default_fault_code")]
    pub ret_code: i64,
    #[serde(default)]
    pub message: Option<String>,
}

fn default_fault_code() -> i64 {
    150
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub ret_code: i64,
    pub count: u64,
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateTimeouts {
    pub count: u64,
    #[serde(default)]
    pub mode: TimeoutMode,
    #[serde(default = "default_timeout_delay")]
    pub delay_ms: u64,
}

fn default_timeout_delay() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum TimeoutMode {
    #[default]
    Drop,
    Delay,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The regions in force: configured ones, or the guide's.
    pub fn effective_regions(&self) -> Vec<Region> {
        if !self.regions.is_empty() {
            return self.regions.clone();
        }
        ["cn-bj2", "cn-gd"]
            .iter()
            .map(|r| Region { name: r.to_string(), zones: (1..=9).map(|n| format!("{r}-0{n}")).collect() })
            .collect()
    }

    /// Adds an accepted key pair (builder style, for in-process tests).
    pub fn with_key(mut self, public: &str, private: &str) -> Self {
        self.keys.push(KeyPair { public: public.to_string(), private: private.to_string() });
        self
    }

    /// Instances go Running at once (no Pending/ContainerCreating phase).
    pub fn without_delays(mut self) -> Self {
        self.lifecycle.pending_ms = 0;
        self.lifecycle.creating_ms = 0;
        self
    }

    pub fn private_key_of(&self, public: &str) -> Option<&str> {
        self.keys.iter().find(|k| k.public == public).map(|k| k.private.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_toml_config() {
        let cfg = Config::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            registries = ["harbor.example.internal:5000"]
            [[keys]]
            public = "pub"
            private = "priv"
            [[regions]]
            name = "cn-sh2"
            zones = ["cn-sh2-02"]
            [lifecycle]
            pending_ms = 0
            creating_ms = 0
            [faults]
            latency_ms = 5
            errors = { CreateCubePod = { rate = 0.5, ret_code = 153 } }
            create_timeouts = { count = 1, mode = "delay", delay_ms = 100 }
            "#,
        )
        .unwrap();
        assert_eq!(cfg.private_key_of("pub"), Some("priv"));
        assert_eq!(cfg.effective_regions()[0].zones, vec!["cn-sh2-02"]);
        assert_eq!(cfg.faults.errors["CreateCubePod"].ret_code, 153);
        assert_eq!(cfg.faults.create_timeouts.as_ref().unwrap().mode, TimeoutMode::Delay);
    }

    #[test]
    fn defaults_to_the_guides_regions_and_zones() {
        let regions = Config::default().effective_regions();
        assert!(regions.iter().any(|r| r.name == "cn-bj2" && r.zones.contains(&"cn-bj2-05".to_string())));
        assert!(regions.iter().any(|r| r.name == "cn-gd" && r.zones.contains(&"cn-gd-02".to_string())));
    }
}
