//! What resolving reads of the ConfigMaps and Secrets a node already holds: the node's reference
//! watches (`pods::references`) implement [`HeldObjects`], so resolving needs nothing of how they
//! watch, and they use what resolving reads (`References`) to tell changes apart.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// The kinds of referenced object a node watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

/// One watched object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// What a watch holds of its object, for resolving pods.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No answer yet.
    Unknown,
    /// The watch failed before its first answer (it keeps trying): read the object directly.
    Failed,
    /// The object does not exist (or was deleted).
    Absent,
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
}

/// ConfigMaps and Secrets held by watches.
pub trait HeldObjects {
    /// What is held of `key` (watching it from now on, its first answer awaited a bounded time),
    /// or `None` when the caller must read the object itself.
    fn read(&self, key: &ObjectKey) -> impl std::future::Future<Output = Option<Seen>> + Send;
}
