//! The `store` import (since contract 0.1.2): the plugin's durable records of the node named by the
//! call's context, kept by `crate::records` in the cluster. A call without a node, or for a node
//! this process does not act for, has no store.

use std::sync::Arc;
use std::time::Instant;

use super::HostState;
use crate::plugin::v0_2_0::StoreError;
use crate::plugin::v0_2_0::vk::provider as wit;
use crate::records::{NodeRecords, RecordsError};

impl HostState {
    /// The records a write goes to: none during `plan`, which has no side effects.
    fn writable_records(&self) -> Result<Arc<NodeRecords>, StoreError> {
        if self.dry_run {
            return Err(StoreError::Unavailable("store: refused during `plan`, which has no side effects".into()));
        }
        self.node_records()
    }

    fn node_records(&self) -> Result<Arc<NodeRecords>, StoreError> {
        let Some(node) = &self.store.node else {
            return Err(StoreError::Unavailable("store: this call is about no node, so it has no store".into()));
        };
        self.store.records.get(node).ok_or_else(|| {
            StoreError::Unavailable(format!("store: node {node} has no durable records in this process"))
        })
    }
}

fn store_error(e: RecordsError) -> StoreError {
    match e {
        RecordsError::OverLimit(m) => StoreError::OverLimit(m),
        RecordsError::Unavailable(m) => StoreError::Unavailable(m),
    }
}

impl wit::store::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.node_records().ok().and_then(|r| r.get(&key)))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), StoreError>> {
        let records = match self.writable_records() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let began = Instant::now();
        let result = records.set(&key, value).await.map_err(store_error);
        self.guard.host_io += began.elapsed();
        Ok(result)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, StoreError>> {
        let records = match self.writable_records() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let began = Instant::now();
        let result = records.delete(&key).await.map_err(store_error);
        self.guard.host_io += began.elapsed();
        Ok(result)
    }

    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.node_records().map(|r| r.keys(&prefix)).unwrap_or_default())
    }
}
