//! Cube instance actions: create (idempotent on the pod UID), read, list, update in place,
//! reboot, delete (with EIP release), names and tags, prices and stream tokens.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Duration;
use serde_json::json;

use super::{Answer, Ctx, fields, page};
use crate::error::ApiError;
use crate::lifecycle::render_base64;
use crate::params::Params;
use crate::podspec::CubePod;
use crate::state::{Instance, State, StreamToken, TokenKind, new_id, new_token};

/// Finds a live instance of the caller's region by `CubeId` or, failing that, `Uid`.
pub fn find<'s>(ctx: &Ctx, state: &'s State, p: &Params) -> Result<&'s Instance, ApiError> {
    let id = lookup_id(ctx, state, p)?;
    Ok(&state.instances[&id])
}

fn lookup_id(ctx: &Ctx, state: &State, p: &Params) -> Result<String, ApiError> {
    let in_scope = |i: &Instance| i.live() && i.region == ctx.region;
    if let Some(id) = p.get("CubeId") {
        return state
            .instances
            .get(id)
            .filter(|i| in_scope(i))
            .map(|i| i.cube_id.clone())
            .ok_or_else(|| ApiError::CubeNotFound(id.to_string()));
    }
    if let Some(uid) = p.get("Uid") {
        return state
            .instances
            .values()
            .find(|i| in_scope(i) && i.uid.as_deref() == Some(uid))
            .map(|i| i.cube_id.clone())
            .ok_or_else(|| ApiError::CubeNotFound(uid.to_string()));
    }
    Err(ApiError::MissingParam("CubeId".into()))
}

fn check_vpc(ctx: &Ctx, p: &Params) -> Result<(String, String), ApiError> {
    let vpc = p.required("VPCId")?;
    let subnet = p.required("SubnetId")?;
    let vpc_ok =
        if ctx.cfg.vpcs.is_empty() { vpc.starts_with("uvnet-") } else { ctx.cfg.vpcs.iter().any(|v| v == vpc) };
    if !vpc_ok {
        return Err(ApiError::invalid("VPCId", format!("{vpc:?} is not a VPC of this project")));
    }
    let subnet_ok = if ctx.cfg.subnets.is_empty() {
        subnet.starts_with("subnet-")
    } else {
        ctx.cfg.subnets.iter().any(|s| s == subnet)
    };
    if !subnet_ok {
        return Err(ApiError::invalid("SubnetId", format!("{subnet:?} is not a subnet of {vpc}")));
    }
    Ok((vpc.to_string(), subnet.to_string()))
}

fn one_of(p: &Params, key: &str, allowed: &[&str], default: &str) -> Result<String, ApiError> {
    match p.get(key) {
        None => Ok(default.to_string()),
        Some(v) if allowed.contains(&v) => Ok(v.to_string()),
        Some(v) => Err(ApiError::invalid(key, format!("{v:?} is not one of {}", allowed.join(", ")))),
    }
}

/// Marks the pod's UDisks as attached to `cube_id`, after checking all of them.
fn attach_disks(state: &mut State, ctx: &Ctx, pod: &CubePod, cube_id: &str) -> Result<(), ApiError> {
    let ids = pod.udisk_ids();
    for id in &ids {
        let disk = state
            .disks
            .get(id)
            .filter(|d| !d.deleted && d.region == ctx.region)
            .ok_or_else(|| ApiError::DiskNotFound(id.clone()))?;
        if let Some(other) = &disk.attached_to
            && other != cube_id
        {
            return Err(ApiError::DiskInUse(id.clone(), other.clone()));
        }
    }
    for id in ids {
        if let Some(d) = state.disks.get_mut(&id) {
            d.attached_to = Some(cube_id.to_string());
        }
    }
    Ok(())
}

fn detach_disks(state: &mut State, cube_id: &str) {
    for d in state.disks.values_mut() {
        if d.attached_to.as_deref() == Some(cube_id) {
            d.attached_to = None;
        }
    }
}

pub fn create(ctx: &Ctx, p: &Params) -> Answer {
    let zone = p.required("Zone")?.to_string();
    let (vpc, subnet) = check_vpc(ctx, p)?;
    let pod = CubePod::from_base64(p.required("Pod")?, ctx.cfg)?;
    if let Some(kc) = p.get("KubeConfig") {
        if kc.len() > ctx.cfg.limits.max_kubeconfig_base64_bytes {
            return Err(ApiError::invalid(
                "KubeConfig",
                format!("is {} bytes of base64, more than {}", kc.len(), ctx.cfg.limits.max_kubeconfig_base64_bytes),
            ));
        }
        B64.decode(kc).map_err(|e| ApiError::invalid("KubeConfig", format!("is not valid base64: {e}")))?;
    }
    let charge_type = one_of(p, "ChargeType", &["Year", "Month", "Postpay", "Dynamic"], "Postpay")?;
    let cpu_platform = one_of(p, "CpuPlatform", &["V6", "A2", "Auto"], "Auto")?;
    let quantity = p.int("Quantity")?.unwrap_or(1);
    if quantity < 0 {
        return Err(ApiError::invalid("Quantity", format!("{quantity} is negative")));
    }
    let uid = pod.metadata_str("uid");
    let mut state = ctx.sim.state.lock();
    // A retried create (same pod UID) answers with the instance the first one made.
    if let Some(uid) = &uid
        && let Some(existing) =
            state.instances.values().find(|i| i.live() && i.region == ctx.region && i.uid.as_deref() == Some(uid))
    {
        return Ok(fields(json!({"CubeId": existing.cube_id, "Pod": render_base64(existing, ctx.cfg, ctx.now)})));
    }
    let live: Vec<&Instance> = state.instances.values().filter(|i| i.live()).collect();
    if live.len() >= ctx.cfg.quotas.max_instances {
        return Err(ApiError::QuotaExceeded(format!("at most {} Cube instances", ctx.cfg.quotas.max_instances)));
    }
    let cpu_used: u64 = live.iter().map(|i| i.pod.cpu_millis).sum();
    if cpu_used + pod.cpu_millis > ctx.cfg.quotas.max_cpu_millis {
        return Err(ApiError::QuotaExceeded(format!(
            "CPU quota is {}m, {}m in use, {}m asked",
            ctx.cfg.quotas.max_cpu_millis, cpu_used, pod.cpu_millis
        )));
    }
    let cube_id = new_id("cube");
    attach_disks(&mut state, ctx, &pod, &cube_id)?;
    let (pod_ip, bound) = ctx.sim.allocate_ip(&mut state, &pod);
    let name =
        p.get("Name").map(str::to_string).or_else(|| pod.metadata_str("name")).unwrap_or_else(|| cube_id.clone());
    let inst = Instance {
        cube_id: cube_id.clone(),
        uid,
        region: ctx.region.clone(),
        zone,
        project_id: ctx.project.clone(),
        vpc_id: vpc,
        subnet_id: subnet,
        group: p.get("Group").map(str::to_string),
        deployment_id: None,
        name,
        tag: p.get("Tag").unwrap_or("Default").to_string(),
        charge_type,
        quantity,
        cpu_platform,
        pod,
        created_at: ctx.now,
        started_at: ctx.now,
        reboots: 0,
        pod_ip,
        eip_id: None,
        deleted_at: None,
        deleting_since: None,
    };
    let answer = json!({"CubeId": cube_id, "Pod": render_base64(&inst, ctx.cfg, ctx.now)});
    if let Some(bound) = bound {
        ctx.sim.servers.start(&inst, bound, &ctx.sim.shutdown);
    }
    state.instances.insert(cube_id, inst);
    Ok(fields(answer))
}

pub fn get(ctx: &Ctx, p: &Params) -> Answer {
    let state = ctx.sim.state.lock();
    let inst = find(ctx, &state, p)?;
    Ok(fields(json!({"Pod": render_base64(inst, ctx.cfg, ctx.now)})))
}

pub fn list(ctx: &Ctx, p: &Params) -> Answer {
    let state = ctx.sim.state.lock();
    let mut matching: Vec<&Instance> = state
        .instances
        .values()
        .filter(|i| i.live() && i.region == ctx.region)
        .filter(|i| p.get("Group").is_none_or(|g| i.group.as_deref() == Some(g)))
        .filter(|i| p.get("VPCId").is_none_or(|v| i.vpc_id == v))
        .filter(|i| p.get("SubnetId").is_none_or(|s| i.subnet_id == s))
        .filter(|i| p.get("DeploymentId").is_none_or(|d| i.deployment_id.as_deref() == Some(d)))
        .collect();
    matching.sort_by(|a, b| (a.created_at, &a.cube_id).cmp(&(b.created_at, &b.cube_id)));
    let (from, to) = page(p, matching.len())?;
    let pods: Vec<String> = matching[from..to].iter().map(|i| render_base64(i, ctx.cfg, ctx.now)).collect();
    Ok(fields(json!({"Pods": pods, "TotalCount": matching.len()})))
}

pub fn delete(ctx: &Ctx, p: &Params) -> Answer {
    let release = p.bool("ReleaseEIP")?.unwrap_or(false);
    let mut state = ctx.sim.state.lock();
    let id = lookup_id(ctx, &state, p)?;
    let eip = state.instances.get(&id).and_then(|i| i.eip_id.clone());
    if let Some(eip_id) = eip
        && let Some(e) = state.eips.get_mut(&eip_id)
    {
        e.bound_to = None;
        e.released = release;
    }
    detach_disks(&mut state, &id);
    state.firewalls.retain(|f| f.resource_id != id);
    // The containers stop now, even while the instance stays Terminating.
    ctx.sim.servers.stop(&id);
    if let Some(i) = state.instances.get_mut(&id) {
        // With `deleting_ms`, the instance stays visible (Terminating) until that time is up.
        if ctx.cfg.lifecycle.deleting_ms == 0 {
            i.deleted_at = Some(ctx.now);
        } else if i.deleting_since.is_none() {
            i.deleting_since = Some(ctx.now);
        }
        i.eip_id = None;
    }
    Ok(fields(json!({})))
}

pub fn renew(ctx: &Ctx, p: &Params) -> Answer {
    let pod = CubePod::from_base64(p.required("Pod")?, ctx.cfg)?;
    let mut state = ctx.sim.state.lock();
    let id = lookup_id(ctx, &state, p)?;
    let old_disks = state.instances[&id].pod.udisk_ids();
    detach_disks(&mut state, &id);
    if let Err(e) = attach_disks(&mut state, ctx, &pod, &id) {
        // Put the old attachments back: a refused update changes nothing.
        for d in old_disks {
            if let Some(disk) = state.disks.get_mut(&d) {
                disk.attached_to = Some(id.clone());
            }
        }
        return Err(e);
    }
    let inst = state.instances.get_mut(&id).expect("looked up above");
    if let Some(uid) = pod.metadata_str("uid") {
        inst.uid = Some(uid);
    }
    inst.pod = pod;
    inst.started_at = ctx.now;
    // New containers: what they serve may have changed.
    ctx.sim.serve(inst);
    Ok(fields(json!({"Pod": render_base64(inst, ctx.cfg, ctx.now)})))
}

pub fn reboot(ctx: &Ctx, p: &Params) -> Answer {
    p.required("CubeId")?;
    let mut state = ctx.sim.state.lock();
    let id = lookup_id(ctx, &state, p)?;
    let inst = state.instances.get_mut(&id).expect("looked up above");
    inst.reboots += 1;
    inst.started_at = ctx.now;
    Ok(fields(json!({})))
}

pub fn extend_info(ctx: &Ctx, p: &Params) -> Answer {
    let state = ctx.sim.state.lock();
    let wanted: Option<Vec<String>> =
        p.get("CubeIds").map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect());
    let infos: Vec<serde_json::Value> = state
        .instances
        .values()
        .filter(|i| i.live() && i.region == ctx.region)
        .filter(|i| wanted.as_ref().is_none_or(|w| w.contains(&i.cube_id)))
        .map(|i| {
            let eips: Vec<serde_json::Value> =
                i.eip_id.as_ref().and_then(|id| state.eips.get(id)).map(super::unet::eip_brief).into_iter().collect();
            let expiration = match i.charge_type.as_str() {
                "Month" => (i.created_at + Duration::days(30 * i.quantity.max(1))).timestamp(),
                "Year" => (i.created_at + Duration::days(365 * i.quantity.max(1))).timestamp(),
                _ => 0,
            };
            json!({"CubeId": i.cube_id, "Name": i.name, "Tag": i.tag, "Expiration": expiration, "Eip": eips})
        })
        .collect();
    Ok(fields(json!({"ExtendInfo": infos})))
}

pub fn modify_extend_info(ctx: &Ctx, p: &Params) -> Answer {
    p.required("CubeId")?;
    let name = p.required("Name")?.to_string();
    let mut state = ctx.sim.state.lock();
    let id = lookup_id(ctx, &state, p)?;
    state.instances.get_mut(&id).expect("looked up above").name = name;
    Ok(fields(json!({})))
}

pub fn modify_tag(ctx: &Ctx, p: &Params) -> Answer {
    p.required("CubeId")?;
    let tag = p.required("Tag")?.to_string();
    let mut state = ctx.sim.state.lock();
    let id = lookup_id(ctx, &state, p)?;
    state.instances.get_mut(&id).expect("looked up above").tag = tag;
    Ok(fields(json!({"CubeId": id})))
}

/// Prices in 0.01 CNY: 0.09 CNY per core-hour plus 0.03 CNY per GiB-hour; months are 720 h
/// at 15% off, years 12 months at 30% off.
pub fn price(ctx: &Ctx, p: &Params) -> Answer {
    let _ = ctx;
    let charge = p.required("ChargeType")?;
    let positive = |key: &str| -> Result<i64, ApiError> {
        let v = p.int(key)?.ok_or_else(|| ApiError::MissingParam(key.to_string()))?;
        if v <= 0 {
            return Err(ApiError::invalid(key, format!("{v} must be positive")));
        }
        Ok(v)
    };
    let (count, cpu, mem) = (positive("Count")?, positive("Cpu")?, positive("Mem")?);
    let quantity = p.int("Quantity")?.unwrap_or(1).max(1);
    let hourly = cpu as f64 / 1000.0 * 9.0 + mem as f64 / 1024.0 * 3.0;
    let (original, discount) = match charge {
        "Postpay" | "Dynamic" => (hourly, 1.0),
        "Month" => (hourly * 720.0 * quantity as f64, 0.85),
        "Year" => (hourly * 720.0 * 12.0 * quantity as f64, 0.7),
        other => return Err(ApiError::invalid("ChargeType", format!("{other:?} is not one of Year, Month, Postpay"))),
    };
    let original = (original * count as f64).round() as i64;
    let price = (original as f64 * discount).round() as i64;
    Ok(fields(json!({"Price": price, "OriginalPrice": original})))
}

fn token(ctx: &Ctx, p: &Params, kind: TokenKind) -> Result<(String, String), ApiError> {
    let container = p.required("ContainerName")?.to_string();
    let mut state = ctx.sim.state.lock();
    let inst = find(ctx, &state, p)?;
    if inst.pod.container(&container).is_none() {
        return Err(ApiError::invalid(
            "ContainerName",
            format!("{container:?} is not a container of {}", inst.cube_id),
        ));
    }
    let cube_id = inst.cube_id.clone();
    let now = ctx.now;
    state.tokens.retain(|_, t| t.expires_at > now);
    let t = new_token();
    state.tokens.insert(t.clone(), StreamToken { kind, cube_id, container, expires_at: now + Duration::minutes(5) });
    Ok((t, ctx.sim.base_url.replacen("http://", "ws://", 1)))
}

pub fn exec_token(ctx: &Ctx, p: &Params) -> Answer {
    let (t, ws_base) = token(ctx, p, TokenKind::Exec)?;
    Ok(fields(json!({"Token": t, "TerminalUrl": format!("{ws_base}/cube-stream/exec?token={t}")})))
}

pub fn log_token(ctx: &Ctx, p: &Params) -> Answer {
    let (t, _) = token(ctx, p, TokenKind::Logs)?;
    Ok(fields(json!({"Token": t})))
}
