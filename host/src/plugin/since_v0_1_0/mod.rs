//! Bindings for contract `vk:provider@0.1.x`, the newest version and the one the host implements
//! natively. Generated from 0.1.2, which only adds imports to 0.1.0 (`metrics` in 0.1.1, `store`
//! in 0.1.2): component-model semver resolves a 0.1.0 or 0.1.1 plugin's imports and exports
//! against these, so one set of bindings serves the whole 0.1 line. An incompatible contract, once one exists, gets a `since_vX_Y_Z`
//! folder of its own with an adapter onto these types (Zed's pattern).

wasmtime::component::bindgen!({
    path: "../wit/v0.1.2",
    world: "provider",
    // Host imports may await I/O (`http.send`) and may trap the guest (a host bug, never the
    // guest's input); exports are awaited so epoch yields and timeouts can interrupt them.
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// The contract version these bindings were generated from.
pub const CONTRACT: crate::plugin::contract::Version = crate::plugin::contract::Version::new(0, 1, 2);

pub use exports::vk::provider::metadata::PluginInfo;
pub use exports::vk::provider::node::{NodeCondition, NodeOffer, Taint};
pub use exports::vk::provider::pods::{
    ConfigMap, ContainerEnv, ContainerState, ContainerStatus, ContainerUsage, DeleteReason, Deletion, ExecOptions,
    Instance, LogOptions, PodOutcome, PodStatus, PodUsage, ResolvedPod, Secret, ServiceAccountToken, StateRunning,
    StateTerminated, StateWaiting, StreamProtocol, StreamTarget, VolumeClaim,
};
pub use vk::provider::http::{HttpError, Request as HttpRequest, Response as HttpResponse};
pub use vk::provider::log::Level as LogLevel;
pub use vk::provider::store::StoreError;
pub use vk::provider::types::{BinaryEntry, CallContext, Event, InvalidInput, KeyValue, PodRef, ProviderError};
