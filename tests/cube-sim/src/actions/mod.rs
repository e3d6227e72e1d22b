//! Action dispatch: every API action the simulator serves, by product.

pub mod cube;
pub mod udisk;
pub mod unet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::app::Sim;
use crate::config::Config;
use crate::error::ApiError;
use crate::params::Params;

pub const KNOWN: &[&str] = &[
    "CreateCubePod",
    "GetCubePod",
    "ListCubePod",
    "DeleteCubePod",
    "RenewCubePod",
    "RebootCubePod",
    "GetCubeExtendInfo",
    "ModifyCubeExtendInfo",
    "ModifyCubeTag",
    "GetCubePrice",
    "GetCubeExecToken",
    "GetCubeToken",
    "GetCubeMetrics",
    "AllocateEIP",
    "BindEIP",
    "UnBindEIP",
    "ReleaseEIP",
    "DescribeEIP",
    "GrantFirewall",
    "CreateUDisk",
    "DescribeUDisk",
    "DeleteUDisk",
];

/// Actions that change records (and so trigger a save of the state file).
pub const MUTATING: &[&str] = &[
    "CreateCubePod",
    "DeleteCubePod",
    "RenewCubePod",
    "RebootCubePod",
    "ModifyCubeExtendInfo",
    "ModifyCubeTag",
    "AllocateEIP",
    "BindEIP",
    "UnBindEIP",
    "ReleaseEIP",
    "GrantFirewall",
    "CreateUDisk",
    "DeleteUDisk",
];

/// What every action needs besides its parameters.
pub struct Ctx<'a> {
    pub sim: &'a Sim,
    pub cfg: &'a Config,
    pub now: DateTime<Utc>,
    pub region: String,
    pub project: String,
}

impl<'a> Ctx<'a> {
    pub fn new(sim: &'a Sim, params: &Params, now: DateTime<Utc>) -> Self {
        Ctx {
            sim,
            cfg: &sim.cfg,
            now,
            region: params.get("Region").unwrap_or_default().to_string(),
            project: params.get("ProjectId").unwrap_or_default().to_string(),
        }
    }
}

pub type Answer = Result<Map<String, Value>, ApiError>;

pub fn dispatch(ctx: &Ctx, action: &str, p: &Params) -> Answer {
    match action {
        "CreateCubePod" => cube::create(ctx, p),
        "GetCubePod" => cube::get(ctx, p),
        "ListCubePod" => cube::list(ctx, p),
        "DeleteCubePod" => cube::delete(ctx, p),
        "RenewCubePod" => cube::renew(ctx, p),
        "RebootCubePod" => cube::reboot(ctx, p),
        "GetCubeExtendInfo" => cube::extend_info(ctx, p),
        "ModifyCubeExtendInfo" => cube::modify_extend_info(ctx, p),
        "ModifyCubeTag" => cube::modify_tag(ctx, p),
        "GetCubePrice" => cube::price(ctx, p),
        "GetCubeExecToken" => cube::exec_token(ctx, p),
        "GetCubeToken" => cube::log_token(ctx, p),
        "GetCubeMetrics" => crate::metrics::get(ctx, p),
        "AllocateEIP" => unet::allocate(ctx, p),
        "BindEIP" => unet::bind(ctx, p),
        "UnBindEIP" => unet::unbind(ctx, p),
        "ReleaseEIP" => unet::release(ctx, p),
        "DescribeEIP" => unet::describe(ctx, p),
        "GrantFirewall" => unet::grant_firewall(ctx, p),
        "CreateUDisk" => udisk::create(ctx, p),
        "DescribeUDisk" => udisk::describe(ctx, p),
        "DeleteUDisk" => udisk::delete(ctx, p),
        other => Err(ApiError::UnknownAction(other.to_string())),
    }
}

/// Builds an answer map from `json!({...})`.
pub fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Offset/Limit paging with the service's defaults (0, 20) and cap (100).
pub fn page(p: &Params, total: usize) -> Result<(usize, usize), ApiError> {
    let offset = p.int("Offset")?.unwrap_or(0);
    let limit = p.int("Limit")?.unwrap_or(20);
    if offset < 0 {
        return Err(ApiError::invalid("Offset", format!("{offset} is negative")));
    }
    if limit < 0 {
        return Err(ApiError::invalid("Limit", format!("{limit} is negative")));
    }
    let limit = (limit as usize).min(100);
    let start = (offset as usize).min(total);
    Ok((start, (start + limit).min(total)))
}
