//! The controller's filter of pod watch events: a change that is only the host's own writes — the
//! pod's status, the annotations the host keeps on the pod, and the annotations a provider asked
//! for on a create, as long as they have the values the host wrote — is not another reconcile
//! (each one a provider `status` call). Everything else still reconciles: a change of the spec,
//! labels, finalizers, owner references, the deletion timestamp, the generation, or any other
//! annotation (a provider's annotation another writer changed included). A pod the filter has
//! not seen passes.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::cached::CachedPod;

/// A hash of what of `pod` is not the host's own writing: the metadata without the
/// resourceVersion, the managedFields, the host's annotations (`own`) and the annotations it
/// wrote for the provider with the values it wrote (`written`), and the spec. Two versions of a
/// pod with the same hash differ only by what the host wrote (for kube-runtime's
/// `predicate_filter`, which keys it by the pod's UID and passes a pod it has not seen).
pub fn others_writes(pod: &CachedPod, own: &[&str], written: &[(String, String)]) -> Option<u64> {
    let mut meta = pod.metadata.clone();
    meta.resource_version = None;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, v| !own.contains(&k.as_str()) && !written.iter().any(|(wk, wv)| wk == k && wv == v));
    }
    // A pod without annotations before the host's first write has none of anybody else's after
    // it: an empty map is no annotations (it hashed apart, and every start was reconciled again,
    // with a provider `status` call, for its own write).
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
    // The metadata serializes in a fixed order (struct fields, sorted maps), and the cached spec
    // was serialized so.
    let bytes = serde_json::to_vec(&meta).ok()?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    pod.spec_json().hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::controller::{HOST_ANNOTATIONS, INSTANCE_ANNOTATION, REJECTED_ANNOTATION, REJECTED_BY_ANNOTATION};
    use crate::pods::references::GIVEN_ANNOTATION;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::{PredicateConfig, WatchStreamExt};

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("uid-1".into());
        p.metadata.resource_version = Some("1".into());
        p.metadata.generation = Some(1);
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.metadata.annotations = Some([("team".to_string(), "a".to_string())].into());
        p.spec = Some(PodSpec {
            node_name: Some("vk-1".into()),
            containers: vec![Container { name: "c".into(), image: Some("nginx:1".into()), ..Default::default() }],
            ..Default::default()
        });
        p
    }

    fn annotate(p: &mut Pod, k: &str, v: &str) {
        p.metadata.annotations.get_or_insert_default().insert(k.into(), v.into());
    }

    /// How many of `pods`, in this order, the controller's filter lets through.
    async fn passed(pods: Vec<Pod>) -> Vec<bool> {
        passed_with(pods, vec![]).await
    }

    /// The same, with `written` the provider's annotations the host wrote.
    async fn passed_with(pods: Vec<Pod>, written: Vec<(String, String)>) -> Vec<bool> {
        let uids: Vec<_> = pods.iter().map(|p| p.metadata.resource_version.clone()).collect();
        let out: Vec<CachedPod> = futures::stream::iter(pods.into_iter().map(|p| Ok(CachedPod::from(p))))
            .predicate_filter(
                move |p: &CachedPod| others_writes(p, &HOST_ANNOTATIONS, &written),
                PredicateConfig::default(),
            )
            .map(|r| r.unwrap())
            .collect()
            .await;
        let out: Vec<_> = out.iter().map(|p| p.metadata.resource_version.clone()).collect();
        uids.iter().map(|rv| out.contains(rv)).collect()
    }

    #[tokio::test]
    async fn only_the_hosts_own_writes_are_skipped() {
        type Change = fn(&mut Pod);
        let cases: Vec<(&str, Change, bool)> = vec![
            (
                "status only",
                |p| p.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() }),
                false,
            ),
            ("instance id annotation", |p| annotate(p, INSTANCE_ANNOTATION, "cube-1"), false),
            ("references-given annotation", |p| annotate(p, GIVEN_ANNOTATION, "ConfigMap/cfg=ab"), false),
            (
                "refusal annotations",
                |p| {
                    annotate(p, REJECTED_ANNOTATION, "Invalid");
                    annotate(p, REJECTED_BY_ANNOTATION, "cube@1 abc config def");
                },
                false,
            ),
            ("a user's annotation", |p| annotate(p, "team", "b"), true),
            ("a provider's annotation", |p| annotate(p, "cube.io/eip", "1.2.3.4"), true),
            ("spec", |p| p.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into()), true),
            (
                "labels",
                |p| {
                    p.metadata.labels.as_mut().unwrap().insert("tier".into(), "front".into());
                },
                true,
            ),
            (
                "deletion",
                |p| {
                    p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
                    p.metadata.deletion_grace_period_seconds = Some(30);
                },
                true,
            ),
            ("finalizers", |p| p.metadata.finalizers = Some(vec!["example.com/keep".into()]), true),
            ("generation", |p| p.metadata.generation = Some(2), true),
        ];
        for (what, change, passes) in cases {
            let first = pod();
            let mut next = first.clone();
            change(&mut next);
            next.metadata.resource_version = Some("2".into());
            assert_eq!(passed(vec![first, next]).await, vec![true, passes], "{what}");
        }
    }

    /// Most pods (a Deployment's without annotations in its template) have no annotations until
    /// the host writes the instance's.
    #[tokio::test]
    async fn the_hosts_first_annotation_on_a_pod_without_any_is_skipped_too() {
        let mut first = pod();
        first.metadata.annotations = None;
        let mut own = first.clone();
        annotate(&mut own, INSTANCE_ANNOTATION, "cube-1");
        annotate(&mut own, GIVEN_ANNOTATION, "ConfigMap/kube-root-ca.crt=ab");
        own.metadata.resource_version = Some("2".into());
        let mut theirs = own.clone();
        annotate(&mut theirs, "team", "a");
        theirs.metadata.resource_version = Some("3".into());
        assert_eq!(passed(vec![first, own, theirs]).await, vec![true, false, true]);
    }

    #[tokio::test]
    async fn a_pod_not_seen_before_passes() {
        // Its first sight, though already with an instance and a status (after a restart).
        let mut seen_later = pod();
        annotate(&mut seen_later, INSTANCE_ANNOTATION, "cube-1");
        seen_later.status = Some(PodStatus { phase: Some("Running".into()), ..Default::default() });
        assert_eq!(passed(vec![seen_later]).await, vec![true]);
        // A pod of the same name made again (another UID) is another pod.
        let first = pod();
        let mut again = pod();
        again.metadata.uid = Some("uid-2".into());
        again.metadata.resource_version = Some("2".into());
        assert_eq!(passed(vec![first, again]).await, vec![true, true]);
    }

    #[tokio::test]
    async fn a_skipped_write_does_not_hide_a_later_change() {
        let first = pod();
        let mut own = first.clone();
        annotate(&mut own, INSTANCE_ANNOTATION, "cube-1");
        own.metadata.resource_version = Some("2".into());
        let mut deleting = own.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        deleting.metadata.resource_version = Some("3".into());
        assert_eq!(passed(vec![first, own, deleting]).await, vec![true, false, true]);
    }

    /// A provider's annotation the host wrote on the create is the host's write; the same key
    /// changed by someone else afterwards is not.
    #[tokio::test]
    async fn a_providers_annotation_is_the_hosts_write_only_with_the_value_the_host_wrote() {
        let written = vec![("example.vk.io/instance-id".to_string(), "ex-1".to_string())];
        let first = pod();
        let mut own = first.clone();
        annotate(&mut own, INSTANCE_ANNOTATION, "ex-1");
        annotate(&mut own, "example.vk.io/instance-id", "ex-1");
        own.metadata.resource_version = Some("2".into());
        let mut changed = own.clone();
        annotate(&mut changed, "example.vk.io/instance-id", "ex-2");
        changed.metadata.resource_version = Some("3".into());
        assert_eq!(passed_with(vec![first.clone(), own.clone(), changed], written).await, vec![true, false, true]);
        // Without the host's record of it (written by an earlier run, or not by the host), it is
        // anybody's.
        assert_eq!(passed(vec![first, own]).await, vec![true, true]);
    }
}
