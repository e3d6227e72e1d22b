//! The example provider: a template for provider authors. Its "backend" is the host's `kv` store:
//! creating a pod writes a record there and the pod is reported Running at once.
//!
//! Read it top to bottom: bindings, metadata (who am I, is this config valid), node (what do I
//! offer), pods (lifecycle). Everything a real provider adds is I/O through the `http` import.

// Generates Rust bindings for the contract: traits to implement for the exports (`Guest`) and
// functions for the imports (`vk::provider::{http, log, kv}`). The path is relative to this crate.
wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "provider" });

use exports::vk::provider::metadata::{self, PluginInfo};
use exports::vk::provider::node::{self, NodeCondition, NodeOffer};
use exports::vk::provider::pods::{
    self, ContainerState, ContainerStatus, ContainerUsage, DeleteReason, Deletion, ExecOptions, Instance, LogOptions,
    PodOutcome, PodStatus, PodUsage, ResolvedPod, StateRunning, StreamTarget,
};
use serde::{Deserialize, Serialize};
use vk::provider::log::{self as hostlog, Level};
use vk::provider::types::{CallContext, Event, InvalidInput, KeyValue, PodRef, ProviderError};

mod time;

/// The type the exports are implemented on. It holds nothing: every call runs in a fresh
/// instance, so anything kept in memory is gone after the call. State goes in `kv`.
struct Example;

// Registers `Example` as the component's exports. Only meaningful in the wasm build; natively
// the crate still compiles (and its pure functions are unit-tested).
#[cfg(target_arch = "wasm32")]
export!(Example);

// ---------------------------------------------------------------------------------------------
// Config: the node's `[nodes.provider]` table, as JSON.

/// Unknown keys are refused, so an operator's typo is reported instead of silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The node's `pods` capacity.
    #[serde(default = "default_max_pods")]
    max_pods: u32,
}

fn default_max_pods() -> u32 {
    200
}

const MAX_PODS_LIMIT: u32 = 1000;

fn parse_config(json: &str) -> Result<Config, ProviderError> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let config: Config = serde_json::from_str(json).map_err(|e| invalid("InvalidConfig", "config", e.to_string()))?;
    if config.max_pods == 0 || config.max_pods > MAX_PODS_LIMIT {
        return Err(invalid(
            "InvalidConfig",
            "config.max_pods",
            format!("max_pods is {}, but must be between 1 and {MAX_PODS_LIMIT}", config.max_pods),
        ));
    }
    Ok(config)
}

fn invalid(reason: &str, field: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::Invalid(InvalidInput { reason: reason.into(), field: field.into(), message: message.into() })
}

impl metadata::Guest for Example {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: "0.1.0".into(),
            description: "Example provider: pods are records in the host's kv store, Running at once".into(),
        }
    }

    fn validate_config(_node: String, config: String) -> Result<String, ProviderError> {
        let config = parse_config(&config)?;
        Ok(serde_json::to_string(&config).expect("config serialises"))
    }
}

// ---------------------------------------------------------------------------------------------
// Node.

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: value.into() }
}

impl node::Guest for Example {
    fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> {
        let config = parse_config(&ctx.config)?;
        let capacity = vec![kv("cpu", "1000"), kv("memory", "4Ti"), kv("pods", &config.max_pods.to_string())];
        Ok(NodeOffer {
            allocatable: capacity.clone(),
            capacity,
            labels: vec![],
            taints: vec![],
            conditions: vec![NodeCondition {
                kind: "Ready".into(),
                status: "True".into(),
                reason: "ExampleProviderReady".into(),
                message: "the example provider is always ready".into(),
            }],
            operating_system: "linux".into(),
            architecture: "amd64".into(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Pods. The "backend" record of one instance, stored as JSON under `instances/<node>/<uid>`.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    namespace: String,
    name: String,
    uid: String,
    instance_id: String,
    pod_ip: String,
    started_at: String,
    /// (name, image) of each container, init containers first.
    init_containers: Vec<(String, String)>,
    containers: Vec<(String, String)>,
}

fn key(node: &str, uid: &str) -> String {
    format!("instances/{node}/{uid}")
}

fn load(node: &str, uid: &str) -> Result<Option<Record>, ProviderError> {
    match vk::provider::kv::get(&key(node, uid)) {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Internal(format!("stored record for pod uid {uid} is corrupt: {e}"))),
    }
}

fn save(node: &str, record: &Record) -> Result<(), ProviderError> {
    let bytes = serde_json::to_vec(record).expect("record serialises");
    if vk::provider::kv::set(&key(node, &record.uid), &bytes, None) {
        Ok(())
    } else {
        Err(ProviderError::QuotaExceeded("the host's kv store for this plugin is full".into()))
    }
}

/// The fields of the Pod JSON this provider needs.
#[derive(Debug, Deserialize)]
struct PodJson {
    metadata: PodMeta,
    spec: PodSpec,
}

#[derive(Debug, Deserialize)]
struct PodMeta {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    uid: String,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<ContainerJson>,
    #[serde(default)]
    init_containers: Vec<ContainerJson>,
}

#[derive(Debug, Deserialize)]
struct ContainerJson {
    name: String,
    #[serde(default)]
    image: String,
}

fn parse_pod(pod: &ResolvedPod) -> Result<PodJson, ProviderError> {
    let parsed: PodJson = serde_json::from_str(&pod.pod)
        .map_err(|e| invalid("InvalidPod", "pod", format!("cannot read the pod: {e}")))?;
    if parsed.metadata.uid.is_empty() {
        return Err(invalid("InvalidPod", "metadata.uid", "the pod has no uid"));
    }
    Ok(parsed)
}

/// A stable private address from the uid (10.0.0.0/8), so status never changes between calls.
fn pod_ip(uid: &str) -> String {
    // FNV-1a: tiny, deterministic, good enough to spread addresses.
    let h = uid.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("10.{}.{}.{}", (h >> 16) & 0xff, (h >> 8) & 0xff, (h & 0xff) % 254 + 1)
}

fn containers(list: &[ContainerJson]) -> Vec<(String, String)> {
    list.iter().map(|c| (c.name.clone(), c.image.clone())).collect()
}

fn running(record: &Record, list: &[(String, String)]) -> Vec<ContainerStatus> {
    list.iter()
        .map(|(name, image)| ContainerStatus {
            name: name.clone(),
            image: image.clone(),
            ready: true,
            restart_count: 0,
            state: ContainerState::Running(StateRunning { started_at: record.started_at.clone() }),
            last_state: None,
        })
        .collect()
}

fn status(record: &Record) -> PodStatus {
    PodStatus {
        phase: "Running".into(),
        reason: String::new(),
        message: String::new(),
        pod_ip: Some(record.pod_ip.clone()),
        start_time: Some(record.started_at.clone()),
        // Init containers have run to completion by the time the pod is Running; the example
        // reports them running too to stay small.
        init_container_statuses: running(record, &record.init_containers),
        container_statuses: running(record, &record.containers),
    }
}

fn outcome(record: &Record, events: Vec<Event>) -> PodOutcome {
    PodOutcome {
        instance_id: record.instance_id.clone(),
        status: status(record),
        annotations: vec![kv("example.vk.io/instance-id", &record.instance_id)],
        events,
    }
}

fn not_found(pod: &PodRef) -> ProviderError {
    ProviderError::NotFound(format!("no instance for pod {}/{} (uid {})", pod.namespace, pod.name, pod.uid))
}

fn no_streams(what: &str) -> ProviderError {
    invalid(
        "NotSupported",
        "container",
        format!("the example provider has no {what}: its instances are records in a key-value store"),
    )
}

impl pods::Guest for Example {
    fn create(ctx: CallContext, pod: ResolvedPod) -> Result<PodOutcome, ProviderError> {
        let parsed = parse_pod(&pod)?;
        // Idempotent by uid: the host may retry a create whose answer it never saw.
        if let Some(existing) = load(&ctx.node_name, &parsed.metadata.uid)? {
            return Ok(outcome(&existing, vec![]));
        }
        let uid = parsed.metadata.uid;
        let record = Record {
            instance_id: format!("example-{}", &uid[..uid.len().min(8)]),
            pod_ip: pod_ip(&uid),
            started_at: time::now_rfc3339(),
            namespace: parsed.metadata.namespace,
            name: parsed.metadata.name,
            init_containers: containers(&parsed.spec.init_containers),
            containers: containers(&parsed.spec.containers),
            uid,
        };
        save(&ctx.node_name, &record)?;
        hostlog::emit(
            Level::Info,
            "created instance",
            &[kv("pod", &format!("{}/{}", record.namespace, record.name)), kv("instance", &record.instance_id)],
        );
        let created = Event {
            kind: "Normal".into(),
            reason: "InstanceCreated".into(),
            message: format!("example instance {} created", record.instance_id),
        };
        Ok(outcome(&record, vec![created]))
    }

    fn update(ctx: CallContext, pod: ResolvedPod) -> Result<PodOutcome, ProviderError> {
        let parsed = parse_pod(&pod)?;
        let pod_ref = PodRef {
            namespace: parsed.metadata.namespace.clone(),
            name: parsed.metadata.name.clone(),
            uid: parsed.metadata.uid.clone(),
        };
        let mut record = load(&ctx.node_name, &parsed.metadata.uid)?.ok_or_else(|| not_found(&pod_ref))?;
        // Only images can change on a running pod.
        record.containers = containers(&parsed.spec.containers);
        record.init_containers = containers(&parsed.spec.init_containers);
        save(&ctx.node_name, &record)?;
        Ok(outcome(&record, vec![]))
    }

    fn delete(ctx: CallContext, pod: PodRef, _reason: DeleteReason) -> Result<Deletion, ProviderError> {
        // The example has no attached resources, so every reason deletes the same way.
        if vk::provider::kv::delete(&key(&ctx.node_name, &pod.uid)) { Ok(Deletion::Gone) } else { Err(not_found(&pod)) }
    }

    fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
        let record = load(&ctx.node_name, &pod.uid)?.ok_or_else(|| not_found(&pod))?;
        Ok(status(&record))
    }

    fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = Vec::new();
        for key in vk::provider::kv::keys(&format!("instances/{}/", ctx.node_name)) {
            let uid = key.rsplit('/').next().unwrap_or_default();
            // A record deleted between `keys` and `get` is simply not listed.
            if let Some(record) = load(&ctx.node_name, uid)? {
                instances.push(Instance {
                    pod: PodRef {
                        namespace: record.namespace.clone(),
                        name: record.name.clone(),
                        uid: record.uid.clone(),
                    },
                    instance_id: record.instance_id.clone(),
                    status: status(&record),
                });
            }
        }
        Ok(instances)
    }

    fn logs(_: CallContext, _: PodRef, _: String, _: LogOptions) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("logs"))
    }

    fn exec(_: CallContext, _: PodRef, _: String, _: ExecOptions) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("exec"))
    }

    fn attach(_: CallContext, _: PodRef, _: String, _: ExecOptions) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("attach"))
    }

    fn usage(ctx: CallContext, pods: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
        let now = time::now_rfc3339();
        let mut usage = Vec::new();
        for pod in pods {
            // Pods without an instance are left out, as the contract asks.
            let Some(record) = load(&ctx.node_name, &pod.uid)? else { continue };
            let containers = record
                .containers
                .iter()
                .map(|(name, _)| ContainerUsage {
                    name: name.clone(),
                    cpu_usage_core_nano_seconds: 1_000_000_000,
                    cpu_usage_nano_cores: 1_000_000,
                    memory_working_set_bytes: 16 << 20,
                    memory_usage_bytes: 20 << 20,
                    start_time: record.started_at.clone(),
                })
                .collect();
            usage.push(PodUsage { pod, timestamp: now.clone(), containers });
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_max_pods_and_refuses_unknown_keys() {
        assert_eq!(parse_config("").unwrap(), Config { max_pods: 200 });
        assert_eq!(parse_config(r#"{"max_pods": 8}"#).unwrap(), Config { max_pods: 8 });
        let ProviderError::Invalid(e) = parse_config(r#"{"max_pod": 8}"#).unwrap_err() else { panic!() };
        assert!(e.message.contains("max_pod"), "{}", e.message);
        let ProviderError::Invalid(e) = parse_config(r#"{"max_pods": 0}"#).unwrap_err() else { panic!() };
        assert_eq!(e.field, "config.max_pods");
    }

    #[test]
    fn pod_ip_is_stable_and_private() {
        let ip = pod_ip("6f1c7a7e-0000-4000-8000-000000000001");
        assert_eq!(ip, pod_ip("6f1c7a7e-0000-4000-8000-000000000001"));
        assert!(ip.starts_with("10."));
        assert!(!ip.ends_with(".0"));
    }
}
