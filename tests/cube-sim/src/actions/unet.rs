//! UNet actions: EIPs (allocate, bind to a Cube instance, unbind, release, describe) and
//! firewall grants.

use serde_json::{Value, json};

use super::{Answer, Ctx, fields, page};
use crate::error::ApiError;
use crate::params::Params;
use crate::state::{Eip, FirewallBinding, new_id};

fn eip_addr(e: &Eip) -> Value {
    json!([{"IP": e.ip, "OperatorName": e.operator_name}])
}

fn status(e: &Eip) -> &'static str {
    if e.bound_to.is_some() { "used" } else { "free" }
}

/// The EIP as GetCubeExtendInfo lists it.
pub fn eip_brief(e: &Eip) -> Value {
    json!({
        "EIPId": e.eip_id,
        "Bandwidth": e.bandwidth,
        "BandwidthType": if e.share_bandwidth_id.is_some() { 1 } else { 0 },
        "PayMode": e.pay_mode,
        "Status": status(e),
        "EIPAddr": eip_addr(e),
        "CreateTime": e.created_at.timestamp(),
        "Resource": e.bound_to.as_ref().map(|(_, id)| id.clone()).unwrap_or_default(),
        "Weight": 50,
    })
}

pub fn allocate(ctx: &Ctx, p: &Params) -> Answer {
    let operator = p.required("OperatorName")?.to_string();
    let bandwidth = p.int("Bandwidth")?.ok_or_else(|| ApiError::MissingParam("Bandwidth".into()))?;
    let pay_mode = p.get("PayMode").unwrap_or("Bandwidth").to_string();
    if !matches!(pay_mode.as_str(), "Traffic" | "Bandwidth" | "ShareBandwidth" | "PostAccurateBandwidth") {
        return Err(ApiError::invalid(
            "PayMode",
            format!("{pay_mode:?} is not one of Traffic, Bandwidth, ShareBandwidth"),
        ));
    }
    let charge_type = p.get("ChargeType").unwrap_or("Month").to_string();
    if !matches!(charge_type.as_str(), "Year" | "Month" | "Dynamic") {
        return Err(ApiError::invalid("ChargeType", format!("{charge_type:?} is not one of Year, Month, Dynamic")));
    }
    let share = p.get("ShareBandwidthId").map(str::to_string);
    if pay_mode == "ShareBandwidth" {
        if share.is_none() {
            return Err(ApiError::MissingParam("ShareBandwidthId".into()));
        }
        if bandwidth != 0 {
            return Err(ApiError::invalid("Bandwidth", format!("{bandwidth} must be 0 with PayMode ShareBandwidth")));
        }
    } else if !(1..=800).contains(&bandwidth) {
        return Err(ApiError::invalid("Bandwidth", format!("{bandwidth} must be between 1 and 800 Mbps")));
    }
    let count = p.int("Count")?.unwrap_or(1).clamp(1, 50) as usize;
    let mut state = ctx.sim.state.lock();
    let live = state.eips.values().filter(|e| !e.released).count();
    if live + count > ctx.cfg.quotas.max_eips {
        return Err(ApiError::EipQuotaExceeded(format!("at most {} EIPs, {live} allocated", ctx.cfg.quotas.max_eips)));
    }
    let mut set = Vec::new();
    for _ in 0..count {
        let n = state.next_counter();
        let e = Eip {
            eip_id: new_id("eip"),
            ip: format!("106.75.{}.{}", (n / 250) % 250, n % 250 + 2),
            region: ctx.region.clone(),
            operator_name: operator.clone(),
            bandwidth,
            pay_mode: pay_mode.clone(),
            charge_type: charge_type.clone(),
            share_bandwidth_id: share.clone(),
            name: p.get("Name").unwrap_or("EIP").to_string(),
            tag: p.get("Tag").unwrap_or("Default").to_string(),
            created_at: ctx.now,
            bound_to: None,
            released: false,
        };
        set.push(json!({"EIPId": e.eip_id, "EIPAddr": eip_addr(&e)}));
        state.eips.insert(e.eip_id.clone(), e);
    }
    Ok(fields(json!({"EIPSet": set})))
}

fn live_eip<'s>(ctx: &Ctx, state: &'s mut crate::state::State, id: &str) -> Result<&'s mut Eip, ApiError> {
    state
        .eips
        .get_mut(id)
        .filter(|e| !e.released && e.region == ctx.region)
        .ok_or_else(|| ApiError::EipNotFound(id.to_string()))
}

pub fn bind(ctx: &Ctx, p: &Params) -> Answer {
    let eip_id = p.required("EIPId")?.to_string();
    let rtype = p.required("ResourceType")?.to_string();
    let rid = p.required("ResourceId")?.to_string();
    let mut state = ctx.sim.state.lock();
    live_eip(ctx, &mut state, &eip_id)?;
    if rtype == "cube" {
        let inst = state
            .instances
            .get(&rid)
            .filter(|i| i.live() && i.region == ctx.region)
            .ok_or_else(|| ApiError::invalid("ResourceId", format!("{rid:?} is not a live Cube instance")))?;
        match &inst.eip_id {
            Some(e) if *e == eip_id => return Ok(fields(json!({}))),
            Some(_) => return Err(ApiError::ResourceHasEip(rid)),
            None => {}
        }
    }
    let eip = live_eip(ctx, &mut state, &eip_id)?;
    if let Some((t, id)) = &eip.bound_to {
        return Err(ApiError::EipInUse(eip_id, format!("{t} {id}")));
    }
    eip.bound_to = Some((rtype.clone(), rid.clone()));
    if rtype == "cube"
        && let Some(i) = state.instances.get_mut(&rid)
    {
        i.eip_id = Some(eip_id);
    }
    Ok(fields(json!({})))
}

pub fn unbind(ctx: &Ctx, p: &Params) -> Answer {
    let eip_id = p.required("EIPId")?.to_string();
    let rtype = p.required("ResourceType")?.to_string();
    let rid = p.required("ResourceId")?.to_string();
    let mut state = ctx.sim.state.lock();
    let eip = live_eip(ctx, &mut state, &eip_id)?;
    if eip.bound_to.as_ref() != Some(&(rtype.clone(), rid.clone())) {
        return Err(ApiError::EipNotBound(eip_id, format!("{rtype} {rid}")));
    }
    eip.bound_to = None;
    if let Some(i) = state.instances.get_mut(&rid) {
        i.eip_id = None;
    }
    Ok(fields(json!({})))
}

pub fn release(ctx: &Ctx, p: &Params) -> Answer {
    let eip_id = p.required("EIPId")?.to_string();
    let mut state = ctx.sim.state.lock();
    let eip = live_eip(ctx, &mut state, &eip_id)?;
    if let Some((t, id)) = &eip.bound_to {
        return Err(ApiError::EipInUse(eip_id, format!("{t} {id}")));
    }
    eip.released = true;
    Ok(fields(json!({})))
}

pub fn describe(ctx: &Ctx, p: &Params) -> Answer {
    let ids = p.list("EIPIds");
    let state = ctx.sim.state.lock();
    let matching: Vec<&Eip> = state
        .eips
        .values()
        .filter(|e| !e.released && e.region == ctx.region)
        .filter(|e| ids.is_empty() || ids.contains(&e.eip_id))
        .collect();
    let (from, to) = page(p, matching.len())?;
    let set: Vec<Value> = matching[from..to]
        .iter()
        .map(|e| {
            let (rtype, rid) = e.bound_to.clone().unwrap_or_default();
            let mut v = json!({
                "EIPId": e.eip_id,
                "EIPAddr": eip_addr(e),
                "Bandwidth": e.bandwidth,
                "BandwidthType": if e.share_bandwidth_id.is_some() { 1 } else { 0 },
                "ChargeType": e.charge_type,
                "PayMode": e.pay_mode,
                "CreateTime": e.created_at.timestamp(),
                "ExpireTime": 0,
                "Expire": false,
                "Name": e.name,
                "Tag": e.tag,
                "Remark": "",
                "Weight": 50,
                "Status": status(e),
                "Resource": {"EIPId": e.eip_id, "ResourceType": rtype, "ResourceID": rid, "ResourceId": rid, "ResourceName": rid},
            });
            if let Some(bw) = &e.share_bandwidth_id {
                v["ShareBandwidthSet"] = json!({"ShareBandwidthId": bw, "ShareBandwidth": 0, "ShareBandwidthName": bw});
            }
            v
        })
        .collect();
    let total_bw: i64 = matching.iter().map(|e| e.bandwidth).sum();
    let unbound = matching.iter().filter(|e| e.bound_to.is_none()).count();
    Ok(fields(json!({"EIPSet": set, "TotalCount": matching.len(), "TotalBandwidth": total_bw, "UnbindCount": unbound})))
}

pub fn grant_firewall(ctx: &Ctx, p: &Params) -> Answer {
    let fw = p.required("FWId")?.to_string();
    let rtype = p.required("ResourceType")?.to_string();
    let rid = p.required("ResourceId")?.to_string();
    if !fw.starts_with("firewall-") {
        return Err(ApiError::FirewallNotFound(fw));
    }
    let mut state = ctx.sim.state.lock();
    if rtype == "cube" && !state.instances.get(&rid).is_some_and(|i| i.live() && i.region == ctx.region) {
        return Err(ApiError::invalid("ResourceId", format!("{rid:?} is not a live Cube instance")));
    }
    // A resource has one firewall: granting another replaces it.
    state.firewalls.retain(|b| !(b.resource_type == rtype && b.resource_id == rid));
    state.firewalls.push(FirewallBinding { fw_id: fw, resource_type: rtype, resource_id: rid });
    Ok(fields(json!({})))
}
