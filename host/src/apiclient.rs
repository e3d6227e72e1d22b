//! The daemon's Kubernetes client: kubeconfig or in-cluster credentials, with a client-side rate
//! limit (a burst, then a steady rate) so a pod burst cannot flood the apiserver, and for a node's
//! clients the node's fence, which refuses writes once its election lease lapsed.
//!
//! Each client speaks HTTP/2 when the apiserver offers it (ALPN `h2`, then `http/1.1`), so its
//! requests and watches share one TLS connection instead of holding one each. A connection
//! carries at most [`STREAMS_PER_CONNECTION`] of them; beyond that the client opens another
//! (hyper would otherwise queue requests behind watches that never end).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, Ready};

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tower::limit::{GlobalConcurrencyLimitLayer, RateLimitLayer};
use tower::retry::RetryLayer;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder};

use crate::fence::{Fence, Lapsed, Target};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes credentials: set `kubeconfig` in the config or $KUBECONFIG, or run in a cluster ({0})")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Build(String),
}

/// Client-side limits on the daemon's Kubernetes API traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimits {
    /// Sustained requests per second to the apiserver.
    #[serde(default = "default_qps")]
    pub qps: u32,
    /// Requests allowed at once above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Requests waiting for their answer at once (watch streams count only until their headers
    /// arrive): this bounds the work the daemon puts on the apiserver, and the memory of answers
    /// being received. Over HTTP/2 a client's requests are streams of one connection; over
    /// HTTP/1.1 (an apiserver without `h2`) each needs a connection, and idle ones stay pooled, so
    /// it then bounds the connections too.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Whose credentials each virtual node acts with: its own `system:node:<name>` client
    /// certificate (`csr`, the default), or the daemon's own (`shared`, for clusters without the
    /// `kubernetes.io/kube-apiserver-client-kubelet` signer).
    #[serde(default)]
    pub node_credentials: NodeCredentials,
    /// Lifetime asked for the node client certificates (the signer may cap it); at least 600.
    #[serde(default = "default_node_cert_lifetime")]
    pub node_cert_lifetime_seconds: u32,
    /// How long to wait for the controller-manager to approve and sign a node's certificate.
    #[serde(default = "default_node_cert_wait")]
    pub node_cert_wait_seconds: u32,
}

/// See [`ApiLimits::node_credentials`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeCredentials {
    /// A client certificate per node from a CertificateSigningRequest, as kubelets bootstrap TLS:
    /// the apiserver's Node authorizer and NodeRestriction admission then bound what it can do.
    #[default]
    Csr,
    /// The daemon's own credentials for everything (the mode before node identities).
    Shared,
}

fn default_node_cert_lifetime() -> u32 {
    24 * 3600
}
fn default_node_cert_wait() -> u32 {
    120
}

fn default_qps() -> u32 {
    500
}
fn default_burst() -> u32 {
    1000
}
/// 256: one budget for up to 8 nodes of 200 pods. With 64, a 1,600-pod teardown's DELETEs waited
/// seconds in the daemon for a slot (BENCHMARKS.md, "The floor of this control plane").
fn default_max_in_flight() -> u32 {
    256
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            qps: default_qps(),
            burst: default_burst(),
            max_in_flight: default_max_in_flight(),
            node_credentials: NodeCredentials::default(),
            node_cert_lifetime_seconds: default_node_cert_lifetime(),
            node_cert_wait_seconds: default_node_cert_wait(),
        }
    }
}

/// A client for `kubeconfig` (or the inferred config), limited to `limits.burst` requests per
/// `burst / qps` seconds and `limits.max_in_flight` requests at once.
pub async fn client(kubeconfig: Option<&Path>, limits: &ApiLimits) -> Result<Client, ClientError> {
    limited(bootstrap_config(kubeconfig).await?, limits)
}

/// The daemon's own (bootstrap) connection settings: `kubeconfig`, else `$KUBECONFIG` or the
/// in-cluster ServiceAccount.
pub async fn bootstrap_config(kubeconfig: Option<&Path>) -> Result<Config, ClientError> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc_err = |message: String| ClientError::Kubeconfig { path: path.display().to_string(), message };
            let kc = Kubeconfig::read_from(path).map_err(|e| kc_err(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kc_err(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| ClientError::Infer(e.to_string()))?,
    })
}

/// A client for `config` with the rate and concurrency limits of `limits`.
pub fn limited(config: Config, limits: &ApiLimits) -> Result<Client, ClientError> {
    limited_within(config, limits, &in_flight_budget(limits))
}

/// The budget of requests in flight `limits` allows, for clients that share it.
pub fn in_flight_budget(limits: &ApiLimits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_in_flight.max(1) as usize))
}

/// A client for `config` with the rate limit of `limits`, whose requests in flight count against
/// `in_flight`, which other clients may share: the daemon's own client and every node's pod lane
/// share one, so `[api] max_in_flight` bounds the daemon's requests in flight however many nodes
/// it has.
pub fn limited_within(config: Config, limits: &ApiLimits, in_flight: &Arc<Semaphore>) -> Result<Client, ClientError> {
    let window = Duration::from_secs_f64(limits.burst as f64 / limits.qps.max(1) as f64);
    Ok(builder(config)?
        .with_layer(&RateLimitLayer::new(limits.burst as u64, window))
        .with_layer(&GlobalConcurrencyLimitLayer::with_semaphore(in_flight.clone()))
        .build())
}

/// [`limited_within`] for a node: its writes are refused (never sent) once `fence` lapsed.
/// The fence is the innermost layer, checked after the rate and concurrency limits let the
/// request go, so a request that queued there across the lapse is refused too.
pub fn fenced_within(
    config: Config,
    limits: &ApiLimits,
    in_flight: &Arc<Semaphore>,
    fence: &Fence,
) -> Result<Client, ClientError> {
    let window = Duration::from_secs_f64(limits.burst as f64 / limits.qps.max(1) as f64);
    Ok(builder(config)?
        .with_layer(&FenceLayer(fence.clone()))
        .with_layer(&RateLimitLayer::new(limits.burst as u64, window))
        .with_layer(&GlobalConcurrencyLimitLayer::with_semaphore(in_flight.clone()))
        .build())
}

/// [`fenced_within`] with a budget of its own.
pub fn fenced(config: Config, limits: &ApiLimits, fence: &Fence) -> Result<Client, ClientError> {
    fenced_within(config, limits, &in_flight_budget(limits), fence)
}

/// Streams one connection carries before requests go to another: kube-apiserver's limit when
/// `--http2-max-streams-per-connection` is unset (100; Go's default would be 250). A node's
/// reference watches alone (one per watched ConfigMap and Secret) can reach it.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// How often an HTTP/2 connection with streams open is pinged, and how long the answer may take
/// before the connection (and its streams) count as dead: a watch then ends and is restarted
/// rather than waiting on a connection that went away silently.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How much an HTTP/2 stream, and a whole connection, may receive ahead of the daemon reading it
/// (hyper's defaults: 2 and 5 MiB). Over HTTP/1.1 the kernel's socket buffers held what was not
/// read yet; over HTTP/2 the connection's task reads it into the daemon's heap, so a watch whose
/// reader falls behind in a burst costs up to this much memory. A list of a node's pods is read
/// at once and needs no more than a few round trips on loopback.
const STREAM_WINDOW: u32 = 512 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

/// TLS sessions a client keeps for resumption. rustls's default cache is sized for 256 servers
/// and allocated up front (~0.1 MiB); a client here talks to one apiserver, and the daemon holds
/// several clients per node (issue 18: ~1 MiB of the 1,600-pod burst's heap).
const TLS_SESSIONS: usize = 4;

/// The service under a client's own layers: what `kube::Client::try_from` builds (base URI,
/// kube's retry of 429/503/504, the credentials' auth layer and extra headers, rustls with the
/// config's CA, client certificate and `tls_server_name`, the connect/read/write timeouts) over
/// [`Lanes`] whose connections offer `h2`. Not kept from kube's stack: its debug-level tracing
/// spans, and the expiry of an exec plugin's client certificate (kube does not expose it; the
/// daemon never reads a client's `valid_until`). Proxies are refused as kube (built without
/// `http-proxy`/`socks5`) refuses them.
fn builder(config: Config) -> Result<ClientBuilder<Stack>, ClientError> {
    let build = |e: kube::Error| ClientError::Build(e.to_string());
    if let Some(proxy) = &config.proxy_url {
        return Err(ClientError::Build(format!("proxy {proxy}: proxies are not supported")));
    }
    let lanes = lanes(&config)?;

    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer().map_err(build)?)
        .layer(config.extra_headers_layer().map_err(build)?)
        .map_err(BoxError::from)
        .service(lanes);
    Ok(ClientBuilder::new(BoxService::new(service), config.default_namespace))
}

/// [`Lanes`] to `config`'s apiserver, none open yet: rustls with the config's CA, client
/// certificate and `tls_server_name`, offering `h2` then `http/1.1`, within the config's timeouts.
fn lanes(config: &Config) -> Result<Lanes, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut rustls = config.rustls_client_config().map_err(|e| ClientError::Build(e.to_string()))?;
    rustls.resumption = rustls::client::Resumption::in_memory_sessions(TLS_SESSIONS);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(rustls).https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name.clone().try_into().map_err(|e| ClientError::Build(format!("tls_server_name {name}: {e}")))?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let mut connector = TimeoutConnector::new(tls.enable_all_versions().wrap_connector(http));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let mut pool = hyper_util::client::legacy::Builder::new(TokioExecutor::new());
    pool.timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW);
    Ok(Lanes { hyper: pool, connector, lanes: Arc::default() })
}

/// The service [`builder`] gives a client's own layers.
type Stack = BoxService<http::Request<Body>, http::Response<Counted>, BoxError>;

type Connector = TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;
type Hyper = hyper_util::client::legacy::Client<Connector, Body>;

/// A client's connections to the apiserver: hyper's pooled client puts all of a client's
/// requests on one HTTP/2 connection and, once the server's stream limit is reached, queues new
/// ones until a stream ends; the streams of watches end only after minutes. So each lane is a
/// client of its own (its own pool, hence its own connection) taking at most
/// [`STREAMS_PER_CONNECTION`] streams, a request goes to the first lane with room, and a lane
/// is added when none has. Over HTTP/1.1 a lane pools connections as before.
#[derive(Clone)]
struct Lanes {
    hyper: hyper_util::client::legacy::Builder,
    connector: Connector,
    lanes: Arc<std::sync::Mutex<Vec<Lane>>>,
}

struct Lane {
    client: Hyper,
    open: Arc<AtomicUsize>,
}

impl Lanes {
    /// A stream on the first lane with room, adding a lane when none has.
    fn take(&self) -> (Hyper, Slot) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = match lanes.iter().position(|l| l.open.load(Ordering::SeqCst) < STREAMS_PER_CONNECTION) {
            Some(i) => &lanes[i],
            None => {
                lanes.push(Lane { client: self.hyper.build(self.connector.clone()), open: Arc::default() });
                lanes.last().expect("just pushed")
            }
        };
        lane.open.fetch_add(1, Ordering::SeqCst);
        (lane.client.clone(), Slot(lane.open.clone()))
    }
}

impl tower::Service<http::Request<Body>> for Lanes {
    type Response = http::Response<Counted>;
    type Error = hyper_util::client::legacy::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (client, slot) = self.take();
        Box::pin(async move {
            let response = client.request(request).await?;
            Ok(response.map(|body| Counted { body, _slot: slot }))
        })
    }
}

/// A stream counted on its lane until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body, whose stream counts on its lane until the body is dropped.
pub struct Counted {
    body: hyper::body::Incoming,
    _slot: Slot,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a request changes state: everything but reads (watches are reads).
fn mutating(method: &http::Method) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// Wraps a client's service with a node's fence.
struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced { inner, fence: self.0.clone() }
    }
}

/// Refuses mutating requests before they reach the connection once the fence lapsed; reads go
/// on (a stepped-down replica's watches end with its term anyway).
#[derive(Clone)]
pub struct Fenced<S> {
    inner: S,
    fence: Fence,
}

impl<S, B> tower::Service<http::Request<B>> for Fenced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: From<Lapsed>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if mutating(request.method()) {
            let what = format!("{} {}", request.method(), request.uri().path());
            if let Err(lapsed) = self.fence.check(Target::Api, &what) {
                return Either::Left(futures::future::ready(Err(lapsed.into())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

/// `base` (same apiserver URL, CA and TLS settings) authenticating with a client certificate
/// instead of whatever credentials `base` carries.
pub fn with_client_certificate(base: &Config, cert_pem: &str, key_pem: &str) -> Result<Config, ClientError> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // Through serde: the key field is a `secrecy` string whose crate the host does not use.
    let auth_info = serde_json::from_value(serde_json::json!({
        "client-certificate-data": b64(cert_pem),
        "client-key-data": b64(key_pem),
    }))
    .map_err(|e| ClientError::Build(format!("client certificate credentials: {e}")))?;
    let mut config = base.clone();
    config.auth_info = auth_info;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;

    use super::*;

    /// A stand-in apiserver that answers every ConfigMap GET with 404, recording the most requests
    /// it held at once; and a kubeconfig pointing at it. With `gate` > 0 requests are answered in
    /// batches of `gate` by order of arrival: each waits (up to 10 s) until its batch is complete,
    /// so requests that may overlap do.
    async fn apiserver(gate: usize) -> (tempdir::Dir, Arc<AtomicUsize>) {
        let peak = Arc::new(AtomicUsize::new(0));
        let (held, arrived, p) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), peak.clone());
        let app = Router::new().route(
            "/api/v1/namespaces/default/configmaps/{name}",
            get(move || {
                let (held, arrived, p) = (held.clone(), arrived.clone(), p.clone());
                async move {
                    p.fetch_max(held.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let me = arrived.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while gate > 0
                        && arrived.load(Ordering::SeqCst) < (me / gate + 1) * gate
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    held.fetch_sub(1, Ordering::SeqCst);
                    let status =
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                    (StatusCode::NOT_FOUND, [("content-type", "application/json")], status)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempdir::Dir::new();
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://{addr}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
        (dir, peak)
    }

    async fn gets(client: &Client, n: usize) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let all = futures::future::join_all((0..n).map(|i| {
            let api = api.clone();
            async move { api.get_opt(&format!("cm-{i}")).await }
        }))
        .await;
        assert!(all.iter().all(|r| matches!(r, Ok(None))), "{all:?}");
    }

    #[tokio::test]
    async fn requests_in_flight_never_exceed_the_limit() {
        // The stand-in waits for 4 requests at once: exactly 4 overlap, never a fifth.
        let (dir, peak) = apiserver(4).await;
        let limits = ApiLimits { qps: 10_000, burst: 10_000, max_in_flight: 4, ..ApiLimits::default() };
        let client = client(Some(&dir.path().join("kubeconfig")), &limits).await.unwrap();
        let started = Instant::now();
        gets(&client, 40).await;
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        assert!(started.elapsed() < Duration::from_secs(10), "a batch waited for the gate's deadline");
    }

    #[tokio::test]
    async fn clients_sharing_a_budget_stay_within_it_together() {
        // Two clients (the daemon's and a node's pod lane, say) on one budget of 4: the stand-in
        // waits for 4 at once and never sees a fifth; on budgets of their own it would see 8.
        let (dir, peak) = apiserver(4).await;
        let limits = ApiLimits { qps: 10_000, burst: 10_000, max_in_flight: 4, ..ApiLimits::default() };
        let config = bootstrap_config(Some(&dir.path().join("kubeconfig"))).await.unwrap();
        let budget = in_flight_budget(&limits);
        let a = limited_within(config.clone(), &limits, &budget).unwrap();
        let b = limited_within(config, &limits, &budget).unwrap();
        tokio::join!(gets(&a, 20), gets(&b, 20));
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_rate_limit_spreads_requests_beyond_the_burst() {
        let (dir, _) = apiserver(0).await;
        // 10 requests per second, 10 at once: 25 requests need at least two more windows.
        let limits = ApiLimits { qps: 10, burst: 10, max_in_flight: 64, ..ApiLimits::default() };
        let client = client(Some(&dir.path().join("kubeconfig")), &limits).await.unwrap();
        let started = Instant::now();
        gets(&client, 25).await;
        assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    }

    /// A stand-in apiserver that counts every request it receives and answers each with a Pod.
    async fn counting_apiserver() -> (Config, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"}}"#;
                (StatusCode::OK, [("content-type", "application/json")], pod)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Config::new(format!("http://{addr}").parse().unwrap()), seen)
    }

    #[tokio::test]
    async fn a_lapsed_fence_refuses_a_pod_status_patch_before_it_reaches_the_apiserver() {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Patch, PatchParams};
        use tokio_util::sync::CancellationToken;

        let (config, seen) = counting_apiserver().await;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let fence = Fence::new("vk-n1", Duration::from_secs(15), metrics.clone());
        let term = CancellationToken::new();
        fence.arm(tokio::time::Instant::now(), term.clone());
        let client = fenced(config, &ApiLimits::default(), &fence).unwrap();
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let status = Patch::Merge(serde_json::json!({"status": {"phase": "Running"}}));
        pods.patch_status("web", &PatchParams::default(), &status).await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        // The last claim was sent longer ago than the lease less the margin: paused, say.
        fence.arm(tokio::time::Instant::now() - Duration::from_secs(13), term.clone());
        let err = pods.patch_status("web", &PatchParams::default(), &status).await.unwrap_err();
        assert!(err.to_string().contains("fenced: lease for node vk-n1 lapsed"), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the refused patch reached the apiserver");
        assert!(term.is_cancelled(), "acting for the node goes on");
        assert!(metrics.render().contains(r#"vkhost_fenced_writes_total{node="vk-n1",target="api"} 1"#));
        // Reads go on: a stepped-down replica's caches wind down on their own.
        pods.get("web").await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_connection_sends_further_streams_to_another_and_freed_streams_are_reused() {
        let lanes = lanes(&Config::new("https://127.0.0.1:6443".parse().unwrap())).unwrap();
        let open = |lanes: &Lanes| -> Vec<usize> {
            lanes.lanes.lock().unwrap().iter().map(|l| l.open.load(Ordering::SeqCst)).collect()
        };
        let mut first: Vec<Slot> = (0..STREAMS_PER_CONNECTION).map(|_| lanes.take().1).collect();
        assert_eq!(open(&lanes), [STREAMS_PER_CONNECTION]);
        let (_, second) = lanes.take();
        assert_eq!(open(&lanes), [STREAMS_PER_CONNECTION, 1]);
        // A stream of the first connection ends (a watch closed, a body read): the next request
        // goes there again, and no third connection is made.
        first.pop();
        let (_, again) = lanes.take();
        assert_eq!(open(&lanes), [STREAMS_PER_CONNECTION, 1]);
        drop((first, second, again));
        assert_eq!(open(&lanes), [0, 0]);
    }

    /// A temporary directory removed on drop.
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub struct Dir(PathBuf);

        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "vkhost-apiclient-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
