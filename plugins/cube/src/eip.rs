//! Elastic IPs: allocate one (or take the user's `cube-eip-id`), bind it to the Cube instance, grant
//! the firewall; undo what was done when a later step fails, so no EIP is left behind.

use serde_json::Value;

use crate::annotations::{EipSettings, PREFIX};
use crate::api::{ApiError, Client, Params, Transport};
use crate::error::{InvalidInput, ProviderError};

/// An EIP bound to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundEip {
    pub id: String,
    pub address: Option<String>,
    /// Allocated for this pod (rather than the user's own).
    pub allocated: bool,
}

/// The name given to an EIP allocated for a pod: finds it again when the allocation's answer is lost.
pub fn eip_name(pod_uid: &str) -> String {
    format!("vk-{pod_uid}")
}

/// AllocateEIP parameters for the pod's settings.
pub fn allocate_params(common: &Params, s: &EipSettings, operator: &str, tag: Option<&str>, name: &str) -> Params {
    common
        .clone()
        .set("OperatorName", operator)
        .set("Bandwidth", s.bandwidth)
        .set("ChargeType", s.charge_type.api())
        .set("Quantity", s.quantity)
        .set("PayMode", s.pay_mode.api())
        .set_opt("ShareBandwidthId", s.share_bandwidth_id.as_deref())
        .set_opt("Tag", tag)
        .set("Name", name)
}

/// BindEIP parameters: the EIP to the instance.
pub fn bind_params(common: &Params, cube_id: &str, eip_id: &str) -> Params {
    common.clone().set("ResourceType", "cube").set("ResourceId", cube_id).set("EIPId", eip_id)
}

/// GrantFirewall parameters: the firewall to the instance.
pub fn grant_params(common: &Params, cube_id: &str, firewall: &str) -> Params {
    common.clone().set("ResourceType", "cube").set("ResourceId", cube_id).set("FWId", firewall)
}

fn first_ip(eip: &Value) -> Option<String> {
    eip.get("EIPAddr")?.as_array()?.first()?.get("IP")?.as_str().map(str::to_string)
}

/// Binds the EIP the pod asks for to `cube_id`. On failure nothing allocated here is left behind;
/// the caller deletes the instance.
pub fn attach<T: Transport + ?Sized>(
    client: &Client<T>,
    common: &Params,
    cube_id: &str,
    s: &EipSettings,
    operator: &str,
    tag: Option<&str>,
    pod_uid: &str,
) -> Result<BoundEip, ProviderError> {
    let eip = match &s.id {
        Some(id) => BoundEip { id: id.clone(), address: describe(client, common, id)?, allocated: false },
        None => allocate(client, common, s, operator, tag, pod_uid)?,
    };
    if let Err(e) = client.call("BindEIP", &bind_params(common, cube_id, &eip.id)) {
        undo(client, common, &eip, None);
        return Err(e.into());
    }
    if let Some(fw) = &s.security_group_id
        && let Err(e) = client.call("GrantFirewall", &grant_params(common, cube_id, fw))
    {
        undo(client, common, &eip, Some(cube_id));
        if e.is_not_found() {
            return Err(InvalidInput::new(
                "InvalidAnnotation",
                format!("metadata.annotations[{PREFIX}cube-eip-security-group-id]"),
                format!("annotation {PREFIX}cube-eip-security-group-id is {fw:?}, but there is no such firewall: {e}"),
            )
            .into());
        }
        return Err(e.into());
    }
    Ok(eip)
}

fn describe<T: Transport + ?Sized>(
    client: &Client<T>,
    common: &Params,
    id: &str,
) -> Result<Option<String>, ProviderError> {
    match client.call("DescribeEIP", &common.clone().list("EIPIds", [id])) {
        Ok(v) => {
            let set = v.get("EIPSet").and_then(Value::as_array);
            match set.and_then(|s| s.iter().find(|e| e.get("EIPId").and_then(Value::as_str) == Some(id))) {
                Some(e) => Ok(first_ip(e)),
                None => Err(no_such_eip(id, "it does not exist")),
            }
        }
        Err(e) if e.is_not_found() => Err(no_such_eip(id, &e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn no_such_eip(id: &str, why: &str) -> ProviderError {
    InvalidInput::new(
        "InvalidAnnotation",
        format!("metadata.annotations[{PREFIX}cube-eip-id]"),
        format!("annotation {PREFIX}cube-eip-id is {id:?}, but that EIP cannot be used: {why}"),
    )
    .into()
}

fn allocate<T: Transport + ?Sized>(
    client: &Client<T>,
    common: &Params,
    s: &EipSettings,
    operator: &str,
    tag: Option<&str>,
    pod_uid: &str,
) -> Result<BoundEip, ProviderError> {
    let name = eip_name(pod_uid);
    // An earlier attempt may have allocated it and then failed to release it after a later step
    // failed (the undo is best effort): take that one rather than leave it billed and unbound.
    if let Some(found) = find_by_name(client, common, &name)? {
        return Ok(found);
    }
    let answer = match client.create("AllocateEIP", &allocate_params(common, s, operator, tag, &name)) {
        Ok(v) => v,
        Err(e) if e.answer_lost() => {
            // The EIP may exist: find it by its name before anyone allocates another.
            return match find_by_name(client, common, &name) {
                Ok(Some(found)) => Ok(found),
                _ => Err(ProviderError::Transient(format!(
                    "{e}; no EIP named {name} exists, the allocation will be retried"
                ))),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let first = answer.get("EIPSet").and_then(Value::as_array).and_then(|s| s.first()).cloned().unwrap_or_default();
    let id = first.get("EIPId").and_then(Value::as_str).unwrap_or_default().to_string();
    if id.is_empty() {
        return Err(ProviderError::Internal(format!("AllocateEIP answered without an EIPId: {answer}")));
    }
    Ok(BoundEip { id, address: first_ip(&first), allocated: true })
}

/// The unreleased EIP named `name`, if any (among the first 100 of the region).
fn find_by_name<T: Transport + ?Sized>(
    client: &Client<T>,
    common: &Params,
    name: &str,
) -> Result<Option<BoundEip>, ApiError> {
    let v = client.call("DescribeEIP", &common.clone().set("Limit", 100))?;
    let set = v.get("EIPSet").and_then(Value::as_array);
    let e = set.and_then(|set| set.iter().find(|e| e.get("Name").and_then(Value::as_str) == Some(name)));
    Ok(e.and_then(|e| {
        Some(BoundEip { id: e.get("EIPId")?.as_str()?.to_string(), address: first_ip(e), allocated: true })
    }))
}

/// Undoes an attach: unbinds (when bound to `bound_to`) and releases an EIP allocated here.
/// Best effort: the original error is what the caller reports.
fn undo<T: Transport + ?Sized>(client: &Client<T>, common: &Params, eip: &BoundEip, bound_to: Option<&str>) {
    if let Some(cube_id) = bound_to {
        let _: Result<Value, ApiError> = client.call(
            "UnBindEIP",
            &common.clone().set("EIPId", &eip.id).set("ResourceType", "cube").set("ResourceId", cube_id),
        );
    }
    if eip.allocated {
        let _: Result<Value, ApiError> = client.call("ReleaseEIP", &common.clone().set("EIPId", &eip.id));
    }
}

/// The EIP bound to an instance, from GetCubeExtendInfo.
pub fn bound_to<T: Transport + ?Sized>(
    client: &Client<T>,
    common: &Params,
    cube_id: &str,
) -> Result<Option<BoundEip>, ApiError> {
    let v = client.call("GetCubeExtendInfo", &common.clone().set("CubeIds", cube_id))?;
    let info = v
        .get("ExtendInfo")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|i| i.get("CubeId").and_then(Value::as_str) == Some(cube_id)));
    let eip = info.and_then(|i| i.get("Eip")).and_then(Value::as_array).and_then(|l| l.first());
    Ok(eip.and_then(|e| {
        Some(BoundEip { id: e.get("EIPId")?.as_str()?.to_string(), address: first_ip(e), allocated: false })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{EipChargeType, PayMode};

    #[test]
    fn allocation_parameters_follow_the_annotations() {
        let common = Params::new().set("Region", "cn-bj2");
        let s = EipSettings {
            id: None,
            pay_mode: PayMode::ShareBandwidth,
            share_bandwidth_id: Some("bwshare-1".into()),
            bandwidth: 0,
            charge_type: EipChargeType::Dynamic,
            quantity: 1,
            release: true,
            security_group_id: None,
        };
        let p = allocate_params(&common, &s, "Bgp", Some("web"), "vk-u1");
        let got: Vec<(String, String)> = p.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let want: Vec<(String, String)> = [
            ("Bandwidth", "0"),
            ("ChargeType", "Dynamic"),
            ("Name", "vk-u1"),
            ("OperatorName", "Bgp"),
            ("PayMode", "ShareBandwidth"),
            ("Quantity", "1"),
            ("Region", "cn-bj2"),
            ("ShareBandwidthId", "bwshare-1"),
            ("Tag", "web"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
