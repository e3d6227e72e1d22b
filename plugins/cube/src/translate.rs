//! A resolved pod → the CreateCubePod request: a pure function of the pod, what it references and
//! the node's config. `plan` returns its result unsent; `create` and `update` send it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::annotations::{self, CubeSettings};
use crate::config::NodeConfig;
use crate::cube_pod::{self, CubePod, NODE_ANNOTATION};
use crate::error::{InvalidInput, TranslateError};
use crate::k8s;
use crate::registries;
use crate::restrictions;
use crate::sizes::{self, Demand, Size};
use crate::volumes;
use vk_provider_sdk::{Event, KeyValue, PodRef, ResolvedPod, kv};

/// Everything a pod turns into: the CreateCubePod parameters and what to tell the pod.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub pod_ref: PodRef,
    /// The CreateCubePod parameters in key order, without `Action`, `PublicKey` and `Signature`
    /// (the client adds those). `Pod` holds the base64 of `pod_yaml`.
    pub params: BTreeMap<String, String>,
    /// The Cube pod, readable.
    pub pod: CubePod,
    pub pod_yaml: String,
    /// Digest of the pod, recorded in it: an unchanged pod is not renewed.
    pub spec_hash: String,
    pub size: Size,
    /// Billing and EIP settings from the annotations.
    pub settings: CubeSettings,
    /// Annotations for the Kubernetes pod (`cube.ucloud.cn/size`).
    pub annotations: Vec<KeyValue>,
    /// Events for the Kubernetes pod (`SizeRounded`, warnings).
    pub events: Vec<Event>,
}

impl CreateRequest {
    /// For people (the `translate` example): the parameters, then the pod YAML instead of its base64.
    pub fn render(&self) -> String {
        let mut out = String::from("Action: CreateCubePod\n");
        for (k, v) in &self.params {
            if k != "Pod" && k != "KubeConfig" {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
        for a in &self.annotations {
            let _ = writeln!(out, "# annotation {}: {}", a.key, a.value);
        }
        for e in &self.events {
            let _ = writeln!(out, "# event {} {}: {}", e.kind, e.reason, e.message);
        }
        if let Some(eip) = &self.settings.eip {
            let _ = writeln!(out, "# then EIP: {eip:?}");
        }
        let _ = writeln!(out, "Pod: |");
        for line in self.pod_yaml.lines() {
            let _ = writeln!(out, "  {line}");
        }
        out
    }
}

/// Translates a resolved pod for the node `node_name` whose provider config is `config_json`.
pub fn translate(node_name: &str, config_json: &str, pod: &ResolvedPod) -> Result<CreateRequest, TranslateError> {
    let config = NodeConfig::parse(config_json)?;
    translate_with(node_name, &config, pod)
}

pub fn translate_with(
    node_name: &str,
    config: &NodeConfig,
    resolved: &ResolvedPod,
) -> Result<CreateRequest, TranslateError> {
    let pod: k8s::Pod = serde_json::from_str(&resolved.pod)
        .map_err(|e| InvalidInput::new("InvalidPod", "pod", format!("the pod cannot be read: {e}")))?;
    let meta = &pod.metadata;
    if meta.uid.is_empty() {
        return Err(InvalidInput::new(
            "InvalidPod",
            "metadata.uid",
            "the pod has no uid; Cube instances are keyed by it",
        )
        .into());
    }
    let pod_ref = PodRef { namespace: meta.namespace.clone(), name: meta.name.clone(), uid: meta.uid.clone() };

    let settings = annotations::parse(&meta.annotations)?;
    let mut events = settings.events.clone();
    events.extend(restrictions::check(&pod)?);

    // The guide's way to use a self-hosted registry is its pull secret carrying the registry's
    // address and VPC: such a secret allows the registry, as the node's `registries` do.
    let (pull_secrets, pull_events) = registries::pull_secrets(&pod.spec.image_pull_secrets, resolved)?;
    events.extend(pull_events);
    let mut allowed = config.allowed_registries();
    allowed.extend(registries::self_hosted(&pull_secrets));
    for (field, c) in containers_with_fields(&pod.spec) {
        registries::check_image(&c.image, &format!("{field}.image"), &allowed)?;
    }

    let app: Vec<Demand> = pod
        .spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| demand(c, &format!("spec.containers[{i}]")))
        .collect::<Result<_, _>>()?;
    let init: Vec<Demand> = pod
        .spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| demand(c, &format!("spec.initContainers[{i}]")))
        .collect::<Result<_, _>>()?;
    let choice = sizes::choose_size(sizes::effective_demand(&app, &init), config.default_size)?;
    let size = choice.size;
    events.extend(choice.event);

    let vols = volumes::translate(&pod, resolved)?;
    events.extend(vols.events);

    let limits = sizes::distribute(size, &app);
    let whole = Demand { cpu_millis: size.cpu_millis, memory_bytes: size.memory_bytes() };
    let mut containers = Vec::new();
    for (i, (c, l)) in pod.spec.containers.iter().zip(&limits).enumerate() {
        containers.push(container(c, &format!("spec.containers[{i}]"), *l, resolved, &vols.volumes)?);
    }
    let mut init_containers = Vec::new();
    for (i, c) in pod.spec.init_containers.iter().enumerate() {
        init_containers.push(container(c, &format!("spec.initContainers[{i}]"), whole, resolved, &vols.volumes)?);
    }

    // Only the user's Cube settings travel with the instance: annotations the host writes back on
    // the pod (size, EIP address) or other tools' must not make an unchanged pod look changed.
    let mut cube_annotations: BTreeMap<String, String> = meta
        .annotations
        .iter()
        .filter(|(k, _)| k.strip_prefix(annotations::PREFIX).is_some_and(|name| annotations::KNOWN.contains(&name)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    cube_annotations.insert(NODE_ANNOTATION.into(), node_name.into());
    cube_annotations.insert(annotations::SIZE.into(), size.to_string());

    let mut cube = CubePod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: cube_pod::Metadata {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            annotations: cube_annotations,
        },
        spec: cube_pod::Spec {
            init_containers,
            containers,
            volumes: vols.volumes,
            restart_policy: pod.spec.restart_policy.clone().unwrap_or_else(|| "Always".into()),
            host_aliases: pod
                .spec
                .host_aliases
                .iter()
                .map(|h| cube_pod::HostAlias { ip: h.ip.clone(), hostnames: h.hostnames.clone() })
                .collect(),
            dns_config: pod
                .spec
                .dns_config
                .as_ref()
                .filter(|d| !d.nameservers.is_empty())
                .map(|d| cube_pod::DnsConfig { nameservers: d.nameservers.clone() }),
            hostname: pod.spec.hostname.clone().filter(|h| !h.is_empty()),
            image_pull_secrets: pull_secrets,
        },
    };
    let spec_hash = cube.stamp_spec_hash();
    let pod_yaml = cube.to_yaml();

    let mut params = BTreeMap::new();
    params.insert("Region".to_string(), config.region.clone());
    params.insert("Zone".to_string(), config.zone.clone());
    if let Some(p) = &config.project_id {
        params.insert("ProjectId".into(), p.clone());
    }
    params.insert("VPCId".into(), config.vpc_id.clone());
    params.insert("SubnetId".into(), config.subnet_id.clone());
    params.insert("Pod".into(), B64.encode(&pod_yaml));
    params.insert("ChargeType".into(), settings.charge_type.api().into());
    params.insert("Quantity".into(), settings.quantity.to_string());
    params.insert("Group".into(), node_name.into());
    params.insert("Name".into(), format!("{}-{}", meta.namespace, meta.name).chars().take(63).collect());
    if let Some(tag) = &settings.tag {
        params.insert("Tag".into(), tag.clone());
    }
    if config.cluster_ip_support
        && let Some(k) = &config.kubeconfig
    {
        params.insert("KubeConfig".into(), k.clone());
    }

    Ok(CreateRequest {
        pod_ref,
        params,
        pod: cube,
        pod_yaml,
        spec_hash,
        size,
        settings,
        annotations: vec![kv(annotations::SIZE, size.to_string())],
        events,
    })
}

fn containers_with_fields(spec: &k8s::PodSpec) -> impl Iterator<Item = (String, &k8s::Container)> {
    spec.init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
        .chain(spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c)))
}

/// A container's requests, its limits standing in where requests are absent (as Kubernetes
/// defaults them).
fn demand(c: &k8s::Container, field: &str) -> Result<Demand, InvalidInput> {
    let get = |resource: &str| -> Result<Option<(String, &String)>, InvalidInput> {
        if let Some(q) = c.resources.requests.get(resource) {
            return Ok(Some((format!("{field}.resources.requests.{resource}"), q)));
        }
        Ok(c.resources.limits.get(resource).map(|q| (format!("{field}.resources.limits.{resource}"), q)))
    };
    let cpu = match get("cpu")? {
        Some((f, q)) => sizes::parse_cpu_millis(q)
            .ok_or_else(|| InvalidInput::new("InvalidResources", f, format!("cpu {q:?} is not a quantity")))?,
        None => 0,
    };
    let memory = match get("memory")? {
        Some((f, q)) => sizes::parse_memory_bytes(q)
            .ok_or_else(|| InvalidInput::new("InvalidResources", f, format!("memory {q:?} is not a quantity")))?,
        None => 0,
    };
    Ok(Demand { cpu_millis: cpu, memory_bytes: memory })
}

fn container(
    c: &k8s::Container,
    field: &str,
    limit: Demand,
    resolved: &ResolvedPod,
    volumes: &[cube_pod::Volume],
) -> Result<cube_pod::Container, TranslateError> {
    let env = match resolved.env.iter().find(|e| e.container == c.name) {
        Some(e) => e.vars.iter().map(|v| cube_pod::EnvVar { name: v.key.clone(), value: v.value.clone() }).collect(),
        None => {
            let mut env = Vec::new();
            for (j, v) in c.env.iter().enumerate() {
                if v.value_from.is_some() {
                    return Err(TranslateError::NotReady(format!(
                        "{field}.env[{j}] ({}): the host has not resolved valueFrom",
                        v.name
                    )));
                }
                env.push(cube_pod::EnvVar { name: v.name.clone(), value: v.value.clone().unwrap_or_default() });
            }
            env
        }
    };
    Ok(cube_pod::Container {
        name: c.name.clone(),
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        volume_mounts: volumes::mounts(c, field, volumes)?,
        resources: cube_pod::Resources {
            limits: cube_pod::Limits {
                cpu: sizes::format_cpu(limit.cpu_millis),
                memory: sizes::format_memory(limit.memory_bytes),
            },
        },
    })
}
