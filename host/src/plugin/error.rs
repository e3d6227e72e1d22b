//! The runtime's error types: why a plugin could not be loaded, and why a call did not return the
//! plugin's answer. Every message names the plugin (or its file), its version and the export.

use std::path::PathBuf;

use serde::Serialize;

use crate::plugin::v0_2_0::ProviderError;

/// A provider export, for errors, metrics and the call deadline bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "&'static str")]
pub enum Export {
    Info,
    ValidateConfig,
    Describe,
    Plan,
    Create,
    Update,
    Delete,
    Finalize,
    Status,
    List,
    Logs,
    Exec,
    Attach,
    PortForward,
    Usage,
}

impl Export {
    pub const ALL: [Export; 15] = [
        Export::Info,
        Export::ValidateConfig,
        Export::Describe,
        Export::Plan,
        Export::Create,
        Export::Update,
        Export::Delete,
        Export::Finalize,
        Export::Status,
        Export::List,
        Export::Logs,
        Export::Exec,
        Export::Attach,
        Export::PortForward,
        Export::Usage,
    ];

    /// The contract version that added the export (the others are in every version).
    pub fn since(self) -> Option<crate::plugin::contract::Version> {
        match self {
            Export::Plan | Export::Finalize | Export::PortForward => Some(crate::plugin::v0_2_0::CONTRACT),
            _ => None,
        }
    }

    /// The WIT name, `interface.function`.
    pub fn wit_name(self) -> &'static str {
        match self {
            Export::Info => "metadata.info",
            Export::ValidateConfig => "metadata.validate-config",
            Export::Describe => "node.describe",
            Export::Plan => "pods.plan",
            Export::Create => "pods.create",
            Export::Update => "pods.update",
            Export::Delete => "pods.delete",
            Export::Finalize => "pods.finalize",
            Export::Status => "pods.status",
            Export::List => "pods.list",
            Export::Logs => "pods.logs",
            Export::Exec => "pods.exec",
            Export::Attach => "pods.attach",
            Export::PortForward => "pods.port-forward",
            Export::Usage => "pods.usage",
        }
    }
}

impl From<Export> for &'static str {
    fn from(e: Export) -> Self {
        e.wit_name()
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// A readable form of the provider's own error.
pub fn describe_provider_error(e: &ProviderError) -> String {
    match e {
        ProviderError::Invalid(i) => format!("invalid input: {} ({}): {}", i.reason, i.field, i.message),
        ProviderError::NotFound(what) => format!("not found: {what}"),
        ProviderError::Transient(why) => format!("transient failure: {why}"),
        ProviderError::QuotaExceeded(why) => format!("quota exceeded: {why}"),
        ProviderError::Internal(why) => format!("internal error: {why}"),
        ProviderError::Unsupported(why) => format!("unsupported: {why}"),
    }
}

/// Why a call did not return the plugin's answer, or the plugin's error answer. The daemon keeps
/// running in every case; the next call gets a fresh instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with an error (the normal error path of the contract).
    #[error("{}", describe_provider_error(.0))]
    Provider(ProviderError),
    /// The plugin cannot do this at all: it answered `unsupported`, or its contract lacks the
    /// export (a 0.1 plugin asked to `plan`). Never retried; the message reaches the client or
    /// the pod as is. (A plugin's `unsupported` answer always comes as this, never as
    /// `Provider`.)
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The guest trapped: a panic, `unreachable`, a bad memory access.
    #[error("plugin {plugin} version {version}: {export} trapped: {message}")]
    Trap { plugin: String, version: String, export: Export, message: String },
    /// The guest ran its own code longer than the CPU deadline (host I/O does not count).
    #[error("plugin {plugin} version {version}: {export} exceeded its CPU deadline of {deadline_ms} ms")]
    CpuDeadline { plugin: String, version: String, export: Export, deadline_ms: u64 },
    /// The whole call, host I/O included, took longer than the call timeout.
    #[error("plugin {plugin} version {version}: {export} did not finish within {timeout_ms} ms")]
    Timeout { plugin: String, version: String, export: Export, timeout_ms: u64 },
    /// The guest tried to grow its memory past the cap.
    #[error("plugin {plugin} version {version}: {export} exceeded its memory cap of {limit_mib} MiB")]
    MemoryExceeded { plugin: String, version: String, export: Export, limit_mib: u64 },
    /// The plugin returned a stream target outside its `allowed_urls`; the host will not connect.
    #[error("plugin {plugin} version {version}: {export} returned stream URL {url}, which is outside its allowed_urls")]
    StreamTargetDenied { plugin: String, version: String, export: Export, url: String },
    /// The plugin's stream target asks for a header only the host may set (`Host`, hop-by-hop).
    #[error(
        "plugin {plugin} version {version}: {export} returned a stream target with header {header:?}, which only the host may set (Host, hop-by-hop and WebSocket handshake headers; a tcp target takes none)"
    )]
    StreamHeaderRefused { plugin: String, version: String, export: Export, header: String },
    /// A fresh instance could not be created (should not happen after the load checks).
    #[error("plugin {plugin} version {version}: instantiating for {export} failed: {message}")]
    Instantiate { plugin: String, version: String, export: Export, message: String },
}

impl LoadError {
    /// Whether the version was refused for its signature (missing, or not the configured key's).
    pub fn is_signature_refusal(&self) -> bool {
        matches!(self, LoadError::Source(e) if e.is_signature())
    }
}

impl CallError {
    /// Whether trying again later may succeed. User errors (`invalid`), `not-found`,
    /// `unsupported` and a stream target outside the allowlist are answers, not accidents;
    /// everything else is retried with backoff by the caller.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            CallError::Provider(ProviderError::Invalid(_) | ProviderError::NotFound(_))
                | CallError::Unsupported(_)
                | CallError::StreamTargetDenied { .. }
                | CallError::StreamHeaderRefused { .. }
        )
    }

    /// The provider's own error, when the plugin answered with one.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            CallError::Provider(e) => Some(e),
            _ => None,
        }
    }

    /// A stable short name for metrics and events.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Provider(ProviderError::Invalid(_)) => "invalid",
            CallError::Provider(ProviderError::NotFound(_)) => "not_found",
            CallError::Provider(ProviderError::Transient(_)) => "transient",
            CallError::Provider(ProviderError::QuotaExceeded(_)) => "quota_exceeded",
            CallError::Provider(ProviderError::Internal(_)) => "internal",
            CallError::Provider(ProviderError::Unsupported(_)) | CallError::Unsupported(_) => "unsupported",
            CallError::Trap { .. } => "trap",
            CallError::CpuDeadline { .. } => "cpu_deadline",
            CallError::Timeout { .. } => "timeout",
            CallError::MemoryExceeded { .. } => "memory_exceeded",
            CallError::StreamTargetDenied { .. } | CallError::StreamHeaderRefused { .. } => "stream_denied",
            CallError::Instantiate { .. } => "instantiate",
        }
    }
}

/// Why a plugin file was not loaded (at start, at reload, or by `vkhost plugin check`). On reload
/// the previous version stays active.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin file {path} is not a WebAssembly component: {reason}")]
    NotAComponent { path: PathBuf, reason: String },
    #[error("plugin file {path} is not a provider: {reason}")]
    NotAProvider { path: PathBuf, reason: String },
    #[error(
        "plugin file {path} was built against contract vk:provider@{plugin_contract}, but this host implements vk:provider@{host_contract} (accepts {host_contract_range}); rebuild the plugin against wit/v{host_contract}"
    )]
    IncompatibleContract { path: PathBuf, plugin_contract: String, host_contract: String, host_contract_range: String },
    #[error("plugin file {path}: compiling failed: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("plugin file {path} does not match contract vk:provider@{contract}: {message}")]
    Typecheck { path: PathBuf, contract: String, message: String },
    #[error("plugin file {path}: metadata.info failed: {source}")]
    Info { path: PathBuf, source: CallError },
    #[error("plugin {plugin} version {version} rejects the config of node {node}: {source}")]
    ConfigRejected { plugin: String, version: String, node: String, source: CallError },
    #[error("plugin {plugin} version {version}: {message}")]
    RolledBack { plugin: String, version: String, message: String },
    #[error("plugin settings: {0}")]
    Settings(String),
    /// The source offered no component, or one whose signature was refused.
    #[error(transparent)]
    Source(#[from] crate::plugin::source::SourceError),
    #[error("plugin runtime: {0}")]
    Runtime(String),
}
