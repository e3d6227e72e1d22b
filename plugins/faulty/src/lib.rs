//! A test fixture provider that misbehaves on request, so the host's runtime tests can show each
//! failure becomes a typed error and the next call still works.
//!
//! The behaviour comes from the pod name (pod exports) or the config's `mode` (validate-config,
//! node.describe): `trap`, `unreachable`, `loop`, `oom`, `denied` (HTTP outside the allowlist),
//! `echo` (HTTP to the config's `echo_url`), `sleep-http` (HTTP to `echo_url` + `/sleep`),
//! anything else behaves. Build-time switches: `FAULTY_VERSION` (the reported version),
//! `FAULTY_BROKEN` (validate-config always traps: a bad release for reload tests) and
//! `FAULTY_BROKEN_PODS` (validate-config passes, node and pod exports trap: a bad release only
//! its calls reveal, for rollout tests).

wit_bindgen::generate!({ path: "../../wit/v0.1.0", world: "provider" });

use exports::vk::provider::metadata::{self, PluginInfo};
use exports::vk::provider::node::{self, NodeOffer};
use exports::vk::provider::pods::{
    self, DeleteReason, Deletion, ExecOptions, Instance, LogOptions, PodOutcome, PodStatus, PodUsage, ResolvedPod,
    StreamProtocol, StreamTarget,
};
use vk::provider::http::{self, HttpError, Request};
use vk::provider::types::{CallContext, InvalidInput, KeyValue, PodRef, ProviderError};

struct Faulty;

#[cfg(target_arch = "wasm32")]
export!(Faulty);

const VERSION: &str = match option_env!("FAULTY_VERSION") {
    Some(v) => v,
    None => "0.0.0-dev",
};
const BROKEN: bool = option_env!("FAULTY_BROKEN").is_some();
const BROKEN_PODS: bool = option_env!("FAULTY_BROKEN_PODS").is_some();

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: value.into() }
}

fn config_field(config: &str, field: &str) -> String {
    serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get(field).and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

fn pod_name(pod: &ResolvedPod) -> String {
    serde_json::from_str::<serde_json::Value>(&pod.pod)
        .ok()
        .and_then(|v| v["metadata"]["name"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Does what `mode` says; returns an annotation value for the modes that return at all.
fn misbehave(mode: &str, ctx: &CallContext) -> Result<String, ProviderError> {
    if BROKEN_PODS {
        panic!("faulty {VERSION} is a broken build: every node and pod export traps");
    }
    match mode {
        "trap" => panic!("faulty provider asked to trap"),
        #[cfg(target_arch = "wasm32")]
        "unreachable" => core::arch::wasm32::unreachable(),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "oom" => {
            // Keep every block alive so the allocator must keep growing linear memory.
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&blocks);
            }
        }
        "denied" => send("GET", "http://forbidden.example.invalid/steal", b"").map(|_| String::new()),
        "echo" => {
            let url = config_field(&ctx.config, "echo_url");
            let body = format!("ping from {VERSION}");
            send("POST", &url, body.as_bytes())
        }
        "sleep-http" => {
            let url = format!("{}/sleep", config_field(&ctx.config, "echo_url"));
            send("GET", &url, b"")
        }
        _ => Ok(String::new()),
    }
}

fn send(method: &str, url: &str, body: &[u8]) -> Result<String, ProviderError> {
    let req = Request { method: method.into(), url: url.into(), headers: vec![], body: body.to_vec(), timeout_ms: 0 };
    match http::send(&req) {
        Ok(resp) => Ok(String::from_utf8_lossy(&resp.body).into_owned()),
        Err(HttpError::Denied(url)) => Err(ProviderError::Internal(format!("http denied: {url}"))),
        Err(HttpError::Timeout) => Err(ProviderError::Transient("http timeout".into())),
        Err(HttpError::Transport(e)) => Err(ProviderError::Transient(format!("http transport: {e}"))),
        Err(HttpError::InvalidRequest(e)) => Err(ProviderError::Internal(format!("http invalid request: {e}"))),
    }
}

fn status() -> PodStatus {
    PodStatus {
        phase: "Running".into(),
        reason: String::new(),
        message: String::new(),
        pod_ip: Some("10.9.9.9".into()),
        start_time: None,
        init_container_statuses: vec![],
        container_statuses: vec![],
    }
}

impl metadata::Guest for Faulty {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "faulty".into(),
            version: VERSION.into(),
            contract_version: "0.1.0".into(),
            description: "test fixture that traps, loops, over-allocates or over-reaches on request".into(),
        }
    }

    fn validate_config(node: String, config: String) -> Result<String, ProviderError> {
        if BROKEN {
            panic!("faulty {VERSION} is a broken build: validate-config always traps");
        }
        let mode = config_field(&config, "mode");
        if mode == "reject" {
            return Err(ProviderError::Invalid(InvalidInput {
                reason: "InvalidConfig".into(),
                field: "config.mode".into(),
                message: "mode is reject, so this config is rejected".into(),
            }));
        }
        if BROKEN_PODS {
            return Ok(config);
        }
        let ctx = CallContext { node_name: node, config: config.clone() };
        misbehave(&mode, &ctx)?;
        Ok(config)
    }
}

impl node::Guest for Faulty {
    fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> {
        let echoed = misbehave(&config_field(&ctx.config, "mode"), &ctx)?;
        Ok(NodeOffer {
            capacity: vec![kv("cpu", "1"), kv("memory", "1Gi"), kv("pods", "10")],
            allocatable: vec![kv("cpu", "1"), kv("memory", "1Gi"), kv("pods", "10")],
            labels: vec![kv("faulty/version", VERSION), kv("faulty/echo", &echoed)],
            taints: vec![],
            conditions: vec![],
            operating_system: "linux".into(),
            architecture: "amd64".into(),
        })
    }
}

impl pods::Guest for Faulty {
    fn create(ctx: CallContext, pod: ResolvedPod) -> Result<PodOutcome, ProviderError> {
        let echoed = misbehave(&pod_name(&pod), &ctx)?;
        Ok(PodOutcome {
            instance_id: "faulty-1".into(),
            status: status(),
            annotations: vec![kv("faulty/answered-by", VERSION), kv("faulty/echo", &echoed)],
            events: vec![],
        })
    }

    fn update(ctx: CallContext, pod: ResolvedPod) -> Result<PodOutcome, ProviderError> {
        Self::create(ctx, pod)
    }

    fn delete(ctx: CallContext, pod: PodRef, _: DeleteReason) -> Result<Deletion, ProviderError> {
        misbehave(&pod.name, &ctx)?;
        Ok(Deletion::Gone)
    }

    fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
        misbehave(&pod.name, &ctx)?;
        Ok(status())
    }

    fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> {
        if BROKEN_PODS {
            misbehave("", &ctx)?;
        }
        Ok(vec![])
    }

    /// Returns a stream target at the URL named by the container argument, so tests can check
    /// the host vets it against the allowlist.
    fn logs(ctx: CallContext, pod: PodRef, container: String, _: LogOptions) -> Result<StreamTarget, ProviderError> {
        misbehave(&pod.name, &ctx)?;
        Ok(StreamTarget { url: container, headers: vec![], protocol: StreamProtocol::HttpBody })
    }

    fn exec(ctx: CallContext, pod: PodRef, container: String, _: ExecOptions) -> Result<StreamTarget, ProviderError> {
        misbehave(&pod.name, &ctx)?;
        Ok(StreamTarget { url: container, headers: vec![], protocol: StreamProtocol::WebsocketChannels })
    }

    fn attach(ctx: CallContext, pod: PodRef, container: String, o: ExecOptions) -> Result<StreamTarget, ProviderError> {
        Self::exec(ctx, pod, container, o)
    }

    fn usage(_: CallContext, _: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
        Ok(vec![])
    }
}
