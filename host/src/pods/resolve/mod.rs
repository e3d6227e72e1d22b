//! Resolving a pod: reading every object it references (ConfigMaps, Secrets, PVCs and their PVs,
//! Services for links, service-account tokens minted for it) and computing each container's
//! environment, so the provider gets one self-contained `ResolvedPod` and no credentials.
//! `fetch` does the I/O; `resolve` is a pure function of the pod and what was fetched, split by
//! concern the way upstream's `node/env.go` is: volumes and pull secrets (`volumes`), env from
//! values and ConfigMap/Secret refs (`env`), service links, the downward API.

mod downward;
mod env;
mod fetch;
mod service_links;
mod volumes;
mod watched;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service};

use crate::plugin::{self, BinaryEntry, KeyValue, ResolvedPod};

pub use downward::parse_quantity;
pub use fetch::{fetch, offline_references, service_namespaces, watched_names};
pub use service_links::linked_service;
pub use watched::{HeldObjects, Kind, ObjectKey, Seen};

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

/// Which list of the pod spec a container is in, and where: its field paths in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContainerAt {
    pub init: bool,
    pub index: usize,
}

impl ContainerAt {
    /// `spec.initContainers[0].env[2]…` or `spec.containers[1].envFrom[0]…`.
    pub fn field(&self, rest: &str) -> String {
        let list = if self.init { "initContainers" } else { "containers" };
        format!("spec.{list}[{}].{rest}", self.index)
    }
}

/// Init containers first, then regular ones (the order they start in), each with its place.
fn all_containers_at(pod: &Pod) -> Vec<(ContainerAt, Container)> {
    let spec = pod.spec.clone().unwrap_or_default();
    let init = spec.init_containers.unwrap_or_default().into_iter().enumerate();
    let regular = spec.containers.into_iter().enumerate();
    init.map(|(index, c)| (ContainerAt { init: true, index }, c))
        .chain(regular.map(|(index, c)| (ContainerAt { init: false, index }, c)))
        .collect()
}

fn all_containers(pod: &Pod) -> Vec<Container> {
    all_containers_at(pod).into_iter().map(|(_, c)| c).collect()
}

/// What resolving reads and records: the fetched objects of one namespace, the ConfigMaps and
/// Secrets the pod actually uses (handed to the provider), and the warnings worth an Event.
pub(super) struct Lookup<'a> {
    refs: &'a References,
    pub namespace: String,
    pub used_config_maps: BTreeSet<String>,
    pub used_secrets: BTreeSet<String>,
    pub warnings: Vec<(String, String)>,
}

impl<'a> Lookup<'a> {
    fn new(refs: &'a References, namespace: String) -> Self {
        Lookup {
            refs,
            namespace,
            used_config_maps: BTreeSet::new(),
            used_secrets: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    pub fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.refs.config_maps.get(name).cloned().flatten().map(|c| c.data.unwrap_or_default())
    }

    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.refs
            .secrets
            .get(name)
            .cloned()
            .flatten()
            .map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
    }

    pub fn has_claim(&self, name: &str) -> bool {
        self.refs.claims.get(name).is_some_and(Option::is_some)
    }

    pub fn missing(&self, kind: &'static str, name: &str, field: String) -> Missing {
        Missing { kind, namespace: self.namespace.clone(), name: name.into(), field }
    }

    pub fn warn(&mut self, reason: &str, message: String) {
        self.warnings.push((reason.into(), message));
    }
}

/// Builds the resolved pod: fails on a missing mandatory reference, skips optional ones with a
/// warning.
pub fn resolve(pod: &Pod, refs: &References) -> Result<Resolution, Missing> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut lookup = Lookup::new(refs, pod.metadata.namespace.clone().unwrap_or_default());
    volumes::check_volumes(&spec, &mut lookup)?;
    volumes::check_pull_secrets(&spec, &mut lookup);

    let links =
        service_links::service_link_env(&refs.services, spec.enable_service_links.unwrap_or(true), &lookup.namespace);
    let mut env = Vec::new();
    for (at, c) in all_containers_at(pod) {
        env.push(env::container_env(pod, at, &c, &links, &mut lookup)?);
    }

    let config_maps = lookup
        .used_config_maps
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
    let secrets = lookup
        .used_secrets
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
        warnings: lookup.warnings,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
    fn a_missing_reference_of_an_init_container_names_the_init_container_and_regular_ones_keep_their_index() {
        let p = pod(json!({
        "initContainers": [{"name": "setup", "image": "i",
                            "envFrom": [{"configMapRef": {"name": "init-cfg"}}]}],
        "containers": [
            {"name": "app", "image": "i"},
            {"name": "side", "image": "i", "env": [
                {"name": "X", "valueFrom": {"secretKeyRef": {"name": "side-sec", "key": "k"}}}]},
        ]}));
        let mut refs = References::default();
        refs.config_maps.insert("init-cfg".into(), None);
        refs.secrets.insert("side-sec".into(), None);
        let err = resolve(&p, &refs).unwrap_err();
        assert_eq!(
            (err.name.as_str(), err.field.as_str()),
            ("init-cfg", "spec.initContainers[0].envFrom[0].configMapRef")
        );

        refs.config_maps.insert("init-cfg".into(), cm("init-cfg", json!({"A": "1"})));
        let err = resolve(&p, &refs).unwrap_err();
        assert_eq!(err.field, "spec.containers[1].env[0].valueFrom.secretKeyRef (key k)");
    }

    #[test]
    fn envfrom_prefixes_and_later_definitions_win_in_first_seen_order() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "sec"}}],
            "env": [{"name": "CFG_A", "value": "mine"}, {"name": "B", "value": "$(CFG_A)"}]}]}));
        let mut refs = References::default();
        refs.config_maps.insert("cfg".into(), cm("cfg", json!({"A": "cm", "Z": "z"})));
        refs.secrets.insert("sec".into(), secret("sec", json!({"S": "cw=="})));
        let env = env_of(&resolve(&p, &refs).unwrap(), "c");
        let expected: Vec<(String, String)> = [("CFG_A", "mine"), ("CFG_Z", "z"), ("S", "s"), ("B", "mine")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
        assert_eq!(env, expected);
    }

    #[test]
    fn dollar_expansion_follows_kubernetes() {
        let vars = [("A".to_string(), "1".to_string())];
        for (value, want) in [
            ("$(A)", "1"),
            ("$$(A)", "$(A)"),
            ("$(B)", "$(B)"),
            ("x$(A", "x$(A"),
            ("$", "$"),
            ("a$b", "a$b"),
            ("$(A)$(A)", "11"),
        ] {
            assert_eq!(env::expand(value, &vars), want, "{value}");
        }
    }

    #[test]
    fn a_missing_pull_secret_only_warns_and_a_missing_claim_fails() {
        let p = pod(json!({"containers": [{"name": "c", "image": "i"}], "imagePullSecrets": [{"name": "reg"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "disk"}}]}));
        let mut refs = References::default();
        refs.claims.insert("disk".into(), None);
        let err = resolve(&p, &refs).unwrap_err();
        assert_eq!((err.kind, err.field.as_str()), ("PersistentVolumeClaim", "spec.volumes[0].persistentVolumeClaim"));
        refs.claims.insert("disk".into(), Some(serde_json::from_value(json!({"metadata": {"name": "disk"}})).unwrap()));
        let r = resolve(&p, &refs).unwrap();
        assert_eq!(r.warnings.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(), ["FailedToRetrieveImagePullSecret"]);
        assert_eq!(r.pod.claims.len(), 1);
    }
}
