//! What resolving reads of the objects a node already holds: the node's reference watches
//! (`pods::references`) implement [`HeldObjects`], so resolving needs nothing of how they watch,
//! and they use what resolving reads (`References`) to tell changes apart.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};

/// The kinds of referenced object a node watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
    /// Every Service of a namespace, for service-link variables (the key's name is empty).
    Services,
}

/// One watched object, or (kind [`Kind::Services`]) one namespace's Services.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The Services of `namespace`.
    pub fn services(namespace: &str) -> ObjectKey {
        ObjectKey { kind: Kind::Services, namespace: namespace.to_string(), name: String::new() }
    }
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
    /// A namespace's Services that give service-link variables, each with only what they read.
    Services(Arc<Vec<Service>>),
}

/// Objects held by watches.
pub trait HeldObjects {
    /// What is held of `key` (watching it from now on, its first answer awaited a bounded time),
    /// or `None` when the caller must read the object itself.
    fn read(&self, key: &ObjectKey) -> impl std::future::Future<Output = Option<Seen>> + Send;
}
