//! The provider's operations against an in-memory cloud: idempotent and lost creates, EIP binding
//! and its compensation, renewals, deletes (EIP release, node deletion with UDisks), list, streams.

#![allow(clippy::type_complexity)] // tables of cases

mod support;

use cube_provider::api::HttpError;
use cube_provider::contract::{
    DeleteReason, Deletion, ExecOptions, LogOptions, PodRef, ResolvedPod, ServiceAccountToken, StreamProtocol,
    VolumeClaim,
};
use cube_provider::error::ProviderError;
use cube_provider::instances::Cube;
use cube_provider::streams;
use serde_json::{Value, json};
use support::cloud::{Fault, host};
use support::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn nginx(annotations: Value) -> ResolvedPod {
    let mut pod: Value = serde_yaml_ng::from_str(&fixture("guide-pod-nginx.yaml")).unwrap();
    pod["metadata"]["annotations"] = annotations;
    ResolvedPod::from_pod_json(pod.to_string())
}

fn pod_ref() -> PodRef {
    PodRef { namespace: "default".into(), name: "nginx".into(), uid: "6f1c2d3e-0000-4000-8000-000000000001".into() }
}

fn annotation<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn create_makes_one_instance_per_pod_uid() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let first = cube.create(&nginx(json!({}))).unwrap();
    let again = cube.create(&nginx(json!({}))).unwrap();
    assert_eq!(first.instance_id, "cube-1");
    assert_eq!(again.instance_id, "cube-1");
    assert_eq!(host.count("CreateCubePod"), 1);
    assert_eq!(cloud.borrow().live().len(), 1);
    let create = host.params("CreateCubePod", 0);
    assert_eq!(
        (create["Group"].as_str(), create["VPCId"].as_str(), create["Region"].as_str()),
        (NODE, "uvnet-abc", "cn-bj2")
    );
    assert_eq!(annotation(&first.annotations, "cube.ucloud.cn/size"), Some("2-2Gi"));
    assert!(first.events.iter().any(|e| e.reason == "CubeCreated"));
    assert!(again.events.iter().all(|e| e.reason != "CubeCreated"));
    assert_eq!(first.status.pod_ip.as_deref(), Some("10.23.0.2"));
}

#[test]
fn a_create_whose_answer_was_lost_is_looked_up_not_repeated() {
    let (host, cloud) = host();
    cloud.borrow_mut().fault("CreateCubePod", Fault::ActThenLose);
    let cube = Cube::new(&host, &ctx()).unwrap();
    let out = cube.create(&nginx(json!({}))).unwrap();
    assert_eq!(out.instance_id, "cube-1");
    assert_eq!(host.count("CreateCubePod"), 1);
    assert_eq!(host.actions(), vec!["GetCubePod", "CreateCubePod", "GetCubePod"]);
    assert_eq!(host.params("GetCubePod", 1)["Uid"], pod_ref().uid);
    assert_eq!(cloud.borrow().live().len(), 1);
}

#[test]
fn a_lost_create_that_made_nothing_is_transient_and_the_retry_creates_once() {
    let (host, cloud) = host();
    cloud.borrow_mut().fault("CreateCubePod", Fault::Answer(Err(HttpError::Timeout)));
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube.create(&nginx(json!({}))).unwrap_err();
    assert!(matches!(&err, ProviderError::Transient(m) if m.contains("no instance exists")), "{err:?}");
    assert_eq!(host.count("CreateCubePod"), 1);
    cube.create(&nginx(json!({}))).unwrap();
    assert_eq!(host.count("CreateCubePod"), 2);
    assert_eq!(cloud.borrow().live().len(), 1);
}

#[test]
fn invalid_pods_create_nothing() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "maybe"}))).unwrap_err();
    assert!(matches!(&err, ProviderError::Invalid(i) if i.reason == "InvalidAnnotation"), "{err:?}");
    assert!(host.actions().is_empty());
}

#[test]
fn an_eip_is_allocated_bound_granted_and_shown_on_the_pod() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let out = cube
        .create(&nginx(json!({
            "cube.ucloud.cn/cube-eip": "true",
            "cube.ucloud.cn/cube-eip-bandwidth": "10",
            "cube.ucloud.cn/cube-eip-security-group-id": "firewall-web",
            "cube.ucloud.cn/cube-tag": "web",
        })))
        .unwrap();
    assert_eq!(annotation(&out.annotations, "cube.ucloud.cn/eip-address"), Some("106.75.0.1"));
    assert_eq!(annotation(&out.annotations, "cube.ucloud.cn/eip-id"), Some("eip-1"));
    let alloc = host.params("AllocateEIP", 0);
    let got: Vec<(&str, &str)> = ["Bandwidth", "ChargeType", "PayMode", "Quantity", "OperatorName", "Tag", "Name"]
        .iter()
        .map(|k| (*k, alloc.get(*k).map(String::as_str).unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        vec![
            ("Bandwidth", "10"),
            ("ChargeType", "Dynamic"),
            ("PayMode", "Bandwidth"),
            ("Quantity", "1"),
            ("OperatorName", "Bgp"),
            ("Tag", "web"),
            ("Name", "vk-6f1c2d3e-0000-4000-8000-000000000001")
        ]
    );
    let bind = host.params("BindEIP", 0);
    assert_eq!(
        (bind["EIPId"].as_str(), bind["ResourceType"].as_str(), bind["ResourceId"].as_str()),
        ("eip-1", "cube", "cube-1")
    );
    assert_eq!(host.params("GrantFirewall", 0)["FWId"], "firewall-web");
    assert_eq!(cloud.borrow().eips[0].bound.as_deref(), Some("cube-1"));
    // Created again (the host retried): the bound EIP is found, not allocated twice.
    let again = cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true"}))).unwrap();
    assert_eq!(annotation(&again.annotations, "cube.ucloud.cn/eip-address"), Some("106.75.0.1"));
    assert_eq!(host.count("AllocateEIP"), 1);
}

#[test]
fn when_binding_fails_the_eip_is_released_and_the_instance_deleted() {
    let (host, cloud) = host();
    cloud.borrow_mut().fault("BindEIP", Fault::Answer(fail("BindEIP", 4154, "Resource already has an EIP")));
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true"}))).unwrap_err();
    assert!(matches!(&err, ProviderError::Internal(m) if m.contains("4154")), "{err:?}");
    assert_eq!(host.params("ReleaseEIP", 0)["EIPId"], "eip-1");
    assert_eq!(host.params("DeleteCubePod", 0)["CubeId"], "cube-1");
    let c = cloud.borrow();
    assert!(c.live().is_empty(), "no instance left behind");
    assert!(c.eips.iter().all(|e| e.released), "no EIP left behind");
}

#[test]
fn an_eip_a_failed_attempt_could_not_release_is_taken_by_the_retry() {
    let (host, cloud) = host();
    // Every attempt at the bind and at the undo's release answers 150 (the cloud is down).
    for _ in 0..3 {
        cloud.borrow_mut().fault("BindEIP", Fault::Answer(fail("BindEIP", 150, "Service unavailable")));
        cloud.borrow_mut().fault("ReleaseEIP", Fault::Answer(fail("ReleaseEIP", 150, "Service unavailable")));
    }
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true"}))).unwrap_err();
    assert!(cloud.borrow().eips.iter().all(|e| !e.released), "the undo failed: the EIP is still allocated");
    let out = cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true"}))).unwrap();
    assert_eq!(annotation(&out.annotations, "cube.ucloud.cn/eip-id"), Some("eip-1"));
    assert_eq!(host.count("AllocateEIP"), 1, "no second EIP allocated");
    assert_eq!(cloud.borrow().eips.len(), 1);
}

#[test]
fn when_the_firewall_fails_the_eip_is_unbound_released_and_the_instance_deleted() {
    let (host, cloud) = host();
    cloud
        .borrow_mut()
        .fault("GrantFirewall", Fault::Answer(fail("GrantFirewall", 4210, "Firewall [firewall-x] not found")));
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube
        .create(&nginx(
            json!({"cube.ucloud.cn/cube-eip": "true", "cube.ucloud.cn/cube-eip-security-group-id": "firewall-x"}),
        ))
        .unwrap_err();
    let ProviderError::Invalid(i) = &err else { panic!("{err:?}") };
    assert_eq!(i.field, "metadata.annotations[cube.ucloud.cn/cube-eip-security-group-id]");
    let actions = host.actions();
    let tail: Vec<&str> = actions.iter().skip_while(|a| *a != "GrantFirewall").map(String::as_str).collect();
    assert_eq!(tail, vec!["GrantFirewall", "UnBindEIP", "ReleaseEIP", "DeleteCubePod"]);
    let c = cloud.borrow();
    assert!(c.live().is_empty());
    assert!(c.eips.iter().all(|e| e.released && e.bound.is_none()));
}

#[test]
fn the_users_own_eip_is_never_released_when_binding_fails() {
    let (host, cloud) = host();
    cloud.borrow_mut().eips.push(support::cloud::Eip {
        id: "eip-mine".into(),
        ip: "1.2.3.4".into(),
        name: "mine".into(),
        bound: None,
        released: false,
    });
    cloud.borrow_mut().fault("BindEIP", Fault::Answer(fail("BindEIP", 4155, "EIP in use")));
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true", "cube.ucloud.cn/cube-eip-id": "eip-mine"})))
        .unwrap_err();
    assert_eq!(host.count("AllocateEIP"), 0);
    assert_eq!(host.count("ReleaseEIP"), 0);
    assert_eq!(host.count("DeleteCubePod"), 1);
    assert!(!cloud.borrow().eips[0].released);
}

#[test]
fn a_users_eip_that_does_not_exist_is_an_annotation_error() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube
        .create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true", "cube.ucloud.cn/cube-eip-id": "eip-nope"})))
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Invalid(i) if i.field == "metadata.annotations[cube.ucloud.cn/cube-eip-id]"),
        "{err:?}"
    );
    assert!(cloud.borrow().live().is_empty());
}

#[test]
fn a_lost_eip_allocation_is_found_by_its_name() {
    let (host, cloud) = host();
    cloud.borrow_mut().fault("AllocateEIP", Fault::ActThenLose);
    let cube = Cube::new(&host, &ctx()).unwrap();
    let out = cube.create(&nginx(json!({"cube.ucloud.cn/cube-eip": "true"}))).unwrap();
    assert_eq!(annotation(&out.annotations, "cube.ucloud.cn/eip-id"), Some("eip-1"));
    assert_eq!(host.count("AllocateEIP"), 1);
    assert_eq!(cloud.borrow().eips.len(), 1);
}

#[test]
fn delete_releases_the_eip_as_the_annotation_says() {
    for (value, release) in [(None, "true"), (Some("true"), "true"), (Some("false"), "false")] {
        let (host, cloud) = host();
        let cube = Cube::new(&host, &ctx()).unwrap();
        let mut ann = json!({"cube.ucloud.cn/cube-eip": "true"});
        if let Some(v) = value {
            ann["cube.ucloud.cn/cube-eip-release"] = json!(v);
        }
        cube.create(&nginx(ann)).unwrap();
        assert_eq!(cube.delete(&pod_ref(), DeleteReason::PodDeleted).unwrap(), Deletion::Gone);
        assert_eq!(host.params("DeleteCubePod", 0)["ReleaseEIP"], release, "{value:?}");
        assert_eq!(cloud.borrow().eips[0].released, release == "true");
        let err = cube.delete(&pod_ref(), DeleteReason::PodDeleted).unwrap_err();
        assert!(matches!(err, ProviderError::NotFound(_)));
    }
}

fn udisk_pod() -> ResolvedPod {
    let mut r = ResolvedPod::from_pod_json(
        serde_json::to_string(&serde_yaml_ng::from_str::<Value>(&fixture("guide-pod-udisk.yaml")).unwrap()).unwrap(),
    );
    r.claims.push(VolumeClaim {
        claim_name: "logdisk-claim".into(),
        claim: fixture("guide-pvc-udisk.json"),
        volume: Some(fixture("guide-pv-udisk.json")),
    });
    r
}

fn udisk_ref() -> PodRef {
    PodRef { namespace: "default".into(), name: "nginx".into(), uid: "6f1c2d3e-0000-4000-8000-000000000003".into() }
}

#[test]
fn deleting_the_node_deletes_the_udisks_after_the_instance_but_pods_keep_theirs() {
    let cases = [
        (DeleteReason::NodeDeleted, true, vec!["bsm-2x4lqkq3".to_string()]),
        (DeleteReason::NodeDeleted, false, vec![]),
        (DeleteReason::PodDeleted, true, vec![]),
        (DeleteReason::Orphaned, true, vec![]),
    ];
    for (reason, delete_disks, want) in cases {
        let (host, cloud) = host();
        let mut context = ctx();
        let mut cfg: Value = serde_json::from_str(&context.config).unwrap();
        cfg["delete_disks_with_node"] = json!(delete_disks);
        context.config = cfg.to_string();
        let cube = Cube::new(&host, &context).unwrap();
        cube.create(&udisk_pod()).unwrap();
        assert_eq!(cube.delete(&udisk_ref(), reason).unwrap(), Deletion::Gone);
        assert_eq!(cloud.borrow().deleted_disks, want, "{reason:?} delete_disks_with_node={delete_disks}");
        let actions = host.actions();
        if !want.is_empty() {
            let delete_at = actions.iter().position(|a| a == "DeleteCubePod").unwrap();
            assert!(actions.iter().position(|a| a == "DeleteUDisk").unwrap() > delete_at);
        }
    }
}

#[test]
fn udisks_of_a_slowly_deleted_instance_go_once_it_is_gone() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&udisk_pod()).unwrap();
    cloud.borrow_mut().linger = 2;
    assert_eq!(cube.delete(&udisk_ref(), DeleteReason::NodeDeleted).unwrap(), Deletion::InProgress);
    assert!(cloud.borrow().deleted_disks.is_empty());
    // The host polls status until not-found; then the disks go.
    let s = cube.status(&udisk_ref()).unwrap();
    assert_eq!(s.reason, "Terminating");
    assert!(matches!(cube.status(&udisk_ref()).unwrap_err(), ProviderError::NotFound(_)));
    assert_eq!(cloud.borrow().deleted_disks, vec!["bsm-2x4lqkq3".to_string()]);
    assert!(host.store.borrow().is_empty());
}

#[test]
fn a_node_delete_whose_udisks_cannot_be_remembered_deletes_nothing_yet() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&udisk_pod()).unwrap();
    host.store_down.set(true);
    let err = cube.delete(&udisk_ref(), DeleteReason::NodeDeleted).unwrap_err();
    assert!(matches!(&err, ProviderError::Transient(m) if m.contains("UDisks")), "{err:?}");
    assert!(!host.actions().contains(&"DeleteCubePod".to_string()));
    // Retried once the store is back: the usual order.
    host.store_down.set(false);
    cube.delete(&udisk_ref(), DeleteReason::NodeDeleted).unwrap();
    assert_eq!(cloud.borrow().deleted_disks, vec!["bsm-2x4lqkq3".to_string()]);
}

fn with_token(token: &str) -> ResolvedPod {
    let mut r = ResolvedPod::from_pod_json(
        serde_json::to_string(&serde_yaml_ng::from_str::<Value>(&fixture("pod-kube-api-access.yaml")).unwrap())
            .unwrap(),
    );
    r.config_maps.push(cube_provider::contract::ConfigMap {
        name: "kube-root-ca.crt".into(),
        data: vec![("ca.crt".into(), "CA".into())],
        binary_data: vec![],
    });
    r.tokens.push(ServiceAccountToken {
        volume_name: "kube-api-access-x7k2p".into(),
        path: "token".into(),
        token: token.into(),
        expires_at: "2026-11-26T17:00:00Z".into(),
        audience: "".into(),
    });
    r
}

#[test]
fn update_renews_the_instance_only_when_the_pod_changed() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&with_token("token-1")).unwrap();
    let same = cube.update(&with_token("token-1")).unwrap();
    assert_eq!(host.count("RenewCubePod"), 0);
    assert!(same.events.is_empty());
    let renewed = cube.update(&with_token("token-2")).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
    assert_eq!(renewed.events[0].reason, "CubeRenewed");
    assert_eq!(host.params("RenewCubePod", 0)["CubeId"], "cube-1");
    let yaml = cloud.borrow().instances[0].yaml.clone();
    use base64::Engine;
    assert!(yaml.contains(&base64::engine::general_purpose::STANDARD.encode("token-2")), "{yaml}");
    cube.update(&with_token("token-2")).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
    // What the host writes back on the pod (size, EIP address), labels and other tools'
    // annotations do not make the pod look changed.
    let mut touched = with_token("token-2");
    let mut pod: Value = serde_json::from_str(&touched.pod).unwrap();
    pod["metadata"]["annotations"]["cube.ucloud.cn/size"] = json!("500m-1Gi");
    pod["metadata"]["annotations"]["cube.ucloud.cn/eip-address"] = json!("1.2.3.4");
    pod["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("3");
    pod["metadata"]["labels"] = json!({"version": "2"});
    touched.pod = pod.to_string();
    cube.update(&touched).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
}

#[test]
fn update_of_a_pod_without_instance_is_not_found() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    assert!(matches!(cube.update(&nginx(json!({}))).unwrap_err(), ProviderError::NotFound(_)));
    assert!(matches!(cube.status(&pod_ref()).unwrap_err(), ProviderError::NotFound(_)));
}

#[test]
fn list_pages_through_this_nodes_group_only() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    for i in 0..5 {
        let mut pod: Value = serde_yaml_ng::from_str(&fixture("guide-pod-nginx.yaml")).unwrap();
        pod["metadata"]["name"] = json!(format!("nginx-{i}"));
        pod["metadata"]["uid"] = json!(format!("uid-{i}"));
        cube.create(&ResolvedPod::from_pod_json(pod.to_string())).unwrap();
    }
    let mut other = ctx();
    other.node_name = "uk8s-abcd1234-vk-other".into();
    let mut pod: Value = serde_yaml_ng::from_str(&fixture("guide-pod-nginx.yaml")).unwrap();
    pod["metadata"]["uid"] = json!("uid-other");
    Cube::new(&host, &other).unwrap().create(&ResolvedPod::from_pod_json(pod.to_string())).unwrap();
    cloud.borrow_mut().page_cap = 2;

    let list = cube.list().unwrap();
    let uids: Vec<&str> = list.iter().map(|i| i.pod.uid.as_str()).collect();
    assert_eq!(uids, vec!["uid-0", "uid-1", "uid-2", "uid-3", "uid-4"]);
    assert_eq!(list[0].instance_id, "cube-1");
    assert_eq!((list[0].pod.namespace.as_str(), list[0].pod.name.as_str()), ("default", "nginx-0"));
    assert_eq!(list[0].status.phase, "Running");
    assert_eq!(host.count("ListCubePod"), 3);
    assert!(host.calls.borrow().iter().filter(|(a, _)| a == "ListCubePod").all(|(_, p)| p["Group"] == NODE));
}

#[test]
fn logs_exec_and_attach_point_the_host_at_the_cube_streams() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&nginx(json!({}))).unwrap();
    let logs = streams::logs(
        &cube,
        &pod_ref(),
        "nginx",
        &LogOptions { follow: true, tail_lines: Some(5), ..Default::default() },
    )
    .unwrap();
    assert_eq!(logs.url, "http://127.0.0.1:18080/cube-stream/logs?token=tok-logs&follow=true&tailLines=5");
    assert_eq!(logs.protocol, StreamProtocol::HttpBody);
    let p = host.params("GetCubeToken", 0);
    assert_eq!((p["Uid"].as_str(), p["ContainerName"].as_str()), (pod_ref().uid.as_str(), "nginx"));

    let o =
        ExecOptions { command: vec!["ls".into(), "-l".into()], stdin: false, stdout: true, stderr: true, tty: false };
    let exec = streams::exec(&cube, &pod_ref(), "nginx", &o, false).unwrap();
    assert_eq!(
        exec.url,
        "ws://127.0.0.1:18080/cube-stream/exec?token=tok-exec&command=ls&command=-l&stdout=1&stderr=1"
    );
    assert_eq!(exec.protocol, StreamProtocol::WebsocketChannels);
    let attach = streams::exec(
        &cube,
        &pod_ref(),
        "nginx",
        &ExecOptions { stdin: true, stdout: true, tty: true, ..Default::default() },
        true,
    )
    .unwrap();
    assert_eq!(attach.url, "ws://127.0.0.1:18080/cube-stream/exec?token=tok-exec&attach=1&stdin=1&stdout=1&tty=1");

    let missing = PodRef { uid: "nope".into(), ..pod_ref() };
    assert!(matches!(
        streams::logs(&cube, &missing, "nginx", &LogOptions::default()).unwrap_err(),
        ProviderError::NotFound(_)
    ));
}

#[test]
fn usage_takes_the_latest_sample_of_each_metric_and_skips_pods_without_instance() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&nginx(json!({}))).unwrap();
    let missing = PodRef { uid: "nope".into(), name: "gone".into(), ..pod_ref() };
    let usage = streams::usage(&cube, &[pod_ref(), missing]).unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].timestamp, "2026-11-26T16:00:00Z");
    let c = &usage[0].containers[0];
    assert_eq!(
        (
            c.name.as_str(),
            c.cpu_usage_core_nano_seconds,
            c.cpu_usage_nano_cores,
            c.memory_working_set_bytes,
            c.memory_usage_bytes
        ),
        ("nginx", 1000, 2000, 3000, 4000)
    );
    assert_eq!(c.start_time, "2026-11-26T16:00:01Z");
    let p = host.params("GetCubeMetrics", 0);
    assert_eq!(
        (p["ResourceId"].as_str(), p["BeginTime"].as_str(), p["EndTime"].as_str()),
        ("cube-1", "1795708500", "1795708800")
    );
    assert_eq!(p["MetricName.0"], "CPUUsageCoreNanoSeconds");
    assert_eq!(p["MetricName.3"], "MemoryUsageBytes");
}

#[test]
fn usage_of_many_pods_sweeps_the_list_instead_of_one_lookup_each() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let mut refs = Vec::new();
    for i in 0..4 {
        let mut pod: Value = serde_yaml_ng::from_str(&fixture("guide-pod-nginx.yaml")).unwrap();
        pod["metadata"]["uid"] = json!(format!("uid-{i}"));
        cube.create(&ResolvedPod::from_pod_json(pod.to_string())).unwrap();
        refs.push(PodRef { uid: format!("uid-{i}"), ..pod_ref() });
    }
    refs.push(PodRef { uid: "no-instance".into(), ..pod_ref() });
    let before = host.count("GetCubePod");
    let usage = streams::usage(&cube, &refs).unwrap();
    assert_eq!(usage.iter().map(|u| u.pod.uid.as_str()).collect::<Vec<_>>(), vec!["uid-0", "uid-1", "uid-2", "uid-3"]);
    assert_eq!(host.count("GetCubePod"), before);
    assert_eq!(host.count("ListCubePod"), 1);
    assert_eq!(host.count("GetCubeMetrics"), 4);
}
