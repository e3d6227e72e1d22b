//! A pod as the node's cache keeps it. The metadata stays typed: kube-runtime keys and filters by
//! it, and every sync, listing and the controller's filter read it. The spec and the status are
//! kept as the JSON the apiserver sent (compact, managedFields dropped), with the status's phase
//! beside it, and typed again only when a sync or a kubelet call needs the whole pod
//! ([`CachedPod::pod`]) or the status is compared ([`PodView::status_value`]). k8s-openapi's
//! types hold every optional part inline: a one-container spec takes 5.6 KiB typed (a `Container`
//! is 2.3 KiB before its strings, a `Volume` 3.2 KiB) and under 1 KiB as JSON; a Running
//! status 2.4 KiB typed and about 1 KiB as JSON. At the guide's 1,600 pods that is ~9 MiB of the
//! daemon's peak memory.

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "Pod")]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    /// The spec as JSON; `None` when the pod had none.
    spec: Option<Box<str>>,
    /// The status as JSON; `None` when the pod had none.
    status: Option<Box<str>>,
    /// The status's phase.
    phase: Option<Box<str>>,
}

/// A typed part of a pod as compact JSON (its struct fields in order, maps sorted).
fn compact<T: serde::Serialize>(part: &T) -> Box<str> {
    serde_json::to_string(part).expect("a typed pod part serializes").into_boxed_str()
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> Self {
        let mut metadata = pod.metadata;
        // The apiserver's field-ownership bookkeeping, about a third of a pod object: nothing
        // here reads it.
        metadata.managed_fields = None;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).map(Box::from);
        CachedPod { metadata, spec: pod.spec.as_ref().map(compact), status: pod.status.as_ref().map(compact), phase }
    }
}

impl CachedPod {
    /// The whole pod, typed.
    pub fn pod(&self) -> Pod {
        Pod { metadata: self.metadata.clone(), spec: self.spec(), status: self.typed_status() }
    }

    /// The spec, typed.
    pub fn spec(&self) -> Option<PodSpec> {
        // Serialized from a `PodSpec` above, so it reads back as one.
        self.spec.as_deref().map(|s| serde_json::from_str(s).expect("a cached spec reads back"))
    }

    fn typed_status(&self) -> Option<PodStatus> {
        self.status.as_deref().map(|s| serde_json::from_str(s).expect("a cached status reads back"))
    }

    /// The spec as JSON, in the fixed order of its typed fields (for hashing).
    pub fn spec_json(&self) -> Option<&str> {
        self.spec.as_deref()
    }
}

/// What code that reads only a pod's metadata and status needs of it, from the typed pod or the
/// cached one alike.
pub trait PodView {
    fn meta(&self) -> &ObjectMeta;
    /// The status's phase.
    fn phase(&self) -> Option<&str>;
    /// The status as JSON (as the host compares and writes statuses).
    fn status_value(&self) -> Option<Value>;
    /// Whether the pod ran to its end (phase Succeeded or Failed).
    fn finished(&self) -> bool {
        matches!(self.phase(), Some("Succeeded" | "Failed"))
    }
}

impl PodView for Pod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn phase(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.phase.as_deref())
    }
    fn status_value(&self) -> Option<Value> {
        self.status.as_ref().and_then(|s| serde_json::to_value(s).ok())
    }
}

impl PodView for CachedPod {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn phase(&self) -> Option<&str> {
        self.phase.as_deref()
    }
    fn status_value(&self) -> Option<Value> {
        self.status.as_deref().and_then(|s| serde_json::from_str(s).ok())
    }
}

impl<P: PodView> PodView for std::sync::Arc<P> {
    fn meta(&self) -> &ObjectMeta {
        (**self).meta()
    }
    fn phase(&self) -> Option<&str> {
        (**self).phase()
    }
    fn status_value(&self) -> Option<Value> {
        (**self).status_value()
    }
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A pod as the apiserver sends it, with the parts a sync reads: containers with probes,
    /// env from references, volumes, tolerations, and a status.
    fn served() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                         "labels": {"app": "web"}, "annotations": {"team": "a"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {
                "nodeName": "vk-1",
                "containers": [{
                    "name": "app", "image": "nginx:1.25",
                    "env": [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "a"}]}}],
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}]
            },
            "status": {"phase": "Running", "podIP": "10.1.0.7",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        })
    }

    #[test]
    fn a_cached_pod_reads_back_as_the_pod_the_apiserver_sent_without_its_managed_fields() {
        let pod: Pod = serde_json::from_value(served()).unwrap();
        let cached: CachedPod = serde_json::from_value(served()).unwrap();
        let mut expected = pod.clone();
        expected.metadata.managed_fields = None;
        assert_eq!(cached.pod(), expected);
        assert_eq!(cached.spec(), pod.spec);
        assert!(cached.metadata.managed_fields.is_none());
        // What reads only the metadata and status sees the same through either.
        assert_eq!(PodView::meta(&cached), PodView::meta(&expected));
        assert_eq!(cached.phase(), Some("Running"));
        assert!(!cached.finished());
        assert_eq!(cached.status_value(), expected.status_value());
        assert_eq!(cached.status_value().unwrap()["podIP"], "10.1.0.7");
    }

    #[test]
    fn a_pod_without_a_spec_has_none_cached() {
        let cached = CachedPod::from(Pod::default());
        assert_eq!(cached.spec(), None);
        assert_eq!(cached.spec_json(), None);
        assert_eq!((cached.phase(), cached.status_value()), (None, None));
        assert_eq!(cached.pod(), Pod::default());
    }

    #[test]
    fn the_cached_spec_is_the_compact_json_of_its_typed_fields() {
        let cached: CachedPod = serde_json::from_value(served()).unwrap();
        let json = cached.spec_json().unwrap();
        assert!(!json.contains(": ") && !json.contains(", "), "compact: {json}");
        assert_eq!(serde_json::from_str::<PodSpec>(json).unwrap(), cached.spec().unwrap());
        // Two reads of the same spec give the same text (the controller's filter hashes it).
        let again: CachedPod = serde_json::from_value(served()).unwrap();
        assert_eq!(again.spec_json(), cached.spec_json());
    }
}
