//! The provider's operations against an in-memory cloud: idempotent and lost creates, EIP binding
//! and its compensation, renewals, deletes (EIP release, node deletion with UDisks), list, streams.

#![allow(clippy::type_complexity)] // tables of cases

mod support;

use cube_provider::api::HttpError;
use cube_provider::error::ProviderError;
use cube_provider::instances::Cube;
use cube_provider::streams;
use serde_json::{Value, json};
use support::cloud::{Fault, host};
use support::*;
use vk_provider_sdk::{
    CreateAttempt, DeleteReason, Deletion, ExecOptions, KeyValue, LogOptions, PendingDeletion, Pod, PodChange, PodRef,
    ResolvedPod, ServiceAccountToken, StreamProtocol, VolumeClaim,
};

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

fn annotation<'a>(list: &'a [KeyValue], key: &str) -> Option<&'a str> {
    list.iter().find(|a| a.key == key).map(|a| a.value.as_str())
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
        let deletion = cube.delete(&udisk_ref(), reason).unwrap();
        // Nothing of the disks goes with the instance: they are work for finalize.
        assert!(cloud.borrow().deleted_disks.is_empty());
        match (&deletion, want.is_empty()) {
            (Deletion::Gone, true) => {}
            (Deletion::InProgress(PendingDeletion { finalize, .. }), false) => {
                assert!(!finalize.is_empty());
                // The host calls finalize once status answers not-found.
                assert!(matches!(cube.status(&udisk_ref()).unwrap_err(), ProviderError::NotFound(_)));
                cube.finalize(&udisk_ref(), finalize).unwrap();
            }
            _ => panic!("{reason:?} delete_disks_with_node={delete_disks}: {deletion:?}"),
        }
        assert_eq!(cloud.borrow().deleted_disks, want, "{reason:?} delete_disks_with_node={delete_disks}");
        assert!(host.store.borrow().is_empty(), "no store record: the work travels with the deletion");
    }
}

#[test]
fn udisks_of_a_slowly_deleted_instance_go_in_finalize_once_it_is_gone() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(&udisk_pod()).unwrap();
    cloud.borrow_mut().linger = 2;
    let Deletion::InProgress(pending) = cube.delete(&udisk_ref(), DeleteReason::NodeDeleted).unwrap() else {
        panic!("the instance is still going away")
    };
    assert_eq!(pending.poll_after_ms, 0);
    // The host polls status until not-found; status alone deletes nothing.
    assert_eq!(cube.status(&udisk_ref()).unwrap().reason, "Terminating");
    let polls = std::iter::repeat_with(|| cube.status(&udisk_ref())).take(3);
    assert!(polls.into_iter().any(|s| s.is_err()), "the instance goes after its linger");
    assert!(matches!(cube.status(&udisk_ref()).unwrap_err(), ProviderError::NotFound(_)));
    assert!(cloud.borrow().deleted_disks.is_empty());
    cube.finalize(&udisk_ref(), &pending.finalize).unwrap();
    assert_eq!(cloud.borrow().deleted_disks, vec!["bsm-2x4lqkq3".to_string()]);
    // Retried (a lost answer, a restart): the disk is already gone, which is fine.
    cube.finalize(&udisk_ref(), &pending.finalize).unwrap();
    assert_eq!(host.count("DeleteUDisk"), 2);
    assert!(host.store.borrow().is_empty());
}

#[test]
fn finalize_refuses_work_it_cannot_read_and_accepts_none() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.finalize(&udisk_ref(), &[]).unwrap();
    let err = cube.finalize(&udisk_ref(), b"{not json").unwrap_err();
    assert!(matches!(&err, ProviderError::Internal(m) if m.contains("default/nginx")), "{err:?}");
    assert!(host.actions().is_empty());
}

#[test]
fn udisks_a_cube_on_contract_0_1_left_in_the_store_go_when_status_finds_no_instance() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    host.store.borrow_mut().insert(format!("cube/disks-to-delete/{}", udisk_ref().uid), b"bsm-1,bsm-2".to_vec());
    assert!(matches!(cube.status(&udisk_ref()).unwrap_err(), ProviderError::NotFound(_)));
    assert_eq!(cloud.borrow().deleted_disks, vec!["bsm-1".to_string(), "bsm-2".to_string()]);
    assert!(host.store.borrow().is_empty());
}

fn typed(resolved: ResolvedPod) -> Pod {
    Pod::parse(resolved).unwrap()
}

fn with_token(token: &str) -> ResolvedPod {
    let mut r = ResolvedPod::from_pod_json(
        serde_json::to_string(&serde_yaml_ng::from_str::<Value>(&fixture("pod-kube-api-access.yaml")).unwrap())
            .unwrap(),
    );
    r.config_maps.push(vk_provider_sdk::ConfigMap {
        name: "kube-root-ca.crt".into(),
        data: vec![vk_provider_sdk::kv("ca.crt", "CA")],
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
    let token = [PodChange::Token("kube-api-access-x7k2p".into())];
    let same = cube.update(&typed(with_token("token-1")), &token).unwrap();
    assert_eq!(host.count("RenewCubePod"), 0);
    assert!(same.outcome.events.is_empty() && same.not_applied.is_empty());
    let renewed = cube.update(&typed(with_token("token-2")), &token).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
    assert_eq!(renewed.outcome.events[0].reason, "CubeRenewed");
    assert!(renewed.not_applied.is_empty());
    assert_eq!(host.params("RenewCubePod", 0)["CubeId"], "cube-1");
    let yaml = cloud.borrow().instances[0].yaml.clone();
    use base64::Engine;
    assert!(yaml.contains(&base64::engine::general_purpose::STANDARD.encode("token-2")), "{yaml}");
    cube.update(&typed(with_token("token-2")), &token).unwrap();
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
    cube.update(&typed(touched), &[PodChange::Annotations(vec!["cube.ucloud.cn/size".into()])]).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
}

#[test]
fn update_of_a_pod_without_instance_is_not_found() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    assert!(matches!(cube.update(&typed(nginx(json!({}))), &[]).unwrap_err(), ProviderError::NotFound(_)));
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
    assert_eq!(list[0].status.phase, vk_provider_sdk::PodPhase::Running);
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

// ---- contract 0.2: plan, create attempts, update changes, port-forward ----

const EIP_POD: &str = r#"{
    "cube.ucloud.cn/cube-eip": "true",
    "cube.ucloud.cn/cube-eip-bandwidth": "10",
    "cube.ucloud.cn/cube-eip-security-group-id": "firewall-web",
    "cube.ucloud.cn/cube-tag": "web"
}"#;

#[test]
fn plan_is_exactly_what_create_sends_and_sends_nothing() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let plan = cube.plan(&nginx(json!({}))).unwrap();
    assert!(host.actions().is_empty(), "a plan sends nothing: {:?}", host.actions());
    assert_eq!(plan.requests.len(), 1);
    let out = cube.create(&nginx(json!({}))).unwrap();
    let sent: vk_provider_sdk::http::Request =
        host.raw.borrow().iter().find(|r| r.url.ends_with("Action=CreateCubePod")).unwrap().clone().into();
    assert_eq!(plan.requests[0], sent, "the signed form body and everything else");
    assert_eq!(plan.annotations, out.annotations);
    let reasons = |events: &[vk_provider_sdk::Event]| events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>();
    assert_eq!(reasons(&plan.events), reasons(&out.events));
    assert_eq!(plan.events.last().unwrap().message, "created Cube instance {CubeId} of size 2-2Gi");
}

#[test]
fn plan_of_an_eip_pod_adds_the_eip_requests_with_placeholders() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let annotations: Value = serde_json::from_str(EIP_POD).unwrap();
    let plan = cube.plan(&nginx(annotations.clone())).unwrap();
    assert!(host.actions().is_empty());
    let actions: Vec<String> = plan.requests.iter().map(|r| r.url.rsplit('=').next().unwrap().to_string()).collect();
    assert_eq!(actions, ["CreateCubePod", "AllocateEIP", "BindEIP", "GrantFirewall"]);
    let form = |i: usize| decode_form(&plan.requests[i].body);
    assert_eq!((form(2)["ResourceId"].as_str(), form(2)["EIPId"].as_str()), ("{CubeId}", "{EIPId}"));
    assert_eq!(form(3)["FWId"], "firewall-web");
    assert_eq!(annotation(&plan.annotations, "cube.ucloud.cn/eip-id"), Some("{EIPId}"));
    // The allocation is sent as planned.
    cube.create(&nginx(annotations)).unwrap();
    let sent = host.raw.borrow().iter().find(|r| r.url.ends_with("Action=AllocateEIP")).unwrap().clone();
    assert_eq!(plan.requests[1], sent.into());
}

#[test]
fn plan_refuses_what_create_refuses() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = cube.plan(&nginx(json!({"cube.ucloud.cn/cube-eip": "maybe"}))).unwrap_err();
    assert!(matches!(&err, ProviderError::Invalid(i) if i.reason == "InvalidAnnotation"), "{err:?}");
}

#[test]
fn a_first_create_attempt_skips_the_lookup_a_retry_does_not() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create_with(&nginx(json!({})), CreateAttempt { may_exist: false }).unwrap();
    assert_eq!(host.actions(), ["CreateCubePod"]);
    let again = cube.create_with(&nginx(json!({})), CreateAttempt { may_exist: true }).unwrap();
    assert_eq!(host.actions(), ["CreateCubePod", "GetCubePod"]);
    assert_eq!(again.instance_id, "cube-1");
    assert_eq!(cloud.borrow().live().len(), 1);
}

/// The nginx pod mounting ConfigMap `files` and reading ConfigMap `settings` and Secret `creds`
/// into its environment.
fn configured(files: &str, setting: &str) -> Pod {
    let mut pod: Value = serde_yaml_ng::from_str(&fixture("guide-pod-nginx.yaml")).unwrap();
    pod["spec"]["volumes"] = json!([{"name": "conf", "configMap": {"name": "files"}}]);
    let c = &mut pod["spec"]["containers"][0];
    c["volumeMounts"] = json!([{"name": "conf", "mountPath": "/etc/nginx/conf.d"}]);
    c["envFrom"] = json!([{"configMapRef": {"name": "settings"}}]);
    c["env"] = json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}]);
    let mut r = ResolvedPod::from_pod_json(pod.to_string());
    r.config_maps.push(vk_provider_sdk::ConfigMap {
        name: "files".into(),
        data: vec![vk_provider_sdk::kv("site.conf", files)],
        binary_data: vec![],
    });
    // The host resolves env from the objects as they are now.
    r.env.push(vk_provider_sdk::ContainerEnv {
        container: "nginx".into(),
        vars: vec![vk_provider_sdk::kv("MODE", setting), vk_provider_sdk::kv("PASSWORD", "pw")],
    });
    typed(r)
}

fn instance_yaml(cloud: &support::cloud::Shared) -> String {
    cloud.borrow().instances[0].yaml.clone()
}

#[test]
fn a_changed_mounted_config_map_renews_the_instance_with_the_new_files() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(configured("listen 80;", "blue").resolved()).unwrap();
    let out = cube.update(&configured("listen 8080;", "blue"), &[PodChange::ConfigMap("files".into())]).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
    assert!(out.not_applied.is_empty(), "{:?}", out.not_applied);
    assert_eq!(out.outcome.events[0].reason, "CubeRenewed");
    assert!(instance_yaml(&cloud).contains("listen 8080;"), "{}", instance_yaml(&cloud));
}

#[test]
fn a_changed_env_config_map_or_secret_is_not_applied_and_renews_nothing() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(configured("listen 80;", "blue").resolved()).unwrap();
    let changes = [PodChange::ConfigMap("settings".into()), PodChange::Secret("creds".into())];
    let out = cube.update(&configured("listen 80;", "green"), &changes).unwrap();
    assert_eq!(host.count("RenewCubePod"), 0);
    assert!(out.outcome.events.is_empty());
    assert_eq!(out.not_applied.iter().map(|n| n.change.clone()).collect::<Vec<_>>(), changes);
    for n in &out.not_applied {
        assert_eq!(n.reason, "EnvChangeNotApplied");
        assert!(n.message.contains("keep their environment until the pod is recreated"), "{}", n.message);
    }
    assert!(out.not_applied[0].message.starts_with("ConfigMap settings changed"));
    assert!(instance_yaml(&cloud).contains("blue") && !instance_yaml(&cloud).contains("green"));
}

#[test]
fn a_renewal_keeps_the_environment_the_instance_runs_with() {
    let (host, cloud) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    cube.create(configured("listen 80;", "blue").resolved()).unwrap();
    // Files and env changed together: the files are renewed, the env stays.
    let changes = [PodChange::ConfigMap("files".into()), PodChange::ConfigMap("settings".into())];
    let out = cube.update(&configured("listen 8080;", "green"), &changes).unwrap();
    assert_eq!(host.count("RenewCubePod"), 1);
    let yaml = instance_yaml(&cloud);
    assert!(yaml.contains("listen 8080;") && yaml.contains("blue") && !yaml.contains("green"), "{yaml}");
    assert_eq!(out.not_applied.len(), 1);
    assert_eq!(out.not_applied[0].change, PodChange::ConfigMap("settings".into()));
}

#[test]
fn port_forward_points_at_the_instance_ip() {
    let (host, _) = host();
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = streams::port_forward(&cube, &pod_ref(), 8080).unwrap_err();
    assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    cube.create(&nginx(json!({}))).unwrap();
    let t = streams::port_forward(&cube, &pod_ref(), 8080).unwrap();
    assert_eq!((t.url.as_str(), t.protocol, t.headers.len()), ("tcp://10.23.0.2:8080", StreamProtocol::Tcp, 0));
}

#[test]
fn port_forward_to_an_instance_without_ip_is_unsupported() {
    use base64::Engine;
    let pod = base64::engine::general_purpose::STANDARD
        .encode("metadata: {cubeId: cube-9, uid: u}\nstatus: {phase: Pending}\n");
    let host = FakeHost::new(move |a, _| ok(a, json!({"Pod": pod})));
    let cube = Cube::new(&host, &ctx()).unwrap();
    let err = streams::port_forward(&cube, &pod_ref(), 80).unwrap_err();
    assert!(matches!(&err, ProviderError::Unsupported(m) if m.contains("cube-9") && m.contains("no IP")), "{err:?}");
}
