//! The durable records of a virtual node: what must still be done for it after a restart or a
//! failover. Two kinds, kept apart: the plugin's own records (the contract's `store` import) and
//! the host's pending deletions (a provider answered `in-progress`, with the work to `finalize`
//! once the instance is gone, or `vkhost node delete` is about to delete). Both live in one ConfigMap per config node in the HA namespace, named after
//! the node's election Lease, so the records follow the node across Node renames and replicas.
//!
//! Reads come from a copy in memory, loaded when acting starts. A write changes the copy, then
//! returns once the ConfigMap holds it: writes made while another is in flight are stored
//! together by the next one (group commit), and a conflict (someone else wrote) is merged key by
//! key onto the fresh ConfigMap, the writes of this process winning for the keys they touched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde::{Deserialize, Serialize};

use crate::naming::election_lease_name;
use crate::naming::{CLUSTER_LABEL, NODE_ID_LABEL};
use crate::plugin::{DeleteReason, MAX_FINALIZE_BYTES, PodRef, StoreError};

/// At most this many plugin keys per node (a key per pod of a full node, with room to spare).
pub const MAX_KEYS: usize = 1024;
/// A plugin key is 1 to this many bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// A plugin value is at most this many bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Plugin keys and values of one node together.
pub const MAX_TOTAL_BYTES: usize = 128 * 1024;
/// Pending deletions one node records: ten times the pods a node may have, and with the plugin's
/// records well inside a ConfigMap's 1 MiB (1,000 deletions take about 196 KB).
pub const MAX_DELETIONS: usize = 2000;
/// The `finalize` work of all of a node's pending deletions together (base64 in the ConfigMap:
/// 342 KB at most), so that with the deletions themselves and the plugin's records it stays
/// inside a ConfigMap's 1 MiB.
pub const MAX_FINALIZE_TOTAL_BYTES: usize = 256 * 1024;

/// Annotation on the ConfigMap naming the Node its records belong to, so `vkhost node delete`
/// finds them again when the Node object is already gone.
pub const NODE_NAME_ANNOTATION: &str = "vkcube.io/node-name";
const PLUGIN_DATA_KEY: &str = "plugin.json";
const DELETIONS_DATA_KEY: &str = "deletions.json";

/// Write attempts before a write is reported as not stored; conflicts and failures alike.
const WRITE_ATTEMPTS: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The ConfigMap holding the records of config node `node_id`.
pub fn configmap_name(cluster_id: &str, node_id: &str) -> String {
    format!("{}-records", election_lease_name(cluster_id, node_id))
}

/// A deletion the host must see through: it polls the provider's `status` until `not-found`,
/// then calls the provider's `finalize` with `finalize` (when there is any) until it succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDeletion {
    pub pod: PodRef,
    pub reason: DeleteReason,
    pub instance_id: String,
    /// The provider's work to finish once the instance is gone (its `pending-deletion.finalize`),
    /// opaque to the host; empty when there is none. Base64 in the ConfigMap.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "base64_bytes")]
    pub finalize: Vec<u8>,
    /// Unix time in milliseconds before which the host does not poll `status` (the provider's
    /// `poll-after-ms`, counted from the delete); 0: any time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub poll_after_unix_ms: u64,
}

impl PendingDeletion {
    /// A deletion with no work to finish, to poll at once.
    pub fn new(pod: PodRef, reason: DeleteReason, instance_id: String) -> Self {
        PendingDeletion { pod, reason, instance_id, finalize: Vec::new(), poll_after_unix_ms: 0 }
    }

    /// What the provider's `delete` answered for it: the work to finish, and when to poll first.
    pub fn with_pending(mut self, pending: &crate::plugin::PendingDeletion) -> Self {
        self.finalize = pending.finalize.clone();
        self.poll_after_unix_ms = match pending.poll_after_ms {
            0 => 0,
            ms => unix_ms_now() + u64::from(ms),
        };
        self
    }

    /// Whether `status` may be polled now.
    pub fn due(&self) -> bool {
        self.poll_after_unix_ms <= unix_ms_now()
    }
}

/// The current Unix time in milliseconds.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes as a base64 string in JSON.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Why the plugin's write did not happen (the contract's `store-error`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordsError {
    #[error("{0}")]
    OverLimit(String),
    #[error("{0}")]
    Unavailable(String),
}

/// What a store of ConfigMaps must do; the apiserver in the daemon, a double in tests.
pub trait Persist: Send + Sync {
    fn get(&self) -> BoxFuture<'_, Result<Option<ConfigMap>, PersistError>>;
    /// Creates the ConfigMap (no resourceVersion) or replaces it (resourceVersion set): the new
    /// resourceVersion, or `Conflict` when someone else wrote since.
    fn put(&self, cm: ConfigMap) -> BoxFuture<'_, Result<String, PersistError>>;
    fn delete(&self) -> BoxFuture<'_, Result<(), PersistError>>;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PersistError {
    #[error("conflict: the ConfigMap changed")]
    Conflict,
    #[error("{0}")]
    Other(String),
}

/// The ConfigMap `name` in `namespace`, through `client`.
pub struct KubePersist {
    api: Api<ConfigMap>,
    name: String,
}

impl KubePersist {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        KubePersist { api: Api::namespaced(client, namespace), name: name.to_owned() }
    }
}

fn persist_error(e: kube::Error) -> PersistError {
    match e {
        kube::Error::Api(s) if s.code == 409 => PersistError::Conflict,
        e => PersistError::Other(e.to_string()),
    }
}

impl Persist for KubePersist {
    fn get(&self) -> BoxFuture<'_, Result<Option<ConfigMap>, PersistError>> {
        Box::pin(async move { self.api.get_opt(&self.name).await.map_err(persist_error) })
    }
    fn put(&self, cm: ConfigMap) -> BoxFuture<'_, Result<String, PersistError>> {
        Box::pin(async move {
            let pp = PostParams::default();
            let written = if cm.metadata.resource_version.is_some() {
                self.api.replace(&self.name, &pp, &cm).await
            } else {
                self.api.create(&pp, &cm).await
            };
            written.map(|cm| cm.metadata.resource_version.unwrap_or_default()).map_err(persist_error)
        })
    }
    fn delete(&self) -> BoxFuture<'_, Result<(), PersistError>> {
        Box::pin(async move {
            match self.api.delete(&self.name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(persist_error(e)),
            }
        })
    }
}

/// Everything one ConfigMap holds.
#[derive(Debug, Clone, Default, PartialEq)]
struct Content {
    plugin: BTreeMap<String, Vec<u8>>,
    deletions: BTreeMap<String, PendingDeletion>,
}

impl Content {
    fn plugin_bytes(&self) -> usize {
        self.plugin.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    fn from_configmap(cm: &ConfigMap) -> Result<Content, String> {
        let data = cm.data.clone().unwrap_or_default();
        let mut content = Content::default();
        if let Some(text) = data.get(PLUGIN_DATA_KEY) {
            let encoded: BTreeMap<String, String> =
                serde_json::from_str(text).map_err(|e| format!("{PLUGIN_DATA_KEY}: {e}"))?;
            for (k, v) in encoded {
                let v = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| format!("{PLUGIN_DATA_KEY}: key {k}: {e}"))?;
                content.plugin.insert(k, v);
            }
        }
        if let Some(text) = data.get(DELETIONS_DATA_KEY) {
            content.deletions = serde_json::from_str(text).map_err(|e| format!("{DELETIONS_DATA_KEY}: {e}"))?;
        }
        Ok(content)
    }

    fn to_data(&self) -> BTreeMap<String, String> {
        let encoded: BTreeMap<&String, String> =
            self.plugin.iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))).collect();
        BTreeMap::from([
            (PLUGIN_DATA_KEY.to_owned(), serde_json::to_string(&encoded).expect("strings serialise")),
            (DELETIONS_DATA_KEY.to_owned(), serde_json::to_string(&self.deletions).expect("records serialise")),
        ])
    }
}

/// Three-way merge by key: where `ours` changed a key since `base`, ours wins; elsewhere theirs.
fn merge<V: Clone + PartialEq>(
    base: &BTreeMap<String, V>,
    ours: &BTreeMap<String, V>,
    theirs: &BTreeMap<String, V>,
) -> BTreeMap<String, V> {
    let mut out = theirs.clone();
    for key in base.keys().chain(ours.keys()) {
        let (b, o) = (base.get(key), ours.get(key));
        if b != o {
            match o {
                Some(v) => out.insert(key.clone(), v.clone()),
                None => out.remove(key),
            };
        }
    }
    out
}

/// Which node a ConfigMap's records are for.
#[derive(Debug, Clone)]
pub struct Owner {
    pub cluster_id: String,
    pub node_id: String,
    /// The Node's current name (recorded for `vkhost node delete`).
    pub node_name: String,
}

struct State {
    /// The records as this process means them to be.
    wanted: Content,
    /// Bumped by every change of `wanted`.
    generation: u64,
}

struct Writer {
    /// What the ConfigMap held after our last read or write, and its resourceVersion.
    stored: Content,
    resource_version: Option<String>,
    /// The generation of `wanted` the ConfigMap holds.
    persisted: u64,
}

/// One node's records: the copy in memory and the ConfigMap behind it.
pub struct NodeRecords {
    owner: Owner,
    persist: Box<dyn Persist>,
    state: Mutex<State>,
    writer: tokio::sync::Mutex<Writer>,
}

impl NodeRecords {
    /// Reads the node's ConfigMap (none yet: no records).
    pub async fn load(owner: Owner, persist: Box<dyn Persist>) -> Result<Arc<NodeRecords>, String> {
        let (content, rv) = match persist.get().await.map_err(|e| e.to_string())? {
            Some(cm) => (Content::from_configmap(&cm)?, cm.metadata.resource_version),
            None => (Content::default(), None),
        };
        Ok(Arc::new(NodeRecords {
            owner,
            persist,
            state: Mutex::new(State { wanted: content.clone(), generation: 0 }),
            writer: tokio::sync::Mutex::new(Writer { stored: content, resource_version: rv, persisted: 0 }),
        }))
    }

    /// The records of config node `node_id` (Node `node_name`), from the ConfigMap in `namespace`.
    pub async fn load_from_cluster(client: &Client, namespace: &str, owner: Owner) -> Result<Arc<NodeRecords>, String> {
        let name = configmap_name(&owner.cluster_id, &owner.node_id);
        let persist = KubePersist::new(client.clone(), namespace, &name);
        NodeRecords::load(owner, Box::new(persist)).await.map_err(|e| format!("ConfigMap {namespace}/{name}: {e}"))
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    // ---- the plugin's records ----

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().wanted.plugin.get(key).cloned()
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .wanted
            .plugin
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stores a plugin record; refused, with nothing changed, past a cap.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), RecordsError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(RecordsError::OverLimit(format!(
                "store: the value of {key} is {} bytes, more than the {MAX_VALUE_BYTES} allowed",
                value.len()
            )));
        }
        let generation = {
            let mut state = self.state.lock().unwrap();
            let plugin = &state.wanted.plugin;
            if plugin.get(key) == Some(&value) {
                state.generation
            } else {
                let old = plugin.get(key).map_or(0, |v| key.len() + v.len());
                if !plugin.contains_key(key) && plugin.len() >= MAX_KEYS {
                    return Err(RecordsError::OverLimit(format!(
                        "store: the node already has {MAX_KEYS} keys, the most allowed; {key} not stored"
                    )));
                }
                let total = state.wanted.plugin_bytes() - old + key.len() + value.len();
                if total > MAX_TOTAL_BYTES {
                    return Err(RecordsError::OverLimit(format!(
                        "store: {key} would bring the node's records to {total} bytes, more than the {MAX_TOTAL_BYTES} allowed"
                    )));
                }
                state.wanted.plugin.insert(key.to_owned(), value);
                state.generation += 1;
                state.generation
            }
        };
        self.flush(generation).await
    }

    /// Removes a plugin record; whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, RecordsError> {
        let generation = {
            let mut state = self.state.lock().unwrap();
            if state.wanted.plugin.remove(key).is_none() {
                return Ok(false);
            }
            state.generation += 1;
            state.generation
        };
        self.flush(generation).await.map(|()| true)
    }

    // ---- the host's pending deletions (the plugin never sees these) ----

    pub fn pending_deletions(&self) -> Vec<PendingDeletion> {
        self.state.lock().unwrap().wanted.deletions.values().cloned().collect()
    }

    pub fn is_deleting(&self, uid: &str) -> bool {
        self.state.lock().unwrap().wanted.deletions.contains_key(uid)
    }

    /// Records that `deletion` must be seen through; nothing is written when it already is.
    pub async fn record_deletion(&self, deletion: PendingDeletion) -> Result<(), RecordsError> {
        let generation = {
            let mut state = self.state.lock().unwrap();
            let uid = &deletion.pod.uid;
            let finalize_bytes: usize =
                state.wanted.deletions.iter().filter(|(k, _)| *k != uid).map(|(_, d)| d.finalize.len()).sum();
            if state.wanted.deletions.get(uid) == Some(&deletion) {
                state.generation
            } else if !state.wanted.deletions.contains_key(uid) && state.wanted.deletions.len() >= MAX_DELETIONS {
                return Err(RecordsError::OverLimit(format!(
                    "{MAX_DELETIONS} deletions are already recorded for the node; {uid} is not"
                )));
            } else if deletion.finalize.len() > MAX_FINALIZE_BYTES {
                return Err(RecordsError::OverLimit(format!(
                    "the work to finalize the deletion of {uid} is {} bytes, over {MAX_FINALIZE_BYTES}",
                    deletion.finalize.len()
                )));
            } else if finalize_bytes + deletion.finalize.len() > MAX_FINALIZE_TOTAL_BYTES {
                return Err(RecordsError::OverLimit(format!(
                    "the recorded deletions of the node already carry {finalize_bytes} bytes of work to finalize; \
                     {uid}'s {} more would pass {MAX_FINALIZE_TOTAL_BYTES}",
                    deletion.finalize.len()
                )));
            } else {
                state.wanted.deletions.insert(deletion.pod.uid.clone(), deletion);
                state.generation += 1;
                state.generation
            }
        };
        self.flush(generation).await
    }

    /// Drops the pending deletion of pod `uid` (the provider said `not-found`).
    pub async fn drop_deletion(&self, uid: &str) -> Result<(), RecordsError> {
        let generation = {
            let mut state = self.state.lock().unwrap();
            if state.wanted.deletions.remove(uid).is_none() {
                return Ok(());
            }
            state.generation += 1;
            state.generation
        };
        self.flush(generation).await
    }

    /// Deletes the ConfigMap: the node is gone and nothing is left to do for it.
    pub async fn remove_all(&self) -> Result<(), RecordsError> {
        let mut writer = self.writer.lock().await;
        self.persist.delete().await.map_err(|e| RecordsError::Unavailable(format!("deleting the records: {e}")))?;
        let mut state = self.state.lock().unwrap();
        state.wanted = Content::default();
        state.generation += 1;
        writer.stored = Content::default();
        writer.resource_version = None;
        writer.persisted = state.generation;
        Ok(())
    }

    /// Returns once the ConfigMap holds generation `generation` of the records (or a later one).
    async fn flush(&self, generation: u64) -> Result<(), RecordsError> {
        let mut writer = self.writer.lock().await;
        let mut wait = FIRST_RETRY;
        let mut last_error = String::new();
        for attempt in 0..WRITE_ATTEMPTS {
            if writer.persisted >= generation {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            let (wanted, wanted_generation) = {
                let state = self.state.lock().unwrap();
                (state.wanted.clone(), state.generation)
            };
            if wanted == writer.stored && writer.resource_version.is_some() {
                writer.persisted = wanted_generation;
                continue;
            }
            match self.persist.put(self.configmap(&wanted, writer.resource_version.clone())).await {
                Ok(rv) => {
                    writer.stored = wanted;
                    writer.resource_version = Some(rv);
                    writer.persisted = wanted_generation;
                }
                Err(PersistError::Conflict) => {
                    last_error = "the ConfigMap kept changing".into();
                    // Someone else wrote (an operator's `vkhost node delete`, a replica that
                    // has not noticed it lost the node): merge our changes onto theirs.
                    let theirs = match self.persist.get().await {
                        Ok(Some(cm)) => match Content::from_configmap(&cm) {
                            Ok(content) => (content, cm.metadata.resource_version),
                            Err(e) => {
                                last_error = e;
                                continue;
                            }
                        },
                        Ok(None) => (Content::default(), None),
                        Err(e) => {
                            last_error = e.to_string();
                            continue;
                        }
                    };
                    let mut state = self.state.lock().unwrap();
                    state.wanted = Content {
                        plugin: merge(&writer.stored.plugin, &state.wanted.plugin, &theirs.0.plugin),
                        deletions: merge(&writer.stored.deletions, &state.wanted.deletions, &theirs.0.deletions),
                    };
                    writer.stored = theirs.0;
                    writer.resource_version = theirs.1;
                }
                Err(PersistError::Other(e)) => last_error = e,
            }
        }
        if writer.persisted >= generation {
            return Ok(());
        }
        tracing::warn!(node = %self.owner.node_name, error = %last_error, "durable records not stored");
        Err(RecordsError::Unavailable(format!(
            "the node's records could not be stored in the cluster ({WRITE_ATTEMPTS} attempts): {last_error}"
        )))
    }

    fn configmap(&self, content: &Content, resource_version: Option<String>) -> ConfigMap {
        let owner = &self.owner;
        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": configmap_name(&owner.cluster_id, &owner.node_id),
                "labels": {CLUSTER_LABEL: owner.cluster_id, NODE_ID_LABEL: owner.node_id},
                "annotations": {NODE_NAME_ANNOTATION: owner.node_name},
            },
        }))
        .expect("a valid ConfigMap");
        cm.metadata.resource_version = resource_version;
        cm.data = Some(content.to_data());
        cm
    }
}

fn check_key(key: &str) -> Result<(), RecordsError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/');
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(allowed) {
        return Err(RecordsError::OverLimit(format!(
            "store: key {key:?} must be 1 to {MAX_KEY_BYTES} bytes of a-z A-Z 0-9 . _ - /"
        )));
    }
    Ok(())
}

impl crate::plugin::NodeStore for NodeRecords {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        NodeRecords::get(self, key)
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        NodeRecords::keys(self, prefix)
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { NodeRecords::set(self, key, value).await.map_err(RecordsError::into_store_error) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { NodeRecords::delete(self, key).await.map_err(RecordsError::into_store_error) })
    }
}

impl RecordsError {
    /// As the `store` import reports it.
    fn into_store_error(self) -> StoreError {
        match self {
            RecordsError::OverLimit(m) => StoreError::OverLimit(m),
            RecordsError::Unavailable(m) => StoreError::Unavailable(m),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An apiserver of one ConfigMap, with conflicts and failures on demand.
    #[derive(Default)]
    pub(crate) struct FakeApi {
        stored: Mutex<Option<ConfigMap>>,
        version: Mutex<u64>,
        puts: Mutex<u32>,
        fail_next: Mutex<u32>,
    }

    impl FakeApi {
        /// Another writer changes the ConfigMap behind the records' back.
        fn edit(&self, f: impl FnOnce(&mut BTreeMap<String, String>)) {
            let mut stored = self.stored.lock().unwrap();
            let cm = stored.as_mut().expect("a ConfigMap");
            f(cm.data.get_or_insert_with(Default::default));
            let mut v = self.version.lock().unwrap();
            *v += 1;
            cm.metadata.resource_version = Some(v.to_string());
        }
        fn data(&self) -> BTreeMap<String, String> {
            self.stored.lock().unwrap().as_ref().and_then(|cm| cm.data.clone()).unwrap_or_default()
        }
    }

    impl Persist for Arc<FakeApi> {
        fn get(&self) -> BoxFuture<'_, Result<Option<ConfigMap>, PersistError>> {
            Box::pin(async move { Ok(self.stored.lock().unwrap().clone()) })
        }
        fn put(&self, mut cm: ConfigMap) -> BoxFuture<'_, Result<String, PersistError>> {
            Box::pin(async move {
                // A real write takes a while; others queue up meanwhile.
                tokio::task::yield_now().await;
                *self.puts.lock().unwrap() += 1;
                {
                    let mut fail = self.fail_next.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return Err(PersistError::Other("apiserver unreachable".into()));
                    }
                }
                let mut stored = self.stored.lock().unwrap();
                let current = stored.as_ref().and_then(|c| c.metadata.resource_version.clone());
                if cm.metadata.resource_version != current {
                    return Err(PersistError::Conflict);
                }
                let mut v = self.version.lock().unwrap();
                *v += 1;
                cm.metadata.resource_version = Some(v.to_string());
                *stored = Some(cm);
                Ok(v.to_string())
            })
        }
        fn delete(&self) -> BoxFuture<'_, Result<(), PersistError>> {
            Box::pin(async move {
                *self.stored.lock().unwrap() = None;
                Ok(())
            })
        }
    }

    fn owner() -> Owner {
        Owner { cluster_id: "c1".into(), node_id: "n1".into(), node_name: "c1-vk-abcde".into() }
    }

    /// The records of a node kept by `api`: loading them again is what a restart does.
    pub(crate) async fn records(api: &Arc<FakeApi>) -> Arc<NodeRecords> {
        NodeRecords::load(owner(), Box::new(api.clone())).await.unwrap()
    }

    pub(crate) fn deletion(uid: &str) -> PendingDeletion {
        PendingDeletion::new(
            PodRef { namespace: "ns".into(), name: format!("pod-{uid}"), uid: uid.into() },
            DeleteReason::NodeDeleted,
            format!("cube-{uid}"),
        )
    }

    #[tokio::test]
    async fn refuses_writes_past_each_cap_and_changes_nothing() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let over = |e: Result<(), RecordsError>| matches!(e, Err(RecordsError::OverLimit(_)));
        assert!(over(r.set("", vec![]).await));
        assert!(over(r.set(&"k".repeat(MAX_KEY_BYTES + 1), vec![]).await));
        assert!(over(r.set("a key with spaces", vec![]).await));
        assert!(over(r.set("big", vec![0; MAX_VALUE_BYTES + 1]).await));
        r.set("big", vec![0; MAX_VALUE_BYTES]).await.unwrap();
        for i in 1..MAX_KEYS {
            r.set(&format!("k/{i:03}"), vec![]).await.unwrap();
        }
        assert!(over(r.set("one-too-many", vec![]).await));
        // Overwriting an existing key is not a new key.
        r.set("k/001", b"x".to_vec()).await.unwrap();
        assert_eq!(r.keys("").len(), MAX_KEYS);
        assert!(r.get("one-too-many").is_none());
        // The total: 128 values of 1 KiB do not fit with their keys.
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let mut stored = 0;
        while r.set(&format!("v{stored:02}"), vec![1; MAX_VALUE_BYTES]).await.is_ok() {
            stored += 1;
        }
        assert_eq!(stored, MAX_TOTAL_BYTES / (MAX_VALUE_BYTES + 3));
        assert!(r.keys("").len() == stored);
    }

    #[tokio::test]
    async fn the_configmap_holds_the_records_and_a_fresh_load_reads_them_back() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        r.set("disks/uid-1", b"bs-1,bs-2".to_vec()).await.unwrap();
        r.record_deletion(deletion("uid-2")).await.unwrap();
        let cm = api.stored.lock().unwrap().clone().unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("vkcube-c1-n1-records"));
        assert_eq!(cm.metadata.annotations.unwrap()[NODE_NAME_ANNOTATION], "c1-vk-abcde");
        assert_eq!(cm.metadata.labels.unwrap()[NODE_ID_LABEL], "n1");
        let data = api.data();
        let plugin: serde_json::Value = serde_json::from_str(&data[PLUGIN_DATA_KEY]).unwrap();
        assert_eq!(plugin, serde_json::json!({"disks/uid-1": "YnMtMSxicy0y"}));
        let deletions: serde_json::Value = serde_json::from_str(&data[DELETIONS_DATA_KEY]).unwrap();
        assert_eq!(deletions["uid-2"]["instanceId"], "cube-uid-2");
        assert_eq!(deletions["uid-2"]["pod"]["name"], "pod-uid-2");

        // Another process (after a restart or a failover) sees the same records.
        let again = records(&api).await;
        assert_eq!(again.get("disks/uid-1").unwrap(), b"bs-1,bs-2");
        assert_eq!(again.pending_deletions(), vec![deletion("uid-2")]);
        // The plugin never sees the host's records.
        assert_eq!(again.keys(""), vec!["disks/uid-1"]);
        again.drop_deletion("uid-2").await.unwrap();
        assert!(again.delete("disks/uid-1").await.unwrap());
        assert!(!again.delete("disks/uid-1").await.unwrap());
        let empty = records(&api).await;
        assert!(empty.keys("").is_empty() && empty.pending_deletions().is_empty());
        again.remove_all().await.unwrap();
        assert!(api.stored.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn the_work_to_finalize_a_deletion_is_kept_in_the_configmap_and_capped() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let answer = crate::plugin::PendingDeletion { finalize: vec![0, 1, 2, 255], poll_after_ms: 60_000 };
        let with_work = deletion("uid-1").with_pending(&answer);
        assert!(!with_work.due(), "not polled before poll-after");
        r.record_deletion(with_work.clone()).await.unwrap();
        let deletions: serde_json::Value = serde_json::from_str(&api.data()[DELETIONS_DATA_KEY]).unwrap();
        assert_eq!(deletions["uid-1"]["finalize"], "AAEC/w==");
        assert!(deletions["uid-1"]["pollAfterUnixMs"].as_u64().unwrap() > unix_ms_now());
        // Records written before 0.2 (no finalize, no poll-after) still load.
        r.record_deletion(deletion("uid-0")).await.unwrap();
        let deletions: serde_json::Value = serde_json::from_str(&api.data()[DELETIONS_DATA_KEY]).unwrap();
        assert!(deletions["uid-0"].get("finalize").is_none() && deletions["uid-0"].get("pollAfterUnixMs").is_none());
        let again = records(&api).await;
        assert_eq!(again.pending_deletions(), vec![deletion("uid-0"), with_work]);

        let big = |uid: &str, n: usize| {
            let mut d = deletion(uid);
            d.finalize = vec![7; n];
            d
        };
        let err = again.record_deletion(big("uid-2", MAX_FINALIZE_BYTES + 1)).await.unwrap_err();
        assert!(matches!(&err, RecordsError::OverLimit(m) if m.contains("uid-2")), "{err:?}");
        for i in 0..(MAX_FINALIZE_TOTAL_BYTES / MAX_FINALIZE_BYTES) - 1 {
            again.record_deletion(big(&format!("full-{i}"), MAX_FINALIZE_BYTES)).await.unwrap();
        }
        let err = again.record_deletion(big("uid-3", MAX_FINALIZE_BYTES)).await.unwrap_err();
        assert!(matches!(&err, RecordsError::OverLimit(m) if m.contains("uid-3")), "{err:?}");
        // Replacing a recorded deletion's work counts its old work out.
        again.record_deletion(big("full-0", MAX_FINALIZE_BYTES - 1)).await.unwrap();
        assert!(api.data()[DELETIONS_DATA_KEY].len() < 400_000);
    }

    #[tokio::test]
    async fn a_conflicting_write_is_merged_onto_the_other_writers_records() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        r.set("a", b"1".to_vec()).await.unwrap();
        r.set("b", b"1".to_vec()).await.unwrap();
        // Someone else changes `b`, adds `c` and a deletion.
        let other = records(&api).await;
        other.set("b", b"theirs".to_vec()).await.unwrap();
        other.set("c", b"theirs".to_vec()).await.unwrap();
        other.record_deletion(deletion("u9")).await.unwrap();
        // Our stale copy writes `a` and removes nothing it did not touch.
        r.set("a", b"ours".to_vec()).await.unwrap();
        let fresh = records(&api).await;
        assert_eq!(fresh.get("a").unwrap(), b"ours");
        assert_eq!(fresh.get("b").unwrap(), b"theirs");
        assert_eq!(fresh.get("c").unwrap(), b"theirs");
        assert_eq!(fresh.pending_deletions(), vec![deletion("u9")]);
        // And our copy has caught up with theirs.
        assert_eq!(r.get("c").unwrap(), b"theirs");
        // A key we deleted stays deleted even though the other writer still had it.
        api.edit(|d| {
            d.insert(PLUGIN_DATA_KEY.into(), r#"{"a":"b3Vycw==","b":"dGhlaXJz","c":"dGhlaXJz","d":"eA=="}"#.into());
        });
        assert!(r.delete("b").await.unwrap());
        let fresh = records(&api).await;
        assert_eq!(fresh.keys(""), vec!["a", "c", "d"]);
    }

    #[tokio::test]
    async fn failed_writes_are_retried_then_reported_unavailable() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        *api.fail_next.lock().unwrap() = 2;
        r.set("a", b"1".to_vec()).await.unwrap();
        assert_eq!(*api.puts.lock().unwrap(), 3);
        *api.fail_next.lock().unwrap() = WRITE_ATTEMPTS;
        let err = r.set("b", b"1".to_vec()).await.unwrap_err();
        assert!(matches!(&err, RecordsError::Unavailable(m) if m.contains("apiserver unreachable")), "{err:?}");
        // The next write stores what was not stored before.
        r.set("c", b"1".to_vec()).await.unwrap();
        assert_eq!(records(&api).await.keys(""), vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn concurrent_writes_share_configmap_updates() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let writes = (0..50).map(|i| {
            let r = r.clone();
            async move { r.record_deletion(deletion(&format!("u{i}"))).await }
        });
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
        assert_eq!(records(&api).await.pending_deletions().len(), 50);
        assert!(*api.puts.lock().unwrap() < 50, "{} writes", api.puts.lock().unwrap());
    }

    #[tokio::test]
    async fn deletions_past_the_cap_are_refused_and_known_ones_still_update() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        for i in 0..MAX_DELETIONS {
            r.record_deletion(deletion(&format!("u{i}"))).await.unwrap();
        }
        let err = r.record_deletion(deletion("one-more")).await.unwrap_err();
        assert!(matches!(err, RecordsError::OverLimit(_)), "{err:?}");
        let mut known = deletion("u7");
        known.reason = DeleteReason::Orphaned;
        r.record_deletion(known).await.unwrap();
        assert_eq!(r.pending_deletions().len(), MAX_DELETIONS);
    }
}
