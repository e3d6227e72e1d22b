//! EIPs, firewalls and disks, and how they follow Cube instances.

mod fixture;

use fixture::{Fixture, simple_pod};
use serde_json::json;

async fn allocate(f: &Fixture) -> String {
    let v = f
        .ok(
            "AllocateEIP",
            &[("OperatorName", "Bgp"), ("Bandwidth", "2"), ("ChargeType", "Dynamic"), ("PayMode", "Bandwidth")],
        )
        .await;
    let set = &v["EIPSet"][0];
    assert!(set["EIPAddr"][0]["IP"].is_string());
    assert_eq!(set["EIPAddr"][0]["OperatorName"], "Bgp");
    set["EIPId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn binds_an_eip_to_a_cube_and_releases_it_with_the_instance() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-eip")).await["CubeId"].as_str().unwrap().to_string();
    let eip = allocate(&f).await;
    f.ok("BindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    let d = f.ok("DescribeEIP", &[("EIPIds.0", &eip)]).await;
    assert_eq!(d["EIPSet"][0]["Status"], "used");
    assert_eq!(d["EIPSet"][0]["Resource"]["ResourceId"], id.as_str());
    assert_eq!(d["TotalCount"], 1);
    let info = f.ok("GetCubeExtendInfo", &[("CubeIds", &id)]).await;
    assert_eq!(info["ExtendInfo"][0]["Eip"][0]["EIPId"], eip.as_str());
    // One EIP per instance.
    let other = allocate(&f).await;
    assert_eq!(
        f.call("BindEIP", &[("EIPId", &other), ("ResourceType", "cube"), ("ResourceId", &id)]).await["RetCode"],
        4154
    );
    // A bound EIP cannot be released.
    assert_eq!(f.call("ReleaseEIP", &[("EIPId", &eip)]).await["RetCode"], 4155);
    f.ok("DeleteCubePod", &[("CubeId", &id), ("ReleaseEIP", "true")]).await;
    let eips = f.admin("eips").await;
    let rec = eips.as_array().unwrap().iter().find(|e| e["eip_id"] == eip.as_str()).unwrap().clone();
    assert_eq!(rec["released"], true);
    assert!(rec["bound_to"].is_null());
    assert_eq!(f.ok("DescribeEIP", &[("EIPIds.0", &eip)]).await["TotalCount"], 0);
    f.shutdown().await;
}

#[tokio::test]
async fn delete_without_release_keeps_the_eip_free() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-keep")).await["CubeId"].as_str().unwrap().to_string();
    let eip = allocate(&f).await;
    f.ok("BindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    f.ok("DeleteCubePod", &[("CubeId", &id), ("ReleaseEIP", "false")]).await;
    assert_eq!(f.ok("DescribeEIP", &[("EIPIds.0", &eip)]).await["EIPSet"][0]["Status"], "free");
    f.ok("ReleaseEIP", &[("EIPId", &eip)]).await;
    assert_eq!(f.call("ReleaseEIP", &[("EIPId", &eip)]).await["RetCode"], 4001);
    f.shutdown().await;
}

#[tokio::test]
async fn unbind_requires_the_binding_and_bind_requires_a_live_cube() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-unbind")).await["CubeId"].as_str().unwrap().to_string();
    let eip = allocate(&f).await;
    assert_eq!(
        f.call("UnBindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", &id)]).await["RetCode"],
        4156
    );
    assert_eq!(
        f.call("BindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", "cube-none")]).await["RetCode"],
        230
    );
    assert_eq!(
        f.call("BindEIP", &[("EIPId", "eip-none"), ("ResourceType", "cube"), ("ResourceId", &id)]).await["RetCode"],
        4001
    );
    f.ok("BindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    f.ok("UnBindEIP", &[("EIPId", &eip), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    assert_eq!(f.ok("DescribeEIP", &[]).await["UnbindCount"], 1);
    f.shutdown().await;
}

#[tokio::test]
async fn allocate_checks_pay_mode_bandwidth_and_quota() {
    let mut cfg = fixture::config();
    cfg.quotas.max_eips = 1;
    let f = Fixture::with(cfg).await;
    assert_eq!(
        f.call(
            "AllocateEIP",
            &[
                ("OperatorName", "Bgp"),
                ("Bandwidth", "2"),
                ("PayMode", "ShareBandwidth"),
                ("ShareBandwidthId", "bwshare-1")
            ]
        )
        .await["RetCode"],
        230
    );
    assert_eq!(
        f.call("AllocateEIP", &[("OperatorName", "Bgp"), ("Bandwidth", "0"), ("PayMode", "ShareBandwidth")]).await["RetCode"],
        230
    );
    assert_eq!(
        f.call("AllocateEIP", &[("OperatorName", "Bgp"), ("Bandwidth", "2"), ("PayMode", "Monthly")]).await["RetCode"],
        230
    );
    assert_eq!(f.call("AllocateEIP", &[("Bandwidth", "2")]).await["RetCode"], 230);
    f.ok(
        "AllocateEIP",
        &[
            ("OperatorName", "Bgp"),
            ("Bandwidth", "0"),
            ("PayMode", "ShareBandwidth"),
            ("ShareBandwidthId", "bwshare-1"),
        ],
    )
    .await;
    assert_eq!(f.call("AllocateEIP", &[("OperatorName", "Bgp"), ("Bandwidth", "2")]).await["RetCode"], 4207);
    f.shutdown().await;
}

#[tokio::test]
async fn grants_firewalls_to_cube_instances() {
    let f = Fixture::start().await;
    let id = f.create(&simple_pod("uid-fw")).await["CubeId"].as_str().unwrap().to_string();
    f.ok("GrantFirewall", &[("FWId", "firewall-abc"), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    f.ok("GrantFirewall", &[("FWId", "firewall-def"), ("ResourceType", "cube"), ("ResourceId", &id)]).await;
    let fws = f.admin("firewalls").await;
    assert_eq!(fws, json!([{"fw_id": "firewall-def", "resource_type": "cube", "resource_id": id}]));
    assert_eq!(
        f.call("GrantFirewall", &[("FWId", "sg-1"), ("ResourceType", "cube"), ("ResourceId", &id)]).await["RetCode"],
        4210
    );
    assert_eq!(
        f.call("GrantFirewall", &[("FWId", "firewall-abc"), ("ResourceType", "cube"), ("ResourceId", "cube-none")])
            .await["RetCode"],
        230
    );
    f.shutdown().await;
}

fn udisk_pod(uid: &str, disk: &str) -> String {
    simple_pod(uid)
        .replace("    resources:", "    volumeMounts:\n    - name: data\n      mountPath: /data\n    resources:")
        + &format!("  volumes:\n  - name: data\n    udisk:\n      id: {disk}\n      fs: ext4\n")
}

#[tokio::test]
async fn disks_attach_to_the_cube_that_mounts_them_and_detach_on_delete() {
    let f = Fixture::start().await;
    let v = f.ok("CreateUDisk", &[("Name", "pvc-1"), ("Size", "20"), ("DiskType", "SSDDataDisk")]).await;
    let disk = v["UDiskId"][0].as_str().unwrap().to_string();
    assert!(disk.starts_with("bs-"));
    let d = f.ok("DescribeUDisk", &[("UDiskId", &disk)]).await;
    assert_eq!(d["DataSet"][0]["Status"], "Available");
    assert_eq!(d["DataSet"][0]["Size"], 20);
    let id = f.create(&udisk_pod("uid-disk", &disk)).await["CubeId"].as_str().unwrap().to_string();
    let d = f.ok("DescribeUDisk", &[("UDiskId", &disk)]).await;
    assert_eq!(d["DataSet"][0]["Status"], "InUse");
    assert_eq!(d["DataSet"][0]["UHostId"], id.as_str());
    // A disk mounted by one instance cannot be mounted by another, nor deleted.
    assert_eq!(
        f.call(
            "CreateCubePod",
            &fixture::create_params(&udisk_pod("uid-disk2", &disk))
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>()
        )
        .await["RetCode"],
        17002
    );
    assert_eq!(f.call("DeleteUDisk", &[("UDiskId", &disk)]).await["RetCode"], 17002);
    f.ok("DeleteCubePod", &[("CubeId", &id)]).await;
    assert_eq!(f.ok("DescribeUDisk", &[("UDiskId", &disk)]).await["DataSet"][0]["Status"], "Available");
    f.ok("DeleteUDisk", &[("UDiskId", &disk)]).await;
    assert_eq!(f.ok("DescribeUDisk", &[("UDiskId", &disk)]).await["TotalCount"], 0);
    assert_eq!(f.call("DeleteUDisk", &[("UDiskId", &disk)]).await["RetCode"], 17001);
    f.shutdown().await;
}

#[tokio::test]
async fn pods_naming_unknown_disks_are_refused() {
    let f = Fixture::start().await;
    let v = f
        .call(
            "CreateCubePod",
            &fixture::create_params(&udisk_pod("uid-nodisk", "bs-missing"))
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!(v["RetCode"], 17001);
    assert_eq!(f.call("CreateUDisk", &[("Name", "x"), ("Size", "0")]).await["RetCode"], 230);
    assert_eq!(
        f.call("CreateUDisk", &[("Name", "x"), ("Size", "10"), ("DiskType", "FloppyDisk")]).await["RetCode"],
        230
    );
    assert_eq!(f.call("CreateUDisk", &[("Size", "10")]).await["RetCode"], 230);
    f.shutdown().await;
}

#[tokio::test]
async fn admin_endpoint_creates_disks() {
    let f = Fixture::start().await;
    let resp = f
        .http
        .post(format!("{}/_sim/disks", f.url()))
        .json(&json!({"name": "pre-made", "size_gb": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let made: serde_json::Value = resp.json().await.unwrap();
    let id = made["udisk_id"].as_str().unwrap();
    assert_eq!(f.ok("DescribeUDisk", &[("UDiskId", id)]).await["DataSet"][0]["Name"], "pre-made");
    f.shutdown().await;
}
