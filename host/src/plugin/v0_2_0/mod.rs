//! Bindings for contract `vk:provider@0.2.0`, the newest version and the one the host implements
//! natively: its types are the host's own (re-exported from `crate::plugin`). Every older contract
//! line has a folder of its own with its bindings and an adapter onto these types (Zed's pattern):
//! `v0_1_2` serves every 0.1.x plugin.

wasmtime::component::bindgen!({
    path: "../wit/v0.2.0",
    world: "provider",
    // Host imports may await I/O (`http.send`) and may trap the guest (a host bug, never the
    // guest's input); exports are awaited so epoch yields and timeouts can interrupt them.
    imports: { default: async | trappable },
    exports: { default: async },
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// The contract version these bindings were generated from.
pub const CONTRACT: crate::plugin::contract::Version = crate::plugin::contract::Version::new(0, 2, 0);

pub use exports::vk::provider::metadata::PluginInfo;
pub use exports::vk::provider::node::{NodeCondition, NodeOffer, Taint, TaintEffect};
pub use exports::vk::provider::pods::{
    ConfigMap, ContainerEnv, ContainerState, ContainerStatus, ContainerUsage, CreateAttempt, CreatePlan, DeleteReason,
    Deletion, ExecOptions, Instance, LogOptions, NotApplied, PendingDeletion, PodChange, PodOutcome, PodPhase,
    PodStatus, PodUsage, ResolvedPod, Secret, ServiceAccountToken, StateRunning, StateTerminated, StateWaiting,
    StreamProtocol, StreamTarget, UpdateOutcome, VolumeClaim,
};
pub use vk::provider::http::{HttpError, Request as HttpRequest, Response as HttpResponse};
pub use vk::provider::log::Level as LogLevel;
pub use vk::provider::store::StoreError;
pub use vk::provider::types::{
    BinaryEntry, CallContext, Event, EventKind, InvalidInput, KeyValue, PodRef, ProviderError,
};

impl PodPhase {
    /// The Kubernetes spelling: `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }

    /// The phase of a Kubernetes spelling; anything else is `Unknown`.
    pub fn parse(text: &str) -> PodPhase {
        match text {
            "Pending" => PodPhase::Pending,
            "Running" => PodPhase::Running,
            "Succeeded" => PodPhase::Succeeded,
            "Failed" => PodPhase::Failed,
            _ => PodPhase::Unknown,
        }
    }

    /// `Succeeded` or `Failed`: the pod's containers will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

impl std::fmt::Display for PodPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaintEffect {
    /// The Kubernetes spelling: `NoSchedule`, `PreferNoSchedule`, `NoExecute`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }

    pub fn parse(text: &str) -> Option<TaintEffect> {
        match text {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }
}

impl EventKind {
    /// The Kubernetes Event type: `Normal` or `Warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        }
    }
}
