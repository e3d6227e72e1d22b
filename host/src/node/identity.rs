//! A virtual node's own Kubernetes identity, as a kubelet has one: a `system:node:<name>` client
//! certificate bootstrapped through a CertificateSigningRequest and rotated before it expires, so
//! the apiserver's Node authorizer and NodeRestriction admission bound what the node can reach
//! (its Node, its Lease, its pods and what they reference) instead of the daemon's wider rights.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use kube::{Client, Config};
use tokio_util::sync::CancellationToken;

use crate::apiclient::{self, ClientError};
use crate::apiclient::{ApiLimits, NodeCredentials};
use crate::fence::Fence;
use crate::kubelet::csr::{self, ClientCert, CsrError};

/// The heartbeat lane's own limits: a beat is three requests every 10 s; this lane exists so they
/// never queue behind the pod controller's requests.
const HEARTBEAT_LIMITS: (u32, u32, u32) = (20, 40, 4);
/// The events lane's requests per second, burst and requests in flight: the kubelet's own event
/// budget (`eventRecordQPS` 50, `eventBurst` 100), and as many in flight as the node's event
/// task posts at once (`pods::events`).
const EVENT_LIMITS: (u32, u32, u32) = (50, 100, 4);
/// How soon to try again after a failed rotation (the old certificate still has time left).
const ROTATION_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "node {node}: client certificate from signer {}: {source} (the daemon's identity needs `create certificatesigningrequests/nodeclient`, and kube-controller-manager must run its csrapproving and csrsigning controllers; `[api] node_credentials = \"shared\"` keeps the daemon's own credentials instead)",
        csr::CLIENT_SIGNER
    )]
    Certificate { node: String, source: CsrError },
    #[error("node {node}: {source}")]
    Client { node: String, source: ClientError },
}

/// The clients a node runner acts with.
#[derive(Clone)]
pub struct NodeClients {
    /// Pods bound to the node, the objects they reference, their status.
    pub pods: Client,
    /// The node's Events: a lane of its own with the kubelet's event budget, so the Events of a
    /// burst of starts never hold the requests in flight the pods' status writes wait for.
    pub events: Client,
    /// The node's Lease and status: a lane of its own, so a burst of pod work never delays a
    /// heartbeat past the controller-manager's grace period.
    pub heartbeat: Client,
    /// The kubelet API's TokenReviews and SubjectAccessReviews: a lane of its own, so callers of
    /// that API (anyone who can reach its port) cannot spend the others' budget.
    pub reviews: Client,
}

/// Builds a node's clients: its own certificate (`csr`), or the daemon's credentials (`shared`)
/// with a separate heartbeat lane all the same. The identity, when there is one, must be kept
/// fresh with [`NodeIdentity::keep_fresh`].
pub async fn node_clients(
    bootstrap: &Client,
    base: &Config,
    node: &str,
    limits: &LaneLimits,
) -> Result<(NodeClients, Option<Arc<NodeIdentity>>), IdentityError> {
    match limits.pods.node_credentials {
        NodeCredentials::Csr => {
            let identity = NodeIdentity::obtain(bootstrap, base, node, limits).await?;
            Ok((identity.clients(), Some(identity)))
        }
        NodeCredentials::Shared => {
            let client_err = |source| IdentityError::Client { node: node.into(), source };
            let (pods, heartbeat, events) = match &limits.fence {
                // The daemon's credentials, but a client of the node's own so its fence applies.
                Some(fence) => (
                    apiclient::fenced_within(base.clone(), &limits.pods, &limits.pods_in_flight, fence)
                        .map_err(client_err)?,
                    apiclient::fenced(base.clone(), &heartbeat_limits(&limits.pods), fence).map_err(client_err)?,
                    apiclient::fenced(base.clone(), &event_limits(&limits.pods), fence).map_err(client_err)?,
                ),
                None => (
                    bootstrap.clone(),
                    apiclient::limited(base.clone(), &heartbeat_limits(&limits.pods)).map_err(client_err)?,
                    apiclient::limited(base.clone(), &event_limits(&limits.pods)).map_err(client_err)?,
                ),
            };
            let reviews = apiclient::limited(base.clone(), &limits.reviews).map_err(client_err)?;
            Ok((NodeClients { pods, events, heartbeat, reviews }, None))
        }
    }
}

/// The rate and in-flight limits of a node's lanes: `[api]` for pod work, its requests in flight
/// counted against `pods_in_flight` (shared by the daemon's clients); heartbeats get fixed limits
/// of their own; `[kubelet]`'s review limits for the kubelet API's reviews. With a `fence`, the
/// pod and heartbeat lanes send no write once it lapsed (reviews are not writes: they stay open).
#[derive(Debug, Clone)]
pub struct LaneLimits {
    pub pods: ApiLimits,
    pub pods_in_flight: Arc<tokio::sync::Semaphore>,
    pub reviews: ApiLimits,
    pub fence: Option<Fence>,
}

fn heartbeat_limits(limits: &ApiLimits) -> ApiLimits {
    let (qps, burst, max_in_flight) = HEARTBEAT_LIMITS;
    ApiLimits { qps, burst, max_in_flight, ..limits.clone() }
}

fn event_limits(limits: &ApiLimits) -> ApiLimits {
    let (qps, burst, max_in_flight) = EVENT_LIMITS;
    ApiLimits { qps, burst, max_in_flight, ..limits.clone() }
}

/// The node's current certificate and the clients that use it.
struct Lanes {
    cert: ClientCert,
    pods: Client,
    events: Client,
    heartbeat: Client,
    reviews: Client,
}

/// A node's client certificate and the clients built on it; rotation swaps both under the
/// clients handed out, which pick up the new certificate on their next request.
pub struct NodeIdentity {
    node: String,
    base: Config,
    limits: LaneLimits,
    lanes: Arc<ArcSwap<Lanes>>,
}

impl NodeIdentity {
    /// Bootstraps the node's identity: a CSR made with `bootstrap`'s credentials, signed once
    /// kube-controller-manager approves it.
    pub async fn obtain(
        bootstrap: &Client,
        base: &Config,
        node: &str,
        limits: &LaneLimits,
    ) -> Result<Arc<NodeIdentity>, IdentityError> {
        let started = std::time::Instant::now();
        let lanes = Self::issue(bootstrap, base, node, limits).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(node, csr = %lanes.cert.csr, took_ms, "node client certificate issued");
        Ok(Arc::new(NodeIdentity {
            node: node.into(),
            base: base.clone(),
            limits: limits.clone(),
            lanes: Arc::new(ArcSwap::from_pointee(lanes)),
        }))
    }

    async fn issue(bootstrap: &Client, base: &Config, node: &str, limits: &LaneLimits) -> Result<Lanes, IdentityError> {
        let lifetime = Duration::from_secs(limits.pods.node_cert_lifetime_seconds.into());
        let wait = Duration::from_secs(limits.pods.node_cert_wait_seconds.into());
        let cert = csr::request_client(bootstrap, node, lifetime, wait)
            .await
            .map_err(|source| IdentityError::Certificate { node: node.into(), source })?;
        let client_err = |source| IdentityError::Client { node: node.into(), source };
        let config = apiclient::with_client_certificate(base, &cert.cert_pem, &cert.key_pem).map_err(client_err)?;
        let (pods, heartbeat, events) = match &limits.fence {
            Some(fence) => (
                apiclient::fenced_within(config.clone(), &limits.pods, &limits.pods_in_flight, fence)
                    .map_err(client_err)?,
                apiclient::fenced(config.clone(), &heartbeat_limits(&limits.pods), fence).map_err(client_err)?,
                apiclient::fenced(config.clone(), &event_limits(&limits.pods), fence).map_err(client_err)?,
            ),
            None => (
                apiclient::limited_within(config.clone(), &limits.pods, &limits.pods_in_flight).map_err(client_err)?,
                apiclient::limited(config.clone(), &heartbeat_limits(&limits.pods)).map_err(client_err)?,
                apiclient::limited(config.clone(), &event_limits(&limits.pods)).map_err(client_err)?,
            ),
        };
        let reviews = apiclient::limited(config, &limits.reviews).map_err(client_err)?;
        Ok(Lanes { cert, pods, events, heartbeat, reviews })
    }

    /// Clients acting as the node; they follow rotations.
    pub fn clients(&self) -> NodeClients {
        let ns = self.base.default_namespace.clone();
        let lane = |lane| Client::new(Rotating { lanes: self.lanes.clone(), lane }, ns.clone());
        NodeClients {
            pods: lane(Lane::Pods),
            events: lane(Lane::Events),
            heartbeat: lane(Lane::Heartbeat),
            reviews: lane(Lane::Reviews),
        }
    }

    /// The certificate in use.
    pub fn certificate(&self) -> ClientCert {
        self.lanes.load().cert.clone()
    }

    /// Replaces the certificate with a freshly issued one (a new key too).
    pub async fn rotate(&self, bootstrap: &Client) -> Result<(), IdentityError> {
        let started = std::time::Instant::now();
        let lanes = Self::issue(bootstrap, &self.base, &self.node, &self.limits).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(node = %self.node, csr = %lanes.cert.csr, took_ms, "node client certificate rotated");
        self.lanes.store(Arc::new(lanes));
        Ok(())
    }

    /// Rotates the certificate at 70–90% of its lifetime (jittered, so nodes started together
    /// do not all ask at once) until `term`; a failed rotation is retried while the old one is
    /// still valid.
    pub async fn keep_fresh(self: Arc<Self>, bootstrap: Client, term: CancellationToken) {
        let mut retry = None;
        loop {
            let cert = self.certificate();
            let wait = retry.take().unwrap_or_else(|| {
                rotate_after(cert.not_before, cert.not_after, SystemTime::now(), rand::random::<f64>())
            });
            tokio::select! {
                _ = term.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let rotated = tokio::select! {
                _ = term.cancelled() => return,
                r = self.rotate(&bootstrap) => r,
            };
            if let Err(e) = rotated {
                let left = cert.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                tracing::warn!(node = %self.node, error = %e, left_s = left.as_secs(), "node client certificate rotation failed; retrying");
                retry = Some(ROTATION_RETRY);
            }
        }
    }
}

/// How long from `now` until a certificate valid from `not_before` to `not_after` should be
/// replaced: at 70% of its lifetime plus up to 20% more by `jitter` (0..1).
pub fn rotate_after(not_before: SystemTime, not_after: SystemTime, now: SystemTime, jitter: f64) -> Duration {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + lifetime.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0));
    at.duration_since(now).unwrap_or_default()
}

/// A client service that sends each request through the current lane, so clients handed out
/// before a rotation (and the watches they restart) use the new certificate.
#[derive(Clone)]
struct Rotating {
    lanes: Arc<ArcSwap<Lanes>>,
    lane: Lane,
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    Pods,
    Events,
    Heartbeat,
    Reviews,
}

impl tower::Service<http::Request<kube::client::Body>> for Rotating {
    type Response = http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness (rate and concurrency limits) is the lane client's, awaited in `send`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let lanes = self.lanes.load();
        let client = match self.lane {
            Lane::Pods => lanes.pods.clone(),
            Lane::Events => lanes.events.clone(),
            Lane::Heartbeat => lanes.heartbeat.clone(),
            Lane::Reviews => lanes.reviews.clone(),
        };
        Box::pin(async move { client.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;
    use k8s_openapi::api::core::v1::{ConfigMap, Node};
    use kube::Api;

    use super::*;

    /// A stand-in apiserver: ConfigMap reads take `slow`, Node reads answer at once; both 404.
    /// Returns its config and how many Node reads it served.
    async fn apiserver(slow: Duration) -> (Config, Arc<AtomicUsize>) {
        let node_reads = Arc::new(AtomicUsize::new(0));
        let seen = node_reads.clone();
        let not_found = || {
            let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            (StatusCode::NOT_FOUND, [("content-type", "application/json")], status)
        };
        let app = Router::new()
            .route(
                "/api/v1/namespaces/default/configmaps/{name}",
                get(move || async move {
                    tokio::time::sleep(slow).await;
                    not_found()
                }),
            )
            .route(
                "/api/v1/nodes/{name}",
                get(move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move { not_found() }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Config::new(format!("http://{addr}").parse().unwrap()), node_reads)
    }

    /// A node's clients against [`apiserver`] with slow ConfigMap reads, the pod lane holding 2
    /// requests in flight.
    async fn shared_clients() -> NodeClients {
        let (base, _) = apiserver(Duration::from_secs(2)).await;
        let limits = ApiLimits { max_in_flight: 2, node_credentials: NodeCredentials::Shared, ..ApiLimits::default() };
        let bootstrap = apiclient::limited(base.clone(), &limits).unwrap();
        let lanes = LaneLimits {
            pods: limits.clone(),
            pods_in_flight: apiclient::in_flight_budget(&limits),
            reviews: ApiLimits::default(),
            fence: None,
        };
        let (clients, identity) = node_clients(&bootstrap, &base, "n", &lanes).await.unwrap();
        assert!(identity.is_none());
        clients
    }

    /// 20 slow requests on `lane`, holding every request it may have in flight for seconds; then
    /// how long a quick read on `other` took.
    async fn quick_read_beside_a_burst(lane: &Client, other: &Client) -> Duration {
        let cms: Api<ConfigMap> = Api::namespaced(lane.clone(), "default");
        let burst: Vec<_> = (0..20)
            .map(|i| {
                let cms = cms.clone();
                tokio::spawn(async move { cms.get_opt(&format!("cm-{i}")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let nodes: Api<Node> = Api::all(other.clone());
        assert!(nodes.get_opt("n").await.unwrap().is_none());
        let took = started.elapsed();
        for b in burst {
            b.abort();
        }
        took
    }

    #[tokio::test]
    async fn heartbeats_do_not_wait_behind_a_burst_of_pod_requests() {
        let clients = shared_clients().await;
        let took = quick_read_beside_a_burst(&clients.pods, &clients.heartbeat).await;
        assert!(took < Duration::from_millis(500), "heartbeat waited {took:?}");
    }

    #[tokio::test]
    async fn pod_requests_do_not_wait_behind_a_burst_of_events() {
        let clients = shared_clients().await;
        let took = quick_read_beside_a_burst(&clients.events, &clients.pods).await;
        assert!(took < Duration::from_millis(500), "the pod lane waited {took:?}");
    }

    #[tokio::test]
    async fn clients_handed_out_before_a_rotation_use_the_new_certificate() {
        let ((old, old_reads), (new, new_reads)) = (apiserver(Duration::ZERO).await, apiserver(Duration::ZERO).await);
        let limits = ApiLimits::default();
        let lanes_for = |config: &Config| Lanes {
            cert: ClientCert {
                cert_pem: String::new(),
                key_pem: String::new(),
                not_before: SystemTime::now(),
                not_after: SystemTime::now(),
                csr: "test".into(),
            },
            pods: apiclient::limited(config.clone(), &limits).unwrap(),
            events: apiclient::limited(config.clone(), &limits).unwrap(),
            heartbeat: apiclient::limited(config.clone(), &limits).unwrap(),
            reviews: apiclient::limited(config.clone(), &limits).unwrap(),
        };
        let identity = NodeIdentity {
            node: "n".into(),
            base: old.clone(),
            limits: LaneLimits {
                pods: limits.clone(),
                pods_in_flight: apiclient::in_flight_budget(&limits),
                reviews: limits.clone(),
                fence: None,
            },
            lanes: Arc::new(ArcSwap::from_pointee(lanes_for(&old))),
        };
        let clients = identity.clients();
        let (pods, beat): (Api<Node>, Api<Node>) = (Api::all(clients.pods), Api::all(clients.heartbeat));
        pods.get_opt("n").await.unwrap();
        beat.get_opt("n").await.unwrap();
        assert_eq!((old_reads.load(Ordering::SeqCst), new_reads.load(Ordering::SeqCst)), (2, 0));
        // What `rotate` does once the new certificate is issued.
        identity.lanes.store(Arc::new(lanes_for(&new)));
        pods.get_opt("n").await.unwrap();
        beat.get_opt("n").await.unwrap();
        assert_eq!((old_reads.load(Ordering::SeqCst), new_reads.load(Ordering::SeqCst)), (2, 2));
    }

    #[test]
    fn rotation_falls_between_70_and_90_percent_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        assert_eq!(rotate_after(start, end, start, 0.0), Duration::from_secs(700));
        assert_eq!(rotate_after(start, end, start, 1.0), Duration::from_secs(900));
        let mid = rotate_after(start, end, start, 0.5);
        assert!(mid > Duration::from_secs(700) && mid < Duration::from_secs(900), "{mid:?}");
        // Later in life, the wait shrinks; past the point, rotate at once.
        assert_eq!(rotate_after(start, end, start + Duration::from_secs(600), 0.0), Duration::from_secs(100));
        assert_eq!(rotate_after(start, end, start + Duration::from_secs(950), 1.0), Duration::ZERO);
    }
}
