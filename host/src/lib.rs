//! vkhost: the generic virtual-kubelet machinery (node, lease, pod sync, kubelet API) around a
//! provider that runs as a sandboxed WebAssembly component behind the `vk:provider` WIT contract.
//!
//! The rooms: `plugin` (the WASM runtime and hot reload), `node` (registration, leases, HA,
//! operations), `pods` (the pod controller), `kubelet` (the HTTPS API the apiserver calls),
//! `config`, `apiclient` (the rate-limited Kubernetes client), `metrics`, `records` (what must
//! still be done for a node after a restart), `daemon` (wiring).

pub mod apiclient;
pub mod config;
pub mod daemon;
pub mod kubelet;
pub mod metrics;
pub mod node;
pub mod plugin;
pub mod pods;
pub mod records;
