//! The plugin's admin HTTP routes: `GET /plugin` shows the active version, `POST /plugin/reload`
//! reloads it now. Mount on an operator-only listener (it triggers work and shows the config).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::plugin::handle::Plugin;

pub fn admin_router(plugin: Arc<Plugin>) -> Router {
    Router::new().route("/plugin", get(active)).route("/plugin/reload", post(reload)).with_state(plugin)
}

async fn active(State(plugin): State<Arc<Plugin>>) -> Json<Value> {
    Json(json!(plugin.summary()))
}

async fn reload(State(plugin): State<Arc<Plugin>>) -> (StatusCode, Json<Value>) {
    match plugin.reload().await {
        Ok(info) => (StatusCode::OK, Json(json!({ "reloaded": true, "active": info }))),
        // 422: the request was fine, the file was not; the previous version keeps serving.
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "reloaded": false, "error": e.to_string(), "active": plugin.info() })),
        ),
    }
}
