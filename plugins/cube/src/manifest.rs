//! Reading a user's manifest for the native `translate` example: the first Pod of a (multi-document) YAML file,
//! or the pod template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob, as the
//! controller would create it.

use serde_json::{Value, json};

use crate::error::InvalidInput;
use vk_provider_sdk::ResolvedPod;

/// The uid given to pods that have none yet (a manifest, not a live object).
pub const DRY_RUN_UID: &str = "00000000-0000-4000-8000-000000000000";

fn invalid(message: impl Into<String>) -> InvalidInput {
    InvalidInput::new("InvalidManifest", "manifest", message)
}

/// The pod a manifest describes, with nothing resolved (no ConfigMaps, Secrets, claims, tokens).
pub fn pod_from_manifest(yaml: &str) -> Result<ResolvedPod, InvalidInput> {
    let mut kinds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| invalid(format!("not YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if let Some(pod) = pod_of(&kind, &v) {
            return Ok(ResolvedPod::from_pod_json(pod.to_string()));
        }
        kinds.push(if kind.is_empty() { "(no kind)".to_string() } else { kind });
    }
    Err(invalid(format!("no Pod or pod template in the manifest (found: {})", kinds.join(", "))))
}

fn pod_of(kind: &str, v: &Value) -> Option<Value> {
    let template = match kind {
        "Pod" => {
            let mut pod = v.clone();
            fill_metadata(&mut pod["metadata"], v["metadata"]["name"].as_str().unwrap_or("pod"), &v["metadata"]);
            return Some(pod);
        }
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => v["spec"]["template"].clone(),
        "CronJob" => v["spec"]["jobTemplate"]["spec"]["template"].clone(),
        _ => return None,
    };
    if !template.is_object() {
        return None;
    }
    let owner = v["metadata"]["name"].as_str().unwrap_or("pod");
    let name = if kind == "StatefulSet" { format!("{owner}-0") } else { format!("{owner}-dryrun") };
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    fill_metadata(&mut pod["metadata"], &name, &v["metadata"]);
    Some(pod)
}

fn fill_metadata(meta: &mut Value, name: &str, owner: &Value) {
    if !meta.is_object() {
        *meta = json!({});
    }
    if meta["name"].as_str().is_none_or(str::is_empty) {
        meta["name"] = json!(name);
    }
    if meta["namespace"].as_str().is_none_or(str::is_empty) {
        meta["namespace"] = json!(owner["namespace"].as_str().unwrap_or("default"));
    }
    if meta["uid"].as_str().is_none_or(str::is_empty) {
        meta["uid"] = json!(DRY_RUN_UID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Value {
        serde_json::from_str(&pod_from_manifest(yaml).unwrap().pod).unwrap()
    }

    #[test]
    fn reads_pods_and_pod_templates() {
        let p = pod("kind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a, image: b}]}");
        assert_eq!(
            (p["metadata"]["name"].as_str(), p["metadata"]["namespace"].as_str()),
            (Some("web"), Some("default"))
        );
        assert_eq!(p["metadata"]["uid"], DRY_RUN_UID);
        let d = pod(
            "kind: Deployment\nmetadata: {name: nginx, namespace: shop}\nspec:\n  template:\n    metadata: {annotations: {x: y}}\n    spec: {containers: [{name: a, image: b}]}",
        );
        assert_eq!(
            (d["metadata"]["name"].as_str(), d["metadata"]["namespace"].as_str()),
            (Some("nginx-dryrun"), Some("shop"))
        );
        assert_eq!(d["metadata"]["annotations"]["x"], "y");
        assert_eq!(d["spec"]["containers"][0]["name"], "a");
        let s = pod("kind: StatefulSet\nmetadata: {name: db}\nspec: {template: {spec: {containers: []}}}");
        assert_eq!(s["metadata"]["name"], "db-0");
    }

    #[test]
    fn takes_the_first_pod_of_a_multi_document_file() {
        let yaml = "kind: StorageClass\nmetadata: {name: ssd}\n---\nkind: PersistentVolumeClaim\nmetadata: {name: c}\n---\nkind: Pod\nmetadata: {name: nginx}\nspec: {containers: []}\n";
        assert_eq!(pod(yaml)["metadata"]["name"], "nginx");
        let err = pod_from_manifest("kind: Service\nmetadata: {name: s}\n").unwrap_err();
        assert!(err.message.contains("found: Service"), "{}", err.message);
    }
}
