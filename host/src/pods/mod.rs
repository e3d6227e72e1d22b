//! The pod controller: resolves pods bound to a virtual node, drives the provider, writes status,
//! deletes promptly, sweeps orphaned instances; and the kubelet API's view of those pods.

mod attempts;
pub mod backend;
pub mod cached;
pub mod controller;
pub mod deletions;
pub mod events;
pub mod expansion;
#[cfg(test)]
pub(crate) mod fixtures;
mod own_writes;
pub mod references;
pub mod resolve;
pub mod startup;
pub mod status;
pub mod teardown;
pub mod timeline;

pub use backend::NodeBackend;
pub use controller::{INSTANCE_ANNOTATION, NodeContext, run};
