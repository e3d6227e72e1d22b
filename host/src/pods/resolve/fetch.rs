//! The I/O half of resolving: which objects a pod names, and reading them (ConfigMaps and Secrets
//! from the node's reference watches, a per-namespace cache of Services for service links,
//! TokenRequests for projected tokens).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::watched::{HeldObjects, Kind, ObjectKey, Seen};
use super::{FetchError, References, all_containers};

/// How long a namespace's Services are reused for service-link variables.
pub const SERVICE_TTL: Duration = Duration::from_secs(2);

/// Services per namespace, for service-link variables: read once per TTL however many pods of the
/// namespace start at once (a 200-pod burst used to list them 200 times, plus 200 reads of
/// `default/kubernetes`). The kubelet takes Services from an informer: just as eventually
/// consistent.
pub struct ServiceCache {
    ttl: Duration,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<(Instant, Arc<Vec<Service>>)>>>>>,
}

impl ServiceCache {
    pub fn new(ttl: Duration) -> Self {
        ServiceCache { ttl, slots: Mutex::new(HashMap::new()) }
    }

    /// The namespace's Services: the cached list while younger than the TTL, else `load`'s.
    /// Concurrent callers for one namespace wait for a single load; a failed load is not kept.
    pub async fn get_or_load<F, Fut, E>(&self, namespace: &str, load: F) -> Result<Arc<Vec<Service>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Service>, E>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap();
            if !slots.contains_key(namespace) {
                // Forget namespaces not asked about for a TTL (deleted ones, finished bursts),
                // so the map holds only what is in use.
                let ttl = self.ttl;
                slots.retain(|_, slot| {
                    Arc::strong_count(slot) > 1
                        || slot.try_lock().map_or(true, |s| s.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl))
                });
            }
            slots.entry(namespace.to_owned()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some((at, services)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(services.clone());
        }
        let services = Arc::new(load().await?);
        *slot = Some((Instant::now(), services.clone()));
        Ok(services)
    }

    async fn list(&self, client: &Client, namespace: &str) -> Result<Arc<Vec<Service>>, kube::Error> {
        self.get_or_load(namespace, || async {
            Ok(Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items)
        })
        .await
    }
}

/// Reads every object `pod` references. Missing objects are recorded as `None`, not errors.
/// ConfigMaps and Secrets come from `watches` (no request once watched), or from a GET where the
/// watch cannot tell.
pub async fn fetch(
    client: &Client,
    services: &ServiceCache,
    watches: &impl HeldObjects,
    pod: &Pod,
) -> Result<References, FetchError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut refs = References::default();
    let names = referenced_names(pod);
    let api_err = |what: String| move |source| FetchError::Api { what, source };

    let key = |kind, name: &String| ObjectKey { kind, namespace: ns.clone(), name: name.clone() };
    let secret_names: BTreeSet<String> = names.secrets.into_iter().chain(names.pull_secrets).collect();
    let keys: Vec<ObjectKey> = names
        .config_maps
        .iter()
        .map(|n| key(Kind::ConfigMap, n))
        .chain(secret_names.iter().map(|n| key(Kind::Secret, n)))
        .collect();
    // First reads of several objects wait for their watches' first lists together.
    let seen = futures::future::join_all(keys.iter().map(|k| watches.read(k))).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (key, seen) in keys.into_iter().zip(seen) {
        let name = key.name;
        match (key.kind, seen) {
            (Kind::ConfigMap, Some(Seen::ConfigMap(cm))) => {
                refs.config_maps.insert(name, Some(cm.as_ref().clone()));
            }
            (Kind::Secret, Some(Seen::Secret(s))) => {
                refs.secrets.insert(name, Some(s.as_ref().clone()));
            }
            (Kind::ConfigMap, Some(Seen::Absent)) => {
                refs.config_maps.insert(name, None);
            }
            (Kind::Secret, Some(Seen::Absent)) => {
                refs.secrets.insert(name, None);
            }
            (Kind::ConfigMap, _) => {
                let got = cms.get_opt(&name).await.map_err(api_err(format!("ConfigMap {ns}/{name}")))?;
                refs.config_maps.insert(name, got);
            }
            (Kind::Secret, _) => {
                let got = secrets.get_opt(&name).await.map_err(api_err(format!("Secret {ns}/{name}")))?;
                refs.secrets.insert(name, got);
            }
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for name in names.claims {
        let got = pvcs.get_opt(&name).await.map_err(api_err(format!("PersistentVolumeClaim {ns}/{name}")))?;
        if let Some(pv_name) = got.as_ref().and_then(|c| c.spec.as_ref()).and_then(|s| s.volume_name.clone()) {
            if let Some(pv) = pvs.get_opt(&pv_name).await.map_err(api_err(format!("PersistentVolume {pv_name}")))? {
                refs.volumes.insert(name.clone(), pv);
            }
        }
        refs.claims.insert(name, got);
    }
    if spec.enable_service_links.unwrap_or(true) {
        refs.services =
            services.list(client, &ns).await.map_err(api_err(format!("Services in {ns}")))?.as_ref().clone();
    }
    // The `kubernetes` service's variables are injected into every pod.
    if ns != "default"
        && let Ok(default) = services.list(client, "default").await
        && let Some(k) = default.iter().find(|s| s.metadata.name.as_deref() == Some("kubernetes"))
    {
        refs.services.retain(|s| s.metadata.name.as_deref() != Some("kubernetes"));
        refs.services.push(k.clone());
    }
    for (volume, path, audience, seconds) in names.token_projections {
        let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
        let (token, expiry) = mint_token(client, &ns, &sa, pod, &audience, seconds)
            .await
            .map_err(api_err(format!("token for ServiceAccount {ns}/{sa}")))?;
        refs.tokens.insert(volume, (path, token, expiry, audience));
    }
    Ok(refs)
}

/// What `pod` references, taken from objects at hand instead of the cluster (for a dry run of a
/// manifest): the ConfigMaps and Secrets given by name (the others missing), no claims, no
/// Services, and a stand-in for each service-account token (none is minted).
pub fn offline_references(
    pod: &Pod,
    config_maps: &BTreeMap<String, ConfigMap>,
    secrets: &BTreeMap<String, Secret>,
) -> References {
    let names = referenced_names(pod);
    let mut refs = References::default();
    for name in names.config_maps {
        refs.config_maps.insert(name.clone(), config_maps.get(&name).cloned());
    }
    for name in names.secrets.into_iter().chain(names.pull_secrets) {
        refs.secrets.insert(name.clone(), secrets.get(&name).cloned());
    }
    for name in names.claims {
        refs.claims.insert(name, None);
    }
    for (volume, path, audience, _) in names.token_projections {
        refs.tokens.insert(volume, (path, "dry-run-token".into(), "2099-01-01T00:00:00Z".into(), audience));
    }
    refs
}

/// Mints a token bound to the pod with the TokenRequest API, as the kubelet does for projected
/// service-account volumes.
async fn mint_token(
    client: &Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
    audience: &str,
    seconds: i64,
) -> Result<(String, String), kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({
        "expirationSeconds": seconds,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod.metadata.name, "uid": pod.metadata.uid},
    });
    if !audience.is_empty() {
        spec["audiences"] = json!([audience]);
    }
    let req: TokenRequest = serde_json::from_value(json!({"spec": spec})).expect("token request");
    let resp: TokenRequest = api.create_subresource("token", sa, &PostParams::default(), &req).await?;
    let status = resp.status.unwrap_or_default();
    let expiry = status.expiration_timestamp.map(|t| t.0.to_string()).unwrap_or_default();
    Ok((status.token.unwrap_or_default(), expiry))
}

#[derive(Default)]
pub(crate) struct Names {
    /// Referenced by volumes, projections and env.
    pub(crate) config_maps: BTreeSet<String>,
    pub(crate) secrets: BTreeSet<String>,
    /// `spec.imagePullSecrets`: read for the pull, never watched for changes.
    pub(crate) pull_secrets: BTreeSet<String>,
    pub(crate) claims: BTreeSet<String>,
    /// (volume name, token path, audience, expiration seconds)
    pub(crate) token_projections: Vec<(String, String, String, i64)>,
}

pub(crate) fn referenced_names(pod: &Pod) -> Names {
    let mut n = Names::default();
    let spec = pod.spec.clone().unwrap_or_default();
    for c in all_containers(pod) {
        for e in c.env.iter().flatten() {
            if let Some(vf) = &e.value_from {
                if let Some(r) = &vf.config_map_key_ref {
                    n.config_maps.insert(r.name.clone());
                }
                if let Some(r) = &vf.secret_key_ref {
                    n.secrets.insert(r.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                n.config_maps.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                n.secrets.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            n.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            if let Some(name) = &s.secret_name {
                n.secrets.insert(name.clone());
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            n.claims.insert(c.claim_name.clone());
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    n.config_maps.insert(cm.name.clone());
                }
                if let Some(s) = &src.secret {
                    n.secrets.insert(s.name.clone());
                }
                if let Some(t) = &src.service_account_token {
                    n.token_projections.push((
                        v.name.clone(),
                        t.path.clone(),
                        t.audience.clone().unwrap_or_default(),
                        t.expiration_seconds.unwrap_or(3607).max(600),
                    ));
                }
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        n.pull_secrets.insert(s.name.clone());
    }
    n
}

/// The ConfigMaps and Secrets whose contents reach a pod's containers (volumes, projections, env),
/// by name: what a change of must be told to the provider. Image pull secrets are left out (a
/// running instance has pulled already).
pub fn watched_names(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let n = referenced_names(pod);
    (n.config_maps, n.secrets)
}

#[cfg(test)]
mod service_cache_tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn svc(name: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    #[tokio::test]
    async fn concurrent_pods_of_a_namespace_share_one_list() {
        let cache = ServiceCache::new(Duration::from_secs(60));
        let loads = AtomicU32::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, ()>(vec![svc("web")])
        };
        let all = futures::future::join_all((0..20).map(|_| cache.get_or_load("ns1", load))).await;
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(all.iter().all(|r| r.as_ref().unwrap()[0].metadata.name.as_deref() == Some("web")));
        // Another namespace is its own entry.
        cache.get_or_load("ns2", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_list_is_read_again_an_idle_namespace_forgotten_and_a_failure_not_kept() {
        let cache = ServiceCache::new(Duration::from_millis(50));
        let loads = AtomicU32::new(0);
        let ok = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, &str>(vec![svc("a")])
        };
        cache.get_or_load("ns", ok).await.unwrap();
        cache.get_or_load("ns", ok).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        cache.get_or_load("ns", ok).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        // A namespace not asked about for a TTL is forgotten when another one is first asked.
        tokio::time::sleep(Duration::from_millis(60)).await;
        cache.get_or_load("other", ok).await.unwrap();
        assert_eq!(cache.slots.lock().unwrap().keys().collect::<Vec<_>>(), ["other"]);

        let failing = ServiceCache::new(Duration::from_secs(60));
        assert_eq!(
            failing.get_or_load("ns", || async { Err::<Vec<Service>, _>("apiserver down") }).await.unwrap_err(),
            "apiserver down"
        );
        failing.get_or_load("ns", ok).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 4, "the failure was not cached");
    }
}
