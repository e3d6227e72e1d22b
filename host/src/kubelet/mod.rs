//! The kubelet HTTP API the apiserver calls: logs, exec, attach, port forwarding, stats.
//! One HTTPS server per virtual node; the host supplies the data through [`KubeletBackend`].

mod auth;
mod backend;
mod channel;
pub mod csr;
mod exec;
mod logs;
mod portforward;
mod query;
mod relay;
mod server;
mod settings;
mod spdy;
mod stats;
mod tls;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::{
    BackendError, ContainerUsage, ExecQuery, KubeletBackend, LogQuery, PodUsage, StreamProtocol, StreamTarget,
};
pub use settings::{KubeletConfig, ServingTls};

// What the routes share lives here, at the root, so the route table (`server`) and the
// handlers (`exec`, `logs`, `stats`) each depend on it and not on each other.

/// Everything a request handler may need; shared by all connections of one server.
pub struct ApiState {
    pub backend: Arc<dyn KubeletBackend>,
    pub authz: auth::Authorizer,
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

/// How many exec/attach/port-forward sessions each client protocol carried, for operators and
/// tests that need to know whether the apiserver passed WebSockets through or translated them to SPDY.
#[derive(Debug, Default)]
pub struct SessionCounters {
    pub websocket: std::sync::atomic::AtomicU64,
    pub spdy: std::sync::atomic::AtomicU64,
}

/// The identity a connection's verified client certificate carries, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<auth::UserInfo>);

/// A plain-text error response, the way the kubelet answers.
pub fn error_response(status: axum::http::StatusCode, message: impl Into<String>) -> axum::response::Response {
    let mut message = message.into();
    message.push('\n');
    axum::response::IntoResponse::into_response((
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    ))
}

/// Why the kubelet API could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubelet API of node {node}: binding {listen}: {source}")]
    Bind { node: String, listen: SocketAddr, source: std::io::Error },
    #[error("kubelet API of node {node}: {source}")]
    Tls { node: String, source: tls::TlsError },
    #[error("kubelet API of node {node}: building the HTTP client: {source}")]
    HttpClient { node: String, source: reqwest::Error },
    #[error("kubelet API task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running kubelet API server; stops when the shutdown token given to [`KubeletServer::start`]
/// is cancelled.
pub struct KubeletServer {
    local_addr: SocketAddr,
    certs: Arc<tls::CertStore>,
    counters: Arc<SessionCounters>,
    task: JoinHandle<()>,
}

/// Exec/attach/port-forward sessions served so far, by client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionCounts {
    /// WebSocket sessions (the apiserver passes them through when the node declares
    /// `ExtendWebSocketsToKubelet`), SPDY tunnelled in a WebSocket included.
    pub websocket: u64,
    /// SPDY/3.1 sessions (the apiserver's own protocol towards kubelets).
    pub spdy: u64,
}

impl KubeletServer {
    /// Binds the listener, obtains the serving certificate and the client CA, and starts serving.
    /// Callers are reviewed (TokenReview, SubjectAccessReview) through `reviewer`: the node's own
    /// identity, as for a kubelet, on a lane of its own (see [`KubeletConfig::review_api_limits`])
    /// so callers of this API cannot spend the rate limit pods and Leases use. `kube` (the daemon's
    /// identity) requests the serving certificate and reads the client CA, which a node may not.
    pub async fn start(
        cfg: KubeletConfig,
        backend: Arc<dyn KubeletBackend>,
        kube: kube::Client,
        reviewer: kube::Client,
        shutdown: CancellationToken,
    ) -> Result<KubeletServer, KubeletError> {
        let node = backend.node_name();
        let tls_err = |source| KubeletError::Tls { node: node.clone(), source };
        let hostname = cfg.hostname.clone().unwrap_or_else(|| node.clone());
        let cert = initial_cert(&cfg, &kube, &node, &hostname).await.map_err(tls_err)?;
        let certs = Arc::new(tls::CertStore::new(cert));
        let client_ca = tls::client_ca(cfg.client_ca_file.as_deref(), &kube).await;
        let client_ca = match (client_ca, cfg.client_ca_file.is_some()) {
            (Ok(ca), _) => ca,
            (Err(e), true) => return Err(tls_err(e)),
            // The published CA is a convenience; tokens still work without it.
            (Err(e), false) => {
                tracing::warn!(node = %node, error = %e, "kubelet API: client certificates disabled");
                None
            }
        };
        if client_ca.is_none() {
            tracing::warn!(node = %node, "kubelet API: no client CA; only bearer tokens are accepted");
        }
        let server_cfg = tls::server_config(certs.clone(), client_ca).map_err(tls_err)?;
        let listener = TcpListener::bind(cfg.listen).await.map_err(|source| KubeletError::Bind {
            node: node.clone(),
            listen: cfg.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| KubeletError::Bind {
            node: node.clone(),
            listen: cfg.listen,
            source,
        })?;
        let http = logs::stream_client().map_err(|source| KubeletError::HttpClient { node: node.clone(), source })?;
        let sessions = TaskTracker::new();
        let counters = Arc::new(SessionCounters::default());
        let state = Arc::new(ApiState {
            backend,
            authz: auth::Authorizer::new(
                reviewer,
                node.clone(),
                cfg.auth_cache_ttl,
                cfg.auth_cache_size,
                cfg.reviews_in_flight as usize,
            ),
            node: node.clone(),
            http,
            ws_tls: tls::shared_client_config(),
            started: chrono::Utc::now(),
            sessions: sessions.clone(),
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        });
        let router = server::router(state);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        tracing::info!(node = %node, addr = %local_addr, "kubelet API listening");
        let limits = cfg.connection_limits();
        let renewal = renew_loop(cfg, kube, node, hostname, certs.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            let connections = TaskTracker::new();
            let serving = server::accept_loop(listener, acceptor, router, limits, connections.clone(), shutdown);
            tokio::join!(serving, renewal);
            connections.close();
            sessions.close();
            connections.wait().await;
            sessions.wait().await;
        });
        Ok(KubeletServer { local_addr, certs, counters, task })
    }

    /// The port the server listens on: publish it as `status.daemonEndpoints.kubeletEndpoint.port`.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// PEM of the current serving certificate chain.
    pub fn serving_cert_pem(&self) -> String {
        self.certs.current().cert_pem.clone()
    }

    /// When the current serving certificate expires (it is renewed before then).
    pub fn serving_cert_not_after(&self) -> SystemTime {
        self.certs.current().not_after
    }

    /// PEM of a CA that verifies the serving certificate, when the server made it itself (a
    /// self-signed certificate is its own CA); `None` when the cluster's signer issued it.
    pub fn ca_pem(&self) -> Option<String> {
        let current = self.certs.current();
        current.self_signed.then(|| current.cert_pem.clone())
    }

    pub fn session_counts(&self) -> SessionCounts {
        use std::sync::atomic::Ordering::Relaxed;
        SessionCounts { websocket: self.counters.websocket.load(Relaxed), spdy: self.counters.spdy.load(Relaxed) }
    }

    /// Waits until the server has stopped (after shutdown) and its sessions have ended.
    pub async fn wait(self) -> Result<(), KubeletError> {
        self.task.await?;
        Ok(())
    }

    /// The task serving the API, for callers that manage join handles themselves.
    pub fn into_join_handle(self) -> JoinHandle<()> {
        self.task
    }
}

/// The certificate to start with. A CSR that is not issued in time
/// falls back to a self-signed certificate, and the renewal loop keeps asking.
async fn initial_cert(
    cfg: &KubeletConfig,
    kube: &kube::Client,
    node: &str,
    hostname: &str,
) -> Result<tls::ServingCert, tls::TlsError> {
    match &cfg.tls {
        ServingTls::SelfSigned => tls::self_signed(node, hostname, cfg.address),
        ServingTls::Csr { self_approve, lifetime, wait } => {
            match csr::request(kube, node, hostname, cfg.address, *self_approve, *lifetime, *wait).await {
                Ok(cert) => Ok(cert),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "serving certificate not issued yet; serving a self-signed one meanwhile");
                    tls::self_signed(node, hostname, cfg.address)
                }
            }
        }
    }
}

/// When to renew a certificate: at 80% of its remaining life, and soon when it is a stand-in
/// for a CSR that was not issued yet.
fn renew_after(not_after: SystemTime, stand_in: bool) -> Duration {
    if stand_in {
        return Duration::from_secs(30);
    }
    let left = not_after.duration_since(SystemTime::now()).unwrap_or_default();
    (left * 4 / 5).max(Duration::from_secs(10))
}

async fn renew_loop(
    cfg: KubeletConfig,
    kube: kube::Client,
    node: String,
    hostname: String,
    certs: Arc<tls::CertStore>,
    shutdown: CancellationToken,
) {
    let csr_mode = matches!(cfg.tls, ServingTls::Csr { .. });
    loop {
        let current = certs.current();
        let delay = renew_after(current.not_after, csr_mode && current.self_signed);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let renewed = match &cfg.tls {
            ServingTls::SelfSigned => tls::self_signed(&node, &hostname, cfg.address).map_err(|e| e.to_string()),
            ServingTls::Csr { self_approve, lifetime, wait } => {
                let request = csr::request(&kube, &node, &hostname, cfg.address, *self_approve, *lifetime, *wait);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = request => r.map_err(|e| e.to_string()),
                }
            }
        };
        match renewed {
            Ok(cert) => {
                tracing::info!(node = %node, "kubelet API: serving certificate renewed");
                certs.replace(cert);
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "kubelet API: serving certificate renewal failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_well_before_expiry() {
        let in_ten_days = SystemTime::now() + Duration::from_secs(10 * 86400);
        let after = renew_after(in_ten_days, false);
        assert!(after <= Duration::from_secs(8 * 86400) && after > Duration::from_secs(7 * 86400));
        assert_eq!(renew_after(SystemTime::now(), false), Duration::from_secs(10));
        assert_eq!(renew_after(in_ten_days, true), Duration::from_secs(30));
    }
}
