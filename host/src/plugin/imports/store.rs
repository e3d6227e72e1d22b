//! The `store` import (since contract 0.1.2): the plugin's durable records of the node named by the
//! call's context, kept by whatever the node registered as its store (`crate::records`, in the cluster). A call without a node, or for a node
//! this process does not act for, has no store.

use std::sync::Arc;
use std::time::Instant;

use super::HostState;
use crate::plugin::NodeStore;
use crate::plugin::v0_2_0::StoreError;
use crate::plugin::v0_2_0::vk::provider as wit;

impl HostState {
    /// The records a write goes to: none during `plan`, which has no side effects.
    fn writable_store(&self) -> Result<Arc<dyn NodeStore>, StoreError> {
        if self.dry_run {
            return Err(StoreError::Unavailable("store: refused during `plan`, which has no side effects".into()));
        }
        self.node_store()
    }

    fn node_store(&self) -> Result<Arc<dyn NodeStore>, StoreError> {
        let Some(node) = &self.store.node else {
            return Err(StoreError::Unavailable("store: this call is about no node, so it has no store".into()));
        };
        self.store.stores.get(node).ok_or_else(|| {
            StoreError::Unavailable(format!("store: node {node} has no durable records in this process"))
        })
    }
}

impl wit::store::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.node_store().ok().and_then(|s| s.get(&key)))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), StoreError>> {
        let store = match self.writable_store() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let began = Instant::now();
        let result = store.set(&key, value).await;
        self.guard.host_io += began.elapsed();
        Ok(result)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, StoreError>> {
        let store = match self.writable_store() {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let began = Instant::now();
        let result = store.delete(&key).await;
        self.guard.host_io += began.elapsed();
        Ok(result)
    }

    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.node_store().map(|s| s.keys(&prefix)).unwrap_or_default())
    }
}
