//! The HTTPS listener and the route table: accepts TLS connections (noting the verified client
//! certificate), authenticates and authorizes every request except `/healthz`, and dispatches.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, Authorizer, UserInfo};
use super::backend::KubeletBackend;
use super::{exec, logs, stats};

/// Everything a request handler may need; shared by all connections of one server.
pub struct ApiState {
    pub backend: Arc<dyn KubeletBackend>,
    pub authz: Authorizer,
    pub node: String,
    pub http: reqwest::Client,
    /// For `wss://` backend targets.
    pub ws_tls: Arc<rustls::ClientConfig>,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Owns exec/attach sessions, which outlive the HTTP exchange that upgraded them.
    pub sessions: TaskTracker,
    pub counters: Arc<SessionCounters>,
    pub shutdown: CancellationToken,
}

/// How many exec/attach sessions each client protocol carried, for operators and tests that need
/// to know whether the apiserver passed WebSockets through or translated them to SPDY.
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub websocket: std::sync::atomic::AtomicU64,
    pub spdy: std::sync::atomic::AtomicU64,
}

/// The identity a connection's verified client certificate carries, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<UserInfo>);

/// A plain-text error response, the way the kubelet answers.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (status, [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(stats::pods))
        .route("/stats/summary", get(stats::summary).post(stats::summary))
        .route("/metrics/resource", get(stats::resource_metrics))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(logs::container_logs))
        .route("/exec/{namespace}/{pod}/{container}", any(exec::exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", any(exec::exec_with_uid))
        .route("/attach/{namespace}/{pod}/{container}", any(exec::attach))
        .route("/attach/{namespace}/{pod}/{uid}/{container}", any(exec::attach_with_uid))
        .route("/portForward/{namespace}/{pod}", any(exec::port_forward))
        .route("/portForward/{namespace}/{pod}/{uid}", any(exec::port_forward))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "404 page not found") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Authentication then authorization, like the kubelet's filter: a verified client certificate
/// first, else a bearer token; no identity is 401, a refused one 403.
async fn guard(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Some(attrs) = auth::attributes(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let peer = req.extensions().get::<PeerIdentity>().and_then(|p| p.0.clone());
    let user = match peer {
        Some(user) => user,
        None => match auth::bearer_token(req.headers()) {
            None => return error_response(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Some(token) => match state.authz.authenticate_token(token).await {
                Ok(Some(user)) => user,
                Ok(None) => return error_response(StatusCode::UNAUTHORIZED, "Unauthorized"),
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: authentication failed");
                    return error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("Authentication error: {e}"));
                }
            },
        },
    };
    match state.authz.authorize(&user, &attrs).await {
        Ok(true) => next.run(req).await,
        Ok(false) => error_response(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb={}, resource=nodes, subresource={}, name={})",
                user.name,
                attrs.verb,
                attrs.subresources.join("|"),
                state.node
            ),
        ),
        Err(e) => {
            tracing::warn!(error = %e, user = %user.name, "kubelet API: authorization failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, format!("Authorization error: {e}"))
        }
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until shutdown; each connection runs on the tracker.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "kubelet API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "kubelet API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = PeerIdentity(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| auth::user_from_certificate(leaf.as_ref())),
            );
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, req).await }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).with_upgrades();
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "kubelet API: connection ended with an error");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
