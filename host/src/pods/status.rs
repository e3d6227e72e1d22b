//! Pod status as Kubernetes shows it, made from the provider's report: phase, the four standard
//! conditions, container states, IPs and times. Pure functions; the controller decides when to write.

use serde_json::{Value, json};

use crate::plugin::{ContainerState, ContainerStatus, Instance, PodPhase, PodStatus};

/// The current time in RFC 3339 (seconds), as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

/// The `status` object to write for a pod, keeping the transition times of conditions whose
/// state did not change (`previous` is the pod's current status).
pub fn pod_status_json(report: &PodStatus, host_ip: &str, instance_id: &str, previous: Option<&Value>) -> Value {
    let now = now_rfc3339();
    let all_ready = !report.container_statuses.is_empty() && report.container_statuses.iter().all(|c| c.ready);
    let initialized = report
        .init_container_statuses
        .iter()
        .all(|c| matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0));
    let running = matches!(report.phase, PodPhase::Running | PodPhase::Succeeded);
    let bool_status = |b: bool| if b { "True" } else { "False" };
    let ready_reason = if all_ready { "" } else { "ContainersNotReady" };
    let conditions: Vec<Value> = [
        ("PodReadyToStartContainers", bool_status(report.pod_ip.is_some() || running), ""),
        ("Initialized", bool_status(initialized), if initialized { "" } else { "ContainersNotInitialized" }),
        ("Ready", bool_status(all_ready), ready_reason),
        ("ContainersReady", bool_status(all_ready), ready_reason),
        ("PodScheduled", "True", ""),
    ]
    .into_iter()
    .map(|(kind, status, reason)| {
        let since = previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == status))
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| now.clone());
        let mut c = json!({"type": kind, "status": status, "lastTransitionTime": since, "lastProbeTime": null});
        if !reason.is_empty() {
            c["reason"] = json!(reason);
        }
        c
    })
    .collect();
    let containers = |list: &[ContainerStatus]| -> Vec<Value> {
        list.iter().map(|c| container_status_json(c, instance_id)).collect()
    };
    let mut status = json!({
        "phase": report.phase.as_str(),
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": containers(&report.container_statuses),
        "initContainerStatuses": containers(&report.init_container_statuses),
        "qosClass": previous.and_then(|p| p.get("qosClass")).cloned().unwrap_or(json!("Burstable")),
        "reason": null,
        "message": null,
    });
    if !report.reason.is_empty() {
        status["reason"] = json!(report.reason);
    }
    if !report.message.is_empty() {
        status["message"] = json!(report.message);
    }
    if let Some(ip) = &report.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    let start =
        report.start_time.clone().or_else(|| previous.and_then(|p| p["startTime"].as_str()).map(str::to_string));
    if let Some(start) = start {
        status["startTime"] = json!(start);
    }
    status
}

/// A pod as the provider runs it (`/runningpods/`): its identity, the containers its instance
/// runs (name and image, as the kubelet lists its runtime's pods) and the instance's status.
pub fn running_pod_json(instance: &Instance, node: &str, host_ip: &str) -> Value {
    let containers: Vec<Value> =
        instance.status.container_statuses.iter().map(|c| json!({"name": c.name, "image": c.image})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": instance.pod.namespace,
            "name": instance.pod.name,
            "uid": instance.pod.uid,
        },
        "spec": {"nodeName": node, "containers": containers},
        "status": pod_status_json(&instance.status, host_ip, &instance.instance_id, None),
    })
}

fn container_status_json(c: &ContainerStatus, instance_id: &str) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "ready": c.ready,
        "started": matches!(c.state, ContainerState::Running(_)),
        "restartCount": c.restart_count,
        "state": state_json(&c.state),
        "lastState": c.last_state.as_ref().map(state_json).unwrap_or(json!({})),
    });
    if !instance_id.is_empty() {
        v["containerID"] = json!(format!("vk://{instance_id}/{}", c.name));
    }
    v
}

fn state_json(s: &ContainerState) -> Value {
    let opt = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    match s {
        ContainerState::Waiting(w) => json!({"waiting": {"reason": opt(&w.reason), "message": opt(&w.message)}}),
        ContainerState::Running(r) => json!({"running": {"startedAt": opt(&r.started_at)}}),
        ContainerState::Terminated(t) => json!({"terminated": {
            "exitCode": t.exit_code, "reason": opt(&t.reason), "message": opt(&t.message),
            "startedAt": opt(&t.started_at), "finishedAt": opt(&t.finished_at),
        }}),
    }
}

/// Whether writing `next` would change what the pod shows (ignoring condition timestamps and
/// fields we do not own), so unchanged statuses cost no API call.
pub fn differs(current: Option<&Value>, next: &Value) -> bool {
    let Some(current) = current else { return true };
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs.iter_mut() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                    o.remove("lastProbeTime");
                }
            }
            cs.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
        }
        v
    };
    let (a, b) = (strip(current), strip(next));
    for key in [
        "phase",
        "reason",
        "message",
        "podIP",
        "conditions",
        "containerStatuses",
        "initContainerStatuses",
        "startTime",
        "hostIP",
    ] {
        let na = normalize(a.get(key));
        let nb = normalize(b.get(key));
        if na != nb {
            return true;
        }
    }
    false
}

fn normalize(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) => {
            let cleaned: serde_json::Map<String, Value> = o
                .iter()
                .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
                .map(|(k, v)| (k.clone(), normalize(Some(v))))
                .collect();
            Value::Object(cleaned)
        }
        Some(Value::Array(a)) => Value::Array(a.iter().map(|x| normalize(Some(x))).collect()),
        Some(v) => v.clone(),
    }
}

/// Status of a pod the provider refused as invalid (the user's error): no retry. A pod that a
/// controller recreates (restartPolicy Always under a ReplicaSet/StatefulSet…) stays Pending so
/// the controller does not churn out failing replacements; any other pod ends Failed.
pub fn rejected_status(pod: &k8s_openapi::api::core::v1::Pod, reason: &str, message: &str) -> Value {
    let restart_always = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always") == "Always";
    let controlled =
        pod.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.controller == Some(true)));
    let phase = if restart_always && controlled { "Pending" } else { "Failed" };
    waiting_status(phase, reason, message)
}

/// A pod status without an instance: phase, reason and message, plus the scheduled condition.
pub fn waiting_status(phase: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({
        "phase": phase,
        "reason": reason,
        "message": message,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now, "lastProbeTime": null},
            {"type": "Ready", "status": "False", "reason": reason, "message": message, "lastTransitionTime": now, "lastProbeTime": null},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{StateRunning, StateWaiting};

    fn running(ready: bool) -> PodStatus {
        PodStatus {
            phase: PodPhase::Running,
            reason: String::new(),
            message: String::new(),
            pod_ip: Some("10.9.0.7".into()),
            start_time: Some("2026-11-26T10:00:00Z".into()),
            init_container_statuses: vec![],
            container_statuses: vec![ContainerStatus {
                name: "web".into(),
                image: "uhub.service.ucloud.cn/library/nginx".into(),
                ready,
                restart_count: 0,
                state: ContainerState::Running(StateRunning { started_at: "2026-11-26T10:00:01Z".into() }),
                last_state: None,
            }],
        }
    }

    #[test]
    fn a_running_instance_is_a_pod_with_its_containers_and_status() {
        let instance = Instance {
            pod: crate::plugin::PodRef { namespace: "ns".into(), name: "web-1".into(), uid: "uid-1".into() },
            instance_id: "cube-abc".into(),
            status: running(true),
        };
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(running_pod_json(&instance, "vk-1", "10.200.0.1")).unwrap();
        assert_eq!(
            (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref(), pod.metadata.uid.as_deref()),
            (Some("ns"), Some("web-1"), Some("uid-1"))
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("vk-1"));
        let images: Vec<_> = spec.containers.iter().map(|c| (c.name.as_str(), c.image.as_deref())).collect();
        assert_eq!(images, [("web", Some("uhub.service.ucloud.cn/library/nginx"))]);
        let status = pod.status.unwrap();
        assert_eq!((status.phase.as_deref(), status.host_ip.as_deref()), (Some("Running"), Some("10.200.0.1")));
        assert_eq!(status.container_statuses.unwrap()[0].container_id.as_deref(), Some("vk://cube-abc/web"));
    }

    #[test]
    fn running_ready_pod_is_ready_with_ip_and_start_time() {
        let s = pod_status_json(&running(true), "127.0.0.1", "inst-1", None);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.9.0.7");
        assert_eq!(s["startTime"], "2026-11-26T10:00:00Z");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(s["containerStatuses"][0]["state"]["running"]["startedAt"], "2026-11-26T10:00:01Z");
        assert_eq!(s["containerStatuses"][0]["containerID"], "vk://inst-1/web");
    }

    #[test]
    fn waiting_container_reason_shows_and_pod_is_not_ready() {
        let mut r = running(false);
        r.phase = PodPhase::Pending;
        r.container_statuses[0].state =
            ContainerState::Waiting(StateWaiting { reason: "ErrImagePull".into(), message: "no such image".into() });
        let s = pod_status_json(&r, "127.0.0.1", "i", None);
        assert_eq!(s["containerStatuses"][0]["state"]["waiting"]["reason"], "ErrImagePull");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
    }

    #[test]
    fn unchanged_status_does_not_differ_even_with_new_timestamps() {
        let a = pod_status_json(&running(true), "127.0.0.1", "i", None);
        let mut b = a.clone();
        b["conditions"][0]["lastTransitionTime"] = json!("2030-01-01T00:00:00Z");
        assert!(!differs(Some(&a), &b));
        let c = pod_status_json(&running(false), "127.0.0.1", "i", Some(&a));
        assert!(differs(Some(&a), &c));
    }

    #[test]
    fn transition_times_are_kept_when_the_condition_holds() {
        let mut a = pod_status_json(&running(true), "127.0.0.1", "i", None);
        a["conditions"][2]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        let b = pod_status_json(&running(true), "127.0.0.1", "i", Some(&a));
        assert_eq!(b["conditions"][2]["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }

    #[test]
    fn rejected_bare_pod_fails_but_a_replicaset_pod_stays_pending() {
        let bare: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(rejected_status(&bare, "InvalidAnnotation", "m")["phase"], "Failed");
        let owned: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({"metadata": {"name": "p",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]}}))
        .unwrap();
        assert_eq!(rejected_status(&owned, "InvalidAnnotation", "m")["phase"], "Pending");
    }
}
