//! vkhost: the generic virtual-kubelet machinery (node, lease, pod sync, kubelet API) around a
//! provider that runs as a sandboxed WebAssembly component behind the `vk:provider` WIT contract.
//!
//! The rooms: `plugin` (the WASM runtime and hot reload), `node` (registration, leases, HA,
//! operations), `pods` (the pod controller), `kubelet` (the HTTPS API the apiserver calls),
//! `config`, `apiclient` (the rate-limited Kubernetes client), `fence` (no writes for a node once
//! its election lease may have passed to another replica), `naming` (names and labels of what the daemon keeps in the
//! cluster), `metrics`, `records` (what must
//! still be done for a node after a restart), `translate` (`vkhost plugin translate`: a manifest
//! through a plugin's dry run), `daemon` (wiring).

pub mod apiclient;
pub mod config;
pub mod daemon;
pub mod fence;
pub mod kubelet;
pub mod metrics;
pub mod naming;
pub mod node;
pub mod plugin;
pub mod pods;
pub mod records;
pub mod translate;

/// An error and its causes, as one line (reqwest's own message hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
