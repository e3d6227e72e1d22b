//! UDisk actions, enough for the disks PersistentVolumes refer to: create, describe (with
//! attach state), delete (refused while a Cube instance mounts the disk).

use serde_json::{Value, json};

use super::{Answer, Ctx, fields, page};
use crate::error::ApiError;
use crate::params::Params;
use crate::state::{Disk, State, new_id};

pub const DISK_TYPES: &[&str] = &["DataDisk", "SSDDataDisk", "RSSDDataDisk", "EfficiencyDataDisk"];

/// What a new disk is asked to be.
pub struct DiskRequest<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub name: &'a str,
    pub size: i64,
    pub disk_type: &'a str,
}

/// Creates a disk record; shared by CreateUDisk and `POST /_sim/disks`.
pub fn make_disk(
    state: &mut State,
    max: usize,
    req: DiskRequest,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Disk, ApiError> {
    let DiskRequest { region, zone, name, size, disk_type } = req;
    if !DISK_TYPES.contains(&disk_type) {
        return Err(ApiError::invalid("DiskType", format!("{disk_type:?} is not one of {}", DISK_TYPES.join(", "))));
    }
    if !(1..=8000).contains(&size) {
        return Err(ApiError::invalid("Size", format!("{size} GB must be between 1 and 8000")));
    }
    let live = state.disks.values().filter(|d| !d.deleted).count();
    if live >= max {
        return Err(ApiError::DiskQuotaExceeded(format!("at most {max} disks")));
    }
    let d = Disk {
        udisk_id: new_id("bs"),
        name: name.to_string(),
        size_gb: size,
        disk_type: disk_type.to_string(),
        region: region.to_string(),
        zone: zone.to_string(),
        created_at: now,
        attached_to: None,
        deleted: false,
    };
    state.disks.insert(d.udisk_id.clone(), d.clone());
    Ok(d)
}

pub fn create(ctx: &Ctx, p: &Params) -> Answer {
    let zone = p.required("Zone")?;
    let name = p.required("Name")?;
    let size = p.int("Size")?.ok_or_else(|| ApiError::MissingParam("Size".into()))?;
    let disk_type = p.get("DiskType").unwrap_or("DataDisk");
    let mut state = ctx.sim.state.lock();
    let d = make_disk(
        &mut state,
        ctx.cfg.quotas.max_disks,
        DiskRequest { region: &ctx.region, zone, name, size, disk_type },
        ctx.now,
    )?;
    Ok(fields(json!({"UDiskId": [d.udisk_id]})))
}

pub fn describe_one(d: &Disk) -> Value {
    json!({
        "UDiskId": d.udisk_id,
        "Name": d.name,
        "Size": d.size_gb,
        "DiskType": d.disk_type,
        "Zone": d.zone,
        "Status": if d.attached_to.is_some() { "InUse" } else { "Available" },
        "UHostId": d.attached_to.clone().unwrap_or_default(),
        "UHostName": d.attached_to.clone().unwrap_or_default(),
        "HostId": d.attached_to.clone().unwrap_or_default(),
        "HostProduct": if d.attached_to.is_some() { "cube" } else { "" },
        "CreateTime": d.created_at.timestamp(),
        "ExpiredTime": 0,
        "ChargeType": "Dynamic",
        "IsBoot": "False",
        "IsExpire": "No",
        "Tag": "Default",
    })
}

pub fn describe(ctx: &Ctx, p: &Params) -> Answer {
    let state = ctx.sim.state.lock();
    let matching: Vec<&Disk> = state
        .disks
        .values()
        .filter(|d| !d.deleted && d.region == ctx.region)
        .filter(|d| p.get("UDiskId").is_none_or(|id| d.udisk_id == id))
        .filter(|d| p.get("Zone").is_none_or(|z| d.zone == z))
        .collect();
    let (from, to) = page(p, matching.len())?;
    let set: Vec<Value> = matching[from..to].iter().map(|d| describe_one(d)).collect();
    Ok(fields(json!({"DataSet": set, "TotalCount": matching.len()})))
}

pub fn delete(ctx: &Ctx, p: &Params) -> Answer {
    let id = p.required("UDiskId")?.to_string();
    let mut state = ctx.sim.state.lock();
    let d = state
        .disks
        .get_mut(&id)
        .filter(|d| !d.deleted && d.region == ctx.region)
        .ok_or_else(|| ApiError::DiskNotFound(id.clone()))?;
    if let Some(cube) = &d.attached_to {
        return Err(ApiError::DiskInUse(id, cube.clone()));
    }
    d.deleted = true;
    Ok(fields(json!({})))
}
