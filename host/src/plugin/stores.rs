//! Where the `store` import keeps a node's records: a [`NodeStore`] per node this process acts
//! for, registered by the node's runner (the host's `records` room implements it in the cluster).
//! The plugin room owns the seam, so it depends on no storage.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::plugin::v0_2_0::StoreError;

/// A node's durable records, as the `store` import sees them (caps and durability are the
/// implementation's, as the contract states them).
pub trait NodeStore: Send + Sync {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Keys starting with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Vec<String>;
    /// Returns once the record is stored durably.
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Returns whether the key was there, once its removal is stored durably.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
}

/// The stores of the nodes this process acts for, by Node name.
#[derive(Default)]
pub struct Stores {
    by_node: Mutex<BTreeMap<String, Arc<dyn NodeStore>>>,
}

impl Stores {
    pub fn get(&self, node_name: &str) -> Option<Arc<dyn NodeStore>> {
        self.by_node.lock().unwrap().get(node_name).cloned()
    }

    /// Makes `store` the node's until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, node_name: &str, store: Arc<dyn NodeStore>) -> Registered {
        self.by_node.lock().unwrap().insert(node_name.to_owned(), store.clone());
        Registered { stores: self.clone(), node_name: node_name.to_owned(), store }
    }
}

/// A node's store reachable by the plugin while this lives.
pub struct Registered {
    stores: Arc<Stores>,
    node_name: String,
    store: Arc<dyn NodeStore>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut map = self.stores.by_node.lock().unwrap();
        // Only our own: a newer registration for the node (a new term) stays.
        if map.get(&self.node_name).is_some_and(|s| Arc::ptr_eq(s, &self.store)) {
            map.remove(&self.node_name);
        }
    }
}
