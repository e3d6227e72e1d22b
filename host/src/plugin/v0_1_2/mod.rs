//! Contract `vk:provider@0.1.x`, adapted onto the native 0.2 types (Zed's pattern): the bindings of
//! 0.1.2 (which only added imports to 0.1.0: `metrics` in 0.1.1, `store` in 0.1.2, so
//! component-model semver resolves every 0.1.x plugin against them), the host side of its imports
//! delegating to the 0.2 ones, and the conversions of what a 0.1 plugin answers.
//!
//! What 0.1 lacks: `plan`, `finalize` and `port-forward` answer `unsupported` naming the plugin's
//! contract without calling it; `create` ignores the attempt; `update` gets the pod without the
//! changes (so nothing comes back as not applied); a deletion in progress has nothing to finalize.
//! The arguments the host passes are the 0.2 types: their shapes are the same in 0.1 (the calls
//! type each 0.1 function against them, see `calls`).

use crate::plugin::v0_2_0 as native;
use crate::plugin::v0_2_0::vk::provider as native_wit;

use crate::plugin::imports::HostState;

wasmtime::component::bindgen!({
    path: "../wit/v0.1.2",
    world: "provider",
    imports: { default: async | trappable },
    exports: { default: async },
});

/// The contract version these bindings were generated from; every 0.1.x plugin runs on them.
pub const CONTRACT: crate::plugin::contract::Version = crate::plugin::contract::Version::new(0, 1, 2);

pub use exports::vk::provider::metadata::PluginInfo;
pub use exports::vk::provider::node::NodeOffer;
pub use exports::vk::provider::pods::{Deletion, Instance, PodOutcome, PodStatus, StreamTarget};
pub use vk::provider::types::ProviderError;

use exports::vk::provider::node as node01;
use exports::vk::provider::pods as pods01;
use vk::provider as wit01;

/// The error a 0.1 plugin gives for an export 0.1 does not have.
pub fn unsupported(export: &str, contract: &str) -> native::ProviderError {
    native::ProviderError::Unsupported(format!(
        "{export} is not in contract vk:provider@{contract}, which this plugin was built against (it came with 0.2.0)"
    ))
}

// ---- what a 0.1 plugin answers, as 0.2 types ----

pub fn provider_error(e: ProviderError) -> native::ProviderError {
    match e {
        ProviderError::Invalid(i) => native::ProviderError::Invalid(native::InvalidInput {
            reason: i.reason,
            field: i.field,
            message: i.message,
        }),
        ProviderError::NotFound(m) => native::ProviderError::NotFound(m),
        ProviderError::Transient(m) => native::ProviderError::Transient(m),
        ProviderError::QuotaExceeded(m) => native::ProviderError::QuotaExceeded(m),
        ProviderError::Internal(m) => native::ProviderError::Internal(m),
    }
}

pub fn plugin_info(i: PluginInfo) -> native::PluginInfo {
    native::PluginInfo {
        name: i.name,
        version: i.version,
        contract_version: i.contract_version,
        description: i.description,
    }
}

fn key_values(kvs: Vec<wit01::types::KeyValue>) -> Vec<native::KeyValue> {
    kvs.into_iter().map(|kv| native::KeyValue { key: kv.key, value: kv.value }).collect()
}

/// 0.1 spelled the event type as a string (`Normal` or `Warning`); anything but `Warning` was
/// recorded as `Normal`.
fn event(e: wit01::types::Event) -> native::Event {
    let kind = if e.kind == "Warning" { native::EventKind::Warning } else { native::EventKind::Normal };
    native::Event { kind, reason: e.reason, message: e.message }
}

fn container_state(s: pods01::ContainerState) -> native::ContainerState {
    match s {
        pods01::ContainerState::Waiting(w) => {
            native::ContainerState::Waiting(native::StateWaiting { reason: w.reason, message: w.message })
        }
        pods01::ContainerState::Running(r) => {
            native::ContainerState::Running(native::StateRunning { started_at: r.started_at })
        }
        pods01::ContainerState::Terminated(t) => native::ContainerState::Terminated(native::StateTerminated {
            exit_code: t.exit_code,
            reason: t.reason,
            message: t.message,
            started_at: t.started_at,
            finished_at: t.finished_at,
        }),
    }
}

fn container_status(c: pods01::ContainerStatus) -> native::ContainerStatus {
    native::ContainerStatus {
        name: c.name,
        image: c.image,
        ready: c.ready,
        restart_count: c.restart_count,
        state: container_state(c.state),
        last_state: c.last_state.map(container_state),
    }
}

/// 0.1 spelled the phase as a string; one outside the Kubernetes five is `Unknown`.
pub fn pod_status(s: PodStatus) -> native::PodStatus {
    native::PodStatus {
        phase: native::PodPhase::parse(&s.phase),
        reason: s.reason,
        message: s.message,
        pod_ip: s.pod_ip,
        start_time: s.start_time,
        init_container_statuses: s.init_container_statuses.into_iter().map(container_status).collect(),
        container_statuses: s.container_statuses.into_iter().map(container_status).collect(),
    }
}

pub fn pod_outcome(o: PodOutcome) -> native::PodOutcome {
    native::PodOutcome {
        instance_id: o.instance_id,
        status: pod_status(o.status),
        annotations: key_values(o.annotations),
        events: o.events.into_iter().map(event).collect(),
    }
}

/// An update of a 0.1 plugin: it was not told what changed, so it reports nothing as not applied.
pub fn update_outcome(o: PodOutcome) -> native::UpdateOutcome {
    native::UpdateOutcome { outcome: pod_outcome(o), not_applied: Vec::new() }
}

/// A 0.1 deletion in progress has no work to finish: 0.1 plugins did that when `status` answered
/// `not-found`.
pub fn deletion(d: Deletion) -> native::Deletion {
    match d {
        Deletion::Gone => native::Deletion::Gone,
        Deletion::InProgress => {
            native::Deletion::InProgress(native::PendingDeletion { finalize: Vec::new(), poll_after_ms: 0 })
        }
    }
}

pub fn instances(list: Vec<Instance>) -> Vec<native::Instance> {
    list.into_iter()
        .map(|i| native::Instance {
            pod: native::PodRef { namespace: i.pod.namespace, name: i.pod.name, uid: i.pod.uid },
            instance_id: i.instance_id,
            status: pod_status(i.status),
        })
        .collect()
}

/// 0.1 spelled the taint effect as a string; one Kubernetes does not know fails the call.
pub fn node_offer(o: NodeOffer) -> Result<native::NodeOffer, native::ProviderError> {
    let taints = o
        .taints
        .into_iter()
        .map(|t: node01::Taint| {
            let effect = native::TaintEffect::parse(&t.effect).ok_or_else(|| {
                native::ProviderError::Internal(format!(
                    "taint {} has effect {:?}; Kubernetes knows NoSchedule, PreferNoSchedule and NoExecute",
                    t.key, t.effect
                ))
            })?;
            Ok(native::Taint { key: t.key, value: t.value, effect })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(native::NodeOffer {
        capacity: key_values(o.capacity),
        allocatable: key_values(o.allocatable),
        labels: key_values(o.labels),
        taints,
        conditions: o
            .conditions
            .into_iter()
            .map(|c| native::NodeCondition { kind: c.kind, status: c.status, reason: c.reason, message: c.message })
            .collect(),
        operating_system: o.operating_system,
        architecture: o.architecture,
    })
}

pub fn stream_target(t: StreamTarget) -> native::StreamTarget {
    native::StreamTarget {
        url: t.url,
        headers: key_values(t.headers),
        protocol: match t.protocol {
            pods01::StreamProtocol::HttpBody => native::StreamProtocol::HttpBody,
            pods01::StreamProtocol::WebsocketChannels => native::StreamProtocol::WebsocketChannels,
        },
    }
}

/// A 0.1 answer `result<T, provider-error>` as the 0.2 one.
pub fn result<T, U>(r: Result<T, ProviderError>, ok: impl FnOnce(T) -> U) -> Result<U, native::ProviderError> {
    r.map(ok).map_err(provider_error)
}

// ---- the imports of a 0.1 plugin: the 0.2 host functions, types converted ----

fn native_key_values(kvs: Vec<wit01::types::KeyValue>) -> Vec<native::KeyValue> {
    key_values(kvs)
}

impl wit01::types::Host for HostState {}

impl wit01::http::Host for HostState {
    async fn send(
        &mut self,
        req: wit01::http::Request,
    ) -> wasmtime::Result<Result<wit01::http::Response, wit01::http::HttpError>> {
        let req = native::HttpRequest {
            method: req.method,
            url: req.url,
            headers: native_key_values(req.headers),
            body: req.body,
            timeout_ms: req.timeout_ms,
        };
        let answer = native_wit::http::Host::send(self, req).await?;
        Ok(match answer {
            Ok(resp) => Ok(wit01::http::Response {
                status: resp.status,
                headers: resp
                    .headers
                    .into_iter()
                    .map(|kv| wit01::types::KeyValue { key: kv.key, value: kv.value })
                    .collect(),
                body: resp.body,
            }),
            Err(e) => Err(match e {
                native::HttpError::Denied(m) => wit01::http::HttpError::Denied(m),
                native::HttpError::Timeout => wit01::http::HttpError::Timeout,
                native::HttpError::Transport(m) => wit01::http::HttpError::Transport(m),
                native::HttpError::InvalidRequest(m) => wit01::http::HttpError::InvalidRequest(m),
            }),
        })
    }
}

impl wit01::log::Host for HostState {
    async fn emit(
        &mut self,
        level: wit01::log::Level,
        message: String,
        fields: Vec<wit01::types::KeyValue>,
    ) -> wasmtime::Result<()> {
        let level = match level {
            wit01::log::Level::Trace => native::LogLevel::Trace,
            wit01::log::Level::Debug => native::LogLevel::Debug,
            wit01::log::Level::Info => native::LogLevel::Info,
            wit01::log::Level::Warn => native::LogLevel::Warn,
            wit01::log::Level::Error => native::LogLevel::Error,
        };
        native_wit::log::Host::emit(self, level, message, native_key_values(fields)).await
    }
}

impl wit01::kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        native_wit::kv::Host::get(self, key).await
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<bool> {
        native_wit::kv::Host::set(self, key, value, ttl_ms).await
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        native_wit::kv::Host::delete(self, key).await
    }
    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        native_wit::kv::Host::keys(self, prefix).await
    }
}

impl wit01::metrics::Host for HostState {
    async fn counter_add(
        &mut self,
        name: String,
        labels: Vec<wit01::types::KeyValue>,
        delta: u64,
    ) -> wasmtime::Result<()> {
        native_wit::metrics::Host::counter_add(self, name, native_key_values(labels), delta).await
    }
}

fn store_error(e: native::StoreError) -> wit01::store::StoreError {
    match e {
        native::StoreError::OverLimit(m) => wit01::store::StoreError::OverLimit(m),
        native::StoreError::Unavailable(m) => wit01::store::StoreError::Unavailable(m),
    }
}

impl wit01::store::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        native_wit::store::Host::get(self, key).await
    }
    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), wit01::store::StoreError>> {
        Ok(native_wit::store::Host::set(self, key, value).await?.map_err(store_error))
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, wit01::store::StoreError>> {
        Ok(native_wit::store::Host::delete(self, key).await?.map_err(store_error))
    }
    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        native_wit::store::Host::keys(self, prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_of_0_1_become_the_enums_of_0_2() {
        let status = |phase: &str| PodStatus {
            phase: phase.into(),
            reason: String::new(),
            message: String::new(),
            pod_ip: None,
            start_time: None,
            init_container_statuses: vec![],
            container_statuses: vec![],
        };
        assert_eq!(pod_status(status("Running")).phase, native::PodPhase::Running);
        assert_eq!(pod_status(status("Succeeded")).phase, native::PodPhase::Succeeded);
        assert_eq!(pod_status(status("Sleeping")).phase, native::PodPhase::Unknown);
        let ev = |kind: &str| wit01::types::Event { kind: kind.into(), reason: "R".into(), message: "m".into() };
        assert_eq!(event(ev("Warning")).kind, native::EventKind::Warning);
        assert_eq!(event(ev("Normal")).kind, native::EventKind::Normal);
        let offer = |effect: &str| NodeOffer {
            capacity: vec![],
            allocatable: vec![],
            labels: vec![],
            taints: vec![node01::Taint { key: "k".into(), value: "v".into(), effect: effect.into() }],
            conditions: vec![],
            operating_system: "linux".into(),
            architecture: "amd64".into(),
        };
        assert_eq!(node_offer(offer("NoExecute")).unwrap().taints[0].effect, native::TaintEffect::NoExecute);
        assert!(matches!(node_offer(offer("Never")), Err(native::ProviderError::Internal(m)) if m.contains("Never")));
    }

    #[test]
    fn a_0_1_deletion_in_progress_has_nothing_to_finalize() {
        match deletion(Deletion::InProgress) {
            native::Deletion::InProgress(p) => assert!(p.finalize.is_empty() && p.poll_after_ms == 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(deletion(Deletion::Gone), native::Deletion::Gone);
    }

    #[test]
    fn exports_0_1_lacks_are_unsupported_naming_the_contract() {
        match unsupported("pods.plan", "0.1.0") {
            native::ProviderError::Unsupported(m) => assert!(m.contains("pods.plan") && m.contains("0.1.0"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
