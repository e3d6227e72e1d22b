//! Cube instance actions and their rules, driven over the wire.

mod fixture;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use fixture::{Fixture, UHUB_IMAGE, create_params, decode_pod, pod_yaml, simple_pod};

fn params(yaml: &str) -> Vec<(&'static str, String)> {
    create_params(yaml)
}

fn as_refs<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn create_returns_cube_id_and_pod_with_cube_fields_and_client_metadata_verbatim() {
    let f = Fixture::start().await;
    let mut p = params(&simple_pod("uid-1"));
    p.push(("Group", "uk8s-abcdefgh-vk-x1y2z".into()));
    p.push(("ChargeType", "Month".into()));
    p.push(("CpuPlatform", "V6".into()));
    let v = f.ok("CreateCubePod", &as_refs(&p)).await;
    let cube_id = v["CubeId"].as_str().unwrap();
    assert!(cube_id.starts_with("cube-"));
    let pod = decode_pod(&v["Pod"]);
    let m = &pod["metadata"];
    assert_eq!(m["cubeId"].as_str(), Some(cube_id));
    assert_eq!(m["name"].as_str(), Some("web-uid-1"));
    assert_eq!(m["namespace"].as_str(), Some("shop"));
    assert_eq!(m["uid"].as_str(), Some("uid-1"));
    assert_eq!(m["labels"]["app"].as_str(), Some("web"));
    assert_eq!(m["annotations"]["vk.cube.ucloud.cn/node"].as_str(), Some("uk8s-abcdefgh-vk-x1y2z"));
    assert_eq!(m["annotations"]["note"].as_str(), Some("keep: me"));
    assert_eq!(m["group"].as_str(), Some("uk8s-abcdefgh-vk-x1y2z"));
    assert!(m["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    let prov = &m["provider"];
    assert_eq!(prov["chargeType"].as_str(), Some("Month"));
    assert_eq!(prov["containerCount"].as_u64(), Some(1));
    assert_eq!(prov["cpuPlatform"].as_str(), Some("V6"));
    assert_eq!(prov["region"].as_str(), Some("cn-bj2"));
    assert_eq!(prov["zone"].as_str(), Some("cn-bj2-05"));
    assert_eq!(prov["vpcId"].as_str(), Some("uvnet-test"));
    assert_eq!(prov["subnetId"].as_str(), Some("subnet-test"));
    let st = &pod["status"];
    assert_eq!(st["phase"].as_str(), Some("Running"));
    assert!(st["podIp"].as_str().unwrap().starts_with("10."));
    assert!(st["startTime"].is_string());
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["name"].as_str(), Some("app"));
    assert_eq!(cs["ready"].as_bool(), Some(true));
    assert_eq!(cs["restartCount"].as_u64(), Some(0));
    assert!(cs["state"]["running"]["startedAt"].is_string());
    f.shutdown().await;
}

#[tokio::test]
async fn a_second_create_with_the_same_uid_returns_the_existing_instance() {
    let f = Fixture::start().await;
    let a = f.create(&simple_pod("uid-dup")).await;
    let b = f.create(&simple_pod("uid-dup")).await;
    assert_eq!(a["CubeId"], b["CubeId"]);
    assert_eq!(f.ok("ListCubePod", &[]).await["TotalCount"], 1);
    f.shutdown().await;
}

#[tokio::test]
async fn gets_by_cube_id_or_uid_and_reports_unknown_ones() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-get")).await["CubeId"].as_str().unwrap().to_string();
    let by_id = f.ok("GetCubePod", &[("CubeId", &id)]).await;
    let by_uid = f.ok("GetCubePod", &[("Uid", "uid-get")]).await;
    assert_eq!(decode_pod(&by_id["Pod"])["metadata"]["cubeId"], decode_pod(&by_uid["Pod"])["metadata"]["cubeId"]);
    assert_eq!(f.call("GetCubePod", &[("CubeId", "cube-nothere")]).await["RetCode"], 8202);
    assert_eq!(f.call("GetCubePod", &[("Uid", "nobody")]).await["RetCode"], 8202);
    assert_eq!(f.call("GetCubePod", &[]).await["RetCode"], 230);
    // Instances belong to their region.
    assert_eq!(
        f.call("GetCubePod", &[("CubeId", &id), ("Region", "cn-gd"), ("Zone", "cn-gd-02")]).await["RetCode"],
        8202
    );
    f.shutdown().await;
}

#[tokio::test]
async fn lists_with_offset_limit_paging_and_filters() {
    let f = Fixture::start().await;
    for i in 0..5 {
        let mut p = params(&simple_pod(&format!("uid-l{i}")));
        p.push(("Group", if i % 2 == 0 { "even".into() } else { "odd".into() }));
        f.ok("CreateCubePod", &as_refs(&p)).await;
    }
    let page = f.ok("ListCubePod", &[("Offset", "1"), ("Limit", "2")]).await;
    assert_eq!(page["TotalCount"], 5);
    assert_eq!(page["Pods"].as_array().unwrap().len(), 2);
    let uids: Vec<String> = page["Pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| decode_pod(p)["metadata"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids, vec!["uid-l1", "uid-l2"]);
    let even = f.ok("ListCubePod", &[("Group", "even")]).await;
    assert_eq!(even["TotalCount"], 3);
    for p in even["Pods"].as_array().unwrap() {
        assert_eq!(decode_pod(p)["metadata"]["group"].as_str(), Some("even"));
    }
    assert_eq!(f.ok("ListCubePod", &[("VPCId", "uvnet-other")]).await["TotalCount"], 0);
    assert_eq!(f.ok("ListCubePod", &[("SubnetId", "subnet-test")]).await["TotalCount"], 5);
    assert_eq!(f.ok("ListCubePod", &[("Limit", "1000")]).await["Pods"].as_array().unwrap().len(), 5);
    assert_eq!(f.call("ListCubePod", &[("Offset", "x")]).await["RetCode"], 230);
    f.shutdown().await;
}

#[tokio::test]
async fn with_a_deleting_delay_a_deleted_instance_stays_terminating_until_it_is_gone() {
    let mut cfg = fixture::config();
    cfg.lifecycle.deleting_ms = 400;
    let f = Fixture::with(cfg).await;
    let id = f.create(&simple_pod("uid-slow")).await["CubeId"].as_str().unwrap().to_string();
    f.ok("DeleteCubePod", &[("CubeId", &id)]).await;
    // Still there, Terminating, in Get and List; a second delete is accepted too.
    let got = f.ok("GetCubePod", &[("CubeId", &id)]).await;
    assert_eq!(decode_pod(&got["Pod"])["status"]["phase"].as_str(), Some("Terminating"));
    let listed = f.ok("ListCubePod", &[]).await;
    assert_eq!(listed["TotalCount"], 1);
    assert_eq!(decode_pod(&listed["Pods"][0])["status"]["phase"].as_str(), Some("Terminating"));
    f.ok("DeleteCubePod", &[("CubeId", &id)]).await;
    // Then gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.call("GetCubePod", &[("CubeId", &id)]).await["RetCode"] != 8202 {
        assert!(std::time::Instant::now() < deadline, "the instance never went");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(f.ok("ListCubePod", &[]).await["TotalCount"], 0);
    assert_eq!(f.admin(&format!("instances/{id}")).await["state"], "Deleted");
    f.shutdown().await;
}

#[tokio::test]
async fn delete_removes_the_instance_and_stops_billing() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-del")).await["CubeId"].as_str().unwrap().to_string();
    f.ok("DeleteCubePod", &[("Uid", "uid-del")]).await;
    assert_eq!(f.call("GetCubePod", &[("CubeId", &id)]).await["RetCode"], 8202);
    assert_eq!(f.call("DeleteCubePod", &[("CubeId", &id)]).await["RetCode"], 8202);
    let inst = f.admin(&format!("instances/{id}")).await;
    assert_eq!(inst["deleted"], true);
    assert_eq!(inst["state"], "Deleted");
    assert!(inst["billing_seconds"].as_i64().unwrap() >= 0);
    f.shutdown().await;
}

#[tokio::test]
async fn renew_updates_the_pod_in_place_and_reboot_restarts_containers() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-renew")).await["CubeId"].as_str().unwrap().to_string();
    let bigger = pod_yaml("uid-renew", UHUB_IMAGE, "2", "4Gi", &[]);
    let v = f.ok("RenewCubePod", &[("CubeId", &id), ("Pod", &B64.encode(&bigger))]).await;
    let pod = decode_pod(&v["Pod"]);
    assert_eq!(pod["metadata"]["cubeId"].as_str(), Some(id.as_str()));
    assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"]["cpu"].as_str(), Some("2"));
    let bad = pod_yaml("uid-renew", UHUB_IMAGE, "3", "4Gi", &[]);
    assert_eq!(f.call("RenewCubePod", &[("CubeId", &id), ("Pod", &B64.encode(&bad))]).await["RetCode"], 8201);
    f.ok("RebootCubePod", &[("CubeId", &id)]).await;
    let pod = decode_pod(&f.ok("GetCubePod", &[("CubeId", &id)]).await["Pod"]);
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"].as_u64(), Some(1));
    assert_eq!(f.call("RebootCubePod", &[("CubeId", "cube-none")]).await["RetCode"], 8202);
    f.shutdown().await;
}

#[tokio::test]
async fn extend_info_names_and_tags() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-ext")).await["CubeId"].as_str().unwrap().to_string();
    f.ok("ModifyCubeExtendInfo", &[("CubeId", &id), ("Name", "shop-web")]).await;
    let tagged = f.ok("ModifyCubeTag", &[("CubeId", &id), ("Tag", "team-a")]).await;
    assert_eq!(tagged["CubeId"].as_str(), Some(id.as_str()));
    let info = f.ok("GetCubeExtendInfo", &[("CubeIds", &format!("{id},cube-unknown"))]).await;
    let list = info["ExtendInfo"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["Name"], "shop-web");
    assert_eq!(list[0]["Tag"], "team-a");
    assert_eq!(list[0]["Eip"].as_array().unwrap().len(), 0);
    assert_eq!(f.call("ModifyCubeTag", &[("CubeId", &id)]).await["RetCode"], 230);
    f.shutdown().await;
}

#[tokio::test]
async fn prices_scale_with_size_count_and_charge_type() {
    let f = Fixture::start().await;
    let one = f
        .ok(
            "GetCubePrice",
            &[("ChargeType", "Postpay"), ("Count", "1"), ("Cpu", "1000"), ("Mem", "2048"), ("Quantity", "1")],
        )
        .await;
    let two = f
        .ok(
            "GetCubePrice",
            &[("ChargeType", "Postpay"), ("Count", "2"), ("Cpu", "1000"), ("Mem", "2048"), ("Quantity", "1")],
        )
        .await;
    assert_eq!(one["Price"], 15);
    assert_eq!(two["Price"], 30);
    let month = f
        .ok(
            "GetCubePrice",
            &[("ChargeType", "Month"), ("Count", "1"), ("Cpu", "1000"), ("Mem", "2048"), ("Quantity", "1")],
        )
        .await;
    assert!(month["Price"].as_i64().unwrap() < month["OriginalPrice"].as_i64().unwrap());
    assert_eq!(
        f.call("GetCubePrice", &[("ChargeType", "Weekly"), ("Count", "1"), ("Cpu", "1000"), ("Mem", "1024")]).await["RetCode"],
        230
    );
    assert_eq!(
        f.call("GetCubePrice", &[("ChargeType", "Postpay"), ("Cpu", "1000"), ("Mem", "1024")]).await["RetCode"],
        230
    );
    f.shutdown().await;
}

#[tokio::test]
async fn rejects_pods_that_break_cube_rules_with_retcode_8201() {
    let f = Fixture::start().await;
    let no_limits =
        "metadata: {name: a, uid: u}\nspec:\n  containers:\n  - name: a\n    image: uhub.service.ucloud.cn/x/y:1\n";
    let bad_name = pod_yaml("u", UHUB_IMAGE, "1", "1Gi", &[]).replace("name: app", "name: app.v1");
    let off_table = pod_yaml("u", UHUB_IMAGE, "1", "8Gi", &[]);
    let docker_hub = pod_yaml("u", "nginx:latest", "1", "1Gi", &[]);
    let host_path = simple_pod("u") + "  volumes:\n  - name: h\n    hostPath: {path: /var}\n";
    let big_config =
        simple_pod("u") + &format!("  volumes:\n  - name: c\n    configMap:\n      big: {}\n", "x".repeat(31 << 20));
    let bad_secret =
        simple_pod("u") + "  imagePullSecrets:\n  - registryServer: harbor.internal:5000\n    username: u\n";
    for (what, yaml) in [
        ("limits", no_limits.to_string()),
        ("name", bad_name),
        ("size", off_table),
        ("Docker Hub", docker_hub),
        ("hostPath", host_path),
        ("30 MiB", big_config),
        ("password", bad_secret),
    ] {
        let v = f.call("CreateCubePod", &as_refs(&params(&yaml))).await;
        assert_eq!(v["RetCode"], 8201, "{what}: {v}");
        assert!(v["Message"].as_str().unwrap().contains(what), "{what}: {}", v["Message"]);
    }
    let mut p = params(&simple_pod("u"));
    p[2].1 = "!!!not base64".into();
    assert_eq!(f.call("CreateCubePod", &as_refs(&p)).await["RetCode"], 230);
    let mut p = params(&simple_pod("u"));
    p[0].1 = "vpc-wrong".into();
    assert_eq!(f.call("CreateCubePod", &as_refs(&p)).await["RetCode"], 230);
    let p = params(&simple_pod("u"));
    assert_eq!(
        f.call("CreateCubePod", &[("VPCId", "uvnet-x"), ("Pod", p[2].1.as_str())]).await["RetCode"],
        230,
        "SubnetId missing"
    );
    assert_eq!(f.ok("ListCubePod", &[]).await["TotalCount"], 0);
    f.shutdown().await;
}

#[tokio::test]
async fn enforces_the_pod_base64_size_limit() {
    let mut cfg = fixture::config();
    cfg.limits.max_pod_base64_bytes = 1024;
    let f = Fixture::with(cfg).await;
    let big = simple_pod("u") + &format!("  hostname: {}\n", "a".repeat(2000));
    let v = f.call("CreateCubePod", &as_refs(&params(&big))).await;
    assert_eq!(v["RetCode"], 230);
    assert!(v["Message"].as_str().unwrap().contains("Pod"));
    f.shutdown().await;
}

#[tokio::test]
async fn enforces_instance_and_cpu_quotas() {
    let mut cfg = fixture::config();
    cfg.quotas.max_instances = 2;
    cfg.quotas.max_cpu_millis = 1500;
    let f = Fixture::with(cfg).await;
    f.create(&simple_pod("q1")).await;
    let v = f.call("CreateCubePod", &as_refs(&params(&simple_pod("q2")))).await;
    assert_eq!(v["RetCode"], 8203, "cpu quota: {v}");
    f.create(&pod_yaml("q3", UHUB_IMAGE, "500m", "512Mi", &[])).await;
    let v = f.call("CreateCubePod", &as_refs(&params(&pod_yaml("q4", UHUB_IMAGE, "500m", "512Mi", &[])))).await;
    assert_eq!(v["RetCode"], 8203, "instance quota: {v}");
    f.shutdown().await;
}

fn phase(pod: &serde_yaml_ng::Value) -> String {
    pod["status"]["phase"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn goes_pending_then_container_creating_then_running() {
    let mut cfg = fixture::config();
    // Windows far wider than one poll, so a loaded machine still sees each phase; the exact
    // boundaries are the lifecycle's unit tests' business.
    cfg.lifecycle.pending_ms = 1500;
    cfg.lifecycle.creating_ms = 1500;
    let f = Fixture::with(cfg).await;
    let v = f.create(&simple_pod("uid-life")).await;
    let pod = decode_pod(&v["Pod"]);
    assert_eq!(phase(&pod), "Pending");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str(), Some("ContainerCreating"));
    let mut seen = vec![phase(&pod)];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.last().map(String::as_str) != Some("Running") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let now = phase(&decode_pod(&f.ok("GetCubePod", &[("Uid", "uid-life")]).await["Pod"]));
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    assert_eq!(seen, ["Pending", "ContainerCreating", "Running"]);
    f.shutdown().await;
}

#[tokio::test]
async fn images_from_undeclared_registries_fail_to_pull() {
    let f = Fixture::start().await;
    let v = f.create(&pod_yaml("uid-pull", "registry.elsewhere.io/x/y:1", "1", "1Gi", &[])).await;
    let pod = decode_pod(&v["Pod"]);
    assert_eq!(phase(&pod), "ErrImagePull");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str(), Some("ErrImagePull"));
    let ok = f.create(&pod_yaml("uid-harbor", "harbor.internal:5000/x/y:1", "1", "1Gi", &[])).await;
    assert_eq!(phase(&decode_pod(&ok["Pod"])), "Running");
    f.shutdown().await;
}

#[tokio::test]
async fn configured_crashes_loop_with_growing_restart_counts() {
    let mut cfg = fixture::config();
    cfg.lifecycle.crash_containers = vec!["app".into()];
    cfg.lifecycle.crash_interval_secs = 1;
    let f = Fixture::with(cfg).await;
    f.create(&simple_pod("uid-crash")).await;
    // Wait for the first crash itself, then for a second one: the count grows.
    let restarts = async |at_least: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let pod = decode_pod(&f.ok("GetCubePod", &[("Uid", "uid-crash")]).await["Pod"]);
            let n = pod["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap();
            if n >= at_least || std::time::Instant::now() > deadline {
                return (n, pod);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let (first, _) = restarts(1).await;
    let (second, pod) = restarts(first + 1).await;
    assert!(second > first && first >= 1, "restart count {first} then {second}");
    let cs = &pod["status"]["containerStatuses"][0];
    let reason = cs["state"]["waiting"]["reason"].as_str().map(str::to_string);
    assert!(reason.as_deref() == Some("CrashLoopBackOff") || cs["state"]["running"].is_mapping(), "{cs:?}");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"].as_i64(), Some(1));
    f.shutdown().await;
}

#[tokio::test]
async fn finished_commands_complete_or_error() {
    let f = Fixture::start().await;
    let done = pod_yaml("uid-done", UHUB_IMAGE, "1", "1Gi", &["echo", "hi"])
        .replace("restartPolicy: Always", "restartPolicy: Never");
    let failed = pod_yaml("uid-fail", UHUB_IMAGE, "1", "1Gi", &["sh", "-c", "exit 3"])
        .replace("restartPolicy: Always", "restartPolicy: Never");
    let pod = decode_pod(&f.create(&done).await["Pod"]);
    assert_eq!(phase(&pod), "Completed");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"].as_str(), Some("Completed"));
    let pod = decode_pod(&f.create(&failed).await["Pod"]);
    assert_eq!(phase(&pod), "Error");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64(), Some(3));
    f.shutdown().await;
}

#[tokio::test]
async fn accrues_billing_seconds_per_instance() {
    let f = Fixture::start().await;
    let created = std::time::Instant::now();
    let id = f.create(&simple_pod("uid-bill")).await["CubeId"].as_str().unwrap().to_string();
    let mut inst = f.admin(&format!("instances/{id}")).await;
    while inst["billing_seconds"].as_i64().unwrap() < 1 && created.elapsed() < std::time::Duration::from_secs(60) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        inst = f.admin(&format!("instances/{id}")).await;
    }
    // Billed whole seconds never run ahead of the time the instance has existed.
    let billed = inst["billing_seconds"].as_i64().unwrap();
    assert!(billed >= 1 && billed as u64 <= created.elapsed().as_secs() + 1, "{inst}");
    assert_eq!(inst["pod"]["metadata"]["uid"], "uid-bill");
    f.shutdown().await;
}

#[tokio::test]
async fn metrics_are_deterministic_series_per_container() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-metrics")).await["CubeId"].as_str().unwrap().to_string();
    let now = chrono::Utc::now().timestamp();
    let (b, e) = ((now - 600).to_string(), (now + 5).to_string());
    let v = f
        .ok(
            "GetCubeMetrics",
            &[
                ("ResourceId", &id),
                ("ContainerName", "app"),
                ("MetricName.0", "CPUUsageNanoCores"),
                ("MetricName.1", "MemoryWorkingSetBytes"),
                ("BeginTime", &b),
                ("EndTime", &e),
            ],
        )
        .await;
    let sets = v["DataSets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(sets[0]["MetricName"], "CPUUsageNanoCores");
    let last = sets[0]["Values"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["Value"].as_f64(), Some(250_000_000.0));
    assert!(last["Timestamp"].as_i64().unwrap() <= now + 1);
    let single = f
        .ok(
            "GetCubeMetrics",
            &[
                ("ResourceId", &id),
                ("ContainerName", "app"),
                ("MetricName", "MemoryUsageBytes"),
                ("BeginTime", &b),
                ("EndTime", &e),
            ],
        )
        .await;
    assert_eq!(single["DataSets"][0]["MetricName"], "MemoryUsageBytes");
    assert_eq!(f.call("GetCubeMetrics", &[("ResourceId", &id), ("MetricName", "DiskIO")]).await["RetCode"], 230);
    assert_eq!(
        f.call(
            "GetCubeMetrics",
            &[("ResourceId", &id), ("ContainerName", "nope"), ("MetricName", "CPUUsageNanoCores")]
        )
        .await["RetCode"],
        230
    );
    assert_eq!(
        f.call("GetCubeMetrics", &[("ResourceId", "cube-none"), ("MetricName", "CPUUsageNanoCores")]).await["RetCode"],
        8202
    );
    f.shutdown().await;
}

#[tokio::test]
async fn survives_a_restart_with_a_state_file() {
    let dir = std::env::temp_dir().join(format!("cube-sim-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let _ = std::fs::remove_file(&file);
    let mut cfg = fixture::config();
    cfg.state_file = Some(file.clone());
    let f = Fixture::with(cfg.clone()).await;
    let id = f.create(&simple_pod("uid-persist")).await["CubeId"].as_str().unwrap().to_string();
    f.shutdown().await;
    let f = Fixture::with(cfg).await;
    let v = f.ok("GetCubePod", &[("Uid", "uid-persist")]).await;
    assert_eq!(decode_pod(&v["Pod"])["metadata"]["cubeId"].as_str(), Some(id.as_str()));
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
