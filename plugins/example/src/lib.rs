//! The example provider: a template for provider authors. Its "backend" is the host's `kv` store:
//! creating a pod writes a record there and the pod is reported Running at once.
//!
//! Read it top to bottom: config, metadata (who am I, is this config valid), node (what do I
//! offer), pods (lifecycle). It is written on the guest SDK (`vk_provider_sdk`): one `Provider`
//! impl, one `export_provider!`. Everything a real provider adds is I/O through the `http` import
//! (`vk_provider_sdk::retry::send` for requests worth retrying).

use serde::{Deserialize, Serialize};
use vk_provider_sdk::log::{self as hostlog, Level};
use vk_provider_sdk::time::now_rfc3339;
use vk_provider_sdk::{
    CONTRACT_VERSION, CallContext, ContainerState, ContainerStatus, ContainerUsage, CreateAttempt, CreatePlan,
    DeleteReason, Deletion, Event, Instance, NodeCondition, NodeOffer, NotApplied, PluginInfo, Pod, PodChange,
    PodOutcome, PodPhase, PodRef, PodStatus, PodUsage, Provider, ProviderError, StateRunning, StreamTarget,
    UpdateOutcome, export_provider, invalid, kv,
};

/// The type the exports are implemented on. It holds nothing: every call runs in a fresh
/// instance, so anything kept in memory is gone after the call. State goes in `kv`.
struct Example;

// Registers `Example` as the component's exports (in the wasm build; natively it expands to
// nothing, and the crate's pure functions are unit-tested).
export_provider!(Example);

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
    match vk_provider_sdk::kv::get(&key(node, uid)) {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Internal(format!("stored record for pod uid {uid} is corrupt: {e}"))),
    }
}

fn save(node: &str, record: &Record) -> Result<(), ProviderError> {
    let bytes = serde_json::to_vec(record).expect("record serialises");
    if vk_provider_sdk::kv::set(&key(node, &record.uid), &bytes, None) {
        Ok(())
    } else {
        Err(ProviderError::QuotaExceeded("the host's kv store for this plugin is full".into()))
    }
}

/// The record `create` writes for a pod: a pure function of the pod and the time, so `plan`
/// can show it without writing it.
fn record_for(pod: &Pod, started_at: String) -> Result<Record, ProviderError> {
    let uid = pod.uid().to_string();
    if uid.is_empty() {
        return Err(invalid("InvalidPod", "metadata.uid", "the pod has no uid"));
    }
    let spec = pod.spec();
    Ok(Record {
        instance_id: format!("example-{}", &uid[..uid.len().min(8)]),
        pod_ip: pod_ip(&uid),
        started_at,
        namespace: pod.metadata().namespace.clone(),
        name: pod.metadata().name.clone(),
        init_containers: containers(&spec.init_containers),
        containers: containers(&spec.containers),
        uid,
    })
}

/// A stable private address from the uid (10.0.0.0/8), so status never changes between calls.
fn pod_ip(uid: &str) -> String {
    // FNV-1a: tiny, deterministic, good enough to spread addresses.
    let h = uid.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("10.{}.{}.{}", (h >> 16) & 0xff, (h >> 8) & 0xff, (h & 0xff) % 254 + 1)
}

fn containers(list: &[vk_provider_sdk::pod::Container]) -> Vec<(String, String)> {
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
        phase: PodPhase::Running,
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

const INSTANCE_ANNOTATION: &str = "example.vk.io/instance-id";

fn created_event(record: &Record) -> Event {
    Event::normal("InstanceCreated", format!("example instance {} created", record.instance_id))
}

fn outcome(record: &Record, events: Vec<Event>) -> PodOutcome {
    PodOutcome {
        instance_id: record.instance_id.clone(),
        status: status(record),
        annotations: vec![kv(INSTANCE_ANNOTATION, &record.instance_id)],
        events,
    }
}

fn not_found(pod: &PodRef) -> ProviderError {
    ProviderError::NotFound(format!("no instance for pod {pod} (uid {})", pod.uid))
}

fn no_streams(what: &str) -> ProviderError {
    ProviderError::Unsupported(format!(
        "the example provider has no {what}: its instances are records in a key-value store, with no process to reach"
    ))
}

/// What an update does with each change: images are recorded; a ConfigMap or Secret read only
/// into the environment cannot change in a running container (as with a real kubelet), so it
/// is reported not applied; everything else has nothing to change in a record.
fn not_applied(pod: &Pod, changes: &[PodChange]) -> Vec<NotApplied> {
    changes
        .iter()
        .filter_map(|change| {
            let uses = match change {
                PodChange::ConfigMap(name) => pod.uses_config_map(name),
                PodChange::Secret(name) => pod.uses_secret(name),
                _ => return None,
            };
            (uses.env && !uses.mounted).then(|| NotApplied {
                change: change.clone(),
                reason: "EnvChangeNotApplied".into(),
                message: format!(
                    "{} changed, but the pod reads it only into environment variables: the containers keep their environment until the pod is recreated",
                    change.describe()
                ),
            })
        })
        .collect()
}

impl Provider for Example {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: CONTRACT_VERSION.into(),
            description: "Example provider: pods are records in the host's kv store, Running at once".into(),
        }
    }

    fn validate_config(_node: String, config: String) -> Result<String, ProviderError> {
        let config = parse_config(&config)?;
        Ok(serde_json::to_string(&config).expect("config serialises"))
    }

    fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> {
        let config = parse_config(&ctx.config)?;
        let capacity = vec![kv("cpu", "1000"), kv("memory", "4Ti"), kv("pods", config.max_pods.to_string())];
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

    /// The example's create sends no request (its backend is `kv`): the plan is what it would
    /// answer.
    fn plan(_ctx: CallContext, pod: Pod) -> Result<CreatePlan, ProviderError> {
        let record = record_for(&pod, now_rfc3339())?;
        Ok(CreatePlan {
            requests: vec![],
            annotations: vec![kv(INSTANCE_ANNOTATION, &record.instance_id)],
            events: vec![created_event(&record)],
        })
    }

    fn create(ctx: CallContext, pod: Pod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> {
        // Idempotent by uid: the host may retry a create whose answer it never saw. A lookup in
        // `kv` is cheap, so the example does it even when `attempt.may_exist` is false.
        let _ = attempt;
        if let Some(existing) = load(&ctx.node_name, pod.uid())? {
            return Ok(outcome(&existing, vec![]));
        }
        let record = record_for(&pod, now_rfc3339())?;
        save(&ctx.node_name, &record)?;
        hostlog::emit(
            Level::Info,
            "created instance",
            &[kv("pod", format!("{}/{}", record.namespace, record.name)), kv("instance", &record.instance_id)],
        );
        Ok(outcome(&record, vec![created_event(&record)]))
    }

    fn update(ctx: CallContext, pod: Pod, changes: Vec<PodChange>) -> Result<UpdateOutcome, ProviderError> {
        let mut record = load(&ctx.node_name, pod.uid())?.ok_or_else(|| not_found(&pod.pod_ref()))?;
        // Only images are kept in the record.
        record.containers = containers(&pod.spec().containers);
        record.init_containers = containers(&pod.spec().init_containers);
        save(&ctx.node_name, &record)?;
        Ok(UpdateOutcome { outcome: outcome(&record, vec![]), not_applied: not_applied(&pod, &changes) })
    }

    fn delete(ctx: CallContext, pod: PodRef, _reason: DeleteReason) -> Result<Deletion, ProviderError> {
        // The example has no attached resources, so every reason deletes the same way, at once,
        // with nothing left to finalize.
        if vk_provider_sdk::kv::delete(&key(&ctx.node_name, &pod.uid)) {
            Ok(Deletion::Gone)
        } else {
            Err(not_found(&pod))
        }
    }

    fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
        let record = load(&ctx.node_name, &pod.uid)?.ok_or_else(|| not_found(&pod))?;
        Ok(status(&record))
    }

    fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = Vec::new();
        for key in vk_provider_sdk::kv::keys(&format!("instances/{}/", ctx.node_name)) {
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

    fn logs(
        _: CallContext,
        _: PodRef,
        _: String,
        _: vk_provider_sdk::LogOptions,
    ) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("logs"))
    }

    fn exec(
        _: CallContext,
        _: PodRef,
        _: String,
        _: vk_provider_sdk::ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("exec"))
    }

    fn attach(
        _: CallContext,
        _: PodRef,
        _: String,
        _: vk_provider_sdk::ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("attach"))
    }

    fn port_forward(_: CallContext, _: PodRef, _: u16) -> Result<StreamTarget, ProviderError> {
        Err(no_streams("ports to forward"))
    }

    fn usage(ctx: CallContext, pods: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
        let now = now_rfc3339();
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
    use vk_provider_sdk::ResolvedPod;

    fn pod(json: &str) -> Pod {
        Pod::parse(ResolvedPod::from_pod_json(json)).unwrap()
    }

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

    #[test]
    fn plan_shows_what_create_answers_and_refuses_a_pod_without_uid() {
        let p = pod(
            r#"{"metadata":{"name":"web","uid":"6f1c7a7e-1"},"spec":{"containers":[{"name":"app","image":"nginx"}]}}"#,
        );
        let plan = Example::plan(CallContext::default(), p.clone()).unwrap();
        let record = record_for(&p, "t".into()).unwrap();
        assert!(plan.requests.is_empty());
        assert_eq!(plan.annotations, outcome(&record, vec![]).annotations);
        assert_eq!(plan.events, vec![created_event(&record)]);
        let err = Example::plan(CallContext::default(), pod(r#"{"metadata":{"name":"web"}}"#)).unwrap_err();
        let ProviderError::Invalid(e) = err else { panic!("{err:?}") };
        assert_eq!(e.field, "metadata.uid");
    }

    #[test]
    fn env_only_config_changes_are_reported_not_applied() {
        let p = pod(r#"{"metadata":{"name":"web","uid":"u"},"spec":{
                "containers":[{"name":"app","envFrom":[{"configMapRef":{"name":"env"}}],
                               "env":[{"name":"S","valueFrom":{"secretKeyRef":{"name":"both","key":"k"}}}]}],
                "volumes":[{"name":"v","configMap":{"name":"files"}},{"name":"s","secret":{"secretName":"both"}}]}}"#);
        let changes = vec![
            PodChange::ConfigMap("env".into()),
            PodChange::ConfigMap("files".into()),
            PodChange::Secret("both".into()),
            PodChange::Token("kube-api-access".into()),
        ];
        let out = not_applied(&p, &changes);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].change, PodChange::ConfigMap("env".into()));
        assert_eq!(out[0].reason, "EnvChangeNotApplied");
        assert!(out[0].message.starts_with("ConfigMap env changed"), "{}", out[0].message);
    }
}
