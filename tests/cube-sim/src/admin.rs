//! The `/_sim/` inspection and control endpoints for tests (JSON): what exists, what was
//! asked, and knobs for faults and pre-made disks. Not part of the cloud's API.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::actions::udisk::DiskRequest;
use crate::app::{LiveFaults, Shared};
use crate::config::Faults;
use crate::lifecycle::{observe, render};
use crate::state::Instance;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/instances", get(instances))
        .route("/instances/{id}", get(instance))
        .route("/eips", get(eips))
        .route("/disks", get(disks).post(create_disk))
        .route("/firewalls", get(firewalls))
        .route("/requests", get(requests).delete(reset_requests))
        .route("/faults", get(faults).post(set_faults))
}

fn instance_json(sim: &Shared, i: &Instance) -> Value {
    let now = Utc::now();
    let view = observe(i, &sim.cfg, now);
    let start_ms = {
        let (pending, creating) = crate::lifecycle::start_ms(i, &sim.cfg);
        pending + creating
    };
    json!({
        "cube_id": i.cube_id,
        "uid": i.uid,
        "name": i.name,
        "tag": i.tag,
        "group": i.group,
        "region": i.region,
        "zone": i.zone,
        "vpc_id": i.vpc_id,
        "subnet_id": i.subnet_id,
        "charge_type": i.charge_type,
        "state": if i.live() { view.phase } else { "Deleted" },
        "deleted": !i.live(),
        "deleted_at": i.deleted_at,
        "created_at": i.created_at,
        "started_at": i.started_at,
        // Milliseconds from `started_at` to the containers running (Pending, ContainerCreating).
        "start_ms": start_ms,
        "billing_seconds": i.billing_seconds(now),
        "eip_id": i.eip_id,
        "cpu_millis": i.pod.cpu_millis,
        "memory_mib": i.pod.memory_mib,
        "reboots": i.reboots,
        "pod": serde_json::to_value(render(i, &sim.cfg, now)).unwrap_or(Value::Null),
    })
}

async fn instances(State(sim): State<Shared>) -> Json<Value> {
    let mut state = sim.state.lock();
    state.settle(chrono::Utc::now(), sim.cfg.lifecycle.deleting_ms);
    Json(Value::Array(state.instances.values().map(|i| instance_json(&sim, i)).collect()))
}

async fn instance(State(sim): State<Shared>, Path(id): Path<String>) -> Response {
    let mut state = sim.state.lock();
    state.settle(chrono::Utc::now(), sim.cfg.lifecycle.deleting_ms);
    match state.instances.get(&id) {
        Some(i) => Json(instance_json(&sim, i)).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": format!("no instance {id}")}))).into_response(),
    }
}

async fn eips(State(sim): State<Shared>) -> Json<Value> {
    let state = sim.state.lock();
    Json(Value::Array(
        state
            .eips
            .values()
            .map(|e| {
                json!({
                    "eip_id": e.eip_id,
                    "ip": e.ip,
                    "bandwidth": e.bandwidth,
                    "pay_mode": e.pay_mode,
                    "charge_type": e.charge_type,
                    "share_bandwidth_id": e.share_bandwidth_id,
                    "bound_to": e.bound_to.as_ref().map(|(t, id)| json!({"resource_type": t, "resource_id": id})),
                    "released": e.released,
                })
            })
            .collect(),
    ))
}

async fn disks(State(sim): State<Shared>) -> Json<Value> {
    let state = sim.state.lock();
    Json(Value::Array(
        state
            .disks
            .values()
            .map(|d| {
                json!({
                    "udisk_id": d.udisk_id,
                    "name": d.name,
                    "size_gb": d.size_gb,
                    "disk_type": d.disk_type,
                    "region": d.region,
                    "zone": d.zone,
                    "status": if d.deleted { "Deleted" } else if d.attached_to.is_some() { "InUse" } else { "Available" },
                    "attached_to": d.attached_to,
                    "deleted": d.deleted,
                })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDisk {
    #[serde(default = "default_disk_name")]
    name: String,
    #[serde(default = "default_size")]
    size_gb: i64,
    #[serde(default = "default_disk_type")]
    disk_type: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default = "default_zone")]
    zone: String,
}

fn default_disk_name() -> String {
    "sim-disk".into()
}
fn default_size() -> i64 {
    10
}
fn default_disk_type() -> String {
    "SSDDataDisk".into()
}
fn default_region() -> String {
    "cn-bj2".into()
}
fn default_zone() -> String {
    "cn-bj2-05".into()
}

async fn create_disk(State(sim): State<Shared>, Json(req): Json<NewDisk>) -> Response {
    let made = {
        let mut state = sim.state.lock();
        let ask = DiskRequest {
            region: &req.region,
            zone: &req.zone,
            name: &req.name,
            size: req.size_gb,
            disk_type: &req.disk_type,
        };
        crate::actions::udisk::make_disk(&mut state, sim.cfg.quotas.max_disks, ask, Utc::now())
    };
    match made {
        Ok(d) => {
            sim.persist();
            (
                StatusCode::CREATED,
                Json(json!({"udisk_id": d.udisk_id, "name": d.name, "size_gb": d.size_gb, "zone": d.zone})),
            )
                .into_response()
        }
        Err(e) => {
            (StatusCode::BAD_REQUEST, Json(json!({"ret_code": e.ret_code(), "error": e.to_string()}))).into_response()
        }
    }
}

async fn firewalls(State(sim): State<Shared>) -> Json<Value> {
    let state = sim.state.lock();
    Json(serde_json::to_value(&state.firewalls).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
struct RequestsQuery {
    /// `key`: per `PublicKey`, then per action.
    by: Option<String>,
}

async fn requests(State(sim): State<Shared>, Query(q): Query<RequestsQuery>) -> Response {
    let state = sim.state.lock();
    match q.by.as_deref() {
        None => Json(serde_json::to_value(&state.requests).unwrap_or(Value::Null)).into_response(),
        Some("key") => Json(serde_json::to_value(&state.requests_by_key).unwrap_or(Value::Null)).into_response(),
        Some(other) => {
            (StatusCode::BAD_REQUEST, format!("by={other}: only by=key is known (or no `by`)")).into_response()
        }
    }
}

async fn reset_requests(State(sim): State<Shared>) -> StatusCode {
    let mut state = sim.state.lock();
    state.requests.clear();
    state.requests_by_key.clear();
    StatusCode::NO_CONTENT
}

async fn faults(State(sim): State<Shared>) -> Json<Value> {
    let live = sim.faults.lock();
    Json(json!({"faults": live.faults, "burst_left": live.burst_left, "timeouts_left": live.timeouts_left,
                "throttled": live.throttled}))
}

/// Replaces the faults (and restarts the counted ones).
async fn set_faults(State(sim): State<Shared>, Json(f): Json<Faults>) -> StatusCode {
    *sim.faults.lock() = LiveFaults::new(f);
    StatusCode::NO_CONTENT
}
