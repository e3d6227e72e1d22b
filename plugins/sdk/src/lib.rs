//! The guest SDK for vkhost provider plugins, in the spirit of Zed's `zed_extension_api`: the
//! contract's bindings (one module per supported version, the newest re-exported here), a
//! [`Provider`] trait with one method per export, the [`export_provider!`] macro that turns a type
//! implementing it into the component's exports, and the helpers every provider rewrites
//! otherwise: a typed pod ([`Pod`]), RFC 3339 time ([`time`]), HTTP with retries ([`retry`]) and
//! a panic hook ([`panic`]).
//!
//! ```ignore
//! use vk_provider_sdk::*;
//!
//! struct MyProvider;
//!
//! impl Provider for MyProvider {
//!     fn info() -> PluginInfo { /* name, version, CONTRACT_VERSION, description */ }
//!     fn validate_config(node: String, config: String) -> Result<String, ProviderError> { /* … */ }
//!     fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> { /* … */ }
//!     fn create(ctx: CallContext, pod: Pod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> { /* … */ }
//!     fn delete(ctx: CallContext, pod: PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError> { /* … */ }
//!     fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> { /* … */ }
//!     fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> { /* … */ }
//!     // plan, update, finalize, logs, exec, attach, port_forward, usage: defaults.
//! }
//!
//! export_provider!(MyProvider);
//! ```
//!
//! Every call runs in a fresh instance, so the trait's methods take no `self`: a provider keeps
//! nothing between calls (caches go in [`kv`], obligations in [`store`] or a pending deletion).

use std::fmt;
use std::marker::PhantomData;

pub mod panic;
pub mod pod;
pub mod retry;
pub mod time;
pub mod v0_2_0;

pub use pod::Pod;

/// The contract version a provider built on this SDK implements.
pub const CONTRACT_VERSION: &str = "0.2.0";

// The contract's types, flat: a provider writes `vk_provider_sdk::PodStatus`, not the generated path.
pub use v0_2_0::exports::vk::provider::metadata::PluginInfo;
pub use v0_2_0::exports::vk::provider::node::{NodeCondition, NodeOffer, Taint, TaintEffect};
pub use v0_2_0::exports::vk::provider::pods::{
    ConfigMap, ContainerEnv, ContainerState, ContainerStatus, ContainerUsage, CreateAttempt, CreatePlan, DeleteReason,
    Deletion, ExecOptions, Instance, LogOptions, NotApplied, PendingDeletion, PodChange, PodOutcome, PodPhase,
    PodStatus, PodUsage, ResolvedPod, Secret, ServiceAccountToken, StateRunning, StateTerminated, StateWaiting,
    StreamProtocol, StreamTarget, UpdateOutcome, VolumeClaim,
};
pub use v0_2_0::vk::provider::types::{
    BinaryEntry, CallContext, Event, EventKind, InvalidInput, KeyValue, PodRef, ProviderError,
};
/// The host's imports: `http::send`, `log::emit`, `kv`, `metrics::counter_add`, `store`. They
/// work only in the guest; natively (unit tests) calling one panics, so keep I/O behind a seam.
pub use v0_2_0::vk::provider::{http, kv, log, metrics, store};

/// A provider: one method per export of the contract. Required are the ones every backend has;
/// the rest default to what a backend without the feature should answer.
pub trait Provider {
    /// Static facts (name, version, [`CONTRACT_VERSION`], description); must not call an import.
    fn info() -> PluginInfo;

    /// Checks a node's provider config (JSON) and returns it normalised, or `invalid` naming the
    /// key and the accepted values.
    fn validate_config(node_name: String, config: String) -> Result<String, ProviderError>;

    /// The node's capacity and state.
    fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError>;

    /// What `create` would send for this pod, without side effects. Default: `unsupported`.
    fn plan(ctx: CallContext, pod: Pod) -> Result<CreatePlan, ProviderError> {
        let _ = (ctx, pod);
        Err(unsupported::<Self>("dry runs (plan)"))
    }

    /// Creates the instance of a pod, idempotent by `pod.uid()` unless `attempt.may_exist` is false.
    fn create(ctx: CallContext, pod: Pod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError>;

    /// Applies `changes` to a running pod. Default: applies none, and says so: the instance as
    /// `status` and `create` find it (`create` is idempotent by UID; it is asked only once
    /// `status` has shown that the instance exists, so an update never creates one), every
    /// change reported not applied (`ChangeNotApplied`), which the host shows on the pod.
    fn update(ctx: CallContext, pod: Pod, changes: Vec<PodChange>) -> Result<UpdateOutcome, ProviderError> {
        Self::status(ctx.clone(), pod.pod_ref())?;
        let outcome = Self::create(ctx, pod, CreateAttempt { may_exist: true })?;
        let name = Self::info().name;
        let not_applied = changes
            .into_iter()
            .map(|change| NotApplied {
                reason: "ChangeNotApplied".into(),
                message: format!(
                    "{} changed, but the {name} provider does not apply changes to running pods: the pod runs as it was created until it is recreated",
                    change.describe()
                ),
                change,
            })
            .collect();
        Ok(UpdateOutcome { outcome: PodOutcome { events: vec![], ..outcome }, not_applied })
    }

    /// Deletes the instance of a pod; `not-found` when there is none.
    fn delete(ctx: CallContext, pod: PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError>;

    /// Finishes a deletion with the `finalize` bytes `delete` returned. Default: nothing to do when
    /// there is no work; `internal` when there is (a `delete` returned work nobody finishes).
    fn finalize(ctx: CallContext, pod: PodRef, work: Vec<u8>) -> Result<(), ProviderError> {
        let _ = ctx;
        if work.is_empty() {
            Ok(())
        } else {
            Err(ProviderError::Internal(format!(
                "delete of pod {pod} returned {} bytes of finalize work, but the provider does not implement finalize",
                work.len()
            )))
        }
    }

    /// The status of a pod's instance; `not-found` when there is none.
    fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError>;

    /// Every instance the backend holds for this node.
    fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError>;

    /// Where to read a container's logs. Default: `unsupported`.
    fn logs(ctx: CallContext, pod: PodRef, container: String, opts: LogOptions) -> Result<StreamTarget, ProviderError> {
        let _ = (ctx, pod, container, opts);
        Err(unsupported::<Self>("logs"))
    }

    /// Where to run a command in a container. Default: `unsupported`.
    fn exec(
        ctx: CallContext,
        pod: PodRef,
        container: String,
        opts: ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        let _ = (ctx, pod, container, opts);
        Err(unsupported::<Self>("exec"))
    }

    /// Where to attach to a container. Default: `unsupported`.
    fn attach(
        ctx: CallContext,
        pod: PodRef,
        container: String,
        opts: ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        let _ = (ctx, pod, container, opts);
        Err(unsupported::<Self>("attach"))
    }

    /// Where to forward connections to `port` of the pod. Default: `unsupported`.
    fn port_forward(ctx: CallContext, pod: PodRef, port: u16) -> Result<StreamTarget, ProviderError> {
        let _ = (ctx, pod, port);
        Err(unsupported::<Self>("port-forward"))
    }

    /// Current usage of the pods. Default: none known (the host publishes no stats for them).
    fn usage(ctx: CallContext, pods: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
        let _ = (ctx, pods);
        Ok(Vec::new())
    }
}

/// The `unsupported` error of a default method, naming the provider.
fn unsupported<P: Provider + ?Sized>(what: &str) -> ProviderError {
    ProviderError::Unsupported(format!("the {} provider does not support {what}", P::info().name))
}

/// Exports a [`Provider`] as the component's `vk:provider@0.2.0` exports. Call it once, at the
/// root of the provider's crate; it expands to nothing outside the wasm build, so the crate's unit
/// tests build natively.
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __VkProviderExports = $crate::Exports<$provider>;
    $crate::v0_2_0::export_v0_2_0!(__VkProviderExports with_types_in $crate::v0_2_0);
        };
    };
}

/// The component's exports for a provider `P`: each parses what it is handed once (the pod),
/// runs `P`'s method under the panic guard ([`panic::guard`]) and hands the answer back.
/// Public for [`export_provider!`]; a provider never names it.
#[doc(hidden)]
pub struct Exports<P>(PhantomData<P>);

mod exports_impl {
    use super::v0_2_0::exports::vk::provider::{metadata, node, pods};
    use super::*;
    use crate::panic::guard;

    impl<P: Provider> metadata::Guest for Exports<P> {
        fn info() -> PluginInfo {
            P::info()
        }
        fn validate_config(node_name: String, config: String) -> Result<String, ProviderError> {
            guard(|| P::validate_config(node_name, config))
        }
    }

    impl<P: Provider> node::Guest for Exports<P> {
        fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> {
            guard(|| P::describe(ctx))
        }
    }

    impl<P: Provider> pods::Guest for Exports<P> {
        fn plan(ctx: CallContext, pod: ResolvedPod) -> Result<CreatePlan, ProviderError> {
            guard(|| P::plan(ctx, Pod::parse(pod)?))
        }
        fn create(ctx: CallContext, pod: ResolvedPod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> {
            guard(|| P::create(ctx, Pod::parse(pod)?, attempt))
        }
        fn update(ctx: CallContext, pod: ResolvedPod, changes: Vec<PodChange>) -> Result<UpdateOutcome, ProviderError> {
            guard(|| P::update(ctx, Pod::parse(pod)?, changes))
        }
        fn delete(ctx: CallContext, pod: PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError> {
            guard(|| P::delete(ctx, pod, reason))
        }
        fn finalize(ctx: CallContext, pod: PodRef, work: Vec<u8>) -> Result<(), ProviderError> {
            guard(|| P::finalize(ctx, pod, work))
        }
        fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
            guard(|| P::status(ctx, pod))
        }
        fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> {
            guard(|| P::list(ctx))
        }
        fn logs(
            ctx: CallContext,
            pod: PodRef,
            container: String,
            opts: LogOptions,
        ) -> Result<StreamTarget, ProviderError> {
            guard(|| P::logs(ctx, pod, container, opts))
        }
        fn exec(
            ctx: CallContext,
            pod: PodRef,
            container: String,
            opts: ExecOptions,
        ) -> Result<StreamTarget, ProviderError> {
            guard(|| P::exec(ctx, pod, container, opts))
        }
        fn attach(
            ctx: CallContext,
            pod: PodRef,
            container: String,
            opts: ExecOptions,
        ) -> Result<StreamTarget, ProviderError> {
            guard(|| P::attach(ctx, pod, container, opts))
        }
        fn port_forward(ctx: CallContext, pod: PodRef, port: u16) -> Result<StreamTarget, ProviderError> {
            guard(|| P::port_forward(ctx, pod, port))
        }
        fn usage(ctx: CallContext, pods: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
            guard(|| P::usage(ctx, pods))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conveniences on the contract's types.

/// A key-value pair.
pub fn kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue { key: key.into(), value: value.into() }
}

/// A binary entry (a Secret's or a ConfigMap's `binaryData` value).
pub fn entry(key: impl Into<String>, value: impl Into<Vec<u8>>) -> BinaryEntry {
    BinaryEntry { key: key.into(), value: value.into() }
}

/// An `invalid` error: `reason` (CamelCase), the offending `field` path, what is wrong.
pub fn invalid(reason: &str, field: impl Into<String>, message: impl Into<String>) -> ProviderError {
    ProviderError::Invalid(InvalidInput::new(reason, field, message))
}

impl InvalidInput {
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidInput { reason: reason.into(), field: field.into(), message: message.into() }
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for InvalidInput {}

impl From<InvalidInput> for ProviderError {
    fn from(e: InvalidInput) -> Self {
        ProviderError::Invalid(e)
    }
}

impl ProviderError {
    /// One line for logs and messages: `<case>: <message>` (`invalid: <field>: <message>`). The
    /// generated `Display` prints the Rust debug form instead.
    pub fn describe(&self) -> String {
        match self {
            ProviderError::Invalid(i) => format!("invalid: {i}"),
            ProviderError::NotFound(m)
            | ProviderError::Transient(m)
            | ProviderError::QuotaExceeded(m)
            | ProviderError::Internal(m)
            | ProviderError::Unsupported(m) => format!("{}: {m}", self.case()),
        }
    }

    /// The case's name, as in the contract (`not-found`, …).
    pub fn case(&self) -> &'static str {
        match self {
            ProviderError::Invalid(_) => "invalid",
            ProviderError::NotFound(_) => "not-found",
            ProviderError::Transient(_) => "transient",
            ProviderError::QuotaExceeded(_) => "quota-exceeded",
            ProviderError::Internal(_) => "internal",
            ProviderError::Unsupported(_) => "unsupported",
        }
    }
}

impl Event {
    pub fn normal(reason: &str, message: impl Into<String>) -> Self {
        Event { kind: EventKind::Normal, reason: reason.into(), message: message.into() }
    }
    pub fn warning(reason: &str, message: impl Into<String>) -> Self {
        Event { kind: EventKind::Warning, reason: reason.into(), message: message.into() }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        })
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// Generated type: `Default` cannot be derived for it alone.
#[allow(clippy::derivable_impls)]
impl Default for PodRef {
    fn default() -> Self {
        PodRef { namespace: String::new(), name: String::new(), uid: String::new() }
    }
}

// Generated type: `Default` cannot be derived for it alone.
#[allow(clippy::derivable_impls)]
impl Default for CallContext {
    fn default() -> Self {
        CallContext { node_name: String::new(), config: String::new() }
    }
}

impl ResolvedPod {
    /// A pod that references nothing the host would resolve (tests, offline dry runs).
    pub fn from_pod_json(pod: impl Into<String>) -> Self {
        ResolvedPod {
            pod: pod.into(),
            env: vec![],
            config_maps: vec![],
            secrets: vec![],
            claims: vec![],
            tokens: vec![],
        }
    }
}

impl Default for ResolvedPod {
    fn default() -> Self {
        ResolvedPod::from_pod_json("")
    }
}

impl Default for PodStatus {
    fn default() -> Self {
        PodStatus {
            phase: PodPhase::Pending,
            reason: String::new(),
            message: String::new(),
            pod_ip: None,
            start_time: None,
            init_container_statuses: vec![],
            container_statuses: vec![],
        }
    }
}

// Generated type: `Default` cannot be derived for it alone.
#[allow(clippy::derivable_impls)]
impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            follow: false,
            tail_lines: None,
            since_seconds: None,
            since_time: None,
            timestamps: false,
            limit_bytes: None,
            previous: false,
        }
    }
}

// Generated type: `Default` cannot be derived for it alone.
#[allow(clippy::derivable_impls)]
impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions { command: vec![], stdin: false, stdout: false, stderr: false, tty: false }
    }
}

impl PodPhase {
    /// The Kubernetes spelling: `Pending`, `Running`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

impl PodChange {
    /// One line for logs and messages: `ConfigMap app-config`, `token of volume kube-api-access`.
    pub fn describe(&self) -> String {
        match self {
            PodChange::Token(volume) => format!("the token of volume {volume}"),
            PodChange::ConfigMap(name) => format!("ConfigMap {name}"),
            PodChange::Secret(name) => format!("Secret {name}"),
            PodChange::Annotations(keys) => format!("annotations {}", keys.join(", ")),
            PodChange::Image(container) => format!("the image of container {container}"),
        }
    }
}

impl ConfigMap {
    /// The value of `key`, from `data` or (as bytes) `binaryData`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.data
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.clone().into_bytes())
            .or_else(|| self.binary_data.iter().find(|b| b.key == key).map(|b| b.value.clone()))
    }
}

impl Secret {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.iter().find(|b| b.key == key).map(|b| b.value.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bare;

    impl Provider for Bare {
        fn info() -> PluginInfo {
            PluginInfo {
                name: "bare".into(),
                version: "1.0.0".into(),
                contract_version: CONTRACT_VERSION.into(),
                description: String::new(),
            }
        }
        fn validate_config(_: String, config: String) -> Result<String, ProviderError> {
            Ok(config)
        }
        fn describe(_: CallContext) -> Result<NodeOffer, ProviderError> {
            panic!("describe is not reached in these tests")
        }
        fn create(_: CallContext, _: Pod, _: CreateAttempt) -> Result<PodOutcome, ProviderError> {
            panic!("create blew up on purpose")
        }
        fn delete(_: CallContext, _: PodRef, _: DeleteReason) -> Result<Deletion, ProviderError> {
            Ok(Deletion::Gone)
        }
        fn status(_: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
            Err(ProviderError::NotFound(pod.uid))
        }
        fn list(_: CallContext) -> Result<Vec<Instance>, ProviderError> {
            Ok(vec![])
        }
    }

    /// A provider whose one instance is `example-1`, and who implements no update.
    struct Fixed;

    impl Provider for Fixed {
        fn info() -> PluginInfo {
            PluginInfo { name: "fixed".into(), ..Bare::info() }
        }
        fn validate_config(_: String, config: String) -> Result<String, ProviderError> {
            Ok(config)
        }
        fn describe(_: CallContext) -> Result<NodeOffer, ProviderError> {
            panic!("not reached")
        }
        fn create(_: CallContext, _: Pod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> {
            assert!(attempt.may_exist, "an update must find the instance, never make one");
            Ok(PodOutcome {
                instance_id: "example-1".into(),
                status: PodStatus { phase: PodPhase::Running, ..PodStatus::default() },
                annotations: vec![kv("a", "b")],
                events: vec![Event::normal("Found", "found")],
            })
        }
        fn delete(_: CallContext, _: PodRef, _: DeleteReason) -> Result<Deletion, ProviderError> {
            Ok(Deletion::Gone)
        }
        fn status(_: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
            if pod.uid == "u1" {
                Ok(PodStatus { phase: PodPhase::Running, ..PodStatus::default() })
            } else {
                Err(ProviderError::NotFound(pod.uid))
            }
        }
        fn list(_: CallContext) -> Result<Vec<Instance>, ProviderError> {
            Ok(vec![])
        }
    }

    #[test]
    fn default_update_applies_nothing_says_so_and_never_creates() {
        let pod = |uid: &str| {
            Pod::parse(ResolvedPod::from_pod_json(format!(r#"{{"metadata":{{"name":"p","uid":"{uid}"}}}}"#))).unwrap()
        };
        let changes = vec![PodChange::ConfigMap("conf".into()), PodChange::Token("kube-api-access".into())];
        let out = Fixed::update(CallContext::default(), pod("u1"), changes.clone()).unwrap();
        assert_eq!(out.outcome.instance_id, "example-1");
        assert!(out.outcome.events.is_empty());
        assert_eq!(out.not_applied.iter().map(|n| n.change.clone()).collect::<Vec<_>>(), changes);
        assert_eq!(out.not_applied[0].reason, "ChangeNotApplied");
        assert!(out.not_applied[0].message.starts_with("ConfigMap conf changed, but the fixed provider"));
        let err = Fixed::update(CallContext::default(), pod("gone"), changes).unwrap_err();
        assert_eq!(err, ProviderError::NotFound("gone".into()));
    }

    fn pod_ref() -> PodRef {
        PodRef { namespace: "ns".into(), name: "p".into(), uid: "u1".into() }
    }

    #[test]
    fn defaults_answer_unsupported_naming_the_provider_and_the_feature() {
        let cases = [
            Bare::logs(CallContext::default(), pod_ref(), "c".into(), LogOptions::default()).unwrap_err(),
            Bare::exec(CallContext::default(), pod_ref(), "c".into(), ExecOptions::default()).unwrap_err(),
            Bare::attach(CallContext::default(), pod_ref(), "c".into(), ExecOptions::default()).unwrap_err(),
            Bare::port_forward(CallContext::default(), pod_ref(), 80).unwrap_err(),
        ];
        for (err, what) in cases.into_iter().zip(["logs", "exec", "attach", "port-forward"]) {
            let ProviderError::Unsupported(m) = err else { panic!("{err:?}") };
            assert_eq!(m, format!("the bare provider does not support {what}"));
        }
        let pod = Pod::parse(ResolvedPod::from_pod_json(r#"{"metadata":{"name":"p","uid":"u1"}}"#)).unwrap();
        assert!(matches!(Bare::plan(CallContext::default(), pod), Err(ProviderError::Unsupported(_))));
    }

    #[test]
    fn default_finalize_accepts_no_work_and_refuses_work_it_cannot_do() {
        assert_eq!(Bare::finalize(CallContext::default(), pod_ref(), vec![]), Ok(()));
        let ProviderError::Internal(m) = Bare::finalize(CallContext::default(), pod_ref(), vec![1, 2]).unwrap_err()
        else {
            panic!()
        };
        assert!(m.contains("ns/p") && m.contains("2 bytes"), "{m}");
        assert_eq!(Bare::usage(CallContext::default(), vec![pod_ref()]), Ok(vec![]));
        assert_eq!(ProviderError::NotFound("no pod".into()).describe(), "not-found: no pod");
        assert_eq!(invalid("R", "spec.x", "bad").describe(), "invalid: spec.x: bad");
    }

    #[test]
    fn exports_turn_a_panic_into_internal_and_a_bad_pod_into_invalid() {
        use v0_2_0::exports::vk::provider::pods::Guest;
        let pod = ResolvedPod::from_pod_json(r#"{"metadata":{"name":"p","namespace":"ns","uid":"u1"}}"#);
        let err = Exports::<Bare>::create(CallContext::default(), pod, CreateAttempt { may_exist: true }).unwrap_err();
        let ProviderError::Internal(m) = err else { panic!("{err:?}") };
        assert!(m.contains("create blew up on purpose"), "{m}");
        assert!(m.contains("lib.rs"), "the location is named: {m}");

        let err = Exports::<Bare>::create(
            CallContext::default(),
            ResolvedPod::from_pod_json("{not json"),
            CreateAttempt { may_exist: true },
        )
        .unwrap_err();
        let ProviderError::Invalid(e) = err else { panic!("{err:?}") };
        assert_eq!((e.reason.as_str(), e.field.as_str()), ("InvalidPod", "pod"));
        // A call after a panic works as before.
        assert_eq!(Exports::<Bare>::list(CallContext::default()), Ok(vec![]));
    }
}
