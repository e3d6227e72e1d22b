//! `cube-sim udisk-provisioner`: the test environment's stand-in for the UDisk CSI controller.
//! It provisions PVCs of StorageClasses with provisioner `udisk.csi.ucloud.cn` as simulator
//! disks (CreateUDisk over the signed API) plus bound PVs, and deletes both per reclaim policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::client::{ApiClient, ClientError};
use crate::config::KeyPair;

pub const PROVISIONER: &str = "udisk.csi.ucloud.cn";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const ZONE_ANNOTATION: &str = "udisk.csi.ucloud.cn/zone";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(clap::Args, Debug, Clone)]
pub struct ProvisionerArgs {
    /// Kubeconfig of the cluster whose PVCs to provision.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: PathBuf,
    /// The simulator's API endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub sim: String,
    /// A key pair the simulator accepts.
    #[arg(long, value_name = "PUBLIC:PRIVATE")]
    pub key: KeyPair,
    /// Region the disks are made in.
    #[arg(long, default_value = "cn-bj2")]
    pub region: String,
    /// Zone for disks when the selected node carries no topology.kubernetes.io/zone label.
    #[arg(long, default_value = "cn-bj2-05")]
    pub zone: String,
    /// Milliseconds between reconcile passes.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
}

#[derive(Debug, Error)]
pub enum ProvisionError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("cloud: {0}")]
    Cloud(#[from] ClientError),
    #[error("PVC {pvc}: {reason}")]
    Claim { pvc: String, reason: String },
}

/// The provisioner's clients and settings; `reconcile` runs one idempotent pass.
pub struct Provisioner {
    kube: Client,
    cloud: ApiClient,
    default_zone: String,
}

impl Provisioner {
    pub async fn connect(args: &ProvisionerArgs) -> Result<Self, ProvisionError> {
        let kc = Kubeconfig::read_from(&args.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        let kube = Client::try_from(config)?;
        Ok(Provisioner {
            kube,
            cloud: ApiClient::new(&args.sim, args.key.clone(), &args.region),
            default_zone: args.zone.clone(),
        })
    }

    /// Provisions every waiting claim and cleans up released volumes. Each object's failure is
    /// reported and retried on the next pass; it never stops the others.
    pub async fn reconcile(&self) -> Result<Vec<ProvisionError>, ProvisionError> {
        let classes: BTreeMap<String, StorageClass> = Api::<StorageClass>::all(self.kube.clone())
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter(|sc| sc.provisioner == PROVISIONER)
            .map(|sc| (sc.name_any(), sc))
            .collect();
        let pvs = Api::<PersistentVolume>::all(self.kube.clone());
        let existing: Vec<PersistentVolume> = pvs.list(&ListParams::default()).await?.items;
        let claims = Api::<PersistentVolumeClaim>::all(self.kube.clone()).list(&ListParams::default()).await?;
        let mut errors = Vec::new();
        for pvc in claims {
            let Some(sc) = pvc.spec.as_ref().and_then(|s| s.storage_class_name.as_ref()).and_then(|n| classes.get(n))
            else {
                continue;
            };
            if let Err(e) = self.provision(&pvc, sc, &existing).await {
                errors.push(e);
            }
        }
        for pv in existing {
            if let Err(e) = self.reclaim(&pv).await {
                errors.push(e);
            }
        }
        Ok(errors)
    }

    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        sc: &StorageClass,
        existing: &[PersistentVolume],
    ) -> Result<(), ProvisionError> {
        let bound = pvc.spec.as_ref().and_then(|s| s.volume_name.as_ref()).is_some_and(|v| !v.is_empty());
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
        if bound || !pending || pvc.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let selected = pvc.annotations().get(SELECTED_NODE).cloned();
        if sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") && selected.is_none() {
            return Ok(()); // the scheduler has not picked a node yet
        }
        let uid = pvc.uid().unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        if existing.iter().any(|pv| pv.name_any() == pv_name) {
            return Ok(());
        }
        let ns = pvc.namespace().unwrap_or_default();
        let id = format!("{ns}/{}", pvc.name_any());
        let spec = pvc.spec.clone().unwrap_or_default();
        let request = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
        let bytes = request
            .as_ref()
            .and_then(|q| crate::podspec::parse_mem_bytes(&serde_yaml_ng::Value::String(q.0.clone())))
            .ok_or_else(|| ProvisionError::Claim {
                pvc: id.clone(),
                reason: "spec.resources.requests.storage is missing or not a quantity".into(),
            })?;
        let size_gb = bytes.div_ceil(1 << 30).max(1);
        let params = sc.parameters.clone().unwrap_or_default();
        let type_param = params.get("type").cloned().unwrap_or_else(|| "ssd".into());
        let disk_type = match type_param.as_str() {
            "sata" => "DataDisk",
            "ssd" => "SSDDataDisk",
            "rssd" => "RSSDDataDisk",
            "essd" => "EfficiencyDataDisk",
            other => {
                return Err(ProvisionError::Claim {
                    pvc: id,
                    reason: format!("StorageClass parameter type {other:?} is not sata, ssd, rssd or essd"),
                });
            }
        };
        let fs_type = params.get("fsType").cloned().unwrap_or_else(|| "ext4".into());
        let zone = match &selected {
            Some(node) => Api::<Node>::all(self.kube.clone())
                .get_opt(node)
                .await?
                .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
                .unwrap_or_else(|| self.default_zone.clone()),
            None => self.default_zone.clone(),
        };

        // Idempotent across crashes: a disk named after the PV is reused, not made twice.
        let listed = self.cloud.call("DescribeUDisk", &[("Limit", "100")]).await?;
        let found = listed["DataSet"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["Name"] == pv_name.as_str())
            .and_then(|d| d["UDiskId"].as_str().map(str::to_string));
        let disk_id = match found {
            Some(d) => d,
            None => {
                let size = size_gb.to_string();
                let made = self
                    .cloud
                    .call(
                        "CreateUDisk",
                        &[("Zone", &zone), ("Name", &pv_name), ("Size", &size), ("DiskType", disk_type)],
                    )
                    .await?;
                made["UDiskId"][0].as_str().unwrap_or_default().to_string()
            }
        };
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name.clone()),
                annotations: Some(BTreeMap::from([
                    (PROVISIONED_BY.to_string(), PROVISIONER.to_string()),
                    (ZONE_ANNOTATION.to_string(), zone),
                ])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                access_modes: spec.access_modes.clone(),
                capacity: Some(BTreeMap::from([("storage".to_string(), Quantity(format!("{size_gb}Gi")))])),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns),
                    name: Some(pvc.name_any()),
                    uid: Some(uid),
                    ..Default::default()
                }),
                csi: Some(CSIPersistentVolumeSource {
                    driver: PROVISIONER.into(),
                    volume_handle: disk_id,
                    fs_type: Some(fs_type),
                    // As the UDisk CSI driver's volume context: the disk type.
                    volume_attributes: Some(BTreeMap::from([("type".to_string(), type_param.clone())])),
                    ..Default::default()
                }),
                persistent_volume_reclaim_policy: Some(sc.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
                storage_class_name: Some(sc.name_any()),
                volume_mode: spec.volume_mode.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<PersistentVolume>::all(self.kube.clone()).create(&PostParams::default(), &pv).await?;
        tracing::info!(pvc = %id, pv = %pv_name, "provisioned");
        Ok(())
    }

    /// A released volume with policy Delete: delete the disk (once no instance mounts it), then the PV.
    async fn reclaim(&self, pv: &PersistentVolume) -> Result<(), ProvisionError> {
        if pv.annotations().get(PROVISIONED_BY).map(String::as_str) != Some(PROVISIONER) {
            return Ok(());
        }
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let spec = pv.spec.clone().unwrap_or_default();
        if !released || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") {
            return Ok(());
        }
        if let Some(csi) = &spec.csi {
            let zone = pv.annotations().get(ZONE_ANNOTATION).cloned().unwrap_or_else(|| self.default_zone.clone());
            match self.cloud.call("DeleteUDisk", &[("Zone", &zone), ("UDiskId", &csi.volume_handle)]).await {
                Ok(_) => {}
                Err(ClientError::Api { ret_code: 17001, .. }) => {} // already gone
                Err(e) => return Err(e.into()),                     // e.g. still mounted: next pass
            }
        }
        match Api::<PersistentVolume>::all(self.kube.clone()).delete(&pv.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pv = %pv.name_any(), "reclaimed");
        Ok(())
    }

    /// Reconciles every `interval` until `stop` is cancelled.
    pub async fn run_until(&self, interval: Duration, stop: CancellationToken) {
        loop {
            match self.reconcile().await {
                Ok(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "will retry");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

pub async fn run(args: ProvisionerArgs) -> anyhow::Result<()> {
    let p = Provisioner::connect(&args).await?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signals = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        on_signal.cancel();
    };
    eprintln!("udisk-provisioner: provisioning {PROVISIONER} claims into {}", args.sim);
    tokio::join!(p.run_until(Duration::from_millis(args.interval_ms), stop), signals);
    Ok(())
}
