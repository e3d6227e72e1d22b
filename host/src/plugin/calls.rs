//! The provider exports as async methods of `Plugin`: each call runs on the version active when
//! it starts, in a fresh instance, and is counted in the stats.

use std::time::Instant;

use wasmtime::component::TypedFunc;

use crate::plugin::error::{CallError, Export};
use crate::plugin::handle::Plugin;
use crate::plugin::since_v0_1_0::{
    CallContext, DeleteReason, Deletion, ExecOptions, Instance, LogOptions, NodeOffer, PodOutcome, PodRef, PodStatus,
    PodUsage, ProviderError, ResolvedPod, StreamTarget,
};

/// Calls `$export`, whose WIT signature is `($params) -> result<$ok, provider-error>` in the
/// bindings, with the given arguments on the active version; its `store` is that of `$ctx`'s node,
/// and the fence of that node, if the node has one here, guards the call's HTTP requests.
macro_rules! call_export {
    ($self:ident, $export:expr, $ctx:expr, ($($param:ty),*) -> $ok:ty, ($($arg:expr),*)) => {{
        let export = $export;
        // Our own Arc: a concurrent reload swaps the pointer, never this call's version.
        let loaded = $self.active.load_full();
        let fence = $self.fence_of(&$ctx.node_name);
        let started = Instant::now();
        let result = loaded
            .call(export, Some($ctx.node_name.as_str()), |func, mut store| async move {
                store.data_mut().fence = fence;
                // SAFETY: `Loaded` typechecked every export against these types at load (see
                // `Loaded::call`); the signatures here are the bindings' own.
                let func = unsafe { TypedFunc::<($($param,)*), (Result<$ok, ProviderError>,)>::new_unchecked(func) };
                let r = func.call_async(&mut store, ($($arg,)*)).await.map(|(r,)| r);
                (store, r)
            })
            .await;
        (loaded, export, started, result)
    }};
}

impl Plugin {
    fn finish<T>(&self, export: Export, started: Instant, result: Result<T, CallError>) -> Result<T, CallError> {
        self.stats.record_call(export, &result, started.elapsed());
        if let Err(e) = &result
            && !matches!(e, CallError::Provider(_))
        {
            tracing::warn!(error = %e, "plugin call failed");
        }
        result
    }

    /// Checks a node's provider config; returns it normalised.
    pub async fn validate_config(&self, node: &str, config_json: &str) -> Result<String, CallError> {
        let loaded = self.active.load_full();
        let started = Instant::now();
        let result = loaded.validate_config(node, config_json).await;
        self.finish(Export::ValidateConfig, started, result)
    }

    pub async fn describe_node(&self, ctx: &CallContext) -> Result<NodeOffer, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::Describe, ctx, (&CallContext) -> NodeOffer, (ctx));
        self.finish(export, started, result)
    }

    pub async fn create(&self, ctx: &CallContext, pod: &ResolvedPod) -> Result<PodOutcome, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::Create, ctx, (&CallContext, &ResolvedPod) -> PodOutcome, (ctx, pod));
        self.finish(export, started, result)
    }

    pub async fn update(&self, ctx: &CallContext, pod: &ResolvedPod) -> Result<PodOutcome, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::Update, ctx, (&CallContext, &ResolvedPod) -> PodOutcome, (ctx, pod));
        self.finish(export, started, result)
    }

    pub async fn delete(&self, ctx: &CallContext, pod: &PodRef, reason: DeleteReason) -> Result<Deletion, CallError> {
        let (_, export, started, result) = call_export!(self, Export::Delete, ctx, (&CallContext, &PodRef, DeleteReason) -> Deletion, (ctx, pod, reason));
        self.finish(export, started, result)
    }

    pub async fn status(&self, ctx: &CallContext, pod: &PodRef) -> Result<PodStatus, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::Status, ctx, (&CallContext, &PodRef) -> PodStatus, (ctx, pod));
        self.finish(export, started, result)
    }

    pub async fn list(&self, ctx: &CallContext) -> Result<Vec<Instance>, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::List, ctx, (&CallContext) -> Vec<Instance>, (ctx));
        self.finish(export, started, result)
    }

    /// Where to read a container's logs; the URL is vetted against the plugin's allowlist.
    pub async fn logs(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &LogOptions,
    ) -> Result<StreamTarget, CallError> {
        let (loaded, export, started, result) = call_export!(self, Export::Logs, ctx, (&CallContext, &PodRef, &str, &LogOptions) -> StreamTarget, (ctx, pod, container, opts));
        let result = result.and_then(|t| loaded.vet_stream_target(export, t));
        self.finish(export, started, result)
    }

    /// Where to run a command; the URL is vetted against the plugin's allowlist.
    pub async fn exec(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &ExecOptions,
    ) -> Result<StreamTarget, CallError> {
        let (loaded, export, started, result) = call_export!(self, Export::Exec, ctx, (&CallContext, &PodRef, &str, &ExecOptions) -> StreamTarget, (ctx, pod, container, opts));
        let result = result.and_then(|t| loaded.vet_stream_target(export, t));
        self.finish(export, started, result)
    }

    /// Where to attach; the URL is vetted against the plugin's allowlist.
    pub async fn attach(
        &self,
        ctx: &CallContext,
        pod: &PodRef,
        container: &str,
        opts: &ExecOptions,
    ) -> Result<StreamTarget, CallError> {
        let (loaded, export, started, result) = call_export!(self, Export::Attach, ctx, (&CallContext, &PodRef, &str, &ExecOptions) -> StreamTarget, (ctx, pod, container, opts));
        let result = result.and_then(|t| loaded.vet_stream_target(export, t));
        self.finish(export, started, result)
    }

    pub async fn usage(&self, ctx: &CallContext, pods: &[PodRef]) -> Result<Vec<PodUsage>, CallError> {
        let (_, export, started, result) =
            call_export!(self, Export::Usage, ctx, (&CallContext, &[PodRef]) -> Vec<PodUsage>, (ctx, pods));
        self.finish(export, started, result)
    }
}
