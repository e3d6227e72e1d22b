//! The provider exports as async methods of `Plugin`: each call runs on the version its node ran
//! when it starts, in a fresh instance, and is counted in the stats (and in the node's error
//! budget while a new version is watched there). A 0.2 plugin is called natively; a 0.1 plugin
//! through the adapter in `v0_1_2` (its answers converted, the exports 0.1 lacks answered
//! `CallError::Unsupported` without calling it).

use std::time::Instant;

use wasmtime::component::TypedFunc;

use crate::plugin::error::{CallError, Export};
use crate::plugin::handle::{Plugin, Route};
use crate::plugin::loaded::Line;
use crate::plugin::v0_1_2;
use crate::plugin::v0_2_0::{
    CallContext, CreateAttempt, CreatePlan, DeleteReason, Deletion, ExecOptions, Instance, LogOptions, NodeOffer,
    PodChange, PodOutcome, PodRef, PodStatus, PodUsage, ProviderError, ResolvedPod, StreamTarget, UpdateOutcome,
};

/// The `finalize` work of one pending deletion is at most this many bytes (the contract's 1 KiB).
pub const MAX_FINALIZE_BYTES: usize = 1024;

/// Calls `$export` on the active version with the arguments of its contract line: `native` gives
/// the 0.2 signature `($params) -> result<$ok, provider-error>` and the arguments; `v0_1` the 0.1
/// one, its arguments and the conversion of its answer to the 0.2 one, or `lacks` when 0.1 has no
/// such export. The call's `store` is that of `$ctx`'s node, and the fence of that node, if the
/// node has one here, guards the call's HTTP requests. `dry_run` marks a `plan`.
macro_rules! call_export {
    ($self:ident, $export:expr, $ctx:expr, dry_run: $dry:expr,
     native: ($($param:ty),*) -> $ok:ty, ($($arg:expr),*);
     v0_1: $($v01:tt)*) => {{
        let export = $export;
        // Our own Arc: a concurrent reload swaps the pointer, never this call's version.
        let route = $self.route(Some(&$ctx.node_name));
        let loaded = route.loaded.clone();
        let fence = $self.fence_of(&$ctx.node_name);
        let node = Some($ctx.node_name.as_str());
        let started = Instant::now();
        let result = match loaded.line() {
            Line::V0_2 => {
                loaded
                    .call(export, node, |func, mut store| async move {
                        store.data_mut().fence = fence;
                        store.data_mut().dry_run = $dry;
                        // SAFETY: `Loaded` typechecked every export against these types at load
                        // (see `Loaded::call`); the signatures here are the bindings' own.
                        let func =
                            unsafe { TypedFunc::<($($param,)*), (Result<$ok, ProviderError>,)>::new_unchecked(func) };
                        let r = func.call_async(&mut store, ($($arg,)*)).await.map(|(r,)| r);
                        (store, r)
                    })
                    .await
            }
            Line::V0_1 => call_export!(@v0_1 loaded, export, node, fence, $($v01)*),
        };
        (route, export, started, result)
    }};
    (@v0_1 $loaded:ident, $export:ident, $node:ident, $fence:ident, lacks) => {{
        let _ = ($node, $fence);
        Err($loaded.lacks($export))
    }};
    (@v0_1 $loaded:ident, $export:ident, $node:ident, $fence:ident,
     ($($param:ty),*) -> $ok:ty, ($($arg:expr),*) => $convert:expr) => {
        $loaded
            .call($export, $node, |func, mut store| async move {
                store.data_mut().fence = $fence;
                // Typed with a check: the arguments are 0.2 types of the same shapes as 0.1's.
                let r = match func.typed::<($($param,)*), (Result<$ok, v0_1_2::ProviderError>,)>(&store) {
                    Ok(func) => func.call_async(&mut store, ($($arg,)*)).await.map(|(r,)| ($convert)(r)),
                    Err(e) => Err(e),
                };
                (store, r)
            })
            .await
    };
}

impl Plugin {
    fn finish<T>(
        &self,
        route: &Route,
        export: Export,
        started: Instant,
        result: Result<T, CallError>,
    ) -> Result<T, CallError> {
        self.stats.record_call(export, &result, started.elapsed());
        // A node watched after it got a new version holds it to the error budget.
        if let Some(window) = &route.window {
            let outcome = result.as_ref().err().map_or("ok", CallError::outcome);
            let detail = || result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            if window.record(outcome, detail) {
                self.budget_tripped();
            }
        }
        if let Err(e) = &result
            && !matches!(e, CallError::Provider(_) | CallError::Unsupported(_))
        {
            tracing::warn!(error = %e, "plugin call failed");
        }
        result
    }

    /// Checks a node's provider config; returns it normalised.
    pub async fn validate_config(&self, node: &str, config_json: &str) -> Result<String, CallError> {
        let route = self.route(Some(node));
        let started = Instant::now();
        let result = route.loaded.validate_config(node, config_json).await;
        self.finish(&route, Export::ValidateConfig, started, result)
    }

    pub async fn describe_node(&self, ctx: &CallContext) -> Result<NodeOffer, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Describe, ctx, dry_run: false,
            native: (&CallContext) -> NodeOffer, (ctx);
            v0_1: (&CallContext) -> v0_1_2::NodeOffer, (ctx)
                => |r: Result<_, _>| r.map_err(v0_1_2::provider_error).and_then(v0_1_2::node_offer));
        self.finish(&route, export, started, result)
    }

    /// What `create` would send for the pod, computed without side effects: during the call the
    /// host denies `http.send` and makes `store` writes unavailable. 0.1 plugins: unsupported.
    pub async fn plan(&self, ctx: &CallContext, pod: &ResolvedPod) -> Result<CreatePlan, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Plan, ctx, dry_run: true,
            native: (&CallContext, &ResolvedPod) -> CreatePlan, (ctx, pod);
            v0_1: lacks);
        self.finish(&route, export, started, result)
    }

    /// Creates the pod's instance (0.1 plugins are not told the attempt).
    pub async fn create(
        &self,
        ctx: &CallContext,
        pod: &ResolvedPod,
        attempt: CreateAttempt,
    ) -> Result<PodOutcome, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Create, ctx, dry_run: false,
            native: (&CallContext, &ResolvedPod, CreateAttempt) -> PodOutcome, (ctx, pod, attempt);
            v0_1: (&CallContext, &ResolvedPod) -> v0_1_2::PodOutcome, (ctx, pod)
                => |r| v0_1_2::result(r, v0_1_2::pod_outcome));
        self.finish(&route, export, started, result)
    }

    /// Applies `changes` to a running pod's instance. 0.1 plugins get the pod without the
    /// changes, and report nothing as not applied.
    pub async fn update(
        &self,
        ctx: &CallContext,
        pod: &ResolvedPod,
        changes: &[PodChange],
    ) -> Result<UpdateOutcome, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Update, ctx, dry_run: false,
            native: (&CallContext, &ResolvedPod, &[PodChange]) -> UpdateOutcome, (ctx, pod, changes);
            v0_1: (&CallContext, &ResolvedPod) -> v0_1_2::PodOutcome, (ctx, pod)
                => |r| v0_1_2::result(r, v0_1_2::update_outcome));
        self.finish(&route, export, started, result)
    }

    /// Deletes the pod's instance. A deletion in progress carries the work to `finalize` once
    /// `status` answers `not-found` (none from 0.1 plugins).
    pub async fn delete(&self, ctx: &CallContext, pod: &PodRef, reason: DeleteReason) -> Result<Deletion, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Delete, ctx, dry_run: false,
            native: (&CallContext, &PodRef, DeleteReason) -> Deletion, (ctx, pod, reason);
            v0_1: (&CallContext, &PodRef, DeleteReason) -> v0_1_2::Deletion, (ctx, pod, reason)
                => |r| v0_1_2::result(r, v0_1_2::deletion));
        let result = result.and_then(|deletion| match &deletion {
            Deletion::InProgress(p) if p.finalize.len() > MAX_FINALIZE_BYTES => {
                Err(CallError::Provider(ProviderError::Internal(format!(
                    "pods.delete handed over {} bytes of work to finalize; the contract allows {MAX_FINALIZE_BYTES}",
                    p.finalize.len()
                ))))
            }
            _ => Ok(deletion),
        });
        self.finish(&route, export, started, result)
    }

    /// Finishes a deletion with the `finalize` bytes its `delete` returned. 0.1 plugins:
    /// unsupported (they never return any).
    pub async fn finalize(&self, ctx: &CallContext, pod: &PodRef, work: &[u8]) -> Result<(), CallError> {
        let (route, export, started, result) = call_export!(self, Export::Finalize, ctx, dry_run: false,
            native: (&CallContext, &PodRef, &[u8]) -> (), (ctx, pod, work);
            v0_1: lacks);
        self.finish(&route, export, started, result)
    }

    pub async fn status(&self, ctx: &CallContext, pod: &PodRef) -> Result<PodStatus, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Status, ctx, dry_run: false,
            native: (&CallContext, &PodRef) -> PodStatus, (ctx, pod);
            v0_1: (&CallContext, &PodRef) -> v0_1_2::PodStatus, (ctx, pod)
                => |r| v0_1_2::result(r, v0_1_2::pod_status));
        self.finish(&route, export, started, result)
    }

    pub async fn list(&self, ctx: &CallContext) -> Result<Vec<Instance>, CallError> {
        let (route, export, started, result) = call_export!(self, Export::List, ctx, dry_run: false,
            native: (&CallContext) -> Vec<Instance>, (ctx);
            v0_1: (&CallContext) -> Vec<v0_1_2::Instance>, (ctx) => |r| v0_1_2::result(r, v0_1_2::instances));
        self.finish(&route, export, started, result)
    }

    /// Where to read a container's logs; the URL is vetted against the plugin's allowlist.
    pub async fn logs(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &LogOptions,
    ) -> Result<StreamTarget, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Logs, ctx, dry_run: false,
            native: (&CallContext, &PodRef, &str, &LogOptions) -> StreamTarget, (ctx, pod, container, opts);
            v0_1: (&CallContext, &PodRef, &str, &LogOptions) -> v0_1_2::StreamTarget, (ctx, pod, container, opts)
                => |r| v0_1_2::result(r, v0_1_2::stream_target));
        let result = result.and_then(|t| route.loaded.vet_stream_target(export, t));
        self.finish(&route, export, started, result)
    }

    /// Where to run a command; the URL is vetted against the plugin's allowlist.
    pub async fn exec(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &ExecOptions,
    ) -> Result<StreamTarget, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Exec, ctx, dry_run: false,
            native: (&CallContext, &PodRef, &str, &ExecOptions) -> StreamTarget, (ctx, pod, container, opts);
            v0_1: (&CallContext, &PodRef, &str, &ExecOptions) -> v0_1_2::StreamTarget, (ctx, pod, container, opts)
                => |r| v0_1_2::result(r, v0_1_2::stream_target));
        let result = result.and_then(|t| route.loaded.vet_stream_target(export, t));
        self.finish(&route, export, started, result)
    }

    /// Where to attach; the URL is vetted against the plugin's allowlist.
    pub async fn attach(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &ExecOptions,
    ) -> Result<StreamTarget, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Attach, ctx, dry_run: false,
            native: (&CallContext, &PodRef, &str, &ExecOptions) -> StreamTarget, (ctx, pod, container, opts);
            v0_1: (&CallContext, &PodRef, &str, &ExecOptions) -> v0_1_2::StreamTarget, (ctx, pod, container, opts)
                => |r| v0_1_2::result(r, v0_1_2::stream_target));
        let result = result.and_then(|t| route.loaded.vet_stream_target(export, t));
        self.finish(&route, export, started, result)
    }

    /// Where to forward connections to `port` of the pod; the target is vetted like those of
    /// logs and exec. 0.1 plugins: unsupported.
    pub async fn port_forward(&self, ctx: &CallContext, pod: &PodRef, port: u16) -> Result<StreamTarget, CallError> {
        let (route, export, started, result) = call_export!(self, Export::PortForward, ctx, dry_run: false,
            native: (&CallContext, &PodRef, u16) -> StreamTarget, (ctx, pod, port);
            v0_1: lacks);
        let result = result.and_then(|t| route.loaded.vet_stream_target(export, t));
        self.finish(&route, export, started, result)
    }

    pub async fn usage(&self, ctx: &CallContext, pods: &[PodRef]) -> Result<Vec<PodUsage>, CallError> {
        let (route, export, started, result) = call_export!(self, Export::Usage, ctx, dry_run: false,
            native: (&CallContext, &[PodRef]) -> Vec<PodUsage>, (ctx, pods);
            // The shapes of `pod-usage` are the same in 0.1.
            v0_1: (&CallContext, &[PodRef]) -> Vec<PodUsage>, (ctx, pods) => |r| v0_1_2::result(r, |u| u));
        self.finish(&route, export, started, result)
    }
}
