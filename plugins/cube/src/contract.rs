//! The records of the `vk:provider@0.1.2` contract as plain Rust, so the provider's logic runs and is
//! tested natively; `guest.rs` converts between these and the generated WIT bindings.

use std::fmt;

/// The context of every call: the node asking and its provider config (JSON).
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub node_name: String,
    pub config: String,
}

/// A string pair, as in the WIT `key-value`.
pub type KeyValue = (String, String);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConfigMap {
    pub name: String,
    pub data: Vec<KeyValue>,
    pub binary_data: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Default)]
pub struct Secret {
    pub name: String,
    /// The Secret type, e.g. `kubernetes.io/dockerconfigjson`.
    pub kind: String,
    pub data: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Default)]
pub struct VolumeClaim {
    pub claim_name: String,
    /// The PVC as JSON.
    pub claim: String,
    /// The bound PV as JSON, none while unbound.
    pub volume: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ServiceAccountToken {
    pub volume_name: String,
    pub path: String,
    pub token: String,
    pub expires_at: String,
    pub audience: String,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerEnv {
    pub container: String,
    pub vars: Vec<KeyValue>,
}

/// A pod with everything it references, as the host hands it over.
#[derive(Debug, Clone, Default)]
pub struct ResolvedPod {
    /// The Pod object as JSON.
    pub pod: String,
    pub env: Vec<ContainerEnv>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub claims: Vec<VolumeClaim>,
    pub tokens: Vec<ServiceAccountToken>,
}

impl ResolvedPod {
    /// A pod that references nothing the host would resolve (e.g. for `vkhost translate` offline).
    pub fn from_pod_json(pod: impl Into<String>) -> Self {
        ResolvedPod { pod: pod.into(), ..Default::default() }
    }
}

/// A Kubernetes Event recorded on the pod on the provider's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub kind: String,
    pub reason: String,
    pub message: String,
}

impl Event {
    pub fn normal(reason: &str, message: impl Into<String>) -> Self {
        Event { kind: "Normal".into(), reason: reason.into(), message: message.into() }
    }
    pub fn warning(reason: &str, message: impl Into<String>) -> Self {
        Event { kind: "Warning".into(), reason: reason.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { exit_code: i32, reason: String, message: String, started_at: String, finished_at: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub ready: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    pub reason: String,
    pub message: String,
    pub pod_ip: Option<String>,
    pub start_time: Option<String>,
    pub init_container_statuses: Vec<ContainerStatus>,
    pub container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOutcome {
    pub instance_id: String,
    pub status: PodStatus,
    pub annotations: Vec<KeyValue>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub pod: PodRef,
    pub instance_id: String,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    PodDeleted,
    Orphaned,
    NodeDeleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Gone,
    InProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    HttpBody,
    WebsocketChannels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub url: String,
    pub headers: Vec<KeyValue>,
    pub protocol: StreamProtocol,
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<String>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
    pub previous: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_usage_core_nano_seconds: u64,
    pub cpu_usage_nano_cores: u64,
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    pub start_time: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    pub pod: PodRef,
    pub timestamp: String,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOffer {
    pub capacity: Vec<KeyValue>,
    pub allocatable: Vec<KeyValue>,
    pub labels: Vec<KeyValue>,
    pub taints: Vec<Taint>,
    pub conditions: Vec<NodeCondition>,
    pub operating_system: String,
    pub architecture: String,
}
