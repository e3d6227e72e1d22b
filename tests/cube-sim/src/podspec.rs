//! The Cube pod YAML dialect: decoding the base64 `Pod` parameter and enforcing Cube's rules
//! (size table, container names, volume types, config size, registries, pull secrets).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::config::{Config, UHUB};
use crate::error::ApiError;

/// The CPU (millicores) and memory (MiB) pairs Cube sells.
pub const SIZES: &[(u64, &[u64])] = &[
    (500, &[512, 1024, 2048]),
    (1000, &[1024, 2048, 4096]),
    (2000, &[2048, 4096, 8192]),
    (4000, &[4096, 8192, 16384]),
    (8000, &[8192, 16384]),
];

/// The client's pod document (kept verbatim) and the typed view of what the simulator needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CubePod {
    /// Exactly what the client sent, decoded; echoed back with Cube's fields added.
    pub doc: Value,
    pub spec: Spec,
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub volumes: Vec<Value>,
    pub restart_policy: Option<String>,
    pub image_pull_secrets: Vec<Value>,
    pub host_network: Option<bool>,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub resources: Option<Resources>,
    pub volume_mounts: Vec<VolumeMount>,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub limits: Option<BTreeMap<String, Value>>,
    pub requests: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub sub_path: Option<String>,
}

/// A file a container can read through a ConfigMap or Secret mount.
pub struct MountedFile {
    pub path: String,
    pub content: Vec<u8>,
}

impl CubePod {
    /// Decodes the base64 `Pod` parameter and checks it against every rule.
    pub fn from_base64(b64: &str, cfg: &Config) -> Result<Self, ApiError> {
        if b64.len() > cfg.limits.max_pod_base64_bytes {
            return Err(ApiError::invalid(
                "Pod",
                format!("is {} bytes of base64, more than the {} allowed", b64.len(), cfg.limits.max_pod_base64_bytes),
            ));
        }
        let raw = B64.decode(b64.trim()).map_err(|e| ApiError::invalid("Pod", format!("is not valid base64: {e}")))?;
        let text = String::from_utf8(raw).map_err(|_| ApiError::invalid("Pod", "is not UTF-8 YAML"))?;
        Self::from_yaml(&text, cfg)
    }

    pub fn from_yaml(text: &str, cfg: &Config) -> Result<Self, ApiError> {
        let doc: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ApiError::invalid("Pod", format!("is not valid YAML: {e}")))?;
        if !doc.is_mapping() {
            return Err(ApiError::invalid("Pod", "must be a YAML mapping with metadata and spec"));
        }
        let spec_value = doc.get("spec").cloned().ok_or_else(|| ApiError::pod("spec is missing"))?;
        let spec: Spec = serde_yaml_ng::from_value(spec_value).map_err(|e| ApiError::pod(format!("spec: {e}")))?;
        let (cpu_millis, memory_mib) = validate(&spec, cfg)?;
        Ok(CubePod { doc, spec, cpu_millis, memory_mib })
    }

    pub fn metadata_str(&self, key: &str) -> Option<String> {
        self.doc.get("metadata")?.get(key)?.as_str().map(str::to_string)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.spec.containers.iter().chain(&self.spec.init_containers).find(|c| c.name == name)
    }

    /// The ConfigMap/Secret files mounted into `container`, at their full paths.
    pub fn mounted_files(&self, container: &Container) -> Vec<MountedFile> {
        let mut files = Vec::new();
        for mount in &container.volume_mounts {
            let Some(vol) =
                self.spec.volumes.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(&mount.name))
            else {
                continue;
            };
            let entries: Vec<(String, Vec<u8>)> = if let Some(Value::Mapping(m)) = vol.get("configMap") {
                m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.as_bytes().to_vec()))).collect()
            } else if let Some(Value::Mapping(m)) = vol.get("secret") {
                m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), B64.decode(v.as_str()?).ok()?))).collect()
            } else {
                continue;
            };
            let base = mount.mount_path.trim_end_matches('/');
            for (key, content) in entries {
                match &mount.sub_path {
                    Some(sub) if !sub.is_empty() => {
                        if *sub == key {
                            files.push(MountedFile { path: base.to_string(), content });
                        }
                    }
                    _ => files.push(MountedFile { path: format!("{base}/{key}"), content }),
                }
            }
        }
        files
    }

    /// Every UDisk id the pod mounts.
    pub fn udisk_ids(&self) -> Vec<String> {
        self.spec.volumes.iter().filter_map(|v| v.get("udisk")?.get("id")?.as_str().map(str::to_string)).collect()
    }
}

/// The registry host of an image reference, `None` meaning Docker Hub.
pub fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    if first.contains('.') || first.contains(':') || first == "localhost" { Some(first) } else { None }
}

/// Whether Cube can pull from this image's registry: UHub or a configured registry.
pub fn registry_allowed(image: &str, cfg: &Config) -> bool {
    match registry_of(image) {
        Some(host) => host == UHUB || cfg.registries.iter().any(|r| r == host),
        None => false,
    }
}

fn is_docker_hub(image: &str) -> bool {
    matches!(registry_of(image), None | Some("docker.io") | Some("index.docker.io") | Some("registry-1.docker.io"))
}

fn validate(spec: &Spec, cfg: &Config) -> Result<(u64, u64), ApiError> {
    if spec.containers.is_empty() {
        return Err(ApiError::pod("spec.containers must hold at least one container"));
    }
    if spec.host_network == Some(true) {
        return Err(ApiError::pod("spec.hostNetwork is not supported by Cube"));
    }
    if let Some(policy) = &spec.restart_policy
        && !matches!(policy.as_str(), "Always" | "OnFailure" | "Never")
    {
        return Err(ApiError::pod(format!("spec.restartPolicy is {policy:?}, but must be Always, OnFailure or Never")));
    }
    let volume_names = validate_volumes(spec, cfg)?;
    let mut seen = std::collections::BTreeSet::new();
    let (mut cpu_sum, mut mem_sum, mut cpu_init, mut mem_init) = (0u64, 0u64, 0u64, 0u64);
    for (kind, list) in [("containers", &spec.containers), ("initContainers", &spec.init_containers)] {
        for c in list.iter() {
            let at = format!("spec.{kind}[{}]", c.name);
            if !valid_container_name(&c.name) {
                return Err(ApiError::pod(format!("{at}: name {:?} must match ^[a-zA-Z0-9-_]{{1,32}}$", c.name)));
            }
            if !seen.insert(c.name.clone()) {
                return Err(ApiError::pod(format!("{at}: container name {:?} is used twice", c.name)));
            }
            if c.image.is_empty() {
                return Err(ApiError::pod(format!("{at}: image is required")));
            }
            if is_docker_hub(&c.image) {
                return Err(ApiError::pod(format!(
                    "{at}: image {:?} comes from Docker Hub; Cube pulls only from {UHUB} or a self-hosted registry in the region",
                    c.image
                )));
            }
            let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            let cpu = limits
                .and_then(|l| l.get("cpu"))
                .ok_or_else(|| ApiError::pod(format!("{at}: resources.limits.cpu is required")))?;
            let mem = limits
                .and_then(|l| l.get("memory"))
                .ok_or_else(|| ApiError::pod(format!("{at}: resources.limits.memory is required")))?;
            let cpu = parse_cpu(cpu).ok_or_else(|| {
                ApiError::pod(format!("{at}: resources.limits.cpu {} is not a CPU quantity", show(cpu)))
            })?;
            let mem = parse_mem_bytes(mem).ok_or_else(|| {
                ApiError::pod(format!("{at}: resources.limits.memory {} is not a memory quantity", show(mem)))
            })?;
            if let Some(eph) = limits.and_then(|l| l.get("ephemeral-storage")) {
                let bytes = parse_mem_bytes(eph)
                    .ok_or_else(|| ApiError::pod(format!("{at}: ephemeral-storage {} is not a quantity", show(eph))))?;
                if bytes > cfg.limits.max_ephemeral_bytes {
                    return Err(ApiError::pod(format!(
                        "{at}: ephemeral-storage {} is more than the 10Gi Cube allows",
                        show(eph)
                    )));
                }
            }
            let mem_mib = mem.div_ceil(1 << 20);
            if kind == "containers" {
                cpu_sum += cpu;
                mem_sum += mem_mib;
            } else {
                cpu_init = cpu_init.max(cpu);
                mem_init = mem_init.max(mem_mib);
            }
            for m in &c.volume_mounts {
                if !volume_names.contains(&m.name) {
                    return Err(ApiError::pod(format!("{at}: volumeMount {:?} names no volume", m.name)));
                }
                if !m.mount_path.starts_with('/') {
                    return Err(ApiError::pod(format!(
                        "{at}: volumeMount {:?} mountPath {:?} must be absolute",
                        m.name, m.mount_path
                    )));
                }
            }
        }
    }
    let (cpu, mem) = (cpu_sum.max(cpu_init), mem_sum.max(mem_init));
    let fits = SIZES.iter().any(|(c, mems)| *c == cpu && mems.contains(&mem));
    if !fits {
        return Err(ApiError::pod(format!(
            "the pod's total limits are cpu {}m, memory {}Mi, which is not a Cube size; allowed: 500m with 512Mi/1Gi/2Gi, 1 with 1Gi/2Gi/4Gi, 2 with 2Gi/4Gi/8Gi, 4 with 4Gi/8Gi/16Gi, 8 with 8Gi/16Gi",
            cpu, mem
        )));
    }
    validate_pull_secrets(spec)?;
    Ok((cpu, mem))
}

fn validate_volumes(spec: &Spec, cfg: &Config) -> Result<Vec<String>, ApiError> {
    let mut names = Vec::new();
    let mut config_bytes = 0usize;
    for (i, vol) in spec.volumes.iter().enumerate() {
        let Value::Mapping(map) = vol else {
            return Err(ApiError::pod(format!("spec.volumes[{i}] must be a mapping")));
        };
        let name = vol
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::pod(format!("spec.volumes[{i}].name is required")))?;
        let at = format!("spec.volumes[{name}]");
        let kinds: Vec<&str> = map.keys().filter_map(Value::as_str).filter(|k| *k != "name").collect();
        let [kind] = kinds.as_slice() else {
            return Err(ApiError::pod(format!("{at} must have exactly one volume type, found {kinds:?}")));
        };
        let body = &map[*kind];
        match *kind {
            "emptyDir" => {}
            "nfs" => {
                let addr = body.get("address").and_then(Value::as_str).unwrap_or_default();
                if !addr.contains(":/") {
                    return Err(ApiError::pod(format!("{at}: nfs.address {addr:?} must look like ip:/path")));
                }
            }
            "udisk" => {
                let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
                if !(id.starts_with("bs-") || id.starts_with("bsm-") || id.starts_with("bsr-")) {
                    return Err(ApiError::pod(format!("{at}: udisk.id {id:?} is not a UDisk id (bs-…, bsm-…, bsr-…)")));
                }
                if let Some(fs) = body.get("fs").and_then(Value::as_str)
                    && fs != "ext4"
                {
                    return Err(ApiError::pod(format!(
                        "{at}: udisk.fs {fs:?} is not supported; Cube formats UDisks as ext4 only"
                    )));
                }
            }
            "configMap" => {
                let Value::Mapping(data) = body else {
                    return Err(ApiError::pod(format!("{at}: configMap must be an inline map of key to UTF-8 value")));
                };
                for (k, v) in data {
                    let v = v
                        .as_str()
                        .ok_or_else(|| ApiError::pod(format!("{at}: configMap key {} must hold a string", show(k))))?;
                    config_bytes += v.len();
                }
            }
            "secret" => {
                let Value::Mapping(data) = body else {
                    return Err(ApiError::pod(format!("{at}: secret must be an inline map of key to base64 value")));
                };
                for (k, v) in data {
                    let decoded = v
                        .as_str()
                        .and_then(|s| B64.decode(s).ok())
                        .ok_or_else(|| ApiError::pod(format!("{at}: secret key {} must hold base64 data", show(k))))?;
                    config_bytes += decoded.len();
                }
            }
            other => {
                return Err(ApiError::pod(format!(
                    "{at}: volume type {other:?} is not supported; Cube allows nfs, udisk, configMap, secret, emptyDir"
                )));
            }
        }
        names.push(name.to_string());
    }
    if config_bytes > cfg.limits.max_config_bytes {
        return Err(ApiError::pod(format!(
            "ConfigMap and Secret data total {config_bytes} bytes, more than the {} (30 MiB) one pod may mount",
            cfg.limits.max_config_bytes
        )));
    }
    Ok(names)
}

fn validate_pull_secrets(spec: &Spec) -> Result<(), ApiError> {
    const FIELDS: &[&str] = &["registryServer", "username", "password", "registryaddr", "vpcId"];
    for (i, s) in spec.image_pull_secrets.iter().enumerate() {
        let Value::Mapping(map) = s else {
            return Err(ApiError::pod(format!("spec.imagePullSecrets[{i}] must be a mapping")));
        };
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if !FIELDS.contains(&key) {
                return Err(ApiError::pod(format!(
                    "spec.imagePullSecrets[{i}]: unknown field {key:?}; allowed: {}",
                    FIELDS.join(", ")
                )));
            }
        }
        // Credentials are optional (a registry reached inside the VPC may need none); a
        // username without its password is not.
        if s.get("registryServer").and_then(Value::as_str).unwrap_or_default().is_empty() {
            return Err(ApiError::pod(format!("spec.imagePullSecrets[{i}].registryServer is required")));
        }
        let has = |k: &str| !s.get(k).and_then(Value::as_str).unwrap_or_default().is_empty();
        if has("username") != has("password") {
            return Err(ApiError::pod(format!("spec.imagePullSecrets[{i}]: username and password go together")));
        }
        if let Some(addr) = s.get("registryaddr").and_then(Value::as_str) {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            if host.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(ApiError::pod(format!(
                    "spec.imagePullSecrets[{i}].registryaddr {addr:?} must be a private IP (optionally :port)"
                )));
            }
        }
        if let Some(vpc) = s.get("vpcId").and_then(Value::as_str)
            && !vpc.starts_with("uvnet-")
        {
            return Err(ApiError::pod(format!("spec.imagePullSecrets[{i}].vpcId {vpc:?} must be a VPC id (uvnet-…)")));
        }
    }
    Ok(())
}

fn valid_container_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn show(v: &Value) -> String {
    serde_yaml_ng::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// CPU quantity in millicores: `500m`, `1`, `0.5`.
pub fn parse_cpu(v: &Value) -> Option<u64> {
    let s = quantity_text(v)?;
    if let Some(m) = s.strip_suffix('m') {
        return m.parse().ok();
    }
    let f: f64 = s.parse().ok()?;
    (f >= 0.0).then(|| (f * 1000.0).round() as u64)
}

/// Memory quantity in bytes: `512Mi`, `1Gi`, `1G`, `1073741824`.
pub fn parse_mem_bytes(v: &Value) -> Option<u64> {
    let s = quantity_text(v)?;
    const UNITS: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = s.strip_suffix(suffix) {
            let f: f64 = n.parse().ok()?;
            return Some((f * mult).round() as u64);
        }
    }
    s.parse::<f64>().ok().map(|f| f as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &str, volumes: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  uid: u-1\nspec:\n  containers:\n{containers}\n  volumes:\n{volumes}\n"
        )
    }

    fn c(name: &str, cpu: &str, mem: &str) -> String {
        format!(
            "  - name: {name}\n    image: {UHUB}/library/nginx:1\n    resources:\n      limits:\n        cpu: \"{cpu}\"\n        memory: \"{mem}\""
        )
    }

    fn check(y: &str) -> Result<CubePod, ApiError> {
        CubePod::from_yaml(y, &Config::default())
    }

    #[test]
    fn accepts_every_size_in_the_table() {
        for (cpu, mems) in SIZES {
            for mem in *mems {
                let p = check(&pod(&c("a", &format!("{cpu}m"), &format!("{mem}Mi")), "    []")).unwrap();
                assert_eq!((p.cpu_millis, p.memory_mib), (*cpu, *mem));
            }
        }
    }

    #[test]
    fn sums_container_limits_before_matching_the_size_table() {
        let two = format!("{}\n{}", c("a", "250m", "256Mi"), c("b", "250m", "256Mi"));
        assert_eq!(check(&pod(&two, "    []")).unwrap().cpu_millis, 500);
    }

    #[test]
    fn rejects_sizes_outside_the_table() {
        for (cpu, mem) in [("1", "8Gi"), ("8", "4Gi"), ("3", "4Gi"), ("16", "32Gi"), ("500m", "4Gi")] {
            let err = check(&pod(&c("a", cpu, mem), "    []")).unwrap_err();
            assert_eq!(err.ret_code(), 8201, "{cpu}/{mem}");
        }
    }

    #[test]
    fn requires_cpu_and_memory_limits() {
        let y = pod(
            &format!("  - name: a\n    image: {UHUB}/x/y:1\n    resources:\n      limits:\n        cpu: 1"),
            "    []",
        );
        assert!(check(&y).unwrap_err().to_string().contains("limits.memory is required"));
    }

    #[test]
    fn rejects_container_names_outside_the_pattern() {
        for bad in ["a.b", "", "x234567890123456789012345678901234"] {
            let y = pod(&c(&format!("\"{bad}\""), "1", "1Gi"), "    []");
            assert!(check(&y).is_err(), "{bad}");
        }
        assert!(check(&pod(&c("Good_name-1", "1", "1Gi"), "    []")).is_ok());
    }

    #[test]
    fn rejects_host_path_volumes_and_accepts_the_allowed_types() {
        let err = check(&pod(&c("a", "1", "1Gi"), "  - name: h\n    hostPath:\n      path: /etc")).unwrap_err();
        assert!(err.to_string().contains("hostPath"));
        let ok = "  - name: n\n    nfs:\n      address: 10.0.0.1:/data\n  - name: d\n    udisk:\n      id: bs-abc\n      fs: ext4\n  - name: c\n    configMap:\n      a.conf: hello\n  - name: s\n    secret:\n      pw: aGVsbG8=\n  - name: e\n    emptyDir: {}";
        assert!(check(&pod(&c("a", "1", "1Gi"), ok)).is_ok());
    }

    #[test]
    fn rejects_more_than_30_mib_of_config_and_secret_data() {
        let big = "x".repeat(31 << 20);
        let err =
            check(&pod(&c("a", "1", "1Gi"), &format!("  - name: c\n    configMap:\n      big: {big}"))).unwrap_err();
        assert!(err.to_string().contains("30 MiB"));
    }

    #[test]
    fn rejects_docker_hub_images() {
        let y = pod(
            "  - name: a\n    image: nginx:1\n    resources:\n      limits:\n        cpu: 1\n        memory: 1Gi",
            "    []",
        );
        assert!(check(&y).unwrap_err().to_string().contains("Docker Hub"));
    }

    #[test]
    fn accepts_pull_secrets_without_credentials_but_not_half_of_them() {
        let base = pod(&c("a", "1", "1Gi"), "    []");
        let none = base.clone() + "  imagePullSecrets:\n  - registryServer: uhub.service.ucloud.cn\n";
        assert!(check(&none).is_ok());
        let half = base + "  imagePullSecrets:\n  - registryServer: uhub.service.ucloud.cn\n    username: u\n";
        assert!(check(&half).unwrap_err().to_string().contains("go together"));
    }

    #[test]
    fn rejects_pull_secrets_with_the_dockerconfig_spelling_of_vpc_id() {
        let y = pod(&c("a", "1", "1Gi"), "    []")
            + "  imagePullSecrets:\n  - registryServer: uhub.service.ucloud.cn\n    username: u\n    password: p\n    vpcid: uvnet-1\n";
        assert!(check(&y).unwrap_err().to_string().contains("vpcid"));
    }

    #[test]
    fn resolves_mounted_config_and_secret_files() {
        let y = format!(
            "metadata: {{name: p}}\nspec:\n  containers:\n  - name: a\n    image: {UHUB}/x/y:1\n    resources: {{limits: {{cpu: 1, memory: 1Gi}}}}\n    volumeMounts:\n    - {{name: c, mountPath: /etc/app}}\n    - {{name: s, mountPath: /run/pw, subPath: pw}}\n  volumes:\n  - name: c\n    configMap: {{a.conf: hello}}\n  - name: s\n    secret: {{pw: c2VjcmV0}}\n"
        );
        let p = check(&y).unwrap();
        let files = p.mounted_files(&p.spec.containers[0]);
        assert!(files.iter().any(|f| f.path == "/etc/app/a.conf" && f.content == b"hello"));
        assert!(files.iter().any(|f| f.path == "/run/pw" && f.content == b"secret"));
    }
}
