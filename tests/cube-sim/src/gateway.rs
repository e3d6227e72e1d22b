//! The API gateway: parses and authenticates requests, checks region/zone/project, applies
//! faults, dispatches the action and wraps the answer in the `{Action}Response` envelope.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use rand::Rng;
use serde_json::{Map, Value, json};

use crate::actions::{self, Ctx};
use crate::app::Shared;
use crate::config::TimeoutMode;
use crate::error::ApiError;
use crate::params::Params;
use crate::server::ConnControl;
use crate::signature::sign;

pub async fn handle(
    State(sim): State<Shared>,
    conn: Option<Extension<ConnControl>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let params = match Params::parse(uri.query(), ct, &body) {
        Ok(p) => p,
        Err(e) => return envelope("", Err(e)),
    };
    let action = params.get("Action").unwrap_or_default().to_string();
    if action.is_empty() {
        return envelope("", Err(ApiError::MissingAction));
    }
    {
        let mut state = sim.state.lock();
        *state.requests.entry(action.clone()).or_default() += 1;
        let key = params.get("PublicKey").unwrap_or_default().to_string();
        *state.requests_by_key.entry(key).or_default().entry(action.clone()).or_default() += 1;
    }
    if !actions::KNOWN.contains(&action.as_str()) {
        return envelope(&action, Err(ApiError::UnknownAction(action.clone())));
    }
    if let Err(e) = authenticate(&sim, &params).and_then(|_| check_scope(&sim, &params)) {
        return envelope(&action, Err(e));
    }

    // Faults decided up front, under one lock, so counted faults stay exact under concurrency.
    let (latency, drop, injected, timeout) = {
        let mut live = sim.faults.lock();
        let f = live.faults.clone();
        let mut rng = rand::rng();
        let hit =
            |map_rate: Option<f64>, rng: &mut rand::rngs::ThreadRng| map_rate.is_some_and(|r| rng.random::<f64>() < r);
        let drop = hit(f.drop_rate.get(&action).or(f.drop_rate.get("*")).copied(), &mut rng);
        let mut injected = live.admit().map(burst_error);
        if injected.is_none()
            && let Some(b) = &f.burst
            && live.burst_left > 0
            && (b.actions.is_empty() || b.actions.contains(&action))
        {
            live.burst_left -= 1;
            injected = Some(burst_error(b.ret_code));
        }
        if injected.is_none()
            && let Some(e) = f.errors.get(&action).or(f.errors.get("*"))
            && rng.random::<f64>() < e.rate
        {
            injected = Some(match &e.message {
                Some(m) => ApiError::Injected { ret_code: e.ret_code, message: m.clone() },
                None => burst_error(e.ret_code),
            });
        }
        let mut timeout = None;
        if action == "CreateCubePod" && injected.is_none() && !drop && live.timeouts_left > 0 {
            live.timeouts_left -= 1;
            timeout = f.create_timeouts.clone();
        }
        (f.latency_ms, drop, injected, timeout)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if drop {
        return drop_connection(conn).await;
    }
    if let Some(e) = injected {
        return envelope(&action, Err(e));
    }

    let ctx = Ctx::new(&sim, &params, Utc::now());
    sim.state.lock().settle(ctx.now, sim.cfg.lifecycle.deleting_ms);
    let result = actions::dispatch(&ctx, &action, &params);
    if result.is_ok() && actions::MUTATING.contains(&action.as_str()) {
        sim.persist();
    }
    if let Some(t) = timeout {
        match t.mode {
            TimeoutMode::Drop => return drop_connection(conn).await,
            TimeoutMode::Delay => tokio::time::sleep(Duration::from_millis(t.delay_ms)).await,
        }
    }
    envelope(&action, result)
}

fn burst_error(code: i64) -> ApiError {
    match code {
        150 => ApiError::ServiceUnavailable,
        153 => ApiError::RateLimited,
        other => ApiError::Injected { ret_code: other, message: format!("injected error {other}") },
    }
}

async fn drop_connection(conn: Option<Extension<ConnControl>>) -> Response {
    if let Some(Extension(c)) = conn {
        c.0.cancel();
        // The connection task drops this future; never answer.
        std::future::pending::<()>().await;
    }
    axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
}

fn authenticate(sim: &Shared, params: &Params) -> Result<(), ApiError> {
    let Some(signature) = params.get("Signature") else {
        return Err(ApiError::MissingSignature);
    };
    let public = params.get("PublicKey").ok_or_else(|| ApiError::NoSuchUser(String::new()))?;
    let private = sim.cfg.private_key_of(public).ok_or_else(|| ApiError::NoSuchUser(public.to_string()))?;
    if sign(params, private) != signature.to_ascii_lowercase() {
        return Err(ApiError::BadSignature);
    }
    Ok(())
}

fn check_scope(sim: &Shared, params: &Params) -> Result<(), ApiError> {
    let region = params.required("Region")?;
    let regions = sim.cfg.effective_regions();
    let Some(r) = regions.iter().find(|r| r.name == region) else {
        return Err(ApiError::invalid("Region", format!("{region:?} is not a region of this cloud")));
    };
    if let Some(zone) = params.get("Zone")
        && !r.zones.iter().any(|z| z == zone)
    {
        return Err(ApiError::ZoneDenied(zone.to_string()));
    }
    if let Some(project) = params.get("ProjectId")
        && !sim.cfg.projects.is_empty()
        && !sim.cfg.projects.iter().any(|p| p == project)
    {
        return Err(ApiError::NoSuchProject(project.to_string()));
    }
    Ok(())
}

/// `{Action}Response` with RetCode and Message; errors too are HTTP 200, as the real gateway does.
pub fn envelope(action: &str, result: Result<Map<String, Value>, ApiError>) -> Response {
    let mut body = Map::new();
    body.insert("Action".into(), json!(format!("{action}Response")));
    match result {
        Ok(fields) => {
            body.insert("RetCode".into(), json!(0));
            body.insert("Message".into(), json!(""));
            body.extend(fields);
        }
        Err(e) => {
            body.insert("RetCode".into(), json!(e.ret_code()));
            body.insert("Message".into(), json!(e.to_string()));
        }
    }
    let mut resp = axum::Json(Value::Object(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&crate::state::new_uuid()) {
        resp.headers_mut().insert("X-UCLOUD-REQUEST-UUID", v);
    }
    resp
}
