//! The Cube provider: pods on a virtual node become UCloud Cube instances. The modules read like
//! the user's guide: sizes, annotations, EIP, registries, volumes, service accounts, the cloud API
//! client. The pure core (`translate`) is callable natively (its tests, `examples/translate.rs`);
//! `vkhost plugin translate` reaches it through the component's `plan`.
//!
//! The component's face is [`CubeProvider`], a `vk_provider_sdk::Provider` over the contract's
//! imports ([`host::WitHost`]); the logic lives in [`instances::Cube`] and [`streams`], generic
//! over the [`host::Host`] seam so the tests drive it natively.

pub mod annotations;
pub mod api;
pub mod config;
pub mod cube_pod;
pub mod eip;
pub mod error;
pub mod host;
pub mod instances;
pub mod k8s;
pub mod manifest;
pub mod node;
pub mod registries;
pub mod restrictions;
pub mod sizes;
pub mod status;
pub mod streams;
pub mod translate;
pub mod volumes;

pub use error::{InvalidInput, ProviderError, TranslateError};
pub use manifest::pod_from_manifest;
pub use translate::{CreateRequest, translate};
pub use vk_provider_sdk::ResolvedPod;

use vk_provider_sdk::{
    CallContext, CreateAttempt, CreatePlan, DeleteReason, Deletion, ExecOptions, Instance, LogOptions, NodeOffer,
    PluginInfo, Pod, PodChange, PodOutcome, PodRef, PodStatus, PodUsage, Provider, StreamTarget, UpdateOutcome,
    export_provider,
};

use crate::host::WitHost;
use crate::instances::Cube;

/// The Cube provider as the component exports it.
pub struct CubeProvider;

export_provider!(CubeProvider);

/// Runs `f` on the Cube service as the calling node sees it.
fn with_cube<T>(
    ctx: &CallContext,
    f: impl FnOnce(&Cube<WitHost>) -> Result<T, ProviderError>,
) -> Result<T, ProviderError> {
    f(&Cube::new(&WitHost, ctx)?)
}

impl Provider for CubeProvider {
    fn info() -> PluginInfo {
        PluginInfo {
            name: node::NAME.into(),
            version: node::VERSION.into(),
            contract_version: node::CONTRACT_VERSION.into(),
            description: node::DESCRIPTION.into(),
        }
    }

    fn validate_config(_node_name: String, config: String) -> Result<String, ProviderError> {
        node::validate_config(&config)
    }

    fn describe(ctx: CallContext) -> Result<NodeOffer, ProviderError> {
        Ok(node::describe(&config::NodeConfig::parse(&ctx.config)?))
    }

    fn plan(ctx: CallContext, pod: Pod) -> Result<CreatePlan, ProviderError> {
        with_cube(&ctx, |cube| cube.plan(pod.resolved()))
    }

    fn create(ctx: CallContext, pod: Pod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> {
        with_cube(&ctx, |cube| cube.create_with(pod.resolved(), attempt))
    }

    fn update(ctx: CallContext, pod: Pod, changes: Vec<PodChange>) -> Result<UpdateOutcome, ProviderError> {
        with_cube(&ctx, |cube| cube.update(&pod, &changes))
    }

    fn delete(ctx: CallContext, pod: PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError> {
        with_cube(&ctx, |cube| cube.delete(&pod, reason))
    }

    fn finalize(ctx: CallContext, pod: PodRef, work: Vec<u8>) -> Result<(), ProviderError> {
        with_cube(&ctx, |cube| cube.finalize(&pod, &work))
    }

    fn status(ctx: CallContext, pod: PodRef) -> Result<PodStatus, ProviderError> {
        with_cube(&ctx, |cube| cube.status(&pod))
    }

    fn list(ctx: CallContext) -> Result<Vec<Instance>, ProviderError> {
        with_cube(&ctx, |cube| cube.list())
    }

    fn logs(ctx: CallContext, pod: PodRef, container: String, opts: LogOptions) -> Result<StreamTarget, ProviderError> {
        with_cube(&ctx, |cube| streams::logs(cube, &pod, &container, &opts))
    }

    fn exec(
        ctx: CallContext,
        pod: PodRef,
        container: String,
        opts: ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        with_cube(&ctx, |cube| streams::exec(cube, &pod, &container, &opts, false))
    }

    fn attach(
        ctx: CallContext,
        pod: PodRef,
        container: String,
        opts: ExecOptions,
    ) -> Result<StreamTarget, ProviderError> {
        with_cube(&ctx, |cube| streams::exec(cube, &pod, &container, &opts, true))
    }

    fn port_forward(ctx: CallContext, pod: PodRef, port: u16) -> Result<StreamTarget, ProviderError> {
        with_cube(&ctx, |cube| streams::port_forward(cube, &pod, port))
    }

    fn usage(ctx: CallContext, pods: Vec<PodRef>) -> Result<Vec<PodUsage>, ProviderError> {
        with_cube(&ctx, |cube| streams::usage(cube, &pods))
    }
}
