//! The plugin runtime: loads provider components, calls them in fresh stores, hot-reloads them.
//!
//! Rooms: `runtime` (engine, epoch ticker, linker), `contract` (version read before compiling),
//! `cache` (compiled components on disk), `loaded` (one checked version and how a call runs),
//! `handle` + `calls` + `watcher` (the hot-swappable `Plugin`), `rollout` (which node runs which
//! version: canaries, promotion, rollback on a blown error budget, pins), `imports` (what a guest can reach),
//! `v0_2_0` (the native bindings of contract 0.2, whose types are the host's) and `v0_1_2` (the
//! bindings of 0.1.2 and the adapter that runs every 0.1.x plugin on them), `check` + `cli`
//! (`vkhost plugin check`),
//! `admin` (HTTP routes), `stats` (counters), `settings` (the `[plugin]` table), `error`,
//! `source` (where versions come from: a file or an OCI artifact, and their signatures).

mod admin;
mod cache;
mod calls;
pub mod check;
pub mod cli;
pub mod contract;
mod error;
mod handle;
mod imports;
mod loaded;
pub mod rollout;
mod runtime;
pub mod settings;
pub mod source;
mod stats;
mod stores;
pub mod v0_1_2;
pub mod v0_2_0;
mod watcher;

pub use admin::{AdminToken, AdminTokenError, admin_router};
pub use cache::Origin;
pub use check::{CheckReport, SmokeResult, check};
pub use cli::{AdminArgs, AdminConfig, CheckArgs, PinArgs, UnpinArgs, VersionsArgs, run_check, run_pin, run_versions};
pub use error::{CallError, Export, LoadError, describe_provider_error};
pub use imports::budget::{BudgetSettings, BudgetStats};

pub use handle::{
    ActiveSummary, CandidateView, NodeVersion, PinError, Plugin, ReloadEvent, ReloadTrigger, VersionEvent, VersionView,
    VersionsView,
};
pub use loaded::{LoadReport, host_contracts};
pub use rollout::{Budget, RolloutSettings, Step};
pub use runtime::PluginRuntime;
pub use settings::{Limits, PluginSettings};
pub use source::{Provenance, SourceError};
pub use stats::{CallCount, PluginStats, StatsSnapshot};
pub use stores::{NodeStore, Registered, Stores};

// The contract's types, so callers write `plugin::ResolvedPod`.
pub use calls::MAX_FINALIZE_BYTES;
pub use v0_2_0::{
    BinaryEntry, CallContext, ConfigMap, ContainerEnv, ContainerState, ContainerStatus, ContainerUsage, CreateAttempt,
    CreatePlan, DeleteReason, Deletion, Event, EventKind, ExecOptions, HttpRequest, Instance, InvalidInput, KeyValue,
    LogOptions, NodeCondition, NodeOffer, NotApplied, PendingDeletion, PluginInfo, PodChange, PodOutcome, PodPhase,
    PodRef, PodStatus, PodUsage, ProviderError, ResolvedPod, Secret, ServiceAccountToken, StateRunning,
    StateTerminated, StateWaiting, StoreError, StreamProtocol, StreamTarget, Taint, TaintEffect, UpdateOutcome,
    VolumeClaim,
};

/// How a plugin is named in annotations, Events and logs: `cube@1.4.0 (contract 0.1.2)`.
pub fn label(plugin: &PluginInfo) -> String {
    format!("{}@{} (contract {})", plugin.name, plugin.version, plugin.contract_version)
}
