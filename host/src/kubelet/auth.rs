//! Who is calling and may they: x509 client certificates and TokenReview for authentication,
//! SubjectAccessReview on `nodes/<subresource>` for authorization, both cached briefly.
//!
//! Anyone who reaches the port can make us ask the apiserver about a made-up token, so reviews
//! run on their own Kubernetes client (their rate limit is not the one node Leases renew on),
//! identical ones run once for all who wait on them, unknown tokens are remembered as such, and
//! only a bounded number of TokenReviews is ever in flight: past it, callers are told to retry.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use sha2::{Digest, Sha256};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The identity a verified client certificate carries: CN is the user, each O a group, as the
/// apiserver's own x509 authenticator reads it. Like it, an empty CN is no identity (the caller
/// may still authenticate with a token) rather than a nameless user whose groups get reviewed.
pub fn user_from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    if name.is_empty() {
        return None;
    }
    let groups = cert.subject().iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(UserInfo { name, groups, ..UserInfo::default() })
}

/// What a request asks to do to the node object, in SubjectAccessReview terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub verb: &'static str,
    /// Any one of these being allowed is enough (see [`attributes`]).
    pub subresources: &'static [&'static str],
}

/// The attributes of a request, or `None` for paths anyone may read (`/healthz`).
pub fn attributes(method: &Method, path: &str) -> Option<RequestAttributes> {
    if path == "/healthz" || path.starts_with("/healthz/") {
        return None;
    }
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        // Unknown methods get a verb no role grants, so they are refused by authorization.
        _ => "unknown",
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    // Opening a stream into a container is `create` whatever the method. A WebSocket upgrade
    // comes as a GET, which upstream kubelets authorize as `get`, so a read grant on nodes/proxy
    // (often given to monitoring) runs commands; the apiserver closed the same hole for pods/exec
    // (AuthorizePodWebsocketUpgradeCreatePermission). The apiserver itself holds `create`.
    let streaming = ["/exec", "/attach", "/portForward", "/run"].into_iter().any(under);
    let verb = if streaming { "create" } else { verb };
    // The kubelet's own table: `nodes/log` covers the node's log files under /logs only; pod
    // logs (/containerLogs), like everything else, need `nodes/proxy`.
    let subresources: &'static [&'static str] = if under("/stats") {
        &["stats"]
    } else if under("/metrics") {
        &["metrics"]
    } else if under("/logs") {
        &["log"]
    } else {
        &["proxy"]
    };
    Some(RequestAttributes { verb, subresources })
}

/// The bearer token of a request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Why a caller could not be authenticated or authorized (as opposed to being refused). Cloned
/// because one review's outcome is handed to every request that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview failed: {0}")]
    TokenReview(String),
    #[error("SubjectAccessReview failed: {0}")]
    SubjectAccessReview(String),
    #[error("{0} TokenReviews are already awaiting the apiserver; not starting another")]
    Busy(usize),
}

/// A small map whose entries expire, bounded so distinct callers cannot grow it without limit.
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity: capacity.max(1), entries: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    pub fn insert(&self, key: K, value: V) {
        self.insert_at(key, value, Instant::now())
    }

    /// [`Self::get`] as of `now` (tests give the clock; the cache itself never sleeps).
    fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl).map(|(_, v)| v.clone())
    }

    fn insert_at(&self, key: K, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if entries.len() >= self.capacity {
                // Still full of live entries: drop the oldest one.
                if let Some(oldest) = entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (now, value));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Runs concurrent calls for the same key once: the first caller runs it, the others wait for
/// its result. A key is forgotten as soon as its call has finished or nobody waits on it any more,
/// so the map holds no more keys than there are callers waiting.
struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<tokio::sync::OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    fn new() -> Self {
        Self { calls: Mutex::new(HashMap::new()) }
    }

    async fn run<F, Fut>(&self, key: K, call: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.calls.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
        let flight = Flight { calls: &self.calls, key, cell };
        // If the caller running the call goes away, tokio's OnceCell lets a waiter run it instead.
        flight.cell.get_or_init(call).await.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One caller's share of a [`SingleFlight`] call; forgets the call when it is done or when the
/// last waiter leaves (a cancelled request must not leave its key behind).
struct Flight<'a, K: Eq + Hash, V> {
    calls: &'a Mutex<HashMap<K, Arc<tokio::sync::OnceCell<V>>>>,
    key: K,
    cell: Arc<tokio::sync::OnceCell<V>>,
}

impl<K: Eq + Hash, V> Drop for Flight<'_, K, V> {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let ours = calls.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell));
        // Two references: the map's and ours, so no one else waits on this call.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            calls.remove(&self.key);
        }
    }
}

type TokenKey = [u8; 32];
type DecisionKey = (UserInfo, &'static str, &'static str);

/// Authenticates tokens and authorizes requests against the cluster, for one node.
pub struct Authorizer {
    /// The client reviews go through: not the one that renews node Leases, so no flood of
    /// reviews can spend that one's rate limit.
    kube: kube::Client,
    node: String,
    /// Tokens the apiserver accepted, and apart from them the ones it refused, so a flood of made-up
    /// tokens cannot push out the good ones.
    tokens: TtlCache<TokenKey, UserInfo>,
    rejected: TtlCache<TokenKey, ()>,
    decisions: TtlCache<DecisionKey, bool>,
    token_reviews: SingleFlight<TokenKey, Result<Option<UserInfo>, AuthError>>,
    access_reviews: SingleFlight<DecisionKey, Result<bool, AuthError>>,
    /// TokenReviews in flight; the requests of unauthenticated callers never wait for one.
    in_flight: tokio::sync::Semaphore,
    max_in_flight: usize,
    /// Tokens the apiserver accepted within the last [`KNOWN_TOKEN_TTLS`] cache lifetimes. When
    /// one's cached answer expires, its new review may use `renewals` when `in_flight` is full: a
    /// storm of made-up tokens keeps every general permit taken, and without these a caller with
    /// a good token got 429 on every request from its cache expiry to the storm's end.
    known: TtlCache<TokenKey, ()>,
    renewals: tokio::sync::Semaphore,
}

/// How many cache lifetimes an accepted token stays entitled to the reserved review permits.
const KNOWN_TOKEN_TTLS: u32 = 10;

impl Authorizer {
    /// `kube` should be a client of its own (see [`Authorizer::kube`]); `max_in_flight` bounds the
    /// TokenReviews awaiting the apiserver at once.
    pub fn new(kube: kube::Client, node: String, ttl: Duration, capacity: usize, max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            kube,
            node,
            tokens: TtlCache::new(ttl, capacity),
            rejected: TtlCache::new(ttl, capacity),
            decisions: TtlCache::new(ttl, capacity),
            token_reviews: SingleFlight::new(),
            access_reviews: SingleFlight::new(),
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
            max_in_flight,
            known: TtlCache::new(ttl.saturating_mul(KNOWN_TOKEN_TTLS), capacity),
            // A quarter of the general bound, at least one: re-reviews come once per token per TTL.
            renewals: tokio::sync::Semaphore::new((max_in_flight / 4).max(1)),
        }
    }

    /// The user behind a bearer token; `None` when the apiserver does not know the token.
    /// [`AuthError::Busy`] when the token is new and too many reviews are already in flight.
    pub async fn authenticate_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        // Keyed by digest so the cache never holds credentials.
        let key: TokenKey = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.tokens.get(&key) {
            return Ok(Some(user));
        }
        if self.rejected.get(&key).is_some() {
            return Ok(None);
        }
        self.token_reviews.run(key, || self.review_token(key, token)).await
    }

    async fn review_token(&self, key: TokenKey, token: &str) -> Result<Option<UserInfo>, AuthError> {
        let permit = match self.in_flight.try_acquire() {
            Ok(p) => p,
            Err(_) if self.known.get(&key).is_some() => {
                self.renewals.try_acquire().map_err(|_| AuthError::Busy(self.max_in_flight))?
            }
            Err(_) => return Err(AuthError::Busy(self.max_in_flight)),
        };
        let _permit = permit;
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: None },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.kube.clone());
        let result =
            api.create(&PostParams::default(), &review).await.map_err(|e| AuthError::TokenReview(e.to_string()))?;
        let user = result.status.filter(|s| s.authenticated == Some(true)).and_then(|s| s.user).map(|u| UserInfo {
            name: u.username.unwrap_or_default(),
            uid: u.uid.unwrap_or_default(),
            groups: u.groups.unwrap_or_default(),
            extra: u.extra.unwrap_or_default(),
        });
        match &user {
            Some(user) => {
                self.tokens.insert(key, user.clone());
                self.known.insert(key, ());
            }
            None => self.rejected.insert(key, ()),
        }
        Ok(user)
    }

    /// Whether the user may do `attrs` to this node.
    pub async fn authorize(&self, user: &UserInfo, attrs: &RequestAttributes) -> Result<bool, AuthError> {
        for subresource in attrs.subresources {
            if self.allowed(user, attrs.verb, subresource).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn allowed(&self, user: &UserInfo, verb: &'static str, subresource: &'static str) -> Result<bool, AuthError> {
        let key = (user.clone(), verb, subresource);
        if let Some(allowed) = self.decisions.get(&key) {
            return Ok(allowed);
        }
        self.access_reviews.run(key.clone(), || self.review_access(key)).await
    }

    async fn review_access(&self, key: DecisionKey) -> Result<bool, AuthError> {
        let (user, verb, subresource) = (&key.0, key.1, key.2);
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(String::new()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node.clone()),
                    verb: Some(verb.into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.kube.clone());
        let result = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::SubjectAccessReview(e.to_string()))?;
        let allowed = result.status.is_some_and(|s| s.allowed);
        self.decisions.insert(key, allowed);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use k8s_openapi::api::coordination::v1::Lease;

    use super::stand_in::{Apiserver, GOOD_TOKEN};
    use super::*;
    use crate::apiclient::ApiLimits;

    fn loose() -> ApiLimits {
        ApiLimits { qps: 10_000, burst: 10_000, max_in_flight: 64, ..ApiLimits::default() }
    }

    async fn authorizer(api: &Apiserver, capacity: usize, in_flight: usize) -> Authorizer {
        let reviews = api.client("reviews", &loose()).await;
        Authorizer::new(reviews, "vk-1".into(), Duration::from_secs(60), capacity, in_flight)
    }

    #[tokio::test]
    async fn a_flood_of_made_up_tokens_is_turned_away_without_delaying_the_lease_client() {
        let api = Apiserver::start(Duration::from_millis(200)).await;
        // The node's own client, which renews Leases, with a small in-flight bound of its own.
        let main =
            api.client("main", &ApiLimits { qps: 100, burst: 100, max_in_flight: 4, ..ApiLimits::default() }).await;
        let authz = authorizer(&api, 1024, 4).await;
        let started = Instant::now();
        let flood = futures::future::join_all((0..300).map(|i| {
            let authz = &authz;
            async move { authz.authenticate_token(&format!("made-up-{i}")).await }
        }));
        let leases = async {
            let leases: kube::Api<Lease> = kube::Api::namespaced(main.clone(), "kube-node-lease");
            let t = Instant::now();
            for i in 0..10 {
                assert!(leases.get_opt(&format!("vk-{i}")).await.unwrap().is_none());
            }
            t.elapsed()
        };
        let (results, lease_time) = tokio::join!(flood, leases);
        let flood_time = started.elapsed();
        let busy = results.iter().filter(|r| matches!(r, Err(AuthError::Busy(4)))).count();
        let refused = results.iter().filter(|r| matches!(r, Ok(None))).count();
        assert_eq!(busy + refused, 300, "{results:?}");
        assert!((1..=4).contains(&refused), "only the reviews in flight are answered, got {refused}");
        assert!(api.counts.peak.load(Ordering::SeqCst) <= 4, "peak {}", api.counts.peak.load(Ordering::SeqCst));
        assert_eq!(api.counts.token_reviews_by("main"), 0, "no review went through the lease client");
        // Queued behind 300 reviews of 200 ms, four at a time, the flood would take 15 s.
        assert!(flood_time < Duration::from_secs(2), "flood answered in {flood_time:?}");
        assert!(lease_time < Duration::from_secs(1), "10 lease reads took {lease_time:?} during the flood");
    }

    #[tokio::test]
    async fn a_refused_token_is_remembered_and_not_reviewed_again() {
        let api = Apiserver::start(Duration::ZERO).await;
        let authz = authorizer(&api, 1024, 4).await;
        for _ in 0..3 {
            assert_eq!(authz.authenticate_token("made-up").await.unwrap(), None);
        }
        assert_eq!(api.counts.token_reviews_by("reviews"), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_token_share_one_review() {
        let api = Apiserver::start(Duration::from_millis(100)).await;
        // One review in flight at most: the waiters must not need one of their own.
        let authz = authorizer(&api, 1024, 1).await;
        let good = futures::future::join_all((0..50).map(|_| authz.authenticate_token(GOOD_TOKEN))).await;
        assert!(good.iter().all(|r| matches!(r, Ok(Some(u)) if u.name == "alice")), "{good:?}");
        let bad = futures::future::join_all((0..50).map(|_| authz.authenticate_token("made-up"))).await;
        assert!(bad.iter().all(|r| matches!(r, Ok(None))), "{bad:?}");
        assert_eq!(api.counts.token_reviews_by("reviews"), 2);
        assert_eq!(authz.token_reviews.len(), 0, "finished reviews are forgotten");

        let user = UserInfo { name: "alice".into(), ..UserInfo::default() };
        let attrs = RequestAttributes { verb: "get", subresources: &["stats"] };
        let allowed = futures::future::join_all((0..20).map(|_| authz.authorize(&user, &attrs))).await;
        assert!(allowed.iter().all(|r| matches!(r, Ok(true))), "{allowed:?}");
        assert_eq!(api.counts.access_reviews.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn made_up_tokens_do_not_push_accepted_ones_out_of_the_cache() {
        let api = Apiserver::start(Duration::ZERO).await;
        let authz = authorizer(&api, 4, 4).await;
        assert!(authz.authenticate_token(GOOD_TOKEN).await.unwrap().is_some());
        for i in 0..10 {
            assert_eq!(authz.authenticate_token(&format!("made-up-{i}")).await.unwrap(), None);
        }
        assert!(authz.authenticate_token(GOOD_TOKEN).await.unwrap().is_some());
        assert_eq!(api.counts.token_reviews_by("reviews"), 11, "the accepted token was reviewed once");
    }

    #[tokio::test]
    async fn an_accepted_token_whose_cache_expired_is_reviewed_again_while_made_up_ones_fill_the_lane() {
        // Reviews are held 2 s, so the made-up one still holds the lane when the others come.
        let api = Apiserver::start(Duration::from_secs(2)).await;
        let reviews = api.client("reviews", &loose()).await;
        // One general permit; cached answers last 1 s, so the accepted token stays known for 10 s.
        let authz = Authorizer::new(reviews, "vk-1".into(), Duration::from_secs(1), 1024, 1);
        assert!(authz.authenticate_token(GOOD_TOKEN).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(1100)).await; // at least the TTL: the answer expired
        let (made_up, (good, stranger)) = tokio::join!(authz.authenticate_token("made-up"), async {
            // Once the stand-in holds the made-up token's review, the only general permit is taken.
            let deadline = Instant::now() + Duration::from_secs(60);
            while api.counts.token_reviews_by("reviews") < 2 {
                assert!(Instant::now() < deadline, "the made-up token's review never arrived");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::join!(authz.authenticate_token(GOOD_TOKEN), authz.authenticate_token("never-seen"))
        });
        assert_eq!(made_up.unwrap(), None);
        assert!(matches!(&good, Ok(Some(u)) if u.name == "alice"), "the known token was turned away: {good:?}");
        assert!(matches!(stranger, Err(AuthError::Busy(1))), "a new token gets no reserved permit: {stranger:?}");
        assert_eq!(api.counts.token_reviews_by("reviews"), 3);
    }

    #[tokio::test]
    async fn a_failed_review_is_not_cached() {
        let api = Apiserver::start(Duration::ZERO).await;
        let authz = authorizer(&api, 1024, 4).await;
        api.counts.failing.store(true, Ordering::SeqCst);
        assert!(matches!(authz.authenticate_token(GOOD_TOKEN).await, Err(AuthError::TokenReview(_))));
        api.counts.failing.store(false, Ordering::SeqCst);
        assert!(authz.authenticate_token(GOOD_TOKEN).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_call_nobody_waits_for_any_more_is_forgotten() {
        let flights: SingleFlight<u32, u32> = SingleFlight::new();
        let abandoned = tokio::time::timeout(Duration::from_millis(20), flights.run(1, std::future::pending)).await;
        assert!(abandoned.is_err());
        assert_eq!(flights.len(), 0);
        // A waiter takes over when the caller running the call goes away.
        let (first, second) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(20), flights.run(2, std::future::pending)),
            flights.run(2, || async {
                tokio::time::sleep(Duration::from_millis(40)).await;
                7
            }),
        );
        assert!(first.is_err());
        assert_eq!(second, 7);
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn healthz_needs_no_authorization() {
        assert_eq!(attributes(&Method::GET, "/healthz"), None);
    }

    #[test]
    fn paths_map_to_the_kubelet_subresources() {
        let sub = |m: Method, p: &str| attributes(&m, p).unwrap();
        assert_eq!(sub(Method::GET, "/stats/summary"), RequestAttributes { verb: "get", subresources: &["stats"] });
        assert_eq!(sub(Method::GET, "/metrics/resource").subresources, &["metrics"]);
        assert_eq!(sub(Method::GET, "/containerLogs/ns/p/c").subresources, &["proxy"]);
        assert_eq!(sub(Method::GET, "/logs/messages").subresources, &["log"]);
        for path in ["/attach/ns/p/c", "/portForward/ns/p", "/run/ns/p/c", "/runningpods/", "/exec/ns/p/uid/c"] {
            assert_eq!(sub(Method::POST, path).subresources, &["proxy"], "{path}");
        }
        assert_eq!(sub(Method::POST, "/exec/ns/p/c"), RequestAttributes { verb: "create", subresources: &["proxy"] });
        assert_eq!(sub(Method::GET, "/exec/ns/p/c").verb, "create", "a WebSocket exec is a create");
        for path in ["/attach/ns/p/c", "/portForward/ns/p", "/run/ns/p/c", "/exec/ns/p/uid/c"] {
            assert_eq!(sub(Method::GET, path).verb, "create", "{path}");
        }
        assert_eq!(sub(Method::GET, "/execute").verb, "get", "a look-alike prefix is not exec");
        assert_eq!(sub(Method::GET, "/pods").subresources, &["proxy"]);
        assert_eq!(sub(Method::DELETE, "/pods").verb, "delete");
        // A look-alike prefix is not the stats endpoint.
        assert_eq!(sub(Method::GET, "/statsz").subresources, &["proxy"]);
    }

    #[test]
    fn bearer_token_is_read_case_insensitively_and_empty_ones_ignored() {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
        h.insert(http::header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn certificate_subject_gives_user_and_groups() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        let cert = params.self_signed(&key).unwrap();
        let user = user_from_certificate(cert.der()).unwrap();
        assert_eq!(user.name, "kube-apiserver-kubelet-client");
        assert_eq!(user.groups, vec!["system:masters"]);
    }

    #[test]
    fn a_certificate_with_an_empty_common_name_is_no_identity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(user_from_certificate(cert.der()), None);
    }

    #[test]
    fn cached_decisions_expire() {
        let cache = TtlCache::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        cache.insert_at("k", true, t0);
        assert_eq!(cache.get_at(&"k", t0 + Duration::from_millis(29_999)), Some(true));
        assert_eq!(cache.get_at(&"k", t0 + Duration::from_secs(30)), None);
    }

    #[test]
    fn cache_stays_within_its_bound() {
        let cache = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.insert(i, i);
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&9), Some(9));
    }
}

/// A stand-in apiserver for review tests: TokenReviews accept only [`stand_in::GOOD_TOKEN`] after
/// a delay, SubjectAccessReviews allow everything, Lease GETs answer 404 at once; it counts the
/// reviews each client credential sent and the most TokenReviews it held at once.
#[cfg(test)]
pub(super) mod stand_in {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    use crate::apiclient::ApiLimits;

    pub const GOOD_TOKEN: &str = "good-token";

    #[derive(Default)]
    pub struct Counts {
        /// TokenReviews by the bearer token of the client that sent them.
        pub token_reviews: Mutex<HashMap<String, usize>>,
        pub access_reviews: AtomicUsize,
        held: AtomicUsize,
        pub peak: AtomicUsize,
        /// Answer TokenReviews with 500 instead.
        pub failing: std::sync::atomic::AtomicBool,
    }

    impl Counts {
        pub fn token_reviews_by(&self, client: &str) -> usize {
            self.token_reviews.lock().unwrap().get(client).copied().unwrap_or(0)
        }
    }

    pub struct Apiserver {
        pub counts: Arc<Counts>,
        dir: PathBuf,
    }

    impl Drop for Apiserver {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn caller(headers: &HeaderMap) -> String {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        auth.strip_prefix("Bearer ").unwrap_or(auth).to_string()
    }

    impl Apiserver {
        pub async fn start(delay: Duration) -> Apiserver {
            let counts = Arc::new(Counts::default());
            let (c1, c2) = (counts.clone(), counts.clone());
            let app = axum::Router::new()
                .route(
                    "/apis/authentication.k8s.io/v1/tokenreviews",
                    post(move |headers: HeaderMap, Json(review): Json<serde_json::Value>| {
                        let c = c1.clone();
                        async move {
                            *c.token_reviews.lock().unwrap().entry(caller(&headers)).or_default() += 1;
                            let held = c.held.fetch_add(1, Ordering::SeqCst) + 1;
                            c.peak.fetch_max(held, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            c.held.fetch_sub(1, Ordering::SeqCst);
                            if c.failing.load(Ordering::SeqCst) {
                                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": "etcd at 10.9.8.7:2379 is unreachable", "reason": "InternalError", "code": 500});
                                return (StatusCode::INTERNAL_SERVER_ERROR, Json(status));
                            }
                            let good = review["spec"]["token"] == GOOD_TOKEN;
                            let mut answer = review.clone();
                            answer["status"] = if good {
                                serde_json::json!({"authenticated": true, "user": {"username": "alice", "groups": ["devs"]}})
                            } else {
                                serde_json::json!({"authenticated": false})
                            };
                            (StatusCode::CREATED, Json(answer))
                        }
                    }),
                )
                .route(
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                    post(move |Json(review): Json<serde_json::Value>| {
                        let c = c2.clone();
                        async move {
                            c.access_reviews.fetch_add(1, Ordering::SeqCst);
                            let mut answer = review.clone();
                            answer["status"] = serde_json::json!({"allowed": true});
                            (StatusCode::CREATED, Json(answer))
                        }
                    }),
                )
                .route(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                    get(|| async {
                        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404});
                        (StatusCode::NOT_FOUND, Json(status))
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            let dir =
                std::env::temp_dir().join(format!("vkhost-auth-{}-{}", std::process::id(), rand::random::<u64>()));
            std::fs::create_dir_all(&dir).unwrap();
            for user in ["main", "reviews"] {
                let kubeconfig = format!(
                    "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://{addr}\"}}}}]\n\
                     users: [{{name: u, user: {{token: {user}}}}}]\n\
                     contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
                );
                std::fs::write(dir.join(user), kubeconfig).unwrap();
            }
            Apiserver { counts, dir }
        }

        /// A client whose requests the stand-in attributes to `user` ("main" or "reviews").
        pub async fn client(&self, user: &str, limits: &ApiLimits) -> kube::Client {
            crate::apiclient::client(Some(&self.dir.join(user)), limits).await.unwrap()
        }
    }
}
