//! `/exec` and `/attach`: validates the request, asks the backend where the
//! session lives, connects to it, then upgrades the client to WebSocket (GET) or SPDY/3.1 (POST).

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::backend::ExecQuery;
use super::{ApiState, error_response};
use super::{channel, query, relay, spdy, ws};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
}

pub async fn exec(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    session(state, Kind::Exec, namespace, pod, container, raw, req).await
}

pub async fn exec_with_uid(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    if let Some(refused) = other_pod(&state, &namespace, &pod, &uid) {
        return refused;
    }
    session(state, Kind::Exec, namespace, pod, container, raw, req).await
}

pub async fn attach(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    session(state, Kind::Attach, namespace, pod, container, raw, req).await
}

pub async fn attach_with_uid(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, uid, container)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    if let Some(refused) = other_pod(&state, &namespace, &pod, &uid) {
        return refused;
    }
    session(state, Kind::Attach, namespace, pod, container, raw, req).await
}

/// The UID form of a path names one incarnation of a pod: a pod deleted and recreated under the
/// same name is another pod, and a session meant for the old one must not reach the new one.
pub(super) fn other_pod(state: &ApiState, namespace: &str, pod: &str, uid: &str) -> Option<Response> {
    let same = state.backend.has_pod(namespace, pod, uid);
    (!same).then(|| error_response(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} with UID {uid} not found")))
}

/// Which client protocol a request upgrades to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upgrade {
    WebSocket { v5: bool },
    Spdy { version: spdy::StreamVersion },
}

fn negotiate(req: &Request) -> Result<Upgrade, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let upgrade =
        req.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if upgrade.contains("websocket") {
        let offered: Vec<String> = req
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        if offered.iter().any(|p| p == channel::V5) {
            return Ok(Upgrade::WebSocket { v5: true });
        }
        if offered.iter().any(|p| p == channel::V4) {
            return Ok(Upgrade::WebSocket { v5: false });
        }
        return Err(bad(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported; use {} or {}",
            channel::V5,
            channel::V4
        )));
    }
    if upgrade.starts_with("spdy/3") {
        // GET is authorized as `get`, a read; running a command is `create`. WebSocket needs GET,
        // but SPDY clients (the apiserver, kubectl) always POST, so a SPDY GET is refused rather
        // than letting a read grant run commands.
        if req.method() != http::Method::POST {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("SPDY upgrades for exec and attach must use POST, not {}", req.method()),
            ));
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("X-Stream-Protocol-Version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect();
        return offered
            .iter()
            .find_map(|p| spdy::StreamVersion::from_header(p))
            .map(|version| Upgrade::Spdy { version })
            .ok_or_else(|| {
                bad(format!(
                    "none of the offered stream protocols {offered:?} is supported; use v4.channel.k8s.io, v3.channel.k8s.io or v2.channel.k8s.io"
                ))
            });
    }
    Err(bad("exec and attach need a connection upgrade: WebSocket (GET, v5.channel.k8s.io) or SPDY/3.1 (POST)".into()))
}

async fn session(
    state: Arc<ApiState>,
    kind: Kind,
    namespace: String,
    pod: String,
    container: String,
    raw: Option<String>,
    req: Request,
) -> Response {
    let opts: ExecQuery = match query::exec_query(raw.as_deref(), kind == Kind::Attach) {
        Ok(opts) => opts,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let upgrade = match negotiate(&req) {
        Ok(u) => u,
        Err((status, e)) => return error_response(status, e),
    };
    let target = match kind {
        Kind::Exec => state.backend.exec(&namespace, &pod, &container, opts.clone()).await,
        Kind::Attach => state.backend.attach(&namespace, &pod, &container, opts.clone()).await,
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return error_response(e.status(), format!("pod {namespace}/{pod} container {container}: {e}")),
    };
    // Connect before upgrading so an unreachable backend is an HTTP error, not a dead session.
    let upstream = match relay::connect(&target, state.ws_tls.clone()).await {
        Ok(u) => u,
        Err(e) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                format!("pod {namespace}/{pod} container {container}: {e}"),
            );
        }
    };
    let session_name = format!("{namespace}/{pod}/{container}");
    let counter = match upgrade {
        Upgrade::WebSocket { .. } => &state.counters.websocket,
        Upgrade::Spdy { .. } => &state.counters.spdy,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match upgrade {
        Upgrade::WebSocket { v5 } => {
            let (mut parts, _body) = req.into_parts();
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(ws) => ws,
                Err(rejection) => return axum::response::IntoResponse::into_response(rejection),
            };
            let protocol = if v5 { channel::V5 } else { channel::V4 };
            let sessions = state.sessions.clone();
            let shutdown = state.shutdown.clone();
            ws::limits(ws).protocols([protocol]).on_upgrade(move |socket| async move {
                let session = ws::serve(socket, v5, opts.tty, upstream, sessions.clone());
                tokio::select! {
                    _ = session => {}
                    _ = shutdown.cancelled() => {}
                }
                tracing::debug!(session = %session_name, "kubelet API: websocket session ended");
            })
        }
        Upgrade::Spdy { version } => {
            spdy::upgrade(req, version, opts, upstream, state.sessions.clone(), state.shutdown.clone(), session_name)
        }
    }
}
