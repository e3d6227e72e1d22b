//! The node's provider config (N4): the `[nodes.provider]` TOML table, handed over as JSON. Every key
//! is checked; unknown keys and wrong values are refused naming the key and what is accepted.

use std::fmt;

use serde_json::{Map, Value, json};

use crate::error::InvalidInput;
use crate::sizes::Size;

pub const DEFAULT_API_URL: &str = "https://api.ucloud.cn";
/// The UHub registry of a UCloud deployment: the default of `uhub_hosts`.
pub const UHUB: &str = "uhub.service.ucloud.cn";
pub const MAX_PODS_LIMIT: u32 = 200;

/// The zones the guide lists as Cube zones (华北(北京)E, 广州B), by region: `zone` must be one of
/// them, and defaults to its region's.
pub const CUBE_ZONES: &[(&str, &str)] = &[("cn-bj2", "cn-bj2-05"), ("cn-gd", "cn-gd-02")];

/// Public registries: the guide says Cube pulls no Internet images ("不支持拉取外网镜像,如DockerHub"),
/// so none of them can be a node's self-hosted registry.
pub const PUBLIC_REGISTRIES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
    "quay.io",
    "gcr.io",
    "ghcr.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
];

#[derive(Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub api_url: String,
    pub region: String,
    pub zone: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub project_id: Option<String>,
    pub public_key: String,
    pub private_key: String,
    pub default_size: Size,
    pub max_pods: u32,
    /// The UHub host names of this cloud (the guide's images come from its brand's UHub host).
    pub uhub_hosts: Vec<String>,
    /// Self-hosted registries pods may pull from, besides UHub.
    pub registries: Vec<String>,
    pub cluster_ip_support: bool,
    /// Base64 kubeconfig Cube uses to reach cluster Services when `cluster_ip_support` is on.
    pub kubeconfig: Option<String>,
    pub delete_disks_with_node: bool,
    /// The EIP line (`OperatorName`), `Bgp` in most regions.
    pub eip_operator: String,
}

/// Credentials never reach a log line.
impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("zone", &self.zone)
            .field("vpc_id", &self.vpc_id)
            .field("subnet_id", &self.subnet_id)
            .field("project_id", &self.project_id)
            .field("public_key", &"<redacted>")
            .field("private_key", &"<redacted>")
            .field("default_size", &self.default_size)
            .field("max_pods", &self.max_pods)
            .field("uhub_hosts", &self.uhub_hosts)
            .field("registries", &self.registries)
            .field("cluster_ip_support", &self.cluster_ip_support)
            .field("kubeconfig", &self.kubeconfig.as_ref().map(|_| "<redacted>"))
            .field("delete_disks_with_node", &self.delete_disks_with_node)
            .field("eip_operator", &self.eip_operator)
            .finish()
    }
}

const KEYS: &[&str] = &[
    "api_url",
    "region",
    "zone",
    "vpc_id",
    "subnet_id",
    "project_id",
    "public_key",
    "private_key",
    "default_size",
    "max_pods",
    "uhub_hosts",
    "registries",
    "cluster_ip_support",
    "kubeconfig",
    "delete_disks_with_node",
    "eip_operator",
];

fn bad(key: &str, message: impl Into<String>) -> InvalidInput {
    InvalidInput::new("InvalidConfig", format!("config.{key}"), message)
}

/// Keys whose values are credentials: an error names them, never quotes them.
const CREDENTIALS: &[&str] = &["public_key", "private_key", "kubeconfig"];

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, InvalidInput> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) if CREDENTIALS.contains(&key) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "a list",
                _ => "a table",
            };
            Err(bad(key, format!("{key} is {kind} (value not shown), but must be a string")))
        }
        Some(other) => Err(bad(key, format!("{key} is {other}, but must be a string"))),
    }
}

fn required(obj: &Map<String, Value>, key: &str, what: &str) -> Result<String, InvalidInput> {
    string(obj, key)?.ok_or_else(|| bad(key, format!("{key} is missing; set it to {what}")))
}

fn prefixed(key: &str, value: String, prefix: &str) -> Result<String, InvalidInput> {
    if value.starts_with(prefix) && value.len() > prefix.len() {
        Ok(value)
    } else {
        Err(bad(key, format!("{key} is {value:?}, but must be an id starting with {prefix:?}")))
    }
}

fn boolean(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, InvalidInput> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(key, format!("{key} is {other}, but must be true or false"))),
    }
}

/// A list of registry host names (`uhub_hosts`, `registries`), lowercased; none when absent.
fn hosts(obj: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, InvalidInput> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let host = item.as_str().map(str::trim).unwrap_or_default();
                let valid = !host.is_empty()
                    && !host.contains("://")
                    && !host.contains('/')
                    && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
                if !valid {
                    return Err(bad(
                        &format!("{key}[{i}]"),
                        format!(
                            "{key}[{i}] is {item}, but must be a registry host name such as myhub.example.com (no scheme, no path)"
                        ),
                    ));
                }
                out.push(host.to_ascii_lowercase());
            }
            Ok(Some(out))
        }
        Some(other) => Err(bad(key, format!("{key} is {other}, but must be a list of registry host names"))),
    }
}

impl NodeConfig {
    /// Parses and checks a node's provider config.
    pub fn parse(json: &str) -> Result<NodeConfig, InvalidInput> {
        let value: Value = serde_json::from_str(json).map_err(|e| {
            InvalidInput::new("InvalidConfig", "config", format!("the provider config is not valid JSON: {e}"))
        })?;
        let Value::Object(obj) = value else {
            return Err(InvalidInput::new("InvalidConfig", "config", "the provider config must be a table of keys"));
        };
        if let Some(key) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            let hint =
                crate::annotations::closest(key, KEYS).map(|c| format!(" (did you mean {c}?)")).unwrap_or_default();
            return Err(bad(key, format!("unknown key {key}{hint}; accepted keys: {}", KEYS.join(", "))));
        }

        let api_url = string(&obj, "api_url")?.unwrap_or_else(|| DEFAULT_API_URL.to_string());
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) || api_url.contains('?') {
            return Err(bad(
                "api_url",
                format!("api_url is {api_url:?}, but must be an http:// or https:// URL such as {DEFAULT_API_URL}"),
            ));
        }
        let api_url = api_url.trim_end_matches('/').to_string();
        let region = required(&obj, "region", "the cluster's region, e.g. cn-bj2")?;
        let zones: Vec<&str> = CUBE_ZONES.iter().map(|(_, z)| *z).collect();
        let zone = match string(&obj, "zone")? {
            Some(zone) => zone,
            None => match CUBE_ZONES.iter().find(|(r, _)| *r == region) {
                Some((_, zone)) => zone.to_string(),
                None => {
                    return Err(bad(
                        "zone",
                        format!(
                            "zone is missing and region {region} has no Cube zone the guide lists; Cube zones: {} (Beijing E, Guangzhou B)",
                            zones.join(", ")
                        ),
                    ));
                }
            },
        };
        if !zone.starts_with(&format!("{region}-")) {
            return Err(bad(
                "zone",
                format!(
                    "zone is {zone:?}, but must be a zone of region {region} (e.g. {region}-05; Cube zones: {})",
                    zones.join(", ")
                ),
            ));
        }
        if !zones.contains(&zone.as_str()) {
            return Err(bad(
                "zone",
                format!(
                    "zone is {zone:?}, but Cube runs only in the zones the guide lists: {} (Beijing E, Guangzhou B)",
                    zones.join(", ")
                ),
            ));
        }
        let vpc_id = prefixed("vpc_id", required(&obj, "vpc_id", "the VPC id (uvnet-…)")?, "uvnet-")?;
        let subnet_id = prefixed("subnet_id", required(&obj, "subnet_id", "the subnet id (subnet-…)")?, "subnet-")?;
        let project_id = string(&obj, "project_id")?.map(|p| prefixed("project_id", p, "org-")).transpose()?;
        let public_key = required(&obj, "public_key", "the API public key")?;
        let private_key = required(&obj, "private_key", "the API private key")?;

        let default_size = match obj.get("default_size") {
            None | Some(Value::Null) => Size { cpu_millis: 1000, memory_mib: 2048 },
            Some(Value::Object(s)) => {
                if let Some(k) = s.keys().find(|k| *k != "cpu" && *k != "memory") {
                    return Err(bad(
                        "default_size",
                        format!("default_size has unknown key {k}; accepted keys: cpu, memory"),
                    ));
                }
                let q = |k: &str| match s.get(k) {
                    Some(Value::String(v)) => Ok(v.clone()),
                    Some(Value::Number(n)) => Ok(n.to_string()),
                    _ => Err(bad("default_size", format!("default_size.{k} is missing; sizes: {}", Size::table()))),
                };
                let (cpu, memory) = (q("cpu")?, q("memory")?);
                match Size::from_quantities(&cpu, &memory) {
                    Some(size) if size.is_in_table() => size,
                    _ => {
                        return Err(bad(
                            "default_size",
                            format!(
                                "default_size is cpu {cpu:?} memory {memory:?}, but must be one of the Cube sizes: {}",
                                Size::table()
                            ),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(bad(
                    "default_size",
                    format!("default_size is {other}, but must be a table {{cpu = \"1\", memory = \"2Gi\"}}"),
                ));
            }
        };

        let max_pods = match obj.get("max_pods") {
            None | Some(Value::Null) => MAX_PODS_LIMIT,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=200) => n as u32,
                _ => {
                    return Err(bad(
                        "max_pods",
                        format!("max_pods is {v}, but must be an integer from 1 to {MAX_PODS_LIMIT}"),
                    ));
                }
            },
        };

        let uhub_hosts = match hosts(&obj, "uhub_hosts")? {
            Some(h) if h.is_empty() => {
                return Err(bad(
                    "uhub_hosts",
                    format!(
                        "uhub_hosts is empty, but Cube always pulls from UHub: name its host (default [\"{UHUB}\"])"
                    ),
                ));
            }
            Some(h) => h,
            None => vec![UHUB.to_string()],
        };
        let registries = hosts(&obj, "registries")?.unwrap_or_default();
        for (key, list) in [("uhub_hosts", &uhub_hosts), ("registries", &registries)] {
            if let Some((i, host)) = list.iter().enumerate().find(|(_, h)| PUBLIC_REGISTRIES.contains(&h.as_str())) {
                return Err(bad(
                    &format!("{key}[{i}]"),
                    format!(
                        "{key}[{i}] is {host:?}, a public Internet registry, but Cube pulls only from UHub and self-hosted registries in the node's region (the guide: no Internet images such as Docker Hub)"
                    ),
                ));
            }
        }

        let eip_operator = string(&obj, "eip_operator")?.unwrap_or_else(|| "Bgp".into());
        let cluster_ip_support = boolean(&obj, "cluster_ip_support", false)?;
        let kubeconfig = string(&obj, "kubeconfig")?.map(|k| {
            // Cube takes it base64-encoded; accept it either way.
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            if b64.decode(&k).is_ok() { k } else { b64.encode(k) }
        });
        if cluster_ip_support && kubeconfig.is_none() {
            return Err(bad(
                "kubeconfig",
                "kubeconfig is missing, but cluster_ip_support = true needs it: Cube watches the cluster's Services with it (a kubeconfig, plain or base64)",
            ));
        }
        Ok(NodeConfig {
            api_url,
            region,
            zone,
            vpc_id,
            subnet_id,
            project_id,
            public_key,
            private_key,
            default_size,
            max_pods,
            uhub_hosts,
            registries,
            cluster_ip_support,
            kubeconfig,
            delete_disks_with_node: boolean(&obj, "delete_disks_with_node", true)?,
            eip_operator,
        })
    }

    /// The config with every default filled in, as JSON (what `validate-config` returns).
    pub fn to_json(&self) -> String {
        let mut v = json!({
            "api_url": self.api_url,
            "region": self.region,
            "zone": self.zone,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "public_key": self.public_key,
            "private_key": self.private_key,
            "default_size": {"cpu": self.default_size.cpu(), "memory": self.default_size.memory()},
            "max_pods": self.max_pods,
            "uhub_hosts": self.uhub_hosts,
            "registries": self.registries,
            "cluster_ip_support": self.cluster_ip_support,
            "delete_disks_with_node": self.delete_disks_with_node,
            "eip_operator": self.eip_operator,
        });
        if let Some(p) = &self.project_id {
            v["project_id"] = json!(p);
        }
        if let Some(k) = &self.kubeconfig {
            v["kubeconfig"] = json!(k);
        }
        v.to_string()
    }

    /// Registries pods may pull from: UHub first, then the node's own.
    pub fn allowed_registries(&self) -> Vec<String> {
        self.uhub_hosts.iter().chain(self.registries.iter()).cloned().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn minimal() -> Value {
        json!({
            "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
            "public_key": "pub", "private_key": "priv",
        })
    }

    fn with(key: &str, value: Value) -> String {
        let mut v = minimal();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = value;
        }
        v.to_string()
    }

    #[test]
    fn fills_in_defaults() {
        let c = NodeConfig::parse(&minimal().to_string()).unwrap();
        assert_eq!(c.api_url, DEFAULT_API_URL);
        assert_eq!(c.default_size.to_string(), "1-2Gi");
        assert_eq!(c.max_pods, 200);
        assert!(c.delete_disks_with_node);
        assert!(!c.cluster_ip_support);
        assert_eq!(c.allowed_registries(), vec![UHUB.to_string()]);
        assert_eq!(c.uhub_hosts, vec![UHUB.to_string()]);
        let normalised: Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(normalised["default_size"], json!({"cpu": "1", "memory": "2Gi"}));
        assert_eq!(NodeConfig::parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn accepts_every_key() {
        let json = json!({
            "api_url": "http://127.0.0.1:8080/", "region": "cn-gd", "zone": "cn-gd-02", "vpc_id": "uvnet-1",
            "subnet_id": "subnet-1", "project_id": "org-x", "public_key": "p", "private_key": "k",
            "default_size": {"cpu": "500m", "memory": "512Mi"}, "max_pods": 8,
            "registries": ["myhub.an-link.com", "10.0.0.5:5000"], "cluster_ip_support": true,
            "kubeconfig": "YQ==", "delete_disks_with_node": false, "eip_operator": "International",
        });
        let c = NodeConfig::parse(&json.to_string()).unwrap();
        assert_eq!(c.api_url, "http://127.0.0.1:8080");
        assert_eq!(c.default_size.to_string(), "500m-512Mi");
        assert_eq!(c.registries, vec!["myhub.an-link.com", "10.0.0.5:5000"]);
        assert!(!c.delete_disks_with_node);
        assert_eq!(c.kubeconfig.as_deref(), Some("YQ=="));
        assert!(!format!("{c:?}").contains("\"k\""));
        let mut plain = json.clone();
        plain["kubeconfig"] = json!("apiVersion: v1\nkind: Config\n");
        let c = NodeConfig::parse(&plain.to_string()).unwrap();
        assert_eq!(c.kubeconfig.as_deref(), Some("YXBpVmVyc2lvbjogdjEKa2luZDogQ29uZmln"));
    }

    #[test]
    fn refuses_wrong_values_naming_the_key() {
        let cases: &[(&str, Value, &str, &str)] = &[
            ("regoin", json!("cn-bj2"), "config.regoin", "did you mean region?"),
            ("region", Value::Null, "config.region", "region is missing"),
            ("zone", json!("cn-gd-02"), "config.zone", "must be a zone of region cn-bj2"),
            ("zone", json!("cn-bj2-02"), "config.zone", "zones the guide lists: cn-bj2-05, cn-gd-02"),
            ("uhub_hosts", json!([]), "config.uhub_hosts", "always pulls from UHub"),
            ("uhub_hosts", json!(["uhub.an-link.com/ucloud"]), "config.uhub_hosts[0]", "registry host name"),
            ("registries", json!(["myhub.an-link.com", "docker.io"]), "config.registries[1]", "no Internet images"),
            ("vpc_id", json!("vpc-1"), "config.vpc_id", "starting with \"uvnet-\""),
            ("subnet_id", json!(3), "config.subnet_id", "must be a string"),
            ("api_url", json!("ftp://x"), "config.api_url", "http:// or https://"),
            ("default_size", json!({"cpu": "3", "memory": "2Gi"}), "config.default_size", "500m/512Mi"),
            ("default_size", json!({"cpu": "1"}), "config.default_size", "default_size.memory is missing"),
            ("max_pods", json!(201), "config.max_pods", "from 1 to 200"),
            ("max_pods", json!(0), "config.max_pods", "from 1 to 200"),
            ("registries", json!(["https://hub.docker.com"]), "config.registries[0]", "registry host name"),
            ("registries", json!("myhub"), "config.registries", "list of registry host names"),
            ("cluster_ip_support", json!("yes"), "config.cluster_ip_support", "true or false"),
            ("delete_disks_with_node", json!(1), "config.delete_disks_with_node", "true or false"),
            ("project_id", json!("p-1"), "config.project_id", "org-"),
            ("cluster_ip_support", json!(true), "config.kubeconfig", "cluster_ip_support = true needs it"),
        ];
        for (key, value, field, needle) in cases {
            let err = NodeConfig::parse(&with(key, value.clone())).unwrap_err();
            assert_eq!(err.field, *field, "{key}={value}");
            assert!(err.message.contains(needle), "{key}={value}: {}", err.message);
        }
        assert_eq!(NodeConfig::parse("[]").unwrap_err().field, "config");
        assert_eq!(NodeConfig::parse("{").unwrap_err().field, "config");
    }

    #[test]
    fn the_zone_defaults_to_the_guides_cube_zone_of_the_region() {
        for (region, zone) in [("cn-bj2", "cn-bj2-05"), ("cn-gd", "cn-gd-02")] {
            let mut v = minimal();
            v["region"] = json!(region);
            v.as_object_mut().unwrap().remove("zone");
            assert_eq!(NodeConfig::parse(&v.to_string()).unwrap().zone, zone);
        }
        let mut v = minimal();
        v["region"] = json!("cn-sh2");
        v.as_object_mut().unwrap().remove("zone");
        let err = NodeConfig::parse(&v.to_string()).unwrap_err();
        assert_eq!(err.field, "config.zone");
        assert!(err.message.contains("cn-bj2-05, cn-gd-02"), "{}", err.message);
    }

    #[test]
    fn the_guides_uhub_host_is_a_setting() {
        let c = NodeConfig::parse(&with("uhub_hosts", json!(["UHub.An-Link.com"]))).unwrap();
        assert_eq!(c.allowed_registries(), vec!["uhub.an-link.com".to_string()]);
        assert_eq!(NodeConfig::parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn a_credential_of_the_wrong_type_is_named_not_quoted() {
        for key in CREDENTIALS {
            for value in [json!(["hunter2"]), json!({"k": "hunter2"}), json!(12345678)] {
                let err = NodeConfig::parse(&with(key, value.clone())).unwrap_err();
                assert_eq!(err.field, format!("config.{key}"));
                assert!(!err.message.contains("hunter2") && !err.message.contains("12345678"), "{}", err.message);
                assert!(err.message.contains("value not shown"), "{}", err.message);
            }
        }
        // Other keys still quote what they got, which helps.
        assert!(NodeConfig::parse(&with("region", json!(7))).unwrap_err().message.contains("is 7"));
    }
}
