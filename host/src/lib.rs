//! vkhost: the generic virtual-kubelet machinery (node, lease, pod sync, kubelet API) around a
//! provider that runs as a sandboxed WebAssembly component behind the `vk:provider` WIT contract.

pub mod config;
pub mod kubelet;
pub mod node;
pub mod plugin;
pub mod pods;
