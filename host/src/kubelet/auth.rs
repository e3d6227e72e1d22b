//! Who is calling and may they: x509 client certificates and TokenReview for authentication,
//! SubjectAccessReview on `nodes/<subresource>` for authorization, both cached briefly.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
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
/// apiserver's own x509 authenticator reads it.
pub fn user_from_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
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
    let subresources: &'static [&'static str] = if under("/stats") {
        &["stats"]
    } else if under("/metrics") {
        &["metrics"]
    } else if under("/containerLogs") || under("/logs") {
        // Upstream kubelets check `proxy` for containerLogs; `log` is the finer grant. Either
        // suffices so both kinds of RBAC written for kubelets keep working.
        &["log", "proxy"]
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

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview failed: {0}")]
    TokenReview(String),
    #[error("SubjectAccessReview failed: {0}")]
    SubjectAccessReview(String),
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
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // Still full of live entries: drop the oldest one.
                if let Some(oldest) = entries.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

type DecisionKey = (UserInfo, &'static str, &'static str);

/// Authenticates tokens and authorizes requests against the cluster, for one node.
pub struct Authorizer {
    kube: kube::Client,
    node: String,
    tokens: TtlCache<[u8; 32], Option<UserInfo>>,
    decisions: TtlCache<DecisionKey, bool>,
}

impl Authorizer {
    pub fn new(kube: kube::Client, node: String, ttl: Duration, capacity: usize) -> Self {
        Self { kube, node, tokens: TtlCache::new(ttl, capacity), decisions: TtlCache::new(ttl, capacity) }
    }

    /// The user behind a bearer token; `None` when the apiserver does not know the token.
    pub async fn authenticate_token(&self, token: &str) -> Result<Option<UserInfo>, AuthError> {
        // Keyed by digest so the cache never holds credentials.
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(user) = self.tokens.get(&key) {
            return Ok(user);
        }
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
        self.tokens.insert(key, user.clone());
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
    use super::*;

    #[test]
    fn healthz_needs_no_authorization() {
        assert_eq!(attributes(&Method::GET, "/healthz"), None);
    }

    #[test]
    fn paths_map_to_the_kubelet_subresources() {
        let sub = |m: Method, p: &str| attributes(&m, p).unwrap();
        assert_eq!(sub(Method::GET, "/stats/summary"), RequestAttributes { verb: "get", subresources: &["stats"] });
        assert_eq!(sub(Method::GET, "/metrics/resource").subresources, &["metrics"]);
        assert_eq!(sub(Method::GET, "/containerLogs/ns/p/c").subresources, &["log", "proxy"]);
        assert_eq!(sub(Method::POST, "/exec/ns/p/c"), RequestAttributes { verb: "create", subresources: &["proxy"] });
        assert_eq!(sub(Method::GET, "/exec/ns/p/c").verb, "get");
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
    fn cached_decisions_expire() {
        let cache = TtlCache::new(Duration::from_millis(30), 10);
        cache.insert("k", true);
        assert_eq!(cache.get(&"k"), Some(true));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"k"), None);
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
