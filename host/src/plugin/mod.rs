//! The plugin runtime: loads provider components, calls them in fresh stores, hot-reloads them.
//!
//! Rooms: `runtime` (engine, epoch ticker, linker), `contract` (version read before compiling),
//! `cache` (compiled components on disk), `loaded` (one checked version and how a call runs),
//! `handle` + `calls` + `watcher` (the hot-swappable `Plugin`), `imports` (what a guest can reach),
//! `v0_2_0` (the native bindings of contract 0.2, whose types are the host's) and `v0_1_2` (the
//! bindings of 0.1.2 and the adapter that runs every 0.1.x plugin on them), `check` + `cli`
//! (`vkhost plugin check`, `vkhost plugin translate`),
//! `admin` (HTTP routes), `stats` (counters), `settings` (the `[plugin]` table), `error`.

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
mod runtime;
pub mod settings;
mod stats;
pub mod translate;
pub mod v0_1_2;
pub mod v0_2_0;
mod watcher;

pub use admin::{AdminToken, AdminTokenError, admin_router};
pub use cache::Origin;
pub use check::{CheckReport, SmokeResult, check};
pub use cli::{CheckArgs, run_check};
pub use error::{CallError, Export, LoadError, describe_provider_error};
pub use handle::{ActiveSummary, Plugin, ReloadEvent, ReloadTrigger};
pub use imports::http::error_chain;
pub use loaded::{LoadReport, host_contracts};
pub use runtime::PluginRuntime;
pub use settings::{Limits, PluginSettings};
pub use stats::{CallCount, PluginStats, StatsSnapshot};
pub use translate::{TranslateArgs, run_translate};

// The contract's types, so callers write `plugin::ResolvedPod`.
pub use v0_2_0::{
    BinaryEntry, CallContext, ConfigMap, ContainerEnv, ContainerState, ContainerStatus, ContainerUsage, CreateAttempt,
    CreatePlan, DeleteReason, Deletion, Event, EventKind, ExecOptions, HttpRequest, Instance, InvalidInput, KeyValue,
    LogOptions, NodeCondition, NodeOffer, NotApplied, PendingDeletion, PluginInfo, PodChange, PodOutcome, PodPhase,
    PodRef, PodStatus, PodUsage, ProviderError, ResolvedPod, Secret, ServiceAccountToken, StateRunning,
    StateTerminated, StateWaiting, StreamProtocol, StreamTarget, Taint, TaintEffect, UpdateOutcome, VolumeClaim,
};
