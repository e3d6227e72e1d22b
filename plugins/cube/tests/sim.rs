//! The provider against the Cube simulator over real HTTP (signature, form, envelope, the pod YAML
//! dialect, statuses, streams). The simulator runs in this process, on its own runtime, so the
//! test always runs: nothing in the environment can turn it into a silent pass.

mod support;

use std::cell::RefCell;
use std::collections::HashMap;

use cube_provider::api::{HttpError, HttpRequest, HttpResponse, Transport};
use cube_provider::error::ProviderError;
use cube_provider::host::{Host, Level};
use cube_provider::instances::Cube;
use cube_provider::streams;
use serde_json::{Value, json};
use vk_provider_sdk::{
    CallContext, ContainerState, DeleteReason, ExecOptions, LogOptions, PodRef, ResolvedPod, VolumeClaim,
};

#[derive(Default)]
struct SimHost {
    store: RefCell<HashMap<String, Vec<u8>>>,
}

impl Transport for SimHost {
    fn send(&self, r: HttpRequest) -> Result<HttpResponse, HttpError> {
        support::tcp::send(&r)
    }
}

impl Host for SimHost {
    fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        self.store.borrow().get(key).cloned()
    }
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store.borrow_mut().insert(key.into(), value.to_vec());
        Ok(())
    }
    fn store_delete(&self, key: &str) -> Result<bool, String> {
        Ok(self.store.borrow_mut().remove(key).is_some())
    }
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }
    fn log(&self, _: Level, _: &str, _: &[(&str, &str)]) {}
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn yaml_pod(name: &str, uid: &str) -> Value {
    let mut p: Value = serde_yaml_ng::from_str(&fixture(name)).unwrap();
    p["metadata"]["uid"] = json!(uid);
    p
}

fn get(url: &str) -> HttpResponse {
    support::tcp::send(&HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: vec![],
        body: vec![],
        timeout_ms: 5000,
    })
    .unwrap()
}

fn post_json(url: &str, body: Value) -> Value {
    let r = support::tcp::send(&HttpRequest {
        method: "POST".into(),
        url: url.into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
        timeout_ms: 5000,
    })
    .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

/// A simulator that accepts `pub-key:priv-key` and the guide's self-hosted registries, served by
/// the returned runtime's workers while the test makes blocking calls on its own thread.
fn start_simulator() -> (tokio::runtime::Runtime, cube_sim::SimHandle) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cfg = cube_sim::Config::default().with_key("pub-key", "priv-key");
    cfg.registries.extend(["uhub.an-link.com".to_string(), "myhub.an-link.com".to_string()]);
    let sim = rt.block_on(cube_sim::Simulator::start(cfg)).expect("start the Cube simulator");
    (rt, sim)
}

#[test]
fn the_provider_drives_the_simulator() {
    let (_rt, sim) = start_simulator();
    let url = sim.url().to_string();
    let run = format!("{}", std::process::id());
    let node = format!("uk8s-abcd1234-vk-s{run}");
    let config = json!({
        "api_url": url, "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub-key", "private_key": "priv-key", "registries": ["uhub.an-link.com", "myhub.an-link.com"],
    });
    let host = SimHost::default();
    let cube = Cube::new(&host, &CallContext { node_name: node.clone(), config: config.to_string() }).unwrap();

    // The guide's pod: created once, idempotent, running.
    let nginx_uid = format!("sim-{run}-nginx");
    let nginx = ResolvedPod::from_pod_json(yaml_pod("guide-pod-nginx.yaml", &nginx_uid).to_string());
    let created = cube.create(&nginx).unwrap();
    assert!(created.instance_id.starts_with("cube-"), "{created:?}");
    assert_eq!(cube.create(&nginx).unwrap().instance_id, created.instance_id);
    let nginx_ref = PodRef { namespace: "default".into(), name: "nginx".into(), uid: nginx_uid.clone() };
    // The simulator's default lifecycle goes Pending → ContainerCreating → Running; wait for the
    // phase itself, with a deadline far beyond it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut status = cube.status(&nginx_ref).unwrap();
    while status.phase != vk_provider_sdk::PodPhase::Running && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        status = cube.status(&nginx_ref).unwrap();
    }
    assert_eq!(status.phase, vk_provider_sdk::PodPhase::Running, "{status:?}");
    assert!(status.pod_ip.is_some() && status.start_time.is_some());
    assert!(matches!(status.container_statuses[0].state, ContainerState::Running { .. }));

    // Everything the dialect carries, with an EIP.
    let mut everything =
        ResolvedPod::from_pod_json(yaml_pod("pod-everything.yaml", &format!("sim-{run}-web")).to_string());
    everything.env.push(vk_provider_sdk::ContainerEnv {
        container: "web".into(),
        vars: vec![vk_provider_sdk::kv("MODE", "production")],
    });
    everything.config_maps.push(vk_provider_sdk::ConfigMap {
        name: "web-config".into(),
        data: vec![vk_provider_sdk::kv("web.conf", "listen 8080\n")],
        binary_data: vec![],
    });
    everything.secrets.push(vk_provider_sdk::Secret {
        name: "web-tls".into(),
        kind: "kubernetes.io/tls".into(),
        data: vec![vk_provider_sdk::entry("tls.crt", b"CRT".to_vec())],
    });
    let mut pod: Value = serde_json::from_str(&everything.pod).unwrap();
    pod["metadata"]["annotations"].as_object_mut().unwrap().remove("cube.ucloud.cn/cube-eip-security-group-id");
    everything.pod = pod.to_string();
    let web = cube.create(&everything).unwrap();
    assert!(
        web.annotations.iter().any(|a| a.key == "cube.ucloud.cn/eip-address" && !a.value.is_empty()),
        "{:?}",
        web.annotations
    );

    // A UDisk the simulator knows, mounted through the guide's PVC.
    let disk = post_json(&format!("{url}/_sim/disks"), json!({"name": format!("log-{run}")}));
    let disk_id = disk["udisk_id"].as_str().unwrap().to_string();
    let mut pv: Value = serde_json::from_str(&fixture("guide-pv-udisk.json")).unwrap();
    pv["spec"]["csi"]["volumeHandle"] = json!(disk_id);
    let mut udisk =
        ResolvedPod::from_pod_json(yaml_pod("guide-pod-udisk.yaml", &format!("sim-{run}-udisk")).to_string());
    udisk.claims.push(VolumeClaim {
        claim_name: "logdisk-claim".into(),
        claim: fixture("guide-pvc-udisk.json"),
        volume: Some(pv.to_string()),
    });
    cube.create(&udisk).unwrap();

    // The automatic token projection, renewed in place when the token rotates.
    let api_client = |token: &str| {
        let mut r =
            ResolvedPod::from_pod_json(yaml_pod("pod-kube-api-access.yaml", &format!("sim-{run}-api")).to_string());
        r.config_maps.push(vk_provider_sdk::ConfigMap {
            name: "kube-root-ca.crt".into(),
            data: vec![vk_provider_sdk::kv("ca.crt", "CA")],
            binary_data: vec![],
        });
        r.tokens.push(vk_provider_sdk::ServiceAccountToken {
            volume_name: "kube-api-access-x7k2p".into(),
            path: "token".into(),
            token: token.into(),
            expires_at: "2026-11-26T17:00:00Z".into(),
            audience: String::new(),
        });
        r
    };
    cube.create(&api_client("token-1")).unwrap();
    let token = [vk_provider_sdk::PodChange::Token("kube-api-access-x7k2p".into())];
    let update = |r| cube.update(&vk_provider_sdk::Pod::parse(r).unwrap(), &token).unwrap().outcome;
    assert!(update(api_client("token-1")).events.is_empty());
    assert_eq!(update(api_client("token-2")).events[0].reason, "CubeRenewed");

    // List finds this node's four.
    let listed = cube.list().unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");

    // Streams: the log URL answers, exec gets a terminal URL, usage has numbers.
    let logs =
        streams::logs(&cube, &nginx_ref, "nginx", &LogOptions { tail_lines: Some(5), ..Default::default() }).unwrap();
    let body = get(&logs.url);
    assert_eq!(body.status, 200, "{}", String::from_utf8_lossy(&body.body));
    let exec = streams::exec(
        &cube,
        &nginx_ref,
        "nginx",
        &ExecOptions { command: vec!["ls".into()], stdout: true, ..Default::default() },
        false,
    )
    .unwrap();
    assert!(exec.url.starts_with("ws://") && exec.url.contains("&command=ls&stdout=1"), "{}", exec.url);
    let usage = streams::usage(&cube, std::slice::from_ref(&nginx_ref)).unwrap();
    assert_eq!(usage.len(), 1);

    // Deleting the node: instances gone, the UDisk too (in finalize, once its instance is gone, as
    // the host does), the EIP released.
    let mut pending = vec![];
    for i in cube.list().unwrap() {
        match cube.delete(&i.pod, DeleteReason::NodeDeleted).unwrap() {
            vk_provider_sdk::Deletion::Gone => {}
            vk_provider_sdk::Deletion::InProgress(p) => pending.push((i.pod, p)),
        }
    }
    assert!(cube.list().unwrap().is_empty());
    for (pod, p) in pending {
        assert!(matches!(cube.status(&pod).unwrap_err(), ProviderError::NotFound(_)));
        cube.finalize(&pod, &p.finalize).unwrap();
    }
    assert!(matches!(cube.status(&nginx_ref).unwrap_err(), ProviderError::NotFound(_)));
    let disks = get(&format!("{url}/_sim/disks"));
    let disks: Value = serde_json::from_slice(&disks.body).unwrap();
    let ours =
        disks.as_array().unwrap().iter().find(|d| d["udisk_id"] == json!(disk_id) || d["UDiskId"] == json!(disk_id));
    assert!(ours.is_none_or(|d| d["deleted"] == json!(true)), "{ours:?}");
}
