//! Volume expansion on a virtual node: a kubelet finishes a PVC expansion on the node, but a
//! serverless instance's mounted disk cannot be grown through the provider contract (the guide: no
//! volume expansion for Cube). So a claim mounted by a pod of the node whose requested size
//! exceeds its capacity is answered with a Warning Event on the claim and on the pod, once per
//! requested size; the instance keeps the disk it has.

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::cached::{CachedPod, PodView};
use super::resolve::parse_quantity;

/// Reason of the Events, the kubelet's for a volume it could not expand.
pub const REASON: &str = "VolumeResizeFailed";

/// Claims already answered, by claim UID: the requested size answered.
#[derive(Default)]
pub struct Answered(Mutex<HashMap<String, String>>);

/// Requested and current size of a claim, when it asks for more than it has.
pub fn growth(pvc: &PersistentVolumeClaim) -> Option<(String, String)> {
    let requested = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?.0.clone();
    let capacity = pvc.status.as_ref()?.capacity.as_ref()?.get("storage")?.0.clone();
    (parse_quantity(&requested)? > parse_quantity(&capacity)?).then_some((requested, capacity))
}

/// An expansion to answer: the Warning (reason [`REASON`]) goes on the claim and on the pod.
pub struct Refusal {
    pub pod: Arc<CachedPod>,
    pub claim: PersistentVolumeClaim,
    pub note: String,
}

/// Looks at every claim mounted by a running pod of the node and returns the expansions not
/// answered yet (each is then taken as answered).
pub async fn check(client: &Client, node_name: &str, pods: &[Arc<CachedPod>], answered: &Answered) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() || pod.finished() {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let claims = pod
            .spec()
            .into_iter()
            .flat_map(|s| s.volumes.into_iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()));
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        for claim in claims {
            let Ok(Some(pvc)) = api.get_opt(&claim).await else { continue };
            let Some((requested, capacity)) = growth(&pvc) else { continue };
            let uid = pvc.uid().unwrap_or_default();
            if answered.0.lock().unwrap().get(&uid) == Some(&requested) {
                continue;
            }
            let note = format!(
                "PersistentVolumeClaim {ns}/{claim} asks for {requested}, but its disk, mounted by pod {} on virtual node {}, stays {capacity}: the provider cannot expand a mounted volume (the guide: volume expansion is not supported). Create a larger claim and copy the data, and set allowVolumeExpansion: false on the StorageClass",
                pod.name_any(),
                node_name
            );
            tracing::info!(pvc = %format!("{ns}/{claim}"), %requested, %capacity, "volume expansion refused");
            answered.0.lock().unwrap().insert(uid, requested);
            refusals.push(Refusal { pod: pod.clone(), claim: pvc, note });
        }
    }
    refusals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(requested: &str, capacity: Option<&str>) -> PersistentVolumeClaim {
        let mut v = serde_json::json!({
            "metadata": {"name": "c"},
            "spec": {"resources": {"requests": {"storage": requested}}},
        });
        if let Some(c) = capacity {
            v["status"] = serde_json::json!({"capacity": {"storage": c}});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_claim_asking_for_more_than_its_capacity_is_growing() {
        assert_eq!(growth(&claim("30Gi", Some("20Gi"))), Some(("30Gi".into(), "20Gi".into())));
        assert_eq!(growth(&claim("20Gi", Some("20Gi"))), None);
        assert_eq!(growth(&claim("20G", Some("20Gi"))), None, "20G < 20Gi");
        assert_eq!(growth(&claim("20Gi", None)), None, "an unbound claim has no capacity yet");
    }
}
