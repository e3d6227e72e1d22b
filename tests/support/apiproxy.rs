//! A recording proxy in front of the apiserver: a daemon pointed at it (plain HTTP on loopback)
//! reaches the cluster with the proxy's own (admin) credentials, and the test learns exactly which
//! requests that daemon made and when, which the apiserver cannot tell apart between replicas
//! acting as the same node.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::Client;
use tokio_util::sync::CancellationToken;

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: Method,
    pub path: String,
}

impl Recorded {
    /// Whether it could change state (every method but reads).
    pub fn mutating(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

struct Inner {
    upstream: Client,
    seen: Mutex<Vec<Recorded>>,
}

/// The proxy; stops when dropped.
pub struct ApiProxy {
    pub url: String,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl ApiProxy {
    /// Listens on a free loopback port and forwards everything to `upstream`.
    pub async fn start(upstream: Client) -> ApiProxy {
        let inner = Arc::new(Inner { upstream, seen: Mutex::new(Vec::new()) });
        let app = Router::new().fallback(forward).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the API proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
        });
        ApiProxy { url, inner, stop }
    }

    /// A kubeconfig pointing at the proxy (no credentials: the proxy adds its own).
    pub fn kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: proxied}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            self.url
        );
        std::fs::write(path, text).expect("write the proxy's kubeconfig");
    }

    /// Every request forwarded so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.inner.seen.lock().unwrap().clone()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    inner.seen.lock().unwrap().push(Recorded {
        at: Instant::now(),
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
    });
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "request body").into_response();
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = axum::http::Request::builder().method(parts.method.clone()).uri(path);
    for (name, value) in &parts.headers {
        if [header::HOST, header::AUTHORIZATION, header::CONTENT_LENGTH, header::CONNECTION].contains(name) {
            continue;
        }
        out = out.header(name, value);
    }
    let request = out.body(kube::client::Body::from(bytes.to_vec())).expect("forwarded request");
    match inner.upstream.send(request).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
