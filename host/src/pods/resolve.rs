//! Resolving a pod: reading every object it references (ConfigMaps, Secrets, PVCs and their PVs,
//! Services for links, service-account tokens minted for it) and computing each container's
//! environment, so the provider gets one self-contained `ResolvedPod` and no credentials.
//! `fetch` does the I/O; `resolve` is a pure function of the pod and what was fetched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::plugin::{self, BinaryEntry, ContainerEnv, KeyValue, ResolvedPod};

/// A referenced object the pod cannot start without.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name} referenced by {field} does not exist; the pod starts once it is created")]
pub struct Missing {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub field: String,
}

impl Missing {
    /// The Event reason upstream kubelets use.
    pub fn reason(&self) -> String {
        format!("Mandatory{}NotFound", self.kind)
    }
}

/// Everything a pod references, as read from the apiserver (`None`: it does not exist).
#[derive(Debug, Default, Clone)]
pub struct References {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    pub claims: BTreeMap<String, Option<PersistentVolumeClaim>>,
    pub volumes: BTreeMap<String, PersistentVolume>,
    pub services: Vec<Service>,
    /// Minted tokens by projected volume name: (path, token, expiry RFC 3339, audience).
    pub tokens: BTreeMap<String, (String, String, String, String)>,
}

/// A resolved pod plus the notes worth an Event (optional objects that were missing).
#[derive(Debug, Clone)]
pub struct Resolution {
    pub pod: ResolvedPod,
    pub warnings: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading {what}: {source}")]
    Api { what: String, source: kube::Error },
}

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
pub async fn fetch(client: &Client, services: &ServiceCache, pod: &Pod) -> Result<References, FetchError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut refs = References::default();
    let names = referenced_names(pod);
    let api_err = |what: String| move |source| FetchError::Api { what, source };

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in names.config_maps {
        let got = cms.get_opt(&name).await.map_err(api_err(format!("ConfigMap {ns}/{name}")))?;
        refs.config_maps.insert(name, got);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in names.secrets.into_iter().chain(names.pull_secrets) {
        if refs.secrets.contains_key(&name) {
            continue;
        }
        let got = secrets.get_opt(&name).await.map_err(api_err(format!("Secret {ns}/{name}")))?;
        refs.secrets.insert(name, got);
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
struct Names {
    /// Referenced by volumes, projections and env.
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
    /// `spec.imagePullSecrets`: read for the pull, never watched for changes.
    pull_secrets: BTreeSet<String>,
    claims: BTreeSet<String>,
    /// (volume name, token path, audience, expiration seconds)
    token_projections: Vec<(String, String, String, i64)>,
}

fn referenced_names(pod: &Pod) -> Names {
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

fn all_containers(pod: &Pod) -> Vec<Container> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers.unwrap_or_default().into_iter().chain(spec.containers).collect()
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
    for name in names.secrets {
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

/// Builds the resolved pod: fails on a missing mandatory reference, skips optional ones with a
/// warning.
pub fn resolve(pod: &Pod, refs: &References) -> Result<Resolution, Missing> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let missing = |kind: &'static str, name: &str, field: String| Missing {
        kind,
        namespace: ns.clone(),
        name: name.into(),
        field,
    };
    let cm_data = |name: &str| -> Option<BTreeMap<String, String>> {
        refs.config_maps.get(name).cloned().flatten().map(|c| c.data.unwrap_or_default())
    };
    let secret_data = |name: &str| -> Option<BTreeMap<String, Vec<u8>>> {
        refs.secrets
            .get(name)
            .cloned()
            .flatten()
            .map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
    };

    // Volumes: mandatory ConfigMaps/Secrets must exist.
    let mut used_cms = BTreeSet::new();
    let mut used_secrets = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(cm) = &v.config_map {
            let optional = cm.optional.unwrap_or(false);
            if cm_data(&cm.name).is_none() {
                if !optional {
                    return Err(missing("ConfigMap", &cm.name, format!("spec.volumes[{i}].configMap")));
                }
                warnings.push((
                    "OptionalConfigMapNotFound".into(),
                    format!("ConfigMap {ns}/{} (volume {}) not found; mounting it empty", cm.name, v.name),
                ));
            } else {
                used_cms.insert(cm.name.clone());
            }
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            if secret_data(&name).is_none() {
                if !s.optional.unwrap_or(false) {
                    return Err(missing("Secret", &name, format!("spec.volumes[{i}].secret")));
                }
                warnings.push((
                    "OptionalSecretNotFound".into(),
                    format!("Secret {ns}/{name} (volume {}) not found; mounting it empty", v.name),
                ));
            } else {
                used_secrets.insert(name);
            }
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    if cm_data(&cm.name).is_some() {
                        used_cms.insert(cm.name.clone());
                    } else if !cm.optional.unwrap_or(false) {
                        return Err(missing(
                            "ConfigMap",
                            &cm.name,
                            format!("spec.volumes[{i}].projected.sources.configMap"),
                        ));
                    }
                }
                if let Some(s) = &src.secret {
                    if secret_data(&s.name).is_some() {
                        used_secrets.insert(s.name.clone());
                    } else if !s.optional.unwrap_or(false) {
                        return Err(missing("Secret", &s.name, format!("spec.volumes[{i}].projected.sources.secret")));
                    }
                }
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            if refs.claims.get(&c.claim_name).cloned().flatten().is_none() {
                return Err(missing(
                    "PersistentVolumeClaim",
                    &c.claim_name,
                    format!("spec.volumes[{i}].persistentVolumeClaim"),
                ));
            }
        }
    }
    for (i, s) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if secret_data(&s.name).is_some() {
            used_secrets.insert(s.name.clone());
        } else {
            // The kubelet only warns about a missing pull secret; the pull itself may still work.
            warnings.push((
                "FailedToRetrieveImagePullSecret".into(),
                format!("Secret {ns}/{} (spec.imagePullSecrets[{i}]) not found; pulling without it", s.name),
            ));
        }
    }

    // Environment, container by container.
    let service_env = service_link_env(&refs.services, spec.enable_service_links.unwrap_or(true), &ns);
    let mut env = Vec::new();
    for (ci, c) in all_containers(pod).iter().enumerate() {
        let field = |rest: String| {
            format!("spec.containers[{}].{rest}", c.name).replace(&format!("[{}]", c.name), &format!("[{ci}]"))
        };
        let mut vars: Vec<(String, String)> = service_env.clone();
        for (fi, f) in c.env_from.iter().flatten().enumerate() {
            let prefix = f.prefix.clone().unwrap_or_default();
            if let Some(r) = &f.config_map_ref {
                match cm_data(&r.name) {
                    Some(data) => {
                        used_cms.insert(r.name.clone());
                        vars.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
                    }
                    None if r.optional.unwrap_or(false) => warnings.push((
                        "OptionalConfigMapNotFound".into(),
                        format!("ConfigMap {ns}/{} (envFrom of container {}) not found; skipped", r.name, c.name),
                    )),
                    None => return Err(missing("ConfigMap", &r.name, field(format!("envFrom[{fi}].configMapRef")))),
                }
            }
            if let Some(r) = &f.secret_ref {
                match secret_data(&r.name) {
                    Some(data) => {
                        used_secrets.insert(r.name.clone());
                        vars.extend(
                            data.into_iter()
                                .map(|(k, v)| (format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned())),
                        );
                    }
                    None if r.optional.unwrap_or(false) => warnings.push((
                        "OptionalSecretNotFound".into(),
                        format!("Secret {ns}/{} (envFrom of container {}) not found; skipped", r.name, c.name),
                    )),
                    None => return Err(missing("Secret", &r.name, field(format!("envFrom[{fi}].secretRef")))),
                }
            }
        }
        for (ei, e) in c.env.iter().flatten().enumerate() {
            let value = if let Some(vf) = &e.value_from {
                if let Some(r) = &vf.config_map_key_ref {
                    match cm_data(&r.name).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => {
                            used_cms.insert(r.name.clone());
                            Some(v)
                        }
                        None if r.optional.unwrap_or(false) => {
                            warnings.push((
                                "OptionalConfigMapNotFound".into(),
                                format!(
                                    "ConfigMap key {ns}/{}[{}] (env {} of container {}) not found; skipped",
                                    r.name, r.key, e.name, c.name
                                ),
                            ));
                            None
                        }
                        None => {
                            return Err(missing(
                                "ConfigMap",
                                &r.name,
                                field(format!("env[{ei}].valueFrom.configMapKeyRef (key {})", r.key)),
                            ));
                        }
                    }
                } else if let Some(r) = &vf.secret_key_ref {
                    match secret_data(&r.name).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => {
                            used_secrets.insert(r.name.clone());
                            Some(String::from_utf8_lossy(&v).into_owned())
                        }
                        None if r.optional.unwrap_or(false) => {
                            warnings.push((
                                "OptionalSecretNotFound".into(),
                                format!(
                                    "Secret key {ns}/{}[{}] (env {} of container {}) not found; skipped",
                                    r.name, r.key, e.name, c.name
                                ),
                            ));
                            None
                        }
                        None => {
                            return Err(missing(
                                "Secret",
                                &r.name,
                                field(format!("env[{ei}].valueFrom.secretKeyRef (key {})", r.key)),
                            ));
                        }
                    }
                } else if let Some(f) = &vf.field_ref {
                    Some(downward_field(pod, &f.field_path))
                } else if let Some(r) = &vf.resource_field_ref {
                    Some(resource_field(
                        pod,
                        c,
                        r.container_name.as_deref(),
                        &r.resource,
                        r.divisor.as_ref().map(|q| q.0.as_str()),
                    ))
                } else {
                    None
                }
            } else {
                Some(expand(e.value.as_deref().unwrap_or_default(), &vars))
            };
            if let Some(v) = value {
                vars.push((e.name.clone(), v));
            }
        }
        // Later definitions win, as in Kubernetes; keep first-seen order.
        let mut order = Vec::new();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in vars {
            if !last.contains_key(&k) {
                order.push(k.clone());
            }
            last.insert(k, v);
        }
        env.push(ContainerEnv {
            container: c.name.clone(),
            vars: order.into_iter().map(|k| KeyValue { value: last[&k].clone(), key: k }).collect(),
        });
    }

    let config_maps = used_cms
        .iter()
        .filter_map(|name| refs.config_maps.get(name).cloned().flatten())
        .map(|cm| plugin::ConfigMap {
            name: cm.metadata.name.clone().unwrap_or_default(),
            data: cm.data.unwrap_or_default().into_iter().map(|(key, value)| KeyValue { key, value }).collect(),
            binary_data: cm
                .binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, v)| BinaryEntry { key, value: v.0 })
                .collect(),
        })
        .collect();
    let secrets = used_secrets
        .iter()
        .filter_map(|name| refs.secrets.get(name).cloned().flatten())
        .map(|s| plugin::Secret {
            name: s.metadata.name.clone().unwrap_or_default(),
            kind: s.type_.clone().unwrap_or_else(|| "Opaque".into()),
            data: s.data.unwrap_or_default().into_iter().map(|(key, v)| BinaryEntry { key, value: v.0 }).collect(),
        })
        .collect();
    let claims = refs
        .claims
        .iter()
        .filter_map(|(name, c)| c.as_ref().map(|c| (name, c)))
        .map(|(name, c)| plugin::VolumeClaim {
            claim_name: name.clone(),
            claim: serde_json::to_string(c).unwrap_or_default(),
            volume: refs.volumes.get(name).map(|pv| serde_json::to_string(pv).unwrap_or_default()),
        })
        .collect();
    let tokens = refs
        .tokens
        .iter()
        .map(|(volume, (path, token, expiry, audience))| plugin::ServiceAccountToken {
            volume_name: volume.clone(),
            path: path.clone(),
            token: token.clone(),
            expires_at: expiry.clone(),
            audience: audience.clone(),
        })
        .collect();
    Ok(Resolution {
        pod: ResolvedPod {
            pod: serde_json::to_string(pod).unwrap_or_default(),
            env,
            config_maps,
            secrets,
            claims,
            tokens,
        },
        warnings,
    })
}

/// Kubernetes `$(VAR)` expansion against earlier variables; `$$` escapes, unknown refs stay.
fn expand(value: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn downward_field(pod: &Pod, path: &str) -> String {
    let meta = &pod.metadata;
    let bracket = |p: &str, prefix: &str| p.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string);
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" => pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => pod.status.as_ref().and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        p => {
            if let Some(k) = bracket(p, "metadata.labels['") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = bracket(p, "metadata.annotations['") {
                meta.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

fn resource_field(
    pod: &Pod,
    current: &Container,
    container: Option<&str>,
    resource: &str,
    divisor: Option<&str>,
) -> String {
    let c = container
        .filter(|n| !n.is_empty())
        .and_then(|n| all_containers(pod).into_iter().find(|c| c.name == n))
        .unwrap_or_else(|| current.clone());
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = c.resources.unwrap_or_default();
    let map = if kind == "requests" { res.requests } else { res.limits };
    let q = map.and_then(|m| m.get(name).map(|q| q.0.clone()));
    match (q, divisor) {
        (Some(q), None) => q,
        (Some(q), Some(d)) => match (parse_quantity(&q), parse_quantity(d)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{}", (a / b).ceil() as i64),
            _ => q,
        },
        (None, _) => "0".into(),
    }
}

/// A Kubernetes quantity as a number (`500m` → 0.5, `1Gi` → 1073741824).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    q.parse::<f64>().ok()
}

/// Service link variables (`NAME_SERVICE_HOST`, docker-style `NAME_PORT_80_TCP…`), as the
/// kubelet injects them.
fn service_link_env(services: &[Service], links: bool, ns: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Service> = services
        .iter()
        .filter(|s| {
            links
                || (s.metadata.name.as_deref() == Some("kubernetes")
                    && s.metadata.namespace.as_deref() == Some("default"))
        })
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns) || s.metadata.name.as_deref() == Some("kubernetes"))
        .collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    for svc in sorted {
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty() && ip != "None") else { continue };
        let name = svc.metadata.name.clone().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.port.to_string()));
            }
        }
        let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase();
        out.push((format!("{name}_PORT"), format!("{proto}://{ip}:{}", first.port)));
        for p in &ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((prefix.clone(), format!("{}://{ip}:{}", proto.to_lowercase(), p.port)));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cm(name: &str, data: serde_json::Value) -> Option<ConfigMap> {
        Some(serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap())
    }

    fn secret(name: &str, data: serde_json::Value) -> Option<Secret> {
        Some(serde_json::from_value(json!({"metadata": {"name": name}, "type": "Opaque", "data": data})).unwrap())
    }

    fn env_of(r: &Resolution, container: &str) -> Vec<(String, String)> {
        r.pod
            .env
            .iter()
            .find(|e| e.container == container)
            .unwrap()
            .vars
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect()
    }

    #[test]
    fn env_values_come_from_configmaps_secrets_and_the_downward_api() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i", "env": [
            {"name": "A", "value": "plain"},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "E", "value": "$(A)-$(B)-$$(A)"},
        ]}]}));
        let mut refs = References::default();
        refs.config_maps.insert("cfg".into(), cm("cfg", json!({"k": "from-cm"})));
        refs.secrets.insert("sec".into(), secret("sec", json!({"pw": "aHVudGVyMg=="})));
        let r = resolve(&p, &refs).unwrap();
        let env = env_of(&r, "c");
        assert!(env.contains(&("A".into(), "plain".into())));
        assert!(env.contains(&("B".into(), "from-cm".into())));
        assert!(env.contains(&("C".into(), "hunter2".into())));
        assert!(env.contains(&("D".into(), "web".into())));
        assert!(env.contains(&("E".into(), "plain-from-cm-$(A)".into())));
        assert_eq!(r.pod.config_maps.len(), 1);
        assert_eq!(r.pod.secrets.len(), 1);
    }

    #[test]
    fn missing_mandatory_secret_names_object_and_field() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "v", "secret": {"secretName": "creds"}}]}));
        let mut refs = References::default();
        refs.secrets.insert("creds".into(), None);
        let err = resolve(&p, &refs).unwrap_err();
        assert_eq!(err.kind, "Secret");
        assert_eq!(err.name, "creds");
        assert_eq!(err.field, "spec.volumes[0].secret");
        assert_eq!(err.reason(), "MandatorySecretNotFound");
    }

    #[test]
    fn missing_optional_configmap_is_skipped_with_a_warning() {
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "envFrom": [{"configMapRef": {"name": "opt", "optional": true}}]}]}),
        );
        let mut refs = References::default();
        refs.config_maps.insert("opt".into(), None);
        let r = resolve(&p, &refs).unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.warnings[0].0, "OptionalConfigMapNotFound");
    }

    #[test]
    fn service_links_are_injected_and_container_env_wins() {
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "env": [{"name": "DB_SERVICE_PORT", "value": "override"}]}]}),
        );
        let mut refs = References::default();
        refs.services.push(
            serde_json::from_value(json!({"metadata": {"name": "db", "namespace": "ns1"},
            "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 5432, "protocol": "TCP"}]}}))
            .unwrap(),
        );
        let env = env_of(&resolve(&p, &refs).unwrap(), "c");
        assert!(env.contains(&("DB_SERVICE_HOST".into(), "10.0.0.9".into())));
        assert!(env.contains(&("DB_PORT_5432_TCP_ADDR".into(), "10.0.0.9".into())));
        assert!(env.contains(&("DB_SERVICE_PORT".into(), "override".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "DB_SERVICE_PORT").count(), 1);
    }

    #[test]
    fn quantities_parse_in_kubernetes_notation() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
    }
}
