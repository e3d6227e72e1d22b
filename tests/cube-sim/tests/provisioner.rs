//! The UDisk provisioner against a real control plane (tests/cluster/up): StorageClass + PVC
//! become a simulator disk and a bound PV, honouring WaitForFirstConsumer and reclaim policies.
//! Skipped, with a note, when the control-plane binaries have not been built on this machine.

mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use cube_sim::KeyPair;
use cube_sim::provisioner::{Provisioner, ProvisionerArgs};
use fixture::{Fixture, PRIVATE, PUBLIC};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The control-plane binaries `tests/cluster/build` leaves in the cache, if present.
fn cluster_binaries_built() -> bool {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". {}/tests/cluster/versions && cluster_bin_dir", repo().display()))
        .output();
    match out {
        Ok(o) => Path::new(String::from_utf8_lossy(&o.stdout).trim()).join("kube-apiserver").exists(),
        Err(_) => false,
    }
}

struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = std::env::temp_dir().join(format!("cube-sim-cluster-{}", std::process::id()));
        let out = Command::new(repo().join("tests/cluster/up"))
            .arg(&dir)
            .env("VKCUBE_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("run tests/cluster/up");
        assert!(out.status.success(), "tests/cluster/up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let env = std::fs::read_to_string(dir.join("cluster.env")).unwrap();
        let kubeconfig = env
            .lines()
            .find_map(|l| l.strip_prefix("KUBECONFIG="))
            .map(PathBuf::from)
            .expect("KUBECONFIG in cluster.env");
        Cluster { dir, kubeconfig }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/cluster/down")).arg(&self.dir).status();
    }
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn class(name: &str, mode: &str, reclaim: &str) -> StorageClass {
    serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": "udisk.csi.ucloud.cn",
        "parameters": {"type": "ssd", "fsType": "ext4"},
        "reclaimPolicy": reclaim,
        "volumeBindingMode": mode,
    }))
    .unwrap()
}

fn claim(name: &str, class: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class, "resources": {"requests": {"storage": "15Gi"}}},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_udisk_claims_into_bound_volumes_and_reclaims_them() {
    assert!(
        cluster_binaries_built(),
        "the control-plane binaries are not built: run tests/cluster/build (make test does)"
    );
    let f = Fixture::start().await;
    let cluster = Cluster::up();
    let args = ProvisionerArgs {
        kubeconfig: cluster.kubeconfig.clone(),
        sim: f.url(),
        key: KeyPair { public: PUBLIC.into(), private: PRIVATE.into() },
        region: "cn-bj2".into(),
        zone: "cn-bj2-05".into(),
        interval_ms: 300,
    };
    let provisioner = Provisioner::connect(&args).await.expect("provisioner connects");
    let stop = CancellationToken::new();
    let kube = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let classes: Api<StorageClass> = Api::all(kube.clone());
    classes.create(&PostParams::default(), &class("udisk-now", "Immediate", "Delete")).await.unwrap();
    classes.create(&PostParams::default(), &class("udisk-wffc", "WaitForFirstConsumer", "Retain")).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(kube.clone());

    let run = provisioner.run_until(Duration::from_millis(300), stop.clone());
    let checks = async {
        // Immediate: a 15Gi claim becomes a 15 GB SSD disk and a bound PV naming it.
        pvcs.create(&PostParams::default(), &claim("data-now", "udisk-now")).await.unwrap();
        let pv_name = wait_for("data-now bound", Duration::from_secs(60), || async {
            let c = pvcs.get("data-now").await.ok()?;
            (c.status?.phase.as_deref() == Some("Bound")).then(|| c.spec.unwrap().volume_name.unwrap())
        })
        .await;
        let pv = pvs.get(&pv_name).await.unwrap();
        let csi = pv.spec.as_ref().unwrap().csi.clone().unwrap();
        assert_eq!(csi.driver, "udisk.csi.ucloud.cn");
        assert_eq!(csi.fs_type.as_deref(), Some("ext4"));
        let disk = f.ok("DescribeUDisk", &[("UDiskId", &csi.volume_handle)]).await;
        assert_eq!(disk["DataSet"][0]["Size"], 15);
        assert_eq!(disk["DataSet"][0]["DiskType"], "SSDDataDisk");

        // WaitForFirstConsumer: nothing until the scheduler's selected-node annotation.
        // A pass of our own, started after the claim exists, has seen it and done nothing.
        pvcs.create(&PostParams::default(), &claim("data-later", "udisk-wffc")).await.unwrap();
        assert!(provisioner.reconcile().await.unwrap().is_empty());
        assert_eq!(f.ok("DescribeUDisk", &[]).await["TotalCount"], 1, "no disk before a node is selected");
        let patch =
            json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "uk8s-abcdefgh-vk-x1y2z"}}});
        pvcs.patch("data-later", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let later_pv = wait_for("data-later bound", Duration::from_secs(60), || async {
            let c = pvcs.get("data-later").await.ok()?;
            (c.status?.phase.as_deref() == Some("Bound")).then(|| c.spec.unwrap().volume_name.unwrap())
        })
        .await;

        // Delete policy: claim gone → disk and PV gone. Retain: both stay.
        pvcs.delete("data-now", &DeleteParams::default()).await.unwrap();
        let handle = csi.volume_handle.clone();
        wait_for("data-now volume reclaimed", Duration::from_secs(60), || async {
            let gone = pvs.get_opt(&pv_name).await.ok()?.is_none();
            let disk_gone = f.ok("DescribeUDisk", &[("UDiskId", &handle)]).await["TotalCount"] == 0;
            (gone && disk_gone).then_some(())
        })
        .await;
        pvcs.delete("data-later", &DeleteParams::default()).await.unwrap();
        wait_for("data-later gone", Duration::from_secs(60), || async {
            pvcs.get_opt("data-later").await.ok()?.is_none().then_some(())
        })
        .await;
        // Once the PV is Released, a pass of our own has seen it and kept it.
        wait_for("data-later's PV Released", Duration::from_secs(60), || async {
            (pvs.get(&later_pv).await.ok()?.status?.phase.as_deref() == Some("Released")).then_some(())
        })
        .await;
        assert!(provisioner.reconcile().await.unwrap().is_empty());
        assert!(pvs.get_opt(&later_pv).await.unwrap().is_some(), "Retain keeps the PV");
        assert_eq!(f.ok("DescribeUDisk", &[]).await["TotalCount"], 1, "Retain keeps the disk");
        stop.cancel();
    };
    tokio::join!(run, checks);
    drop(cluster);
    f.shutdown().await;
}
