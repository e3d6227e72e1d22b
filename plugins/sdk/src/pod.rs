//! The pod a provider is handed, typed: the host sends the Pod object as JSON inside a
//! `resolved-pod` (with every ConfigMap, Secret, claim and token it references); [`Pod`] parses
//! that JSON once, into the parts providers read, and keeps the rest reachable: the raw JSON
//! ([`Pod::json`]) and the resolved objects ([`Pod::resolved`]).
//!
//! The typed view is lenient: a field it does not know is ignored, a missing one takes its
//! Kubernetes default, so it parses every pod the apiserver accepted. A provider needing a field
//! not typed here reads it from [`Pod::value`] (the same JSON as a `serde_json::Value`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{ConfigMap, KeyValue, PodRef, ProviderError, ResolvedPod, Secret, ServiceAccountToken, invalid};

/// A resolved pod, its Pod JSON parsed once.
#[derive(Debug, Clone)]
pub struct Pod {
    resolved: ResolvedPod,
    object: PodObject,
}

impl Pod {
    /// Parses the Pod JSON of `resolved`; `invalid` (`InvalidPod`, field `pod`) when it is not a
    /// Pod object.
    pub fn parse(resolved: ResolvedPod) -> Result<Pod, ProviderError> {
        let object: PodObject = serde_json::from_str(&resolved.pod)
            .map_err(|e| invalid("InvalidPod", "pod", format!("the pod cannot be read: {e}")))?;
        Ok(Pod { resolved, object })
    }

    /// The typed Pod object.
    pub fn object(&self) -> &PodObject {
        &self.object
    }
    pub fn metadata(&self) -> &ObjectMeta {
        &self.object.metadata
    }
    pub fn spec(&self) -> &PodSpec {
        &self.object.spec
    }
    /// The Pod object as the host sent it (JSON).
    pub fn json(&self) -> &str {
        &self.resolved.pod
    }
    /// The Pod object as a JSON value, for fields the typed view leaves out.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.resolved.pod).unwrap_or(Value::Null)
    }
    /// Everything the host resolved for the pod, as sent.
    pub fn resolved(&self) -> &ResolvedPod {
        &self.resolved
    }
    pub fn into_resolved(self) -> ResolvedPod {
        self.resolved
    }

    pub fn uid(&self) -> &str {
        &self.object.metadata.uid
    }
    pub fn pod_ref(&self) -> PodRef {
        let m = &self.object.metadata;
        PodRef { namespace: m.namespace.clone(), name: m.name.clone(), uid: m.uid.clone() }
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object.metadata.annotations.get(key).map(String::as_str)
    }

    /// A referenced ConfigMap the host found (optional missing ones are left out).
    pub fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.resolved.config_maps.iter().find(|c| c.name == name)
    }
    /// A referenced Secret the host found.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.resolved.secrets.iter().find(|s| s.name == name)
    }
    /// The resolved environment of a container (or init container): `value`, `valueFrom` and
    /// `envFrom` already applied by the host.
    pub fn env(&self, container: &str) -> &[KeyValue] {
        self.resolved.env.iter().find(|e| e.container == container).map(|e| e.vars.as_slice()).unwrap_or(&[])
    }
    /// The token minted for a projected service-account source of `volume`.
    pub fn token(&self, volume: &str) -> Option<&ServiceAccountToken> {
        self.resolved.tokens.iter().find(|t| t.volume_name == volume)
    }

    /// How the pod uses a ConfigMap: mounted as files (a volume or a projection) and/or read into
    /// containers' environments. What an `update` can do about a changed one follows from this.
    pub fn uses_config_map(&self, name: &str) -> Uses {
        let spec = &self.object.spec;
        let mounted = spec.volumes.iter().any(|v| {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
                || v.projected
                    .iter()
                    .flat_map(|p| &p.sources)
                    .any(|s| s.config_map.as_ref().is_some_and(|c| c.name == name))
        });
        let env = spec.all_containers().any(|c| {
            c.env.iter().any(|e| {
                e.value_from.as_ref().and_then(|f| f.config_map_key_ref.as_ref()).is_some_and(|r| r.name == name)
            }) || c.env_from.iter().any(|f| f.config_map_ref.as_ref().is_some_and(|r| r.name == name))
        });
        Uses { mounted, env, image_pull: false }
    }

    /// How the pod uses a Secret: mounted, in environments, and/or as an image pull secret.
    pub fn uses_secret(&self, name: &str) -> Uses {
        let spec = &self.object.spec;
        let mounted = spec.volumes.iter().any(|v| {
            v.secret.as_ref().is_some_and(|s| s.secret_name == name)
                || v.projected
                    .iter()
                    .flat_map(|p| &p.sources)
                    .any(|s| s.secret.as_ref().is_some_and(|c| c.name == name))
        });
        let env = spec.all_containers().any(|c| {
            c.env
                .iter()
                .any(|e| e.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).is_some_and(|r| r.name == name))
                || c.env_from.iter().any(|f| f.secret_ref.as_ref().is_some_and(|r| r.name == name))
        });
        let image_pull = spec.image_pull_secrets.iter().any(|r| r.name == name);
        Uses { mounted, env, image_pull }
    }
}

/// How a pod uses a ConfigMap or Secret.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// As files: a `configMap`/`secret` volume or a projected source.
    pub mounted: bool,
    /// In a container's environment: `valueFrom` or `envFrom`.
    pub env: bool,
    /// As an image pull secret (Secrets only).
    pub image_pull: bool,
}

/// The Pod object: the parts providers read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodObject {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Set once the pod is being deleted (RFC 3339).
    pub deletion_timestamp: Option<String>,
    pub creation_timestamp: Option<String>,
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta {
            name: String::new(),
            namespace: "default".into(),
            uid: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            deletion_timestamp: None,
            creation_timestamp: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub volumes: Vec<Volume>,
    pub node_name: String,
    pub service_account_name: String,
    /// `Always` (the default), `OnFailure` or `Never`.
    pub restart_policy: Option<String>,
    pub image_pull_secrets: Vec<NameRef>,
    pub termination_grace_period_seconds: Option<i64>,
    pub active_deadline_seconds: Option<i64>,
    pub host_network: bool,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
}

impl PodSpec {
    /// Init containers first, then containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers.iter().chain(&self.containers)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// As written in the pod; the resolved values are [`Pod::env`].
    pub env: Vec<EnvVar>,
    pub env_from: Vec<EnvFromSource>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub volume_mounts: Vec<VolumeMount>,
    pub image_pull_policy: Option<String>,
    /// `Always` on an init container makes it a sidecar.
    pub restart_policy: Option<String>,
    pub stdin: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvVarSource {
    pub config_map_key_ref: Option<KeyRef>,
    pub secret_key_ref: Option<KeyRef>,
    pub field_ref: Option<Value>,
    pub resource_field_ref: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvFromSource {
    pub prefix: Option<String>,
    pub config_map_ref: Option<NameRef>,
    pub secret_ref: Option<NameRef>,
}

/// A reference by name (`LocalObjectReference`, `envFrom` refs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NameRef {
    pub name: String,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: i32,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
}

/// Requests and limits, quantities in Kubernetes notation (`500m`, `1Gi`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub sub_path: Option<String>,
    pub read_only: bool,
}

/// A pod volume: the common sources typed, any other kept by name in `other`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub config_map: Option<ConfigMapVolume>,
    pub secret: Option<SecretVolume>,
    pub projected: Option<ProjectedVolume>,
    pub persistent_volume_claim: Option<ClaimVolume>,
    pub empty_dir: Option<Value>,
    pub nfs: Option<NfsVolume>,
    /// Any other source (`hostPath`, `csi`, …), by its key.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConfigMapVolume {
    pub name: String,
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<u32>,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecretVolume {
    pub secret_name: String,
    pub items: Vec<KeyToPath>,
    pub default_mode: Option<u32>,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProjectedVolume {
    pub sources: Vec<ProjectionSource>,
    pub default_mode: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProjectionSource {
    pub config_map: Option<ConfigMapVolume>,
    pub secret: Option<ProjectedSecret>,
    pub service_account_token: Option<TokenProjection>,
    pub downward_api: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProjectedSecret {
    pub name: String,
    pub items: Vec<KeyToPath>,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TokenProjection {
    pub path: String,
    pub audience: Option<String>,
    pub expiration_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClaimVolume {
    pub claim_name: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NfsVolume {
    pub server: String,
    pub path: String,
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BinaryEntry, ContainerEnv, kv};

    const POD: &str = r#"{
      "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                   "annotations": {"a/b": "c"}, "labels": {"app": "web"}},
      "spec": {
        "nodeName": "vk-1",
        "imagePullSecrets": [{"name": "pull"}],
        "initContainers": [{"name": "init", "image": "busybox",
                            "envFrom": [{"configMapRef": {"name": "init-env"}}]}],
        "containers": [{
          "name": "app", "image": "nginx:1.27",
          "ports": [{"containerPort": 8080, "name": "http"}],
          "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
          "env": [{"name": "A", "value": "1"},
                  {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b"}}},
                  {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "both", "key": "c"}}}],
          "volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": true}]
        }],
        "volumes": [
          {"name": "conf", "configMap": {"name": "app-conf", "items": [{"key": "k", "path": "p"}]}},
          {"name": "proj", "projected": {"sources": [
             {"configMap": {"name": "both"}}, {"secret": {"name": "tls"}},
             {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}},
          {"name": "keys", "secret": {"secretName": "keys", "defaultMode": 256}},
          {"name": "host", "hostPath": {"path": "/var"}},
          {"name": "scratch", "emptyDir": {}}
        ]
      },
      "status": {"phase": "Pending"}
    }"#;

    fn pod() -> Pod {
        let mut resolved = ResolvedPod::from_pod_json(POD);
        resolved.env.push(ContainerEnv { container: "app".into(), vars: vec![kv("A", "1"), kv("B", "s3cret")] });
        resolved.config_maps.push(ConfigMap {
            name: "app-conf".into(),
            data: vec![kv("k", "v")],
            binary_data: vec![BinaryEntry { key: "bin".into(), value: vec![0, 1] }],
        });
        Pod::parse(resolved).unwrap()
    }

    #[test]
    fn parses_the_parts_providers_read() {
        let pod = pod();
        assert_eq!(pod.pod_ref(), PodRef { namespace: "shop".into(), name: "web".into(), uid: "u-1".into() });
        assert_eq!(pod.annotation("a/b"), Some("c"));
        let spec = pod.spec();
        assert_eq!(spec.node_name, "vk-1");
        assert_eq!(spec.all_containers().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["init", "app"]);
        let app = &spec.containers[0];
        assert_eq!(app.ports[0].container_port, 8080);
        assert_eq!(app.resources.requests["cpu"], "500m");
        assert_eq!(app.resources.limits["memory"], "1Gi");
        assert!(app.volume_mounts[0].read_only);
        assert_eq!(spec.volumes[0].config_map.as_ref().unwrap().items[0].path, "p");
        assert_eq!(spec.volumes[2].secret.as_ref().unwrap().default_mode, Some(0o400));
        assert!(spec.volumes[3].other.contains_key("hostPath"));
        assert!(spec.volumes[4].empty_dir.is_some() && spec.volumes[4].other.is_empty());
        let token = spec.volumes[1].projected.as_ref().unwrap().sources[2].service_account_token.as_ref().unwrap();
        assert_eq!(token.expiration_seconds, Some(3600));
        // The rest stays reachable.
        assert_eq!(pod.value()["status"]["phase"], "Pending");
        assert_eq!(pod.env("app"), [kv("A", "1"), kv("B", "s3cret")]);
        assert!(pod.env("init").is_empty());
        assert_eq!(pod.config_map("app-conf").unwrap().get("bin"), Some(vec![0, 1]));
        assert_eq!(pod.config_map("app-conf").unwrap().get("k"), Some(b"v".to_vec()));
    }

    #[test]
    fn tells_mounted_from_env_uses() {
        let pod = pod();
        let cases = [
            (pod.uses_config_map("app-conf"), Uses { mounted: true, env: false, image_pull: false }),
            (pod.uses_config_map("init-env"), Uses { mounted: false, env: true, image_pull: false }),
            (pod.uses_config_map("both"), Uses { mounted: true, env: true, image_pull: false }),
            (pod.uses_config_map("nope"), Uses::default()),
            (pod.uses_secret("creds"), Uses { mounted: false, env: true, image_pull: false }),
            (pod.uses_secret("tls"), Uses { mounted: true, env: false, image_pull: false }),
            (pod.uses_secret("keys"), Uses { mounted: true, env: false, image_pull: false }),
            (pod.uses_secret("pull"), Uses { mounted: false, env: false, image_pull: true }),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn a_minimal_pod_takes_kubernetes_defaults_and_junk_is_invalid() {
        let pod = Pod::parse(ResolvedPod::from_pod_json(r#"{"metadata":{"name":"p"}}"#)).unwrap();
        assert_eq!(pod.metadata().namespace, "default");
        assert!(pod.spec().containers.is_empty());
        let ProviderError::Invalid(e) = Pod::parse(ResolvedPod::from_pod_json("[1]")).unwrap_err() else { panic!() };
        assert_eq!((e.reason.as_str(), e.field.as_str()), ("InvalidPod", "pod"));
    }
}
