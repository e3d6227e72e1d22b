//! The HTTPS listener and the route table: accepts TLS connections (noting the verified client
//! certificate), authenticates and authorizes every request except `/healthz`, and dispatches.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{any, get};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{self, AuthError};
use super::{ApiState, PeerIdentity, error_response, exec, logs, portforward, stats};

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(stats::pods))
        .route("/runningpods/", get(stats::running_pods))
        .route("/stats/summary", get(stats::summary).post(stats::summary))
        .route("/metrics/resource", get(stats::resource_metrics))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(logs::container_logs))
        .route("/exec/{namespace}/{pod}/{container}", any(exec::exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", any(exec::exec_with_uid))
        .route("/attach/{namespace}/{pod}/{container}", any(exec::attach))
        .route("/attach/{namespace}/{pod}/{uid}/{container}", any(exec::attach_with_uid))
        .route("/portForward/{namespace}/{pod}", any(portforward::port_forward))
        .route("/portForward/{namespace}/{pod}/{uid}", any(portforward::port_forward_with_uid))
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
                Err(e @ AuthError::Busy(_)) => {
                    tracing::debug!(error = %e, "kubelet API: too many token reviews in flight");
                    let mut resp =
                        error_response(StatusCode::TOO_MANY_REQUESTS, "Too many requests, please try again later.");
                    resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                    return resp;
                }
                // As the kubelet answers: the caller learns nothing about the apiserver's trouble.
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: unable to authenticate the request due to an error");
                    return error_response(StatusCode::UNAUTHORIZED, "Unauthorized");
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
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                    user.name,
                    attrs.verb,
                    attrs.subresources.join("|")
                ),
            )
        }
    }
}

/// What one client may hold of the server: how long its handshake and request heads may take,
/// and how many connections are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    /// From the handshake, or the end of the previous response, to a complete request head:
    /// hyper times both with one timer, so this is also the idle timeout of keep-alive connections.
    /// Responses being sent and upgraded exec/attach sessions are not timed by it.
    pub header_read_timeout: Duration,
    /// Connections past this are closed as soon as they are accepted. Upgraded sessions have left
    /// the HTTP server and no longer count.
    pub max_connections: usize,
}

/// The longest request head accepted, and the buffer hyper aims to keep per connection: ample for
/// the apiserver's requests and long bearer tokens, and about 64 MiB over 1,000 connections
/// instead of hyper's 400 KB default each. (The buffer size alone is not a hard bound on the
/// head: one read may fill the buffer's spare capacity past it.)
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Accepts connections until shutdown; each connection runs on the tracker.
pub async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    limits: ConnectionLimits,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
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
        // Accepted and dropped rather than left in the backlog, so the client learns at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, max = limits.max_connections, "kubelet API: connection limit reached; closing");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "kubelet API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "kubelet API: TLS handshake timed out");
                    return;
                }
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
            // Without a timer hyper silently skips its header read timeout.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(MAX_REQUEST_HEAD)
                .max_header_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::select! {
                result = conn => if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "kubelet API: connection ended with an error");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use axum::body::Body;
    use futures::StreamExt;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::kubelet::auth::{Authorizer, UserInfo};
    use crate::kubelet::{SessionCounters, tls};

    /// A backend with one pod, ns/web with UID uid-1, whose sessions fail with a telling error.
    struct OnePod;

    impl crate::kubelet::KubeletBackend for OnePod {
        fn node_name(&self) -> String {
            "vk-1".into()
        }
        fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
            let mut pod = k8s_openapi::api::core::v1::Pod::default();
            pod.metadata.namespace = Some("ns".into());
            pod.metadata.name = Some("web".into());
            pod.metadata.uid = Some("uid-1".into());
            vec![pod]
        }
        fn running_pods(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Vec<k8s_openapi::api::core::v1::Pod>, crate::kubelet::BackendError>>
        {
            let mut pod = self.pods().remove(0);
            pod.metadata.name = Some("running".into());
            Box::pin(async move { Ok(vec![pod]) })
        }
        fn logs<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: crate::kubelet::LogQuery,
        ) -> futures::future::BoxFuture<'a, Result<crate::kubelet::StreamTarget, crate::kubelet::BackendError>>
        {
            Box::pin(async { Err(crate::kubelet::BackendError::BadRequest("reached the backend".into())) })
        }
        fn exec<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: crate::kubelet::ExecQuery,
        ) -> futures::future::BoxFuture<'a, Result<crate::kubelet::StreamTarget, crate::kubelet::BackendError>>
        {
            Box::pin(async { Err(crate::kubelet::BackendError::BadRequest("reached the backend".into())) })
        }
        fn attach<'a>(
            &'a self,
            ns: &'a str,
            pod: &'a str,
            container: &'a str,
            opts: crate::kubelet::ExecQuery,
        ) -> futures::future::BoxFuture<'a, Result<crate::kubelet::StreamTarget, crate::kubelet::BackendError>>
        {
            self.exec(ns, pod, container, opts)
        }
        fn usage(
            &self,
        ) -> futures::future::BoxFuture<'_, Result<Vec<crate::kubelet::PodUsage>, crate::kubelet::BackendError>>
        {
            Box::pin(async { Ok(vec![]) })
        }
    }

    /// The real route table over [`OnePod`], authenticating against a stand-in apiserver.
    async fn api_router(api: &auth::stand_in::Apiserver, reviews_in_flight: usize) -> Router {
        let limits =
            crate::apiclient::ApiLimits { qps: 10_000, burst: 10_000, max_in_flight: 64, ..Default::default() };
        let reviews = api.client("reviews", &limits).await;
        router(Arc::new(ApiState {
            backend: Arc::new(OnePod),
            authz: Authorizer::new(reviews, "vk-1".into(), Duration::from_secs(60), 64, reviews_in_flight),
            node: "vk-1".into(),
            http: reqwest::Client::new(),
            ws_tls: Arc::new(tls::client_config()),
            started: chrono::Utc::now(),
            sessions: TaskTracker::new(),
            counters: Arc::new(SessionCounters::default()),
            shutdown: CancellationToken::new(),
        }))
    }

    /// A request from a client-certificate identity (allowed everything by the stand-in).
    fn as_admin(method: http::Method, uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(PeerIdentity(Some(UserInfo { name: "admin".into(), ..UserInfo::default() })));
        req
    }

    async fn answer(router: &Router, req: Request) -> (StatusCode, String) {
        let resp = tower_service::Service::call(&mut router.clone(), req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const SPDY: [(&str, &str); 3] =
        [("connection", "Upgrade"), ("upgrade", "SPDY/3.1"), ("x-stream-protocol-version", "v4.channel.k8s.io")];

    #[tokio::test]
    async fn new_tokens_past_the_reviews_in_flight_are_told_to_retry() {
        // The first review is held for seconds; the second request comes once the stand-in
        // holds it (an event, not a clock) and must be answered before it ends.
        let api = auth::stand_in::Apiserver::start(Duration::from_secs(3)).await;
        let router = api_router(&api, 1).await;
        let with_token = |token: &str| {
            http::Request::builder()
                .uri("/pods")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let first = async {
            let answer = answer(&router, with_token("made-up-1")).await;
            (answer, Instant::now())
        };
        let second = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while api.counts.token_reviews_by("reviews") == 0 {
                assert!(Instant::now() < deadline, "the first review never reached the stand-in");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let resp = tower_service::Service::call(&mut router.clone(), with_token("made-up-2")).await.unwrap();
            (resp.status(), resp.headers().get(http::header::RETRY_AFTER).cloned(), Instant::now())
        };
        let ((first, first_done), (status, retry_after, second_done)) = tokio::join!(first, second);
        assert_eq!(first.0, StatusCode::UNAUTHORIZED);
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(retry_after.unwrap(), "1");
        assert!(second_done < first_done, "the 429 waited for the review in flight");
        // A token already known to be bad is answered from the cache, whatever is in flight.
        let (status, _) = answer(&router, with_token("made-up-1")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(api.counts.token_reviews_by("reviews"), 1);
    }

    #[tokio::test]
    async fn runningpods_lists_what_the_provider_runs_and_pods_what_the_host_holds() {
        let api = auth::stand_in::Apiserver::start(Duration::ZERO).await;
        let router = api_router(&api, 4).await;
        for (path, name) in [("/runningpods/", "running"), ("/pods", "web")] {
            let (status, body) = answer(&router, as_admin(http::Method::GET, path, &[])).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let list: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!((&list["kind"], &list["apiVersion"]), (&"PodList".into(), &"v1".into()), "{path}");
            let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|p| &p["metadata"]["name"]).collect();
            assert_eq!(names, [name], "{path}");
        }
        // Not public: like every path but /healthz, it needs an identity.
        let anonymous = http::Request::builder().uri("/runningpods/").body(Body::empty()).unwrap();
        assert_eq!(answer(&router, anonymous).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn exec_and_attach_refuse_a_pod_uid_that_is_not_the_pods() {
        let api = auth::stand_in::Apiserver::start(Duration::ZERO).await;
        let router = api_router(&api, 4).await;
        for kind in ["exec", "attach"] {
            let uri = format!("/{kind}/ns/web/uid-0/app?command=true&output=1");
            let (status, body) = answer(&router, as_admin(http::Method::POST, &uri, &SPDY)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{kind}: {body}");
            assert!(body.contains("ns/web with UID uid-0"), "{body}");
            // The right UID gets through to the backend.
            let uri = format!("/{kind}/ns/web/uid-1/app?command=true&output=1");
            let (status, body) = answer(&router, as_admin(http::Method::POST, &uri, &SPDY)).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::BAD_REQUEST, "pod ns/web container app: bad request: reached the backend\n")
            );
        }
    }

    #[tokio::test]
    async fn spdy_upgrades_must_be_posted() {
        let api = auth::stand_in::Apiserver::start(Duration::ZERO).await;
        let router = api_router(&api, 4).await;
        let (status, body) =
            answer(&router, as_admin(http::Method::GET, "/exec/ns/web/app?command=id&output=1", &SPDY)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
        let (status, body) =
            answer(&router, as_admin(http::Method::POST, "/exec/ns/web/app?command=id&output=1", &SPDY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("reached the backend"), "{body}");
    }

    #[tokio::test]
    async fn a_failed_token_review_is_unauthorized_without_the_apiservers_words() {
        let api = auth::stand_in::Apiserver::start(Duration::ZERO).await;
        api.counts.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let router = api_router(&api, 4).await;
        let req = http::Request::builder()
            .uri("/pods")
            .header("authorization", format!("Bearer {}", auth::stand_in::GOOD_TOKEN))
            .body(Body::empty())
            .unwrap();
        let (status, body) = answer(&router, req).await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, "Unauthorized\n"));
    }

    // Connection limits, over real TLS connections.

    /// A server on loopback with a self-signed certificate for "localhost", serving `router`.
    struct TestServer {
        addr: SocketAddr,
        connector: TlsConnector,
        shutdown: CancellationToken,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    impl TestServer {
        async fn start(router: Router, limits: ConnectionLimits) -> TestServer {
            let cert = tls::self_signed("vk-1", "localhost", "127.0.0.1".parse().unwrap()).unwrap();
            let (chain, _) = tls::issued_chain(cert.cert_pem.as_bytes()).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(chain[0].clone()).unwrap();
            let client =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let server = tls::server_config(Arc::new(tls::CertStore::new(cert)), None).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let acceptor = TlsAcceptor::from(Arc::new(server));
            tokio::spawn(accept_loop(listener, acceptor, router, limits, TaskTracker::new(), shutdown.clone()));
            TestServer { addr, connector: TlsConnector::from(Arc::new(client)), shutdown }
        }

        async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
            let tcp = TcpStream::connect(self.addr).await?;
            self.connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
        }
    }

    fn limits(handshake_ms: u64, header_ms: u64, max_connections: usize) -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: Duration::from_millis(handshake_ms),
            header_read_timeout: Duration::from_millis(header_ms),
            max_connections,
        }
    }

    /// A router with a quick answer, a slow streamed answer and an echoing upgrade.
    fn test_router() -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    let ticks = futures::stream::iter(0..6).then(|i| async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(bytes::Bytes::from(format!("tick {i}\n")))
                    });
                    Body::from_stream(ticks)
                }),
            )
            .route(
                "/echo",
                any(|mut req: Request| async move {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else { return };
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    http::Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header(http::header::CONNECTION, "Upgrade")
                        .header(http::header::UPGRADE, "echo")
                        .body(Body::empty())
                        .unwrap()
                }),
            )
    }

    /// How long until the peer closes the stream (EOF or reset), reading and discarding data.
    async fn closed_after(mut stream: impl AsyncRead + Unpin, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    /// Sends one request on the stream and returns the response head and body read so far up to
    /// the end of `until`.
    async fn request(stream: &mut (impl AsyncRead + tokio::io::AsyncWrite + Unpin), head: &str, until: &str) -> String {
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(until) {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed early; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn a_connection_that_never_starts_the_handshake_is_closed() {
        let server = TestServer::start(test_router(), limits(300, 10_000, 10)).await;
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let after = closed_after(tcp, Duration::from_secs(3)).await.expect("closed by the handshake timeout");
        assert!(after >= Duration::from_millis(250), "{after:?}");
    }

    #[tokio::test]
    async fn a_handshaken_connection_that_sends_no_request_is_closed() {
        let server = TestServer::start(test_router(), limits(10_000, 300, 10)).await;
        let tls = server.tls().await.unwrap();
        let after = closed_after(tls, Duration::from_secs(3)).await.expect("closed by the header read timeout");
        assert!(after >= Duration::from_millis(250), "{after:?}");
    }

    #[tokio::test]
    async fn a_keep_alive_connection_is_closed_once_idle() {
        let server = TestServer::start(test_router(), limits(10_000, 300, 10)).await;
        let mut tls = server.tls().await.unwrap();
        let answer = request(&mut tls, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\nok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        closed_after(tls, Duration::from_secs(3)).await.expect("idle keep-alive connection closed");
    }

    #[tokio::test]
    async fn slow_responses_and_upgraded_streams_are_not_cut_by_the_header_timeout() {
        let server = TestServer::start(test_router(), limits(10_000, 300, 10)).await;
        let mut tls = server.tls().await.unwrap();
        // Six ticks 200 ms apart: four times the header timeout.
        let answer = request(&mut tls, "GET /slow HTTP/1.1\r\nhost: x\r\n\r\n", "tick 5\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let mut tls = server.tls().await.unwrap();
        let head = "GET /echo HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
        let answer = request(&mut tls, head, "\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        // A session that goes quiet for longer than the header timeout between messages, too.
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let line = format!("message {i}\n");
            let echoed = request(&mut tls, &line, &line).await;
            assert_eq!(echoed, line);
        }
    }

    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let server = TestServer::start(test_router(), limits(10_000, 10_000, 10)).await;
        let mut tls = server.tls().await.unwrap();
        let head = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: {}\r\n\r\n", "a".repeat(100 * 1024));
        let answer = request(&mut tls, &head, "\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // A long bearer token still fits.
        let mut tls = server.tls().await.unwrap();
        let head =
            format!("GET /healthz HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", "t".repeat(16 * 1024));
        let answer = request(&mut tls, &head, "\r\n\r\nok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once_and_a_freed_slot_is_reused() {
        let server = TestServer::start(test_router(), limits(10_000, 10_000, 2)).await;
        let first = server.tls().await.unwrap();
        let _second = server.tls().await.unwrap();
        let started = Instant::now();
        assert!(server.tls().await.is_err(), "a third connection is refused");
        assert!(started.elapsed() < Duration::from_secs(1), "refused at once, took {:?}", started.elapsed());
        drop(first);
        let mut again = wait_for_slot(&server).await;
        let answer = request(&mut again, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\nok").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// The server frees a slot when it notices the client left: retry for a moment.
    async fn wait_for_slot(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
        for _ in 0..50 {
            if let Ok(tls) = server.tls().await {
                return tls;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no connection slot came free");
    }

    /// Opens many idle TLS connections and measures how long until the server has closed them all.
    /// `VKHOST_IDLE_CONNECTIONS=5000` runs the figure with the default limits, and
    /// `VKHOST_MAX_CONNECTIONS` overrides the cap (raise `ulimit -n` first: each connection is two
    /// descriptors in this process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_idle_tls_connections_are_all_closed_within_the_timeouts() {
        let env = |name: &str| std::env::var(name).ok().and_then(|n| n.parse::<usize>().ok());
        let (count, mut limits) = match env("VKHOST_IDLE_CONNECTIONS") {
            Some(n) => (n, crate::kubelet::KubeletConfig::default().connection_limits()),
            None => (200, limits(1_000, 1_000, 150)),
        };
        if let Some(max) = env("VKHOST_MAX_CONNECTIONS") {
            limits.max_connections = max;
        }
        let server = TestServer::start(test_router(), limits).await;
        let started = Instant::now();
        let budget = limits.header_read_timeout + Duration::from_secs(30);
        // `None`: refused past the cap; otherwise the task that waits for the server to close it.
        let closings = futures::stream::iter(0..count)
            .map(|_| async { server.tls().await.ok().map(|tls| tokio::spawn(closed_after(tls, budget))) })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        let opened_in = started.elapsed();
        let mut refused = 0;
        for closing in closings {
            match closing {
                None => refused += 1,
                Some(task) => {
                    task.await.unwrap().expect("a connection outlived its header read timeout by 30 s");
                }
            }
        }
        let all_closed = started.elapsed();
        eprintln!(
            "{count} idle TLS connections, {refused} refused past the cap of {}: opened in {opened_in:?}, \
             all closed {all_closed:?} after the first",
            limits.max_connections
        );
        let bound = opened_in + limits.handshake_timeout.max(limits.header_read_timeout) + Duration::from_secs(5);
        assert!(all_closed < bound, "all closed after {all_closed:?}, expected under {bound:?}");
    }
}
