//! The WASM face of the provider: the `vk:provider@0.1.2` bindings, the host imports behind the
//! `Host` trait, and the exports converted to and from the plain contract types.

use std::time::{SystemTime, UNIX_EPOCH};

wit_bindgen::generate!({
    world: "provider",
    path: "../../wit/v0.1.2",
});

use exports::vk::provider::{metadata, node, pods};
use vk::provider::types as wit;
use vk::provider::{http, log, metrics, store};

use crate::api::{HttpError, HttpRequest, HttpResponse, Transport};
use crate::contract as c;
use crate::error::{InvalidInput, ProviderError};
use crate::host::{Host, Level};
use crate::instances::Cube;

struct WitHost;

impl Transport for WitHost {
    fn send(&self, r: HttpRequest) -> Result<HttpResponse, HttpError> {
        let req = http::Request {
            method: r.method,
            url: r.url,
            headers: r.headers.into_iter().map(|(key, value)| wit::KeyValue { key, value }).collect(),
            body: r.body,
            timeout_ms: r.timeout_ms,
        };
        match http::send(&req) {
            Ok(resp) => Ok(HttpResponse {
                status: resp.status,
                headers: resp.headers.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                body: resp.body,
            }),
            Err(http::HttpError::Denied(u)) => Err(HttpError::Denied(u)),
            Err(http::HttpError::Timeout) => Err(HttpError::Timeout),
            Err(http::HttpError::Transport(e)) => Err(HttpError::Transport(e)),
            Err(http::HttpError::InvalidRequest(e)) => Err(HttpError::InvalidRequest(e)),
        }
    }

    fn count_api_error(&self, action: &str, code: &str) {
        let labels = [
            wit::KeyValue { key: "action".into(), value: action.into() },
            wit::KeyValue { key: "ret_code".into(), value: code.into() },
        ];
        metrics::counter_add("cloud_api_errors", &labels, 1);
    }
}

impl Host for WitHost {
    fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        store::get(key)
    }
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        store::set(key, value).map_err(store_error)
    }
    fn store_delete(&self, key: &str) -> Result<bool, String> {
        store::delete(key).map_err(store_error)
    }
    fn now_unix(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        let level = match level {
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        let fields: Vec<wit::KeyValue> =
            fields.iter().map(|(k, v)| wit::KeyValue { key: k.to_string(), value: v.to_string() }).collect();
        log::emit(level, message, &fields);
    }
}

fn store_error(e: store::StoreError) -> String {
    match e {
        store::StoreError::OverLimit(m) | store::StoreError::Unavailable(m) => m,
    }
}

// ---- conversions ----

fn err(e: ProviderError) -> wit::ProviderError {
    match e {
        ProviderError::Invalid(InvalidInput { reason, field, message }) => {
            wit::ProviderError::Invalid(wit::InvalidInput { reason, field, message })
        }
        ProviderError::NotFound(m) => wit::ProviderError::NotFound(m),
        ProviderError::Transient(m) => wit::ProviderError::Transient(m),
        ProviderError::QuotaExceeded(m) => wit::ProviderError::QuotaExceeded(m),
        ProviderError::Internal(m) => wit::ProviderError::Internal(m),
    }
}

fn kvs(list: Vec<(String, String)>) -> Vec<wit::KeyValue> {
    list.into_iter().map(|(key, value)| wit::KeyValue { key, value }).collect()
}

fn ctx(x: wit::CallContext) -> c::CallContext {
    c::CallContext { node_name: x.node_name, config: x.config }
}

fn pod_ref(p: wit::PodRef) -> c::PodRef {
    c::PodRef { namespace: p.namespace, name: p.name, uid: p.uid }
}

fn wit_pod_ref(p: c::PodRef) -> wit::PodRef {
    wit::PodRef { namespace: p.namespace, name: p.name, uid: p.uid }
}

fn resolved(p: pods::ResolvedPod) -> c::ResolvedPod {
    c::ResolvedPod {
        pod: p.pod,
        env: p
            .env
            .into_iter()
            .map(|e| c::ContainerEnv {
                container: e.container,
                vars: e.vars.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            })
            .collect(),
        config_maps: p
            .config_maps
            .into_iter()
            .map(|m| c::ConfigMap {
                name: m.name,
                data: m.data.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                binary_data: m.binary_data.into_iter().map(|b| (b.key, b.value)).collect(),
            })
            .collect(),
        secrets: p
            .secrets
            .into_iter()
            .map(|s| c::Secret {
                name: s.name,
                kind: s.kind,
                data: s.data.into_iter().map(|b| (b.key, b.value)).collect(),
            })
            .collect(),
        claims: p
            .claims
            .into_iter()
            .map(|v| c::VolumeClaim { claim_name: v.claim_name, claim: v.claim, volume: v.volume })
            .collect(),
        tokens: p
            .tokens
            .into_iter()
            .map(|t| c::ServiceAccountToken {
                volume_name: t.volume_name,
                path: t.path,
                token: t.token,
                expires_at: t.expires_at,
                audience: t.audience,
            })
            .collect(),
    }
}

fn state(s: c::ContainerState) -> pods::ContainerState {
    match s {
        c::ContainerState::Waiting { reason, message } => {
            pods::ContainerState::Waiting(pods::StateWaiting { reason, message })
        }
        c::ContainerState::Running { started_at } => pods::ContainerState::Running(pods::StateRunning { started_at }),
        c::ContainerState::Terminated { exit_code, reason, message, started_at, finished_at } => {
            pods::ContainerState::Terminated(pods::StateTerminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            })
        }
    }
}

fn container_status(s: c::ContainerStatus) -> pods::ContainerStatus {
    pods::ContainerStatus {
        name: s.name,
        image: s.image,
        ready: s.ready,
        restart_count: s.restart_count,
        state: state(s.state),
        last_state: s.last_state.map(state),
    }
}

fn status(s: c::PodStatus) -> pods::PodStatus {
    pods::PodStatus {
        phase: s.phase,
        reason: s.reason,
        message: s.message,
        pod_ip: s.pod_ip,
        start_time: s.start_time,
        init_container_statuses: s.init_container_statuses.into_iter().map(container_status).collect(),
        container_statuses: s.container_statuses.into_iter().map(container_status).collect(),
    }
}

fn outcome(o: c::PodOutcome) -> pods::PodOutcome {
    pods::PodOutcome {
        instance_id: o.instance_id,
        status: status(o.status),
        annotations: kvs(o.annotations),
        events: o
            .events
            .into_iter()
            .map(|e| wit::Event { kind: e.kind, reason: e.reason, message: e.message })
            .collect(),
    }
}

fn target(t: c::StreamTarget) -> pods::StreamTarget {
    pods::StreamTarget {
        url: t.url,
        headers: kvs(t.headers),
        protocol: match t.protocol {
            c::StreamProtocol::HttpBody => pods::StreamProtocol::HttpBody,
            c::StreamProtocol::WebsocketChannels => pods::StreamProtocol::WebsocketChannels,
        },
    }
}

fn exec_options(o: pods::ExecOptions) -> c::ExecOptions {
    c::ExecOptions { command: o.command, stdin: o.stdin, stdout: o.stdout, stderr: o.stderr, tty: o.tty }
}

fn with_cube<T>(
    x: wit::CallContext,
    f: impl FnOnce(&Cube<WitHost>) -> Result<T, ProviderError>,
) -> Result<T, wit::ProviderError> {
    let cube = Cube::new(&WitHost, &ctx(x)).map_err(err)?;
    f(&cube).map_err(err)
}

// ---- exports ----

struct Provider;

impl metadata::Guest for Provider {
    fn info() -> metadata::PluginInfo {
        metadata::PluginInfo {
            name: crate::node::NAME.into(),
            version: crate::node::VERSION.into(),
            contract_version: crate::node::CONTRACT_VERSION.into(),
            description: crate::node::DESCRIPTION.into(),
        }
    }

    fn validate_config(_node_name: String, config: String) -> Result<String, wit::ProviderError> {
        crate::node::validate_config(&config).map_err(err)
    }
}

impl node::Guest for Provider {
    fn describe(x: wit::CallContext) -> Result<node::NodeOffer, wit::ProviderError> {
        let config = crate::config::NodeConfig::parse(&x.config).map_err(|e| err(e.into()))?;
        let o = crate::node::describe(&config);
        Ok(node::NodeOffer {
            capacity: kvs(o.capacity),
            allocatable: kvs(o.allocatable),
            labels: kvs(o.labels),
            taints: o
                .taints
                .into_iter()
                .map(|t| node::Taint { key: t.key, value: t.value, effect: t.effect })
                .collect(),
            conditions: o
                .conditions
                .into_iter()
                .map(|c| node::NodeCondition { kind: c.kind, status: c.status, reason: c.reason, message: c.message })
                .collect(),
            operating_system: o.operating_system,
            architecture: o.architecture,
        })
    }
}

impl pods::Guest for Provider {
    fn create(x: wit::CallContext, pod: pods::ResolvedPod) -> Result<pods::PodOutcome, wit::ProviderError> {
        with_cube(x, |cube| cube.create(&resolved(pod))).map(outcome)
    }

    fn update(x: wit::CallContext, pod: pods::ResolvedPod) -> Result<pods::PodOutcome, wit::ProviderError> {
        with_cube(x, |cube| cube.update(&resolved(pod))).map(outcome)
    }

    fn delete(
        x: wit::CallContext,
        pod: wit::PodRef,
        reason: pods::DeleteReason,
    ) -> Result<pods::Deletion, wit::ProviderError> {
        let reason = match reason {
            pods::DeleteReason::PodDeleted => c::DeleteReason::PodDeleted,
            pods::DeleteReason::Orphaned => c::DeleteReason::Orphaned,
            pods::DeleteReason::NodeDeleted => c::DeleteReason::NodeDeleted,
        };
        with_cube(x, |cube| cube.delete(&pod_ref(pod), reason)).map(|d| match d {
            c::Deletion::Gone => pods::Deletion::Gone,
            c::Deletion::InProgress => pods::Deletion::InProgress,
        })
    }

    fn status(x: wit::CallContext, pod: wit::PodRef) -> Result<pods::PodStatus, wit::ProviderError> {
        with_cube(x, |cube| cube.status(&pod_ref(pod))).map(status)
    }

    fn list(x: wit::CallContext) -> Result<Vec<pods::Instance>, wit::ProviderError> {
        with_cube(x, |cube| cube.list()).map(|list| {
            list.into_iter()
                .map(|i| pods::Instance {
                    pod: wit_pod_ref(i.pod),
                    instance_id: i.instance_id,
                    status: status(i.status),
                })
                .collect()
        })
    }

    fn logs(
        x: wit::CallContext,
        pod: wit::PodRef,
        container: String,
        o: pods::LogOptions,
    ) -> Result<pods::StreamTarget, wit::ProviderError> {
        let o = c::LogOptions {
            follow: o.follow,
            tail_lines: o.tail_lines,
            since_seconds: o.since_seconds,
            since_time: o.since_time,
            timestamps: o.timestamps,
            limit_bytes: o.limit_bytes,
            previous: o.previous,
        };
        with_cube(x, |cube| crate::streams::logs(cube, &pod_ref(pod), &container, &o)).map(target)
    }

    fn exec(
        x: wit::CallContext,
        pod: wit::PodRef,
        container: String,
        o: pods::ExecOptions,
    ) -> Result<pods::StreamTarget, wit::ProviderError> {
        let o = exec_options(o);
        with_cube(x, |cube| crate::streams::exec(cube, &pod_ref(pod), &container, &o, false)).map(target)
    }

    fn attach(
        x: wit::CallContext,
        pod: wit::PodRef,
        container: String,
        o: pods::ExecOptions,
    ) -> Result<pods::StreamTarget, wit::ProviderError> {
        let o = exec_options(o);
        with_cube(x, |cube| crate::streams::exec(cube, &pod_ref(pod), &container, &o, true)).map(target)
    }

    fn usage(x: wit::CallContext, list: Vec<wit::PodRef>) -> Result<Vec<pods::PodUsage>, wit::ProviderError> {
        let refs: Vec<c::PodRef> = list.into_iter().map(pod_ref).collect();
        with_cube(x, |cube| crate::streams::usage(cube, &refs)).map(|usages| {
            usages
                .into_iter()
                .map(|u| pods::PodUsage {
                    pod: wit_pod_ref(u.pod),
                    timestamp: u.timestamp,
                    containers: u
                        .containers
                        .into_iter()
                        .map(|c| pods::ContainerUsage {
                            name: c.name,
                            cpu_usage_core_nano_seconds: c.cpu_usage_core_nano_seconds,
                            cpu_usage_nano_cores: c.cpu_usage_nano_cores,
                            memory_working_set_bytes: c.memory_working_set_bytes,
                            memory_usage_bytes: c.memory_usage_bytes,
                            start_time: c.start_time,
                        })
                        .collect(),
                })
                .collect()
        })
    }
}

export!(Provider);
