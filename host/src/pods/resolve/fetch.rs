//! The I/O half of resolving: which objects a pod names, and reading them (ConfigMaps, Secrets
//! and the Services for service links from the node's reference watches, TokenRequests for
//! projected tokens).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::service_links::{MASTER_SERVICE, linked_service};
use super::watched::{HeldObjects, Kind, ObjectKey, Seen};
use super::{FetchError, References, all_containers};

/// Reads every object `pod` references. Missing objects are recorded as `None`, not errors.
/// ConfigMaps, Secrets and the Services of the namespaces service links read come from `watches`
/// (no request once watched), or from a GET (a LIST for Services) where the watch cannot tell.
/// Like the kubelet's informer, the watches are eventually consistent: a Service created a moment
/// before the pod is seen once its event arrived, which is normally before the pod's own.
pub async fn fetch(client: &Client, watches: &impl HeldObjects, pod: &Pod) -> Result<References, FetchError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut refs = References::default();
    let names = referenced_names(pod);
    let api_err = |what: String| move |source| FetchError::Api { what, source };

    let key = |kind, name: &String| ObjectKey { kind, namespace: ns.clone(), name: name.clone() };
    let secret_names: BTreeSet<String> = names.secrets.into_iter().chain(names.pull_secrets).collect();
    let links = spec.enable_service_links.unwrap_or(true);
    let keys: Vec<ObjectKey> = names
        .config_maps
        .iter()
        .map(|n| key(Kind::ConfigMap, n))
        .chain(secret_names.iter().map(|n| key(Kind::Secret, n)))
        .collect();
    let service_keys: Vec<ObjectKey> = service_namespaces(pod).iter().map(|n| ObjectKey::services(n)).collect();
    // First reads of several objects wait for their watches' first lists together.
    let (seen, services_seen) = futures::join!(
        futures::future::join_all(keys.iter().map(|k| watches.read(k))),
        futures::future::join_all(service_keys.iter().map(|k| watches.read(k))),
    );
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
            // Not among `keys`: the Services are read below.
            (Kind::Services, _) => {}
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
    // The pod's namespace first (read when the pod wants links), then `default`, read for the
    // master service alone: a Service of the pod's namespace with its name wins, as in the
    // kubelet; unreadable, the master service is left out.
    for (key, seen) in service_keys.into_iter().zip(services_seen) {
        let namespace = key.namespace;
        let read = services_of(client, &namespace, seen).await;
        if links && namespace == ns {
            refs.services.extend(read.map_err(api_err(format!("Services in {ns}")))?);
        } else if let Ok(default) = read
            && !refs.services.iter().any(|s| s.metadata.name.as_deref() == Some(MASTER_SERVICE))
        {
            refs.services.extend(default.into_iter().filter(|s| s.metadata.name.as_deref() == Some(MASTER_SERVICE)));
        }
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

/// The namespaces whose Services `pod` reads for its service-link variables: its own when it
/// wants links (`enableServiceLinks`, true unless set false), then `default` for the master
/// service, which every pod gets.
pub fn service_namespaces(pod: &Pod) -> Vec<String> {
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    match (links, pod.metadata.namespace.as_deref().unwrap_or_default()) {
        (true, "default") | (false, _) => vec!["default".to_string()],
        (true, ns) => vec![ns.to_string(), "default".to_string()],
    }
}

/// The Services of `namespace` that give service-link variables, each as [`linked_service`]
/// keeps it: what its watch holds, else a LIST.
async fn services_of(client: &Client, namespace: &str, seen: Option<Seen>) -> Result<Vec<Service>, kube::Error> {
    if let Some(Seen::Services(held)) = seen {
        return Ok(held.as_ref().clone());
    }
    let listed = Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
    Ok(listed.items.iter().filter_map(linked_service).collect())
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
