//! Volumes (P5, P7): Cube mounts UDisks (through PVCs), NFS, inline ConfigMap and Secret files and
//! emptyDirs (`service_account` turns the token projection into such files). Every other source is
//! refused before anything is created.

mod service_account;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::cube_pod::{self, EmptyDir, Nfs, Udisk, VolumeSource};
use crate::error::{InvalidInput, TranslateError};
use crate::k8s::{self, KeyToPath};
use vk_provider_sdk::{Event, ResolvedPod};

/// The CSI driver whose volumes are UDisks.
pub const UDISK_DRIVER: &str = "udisk.csi.ucloud.cn";
/// ConfigMap and Secret data one pod may mount.
pub const MAX_INLINE_BYTES: usize = 30 * 1024 * 1024;
/// The file mode Cube gives inline files.
const CUBE_FILE_MODE: u32 = 0o644;

/// The pod's volumes in the Cube dialect.
#[derive(Debug, Default)]
pub struct Volumes {
    pub volumes: Vec<cube_pod::Volume>,
    pub events: Vec<Event>,
}

fn unsupported(field: String, message: String) -> TranslateError {
    InvalidInput::new("UnsupportedVolume", field, message).into()
}

/// Translates every volume of the pod.
pub fn translate(pod: &k8s::Pod, resolved: &ResolvedPod) -> Result<Volumes, TranslateError> {
    let mut out = Volumes::default();
    let mut inline_bytes = 0usize;
    for (i, v) in pod.spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        let source = if let Some(cm) = &v.config_map {
            check_modes(&mut out.events, &v.name, cm.default_mode, &cm.items);
            let files = config_map_files(
                resolved,
                &cm.name,
                &cm.items,
                cm.optional.unwrap_or(false),
                &format!("{field}.configMap"),
            )?;
            inline_bytes += files.values().map(Vec::len).sum::<usize>();
            inline(files, false)
        } else if let Some(s) = &v.secret {
            check_modes(&mut out.events, &v.name, s.default_mode, &s.items);
            let files = secret_files(
                resolved,
                &s.secret_name,
                &s.items,
                s.optional.unwrap_or(false),
                &format!("{field}.secret"),
            )?;
            inline_bytes += files.values().map(Vec::len).sum::<usize>();
            inline(files, true)
        } else if let Some(p) = &v.projected {
            check_modes(&mut out.events, &v.name, p.default_mode, &[]);
            let files = service_account::project(i, &v.name, p, pod, resolved)?;
            inline_bytes += files.values().map(Vec::len).sum::<usize>();
            inline(files, true)
        } else if let Some(nfs) = &v.nfs {
            VolumeSource::Nfs(Nfs { address: nfs_address(&nfs.server, &nfs.path), mount_option: None })
        } else if let Some(claim) = &v.persistent_volume_claim {
            claim_source(resolved, &claim.claim_name, &format!("{field}.persistentVolumeClaim"), &mut out.events)?
        } else if v.empty_dir.is_some() || v.other.is_empty() {
            VolumeSource::EmptyDir(EmptyDir {})
        } else {
            let kind = v.other.keys().next().cloned().unwrap_or_default();
            return Err(unsupported(
                format!("{field}.{kind}"),
                format!(
                    "volume {:?} is a {kind} volume, which Cube cannot mount; Cube mounts UDisk (through a PVC), NFS, ConfigMap, Secret, emptyDir and the service-account token projection",
                    v.name
                ),
            ));
        };
        out.volumes.push(cube_pod::Volume { name: v.name.clone(), source });
    }
    if inline_bytes > MAX_INLINE_BYTES {
        return Err(InvalidInput::new(
            "ConfigDataTooLarge",
            "spec.volumes",
            format!("the pod mounts {inline_bytes} bytes of ConfigMap and Secret data, but Cube accepts at most 30 MiB ({MAX_INLINE_BYTES} bytes) per pod"),
        )
        .into());
    }
    Ok(out)
}

/// Cube mounts inline files with one fixed mode; say so when the pod asked for another.
fn check_modes(events: &mut Vec<Event>, volume: &str, default_mode: Option<u32>, items: &[KeyToPath]) {
    let modes = default_mode.into_iter().chain(items.iter().filter_map(|i| i.mode));
    if let Some(mode) = modes.into_iter().find(|m| *m != CUBE_FILE_MODE) {
        events.push(Event::warning(
            "FileModeIgnored",
            format!("volume {volume:?} asks for file mode {mode:#o}; Cube mounts inline files with mode 0644"),
        ));
    }
}

/// Inline files: a ConfigMap-type volume when every file is UTF-8, else a Secret-type one (base64).
fn inline(files: BTreeMap<String, Vec<u8>>, secret: bool) -> VolumeSource {
    let all_text = files.values().all(|b| std::str::from_utf8(b).is_ok());
    if secret || !all_text {
        VolumeSource::Secret(files.into_iter().map(|(k, v)| (k, B64.encode(v))).collect())
    } else {
        VolumeSource::ConfigMap(files.into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap_or_default())).collect())
    }
}

pub fn nfs_address(server: &str, path: &str) -> String {
    format!("{server}:{path}")
}

/// The files a ConfigMap contributes (whole, or its `items`).
pub fn config_map_files(
    resolved: &ResolvedPod,
    name: &str,
    items: &[KeyToPath],
    optional: bool,
    field: &str,
) -> Result<BTreeMap<String, Vec<u8>>, TranslateError> {
    let Some(cm) = resolved.config_maps.iter().find(|c| c.name == name) else {
        return if optional {
            Ok(BTreeMap::new())
        } else {
            Err(TranslateError::NotReady(format!("{field}: ConfigMap {name} does not exist (yet)")))
        };
    };
    let entries: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .map(|e| (e.key.clone(), e.value.clone().into_bytes()))
        .chain(cm.binary_data.iter().map(|b| (b.key.clone(), b.value.clone())))
        .collect();
    select(entries, items, optional, &format!("ConfigMap {name}"), field)
}

/// The files a Secret contributes (whole, or its `items`).
pub fn secret_files(
    resolved: &ResolvedPod,
    name: &str,
    items: &[KeyToPath],
    optional: bool,
    field: &str,
) -> Result<BTreeMap<String, Vec<u8>>, TranslateError> {
    let Some(s) = resolved.secrets.iter().find(|s| s.name == name) else {
        return if optional {
            Ok(BTreeMap::new())
        } else {
            Err(TranslateError::NotReady(format!("{field}: Secret {name} does not exist (yet)")))
        };
    };
    let entries: BTreeMap<String, Vec<u8>> = s.data.iter().map(|b| (b.key.clone(), b.value.clone())).collect();
    select(entries, items, optional, &format!("Secret {name}"), field)
}

/// Applies `items` (key → path) to an object's entries; without items every key is a file.
fn select(
    entries: BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    optional: bool,
    object: &str,
    field: &str,
) -> Result<BTreeMap<String, Vec<u8>>, TranslateError> {
    if items.is_empty() {
        return Ok(entries);
    }
    let mut out = BTreeMap::new();
    for (j, item) in items.iter().enumerate() {
        if item.path.is_empty() || item.path.starts_with('/') || item.path.split('/').any(|p| p == "..") {
            return Err(InvalidInput::new(
                "InvalidVolume",
                format!("{field}.items[{j}].path"),
                format!("path {:?} must be a relative path without '..'", item.path),
            )
            .into());
        }
        match entries.get(&item.key) {
            Some(v) => {
                out.insert(item.path.clone(), v.clone());
            }
            None if optional => {}
            None => {
                return Err(TranslateError::NotReady(format!("{field}.items[{j}]: {object} has no key {}", item.key)));
            }
        }
    }
    Ok(out)
}

/// A PVC's bound PV as a Cube volume: a UDisk (ext4) or an NFS share.
fn claim_source(
    resolved: &ResolvedPod,
    claim_name: &str,
    field: &str,
    events: &mut Vec<Event>,
) -> Result<VolumeSource, TranslateError> {
    let Some(claim) = resolved.claims.iter().find(|c| c.claim_name == claim_name) else {
        return Err(TranslateError::NotReady(format!(
            "{field}: PersistentVolumeClaim {claim_name} does not exist (yet)"
        )));
    };
    let Some(pv_json) = &claim.volume else {
        return Err(TranslateError::NotReady(format!(
            "{field}: PersistentVolumeClaim {claim_name} is not bound yet (with WaitForFirstConsumer, schedule the pod with nodeSelector, not nodeName)"
        )));
    };
    let pv: k8s::PersistentVolume = serde_json::from_str(pv_json).map_err(|e| {
        TranslateError::Invalid(InvalidInput::new(
            "InvalidVolume",
            field,
            format!("the PV bound to claim {claim_name} cannot be read: {e}"),
        ))
    })?;
    let pv_name = &pv.metadata.name;
    if let Some(csi) = &pv.spec.csi {
        if csi.driver != UDISK_DRIVER {
            return Err(unsupported(
                field.to_string(),
                format!(
                    "claim {claim_name} is bound to PV {pv_name} of CSI driver {}; Cube mounts only {UDISK_DRIVER} disks and NFS",
                    csi.driver
                ),
            ));
        }
        let fs = csi.fs_type.as_deref().filter(|f| !f.is_empty()).unwrap_or("ext4");
        if fs != "ext4" {
            return Err(InvalidInput::new(
                "UnsupportedFilesystem",
                field,
                format!("claim {claim_name} is bound to PV {pv_name} with fsType {fs}, but Cube mounts UDisks as ext4 only (use a StorageClass with fsType: ext4)"),
            )
            .into());
        }
        if csi.volume_attributes.get("type").is_some_and(|t| t.eq_ignore_ascii_case("rssd")) {
            // The guide's advice, where it applies: the disk may not be mountable at all.
            events.push(Event::warning(
                "RSSDUDisk",
                format!(
                    "claim {claim_name} is an RSSD UDisk ({}); the guide advises SSD or SATA disks for Cube: an RSSD disk's RDMA area may not match the Cube instance's, and then it cannot be mounted (StorageClass parameter type: \"ssd\" or \"sata\")",
                    csi.volume_handle
                ),
            ));
        }
        return Ok(VolumeSource::Udisk(Udisk { id: csi.volume_handle.clone(), fs: fs.into(), force_format: false }));
    }
    if let Some(nfs) = &pv.spec.nfs {
        let options = pv.spec.mount_options.join(",");
        return Ok(VolumeSource::Nfs(Nfs {
            address: nfs_address(&nfs.server, &nfs.path),
            mount_option: (!options.is_empty()).then_some(options),
        }));
    }
    const SOURCES: &[&str] = &[
        "hostPath",
        "local",
        "iscsi",
        "rbd",
        "cephfs",
        "fc",
        "flexVolume",
        "glusterfs",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "cinder",
        "vsphereVolume",
        "portworxVolume",
        "quobyte",
        "scaleIO",
        "storageos",
        "photonPersistentDisk",
        "flocker",
    ];
    let kind =
        pv.spec.other.keys().find(|k| SOURCES.contains(&k.as_str())).cloned().unwrap_or_else(|| "unknown".into());
    Err(unsupported(
        field.to_string(),
        format!(
            "claim {claim_name} is bound to PV {pv_name} of type {kind}; Cube mounts only {UDISK_DRIVER} disks and NFS"
        ),
    ))
}

/// A container's mounts in the Cube dialect.
pub fn mounts(
    container: &k8s::Container,
    field: &str,
    volumes: &[cube_pod::Volume],
) -> Result<Vec<cube_pod::VolumeMount>, InvalidInput> {
    container
        .volume_mounts
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let f = format!("{field}.volumeMounts[{j}]");
            if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(InvalidInput::new(
                    "UnsupportedVolumeMount",
                    format!("{f}.subPathExpr"),
                    "Cube cannot expand subPathExpr; use subPath",
                ));
            }
            if !volumes.iter().any(|v| v.name == m.name) {
                return Err(InvalidInput::new(
                    "InvalidVolumeMount",
                    format!("{f}.name"),
                    format!("mount {:?} names no volume of the pod", m.name),
                ));
            }
            Ok(cube_pod::VolumeMount {
                name: m.name.clone(),
                mount_path: m.mount_path.clone(),
                sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
                read_only: m.read_only,
            })
        })
        .collect()
}
