//! The Cube pod YAML dialect: what CreateCubePod/RenewCubePod take (base64 YAML in `Pod`) and what
//! GetCubePod/ListCubePod give back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The annotation that ties an instance to the virtual node that made it.
pub const NODE_ANNOTATION: &str = "vk.cube.ucloud.cn/node";
/// A digest of the pod as sent, so `update` renews the instance only when something changed.
pub const SPEC_HASH_ANNOTATION: &str = "vk.cube.ucloud.cn/spec-hash";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CubePod {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    pub restart_policy: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_aliases: Vec<HostAlias>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<PullSecret>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostAlias {
    pub ip: String,
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
}

#[derive(Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullSecret {
    pub registry_server: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub registryaddr: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub vpc_id: String,
}

/// The password never reaches a log line or a test failure message.
impl std::fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSecret")
            .field("registry_server", &self.registry_server)
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
            .field("registryaddr", &self.registryaddr)
            .field("vpc_id", &self.vpc_id)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume {
    pub name: String,
    #[serde(flatten)]
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    Nfs(Nfs),
    Udisk(Udisk),
    /// Inline files: path → UTF-8 content.
    ConfigMap(BTreeMap<String, String>),
    /// Inline files: path → base64 content.
    Secret(BTreeMap<String, String>),
    EmptyDir(EmptyDir),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nfs {
    /// `server:/path`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_option: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Udisk {
    pub id: String,
    pub fs: String,
    pub force_format: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmptyDir {}

impl CubePod {
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("the Cube pod is plain data and always serialises")
    }

    /// Records the digest of the pod (without the digest itself) in its annotations.
    pub fn stamp_spec_hash(&mut self) -> String {
        use sha1::{Digest, Sha1};
        self.metadata.annotations.remove(SPEC_HASH_ANNOTATION);
        let hash = hex::encode(Sha1::digest(self.to_yaml().as_bytes()));
        self.metadata.annotations.insert(SPEC_HASH_ANNOTATION.into(), hash.clone());
        hash
    }
}

// ---- What the service gives back (GetCubePod / ListCubePod / CreateCubePod answers) ----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Returned {
    pub metadata: ReturnedMeta,
    pub spec: ReturnedSpec,
    pub status: ReturnedStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub cube_id: String,
    pub group: String,
    pub creation_timestamp: Option<String>,
    #[serde(deserialize_with = "scalars_as_strings")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Annotation values come back as YAML scalars; a service that unquotes `"true"` or `"5"` must not
/// make the instance unreadable.
fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_yaml_ng::Value>>::deserialize(d)?;
    Ok(raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_yaml_ng::Value::String(s) => s,
                    serde_yaml_ng::Value::Bool(b) => b.to_string(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(&other).unwrap_or_default().trim().to_string(),
                };
                (k, s)
            })
            .collect()
    }))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedSpec {
    pub containers: Option<Vec<ReturnedContainer>>,
    pub init_containers: Option<Vec<ReturnedContainer>>,
    pub volumes: Option<Vec<ReturnedVolume>>,
    pub restart_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedContainer {
    pub name: String,
    pub image: String,
    /// The environment the container runs with; none when the service leaves it out.
    pub env: Option<Vec<ReturnedEnvVar>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReturnedEnvVar {
    pub name: String,
    /// A YAML scalar the service may have unquoted (`"5"` → 5).
    pub value: serde_yaml_ng::Value,
}

impl ReturnedEnvVar {
    pub fn value_string(&self) -> String {
        match &self.value {
            serde_yaml_ng::Value::String(s) => s.clone(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Null => String::new(),
            other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
        }
    }
}

impl Returned {
    /// The environment of each container (and init container) the instance reports, by name.
    pub fn container_env(&self) -> Vec<(String, Vec<(String, String)>)> {
        let all = self.spec.init_containers.iter().flatten().chain(self.spec.containers.iter().flatten());
        all.filter_map(|c| {
            let env = c.env.as_ref()?;
            Some((c.name.clone(), env.iter().map(|e| (e.name.clone(), e.value_string())).collect()))
        })
        .collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedVolume {
    pub name: String,
    pub udisk: Option<ReturnedUdisk>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedUdisk {
    pub id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    #[serde(alias = "podIP")]
    pub pod_ip: Option<String>,
    pub start_time: Option<String>,
    pub container_statuses: Option<Vec<ReturnedContainerStatus>>,
    pub init_container_statuses: Option<Vec<ReturnedContainerStatus>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedContainerStatus {
    pub name: String,
    pub image: Option<String>,
    pub ready: Option<bool>,
    pub restart_count: Option<u32>,
    pub state: Option<ReturnedState>,
    pub last_state: Option<ReturnedState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedState {
    pub waiting: Option<ReturnedWaiting>,
    pub running: Option<ReturnedRunning>,
    pub terminated: Option<ReturnedTerminated>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedWaiting {
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedRunning {
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReturnedTerminated {
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl Returned {
    /// Decodes the base64 YAML the service returns in `Pod` / `Pods[]`.
    pub fn decode(base64_yaml: &str) -> Result<Returned, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_yaml.trim())
            .map_err(|e| format!("the Cube pod is not base64: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|e| format!("the Cube pod is not UTF-8: {e}"))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("the Cube pod is not YAML of a pod: {e}"))
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub fn udisk_ids(&self) -> Vec<String> {
        self.spec.volumes.iter().flatten().filter_map(|v| v.udisk.as_ref()).map(|u| u.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_annotations_a_service_unquoted() {
        let r: Returned = serde_yaml_ng::from_str(
            "metadata:\n  cubeId: cube-1\n  annotations:\n    cube.ucloud.cn/cube-eip-release: false\n    cube.ucloud.cn/cube-quantity: 3\n    vk.cube.ucloud.cn/node: n\nspec:\n  volumes:\n  - {name: a, udisk: {id: bs-1, fs: ext4}}\n  - {name: b, emptyDir: {}}\n",
        )
        .unwrap();
        assert_eq!(r.annotation("cube.ucloud.cn/cube-eip-release"), Some("false"));
        assert_eq!(r.annotation("cube.ucloud.cn/cube-quantity"), Some("3"));
        assert_eq!(r.udisk_ids(), vec!["bs-1".to_string()]);
    }

    #[test]
    fn undecodable_pods_say_why() {
        assert!(Returned::decode("%%%").unwrap_err().contains("not base64"));
    }

    #[test]
    fn a_pull_secret_debug_never_shows_the_password() {
        let secret = PullSecret {
            registry_server: "myhub.example.com".into(),
            username: "u".into(),
            password: "hunter2".into(),
            registryaddr: String::new(),
            vpc_id: String::new(),
        };
        let shown = format!("{secret:?} {:?}", vec![secret.clone()]);
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>") && shown.contains("myhub"), "{shown}");
    }
}
