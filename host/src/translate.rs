//! `vkhost plugin translate`: what a plugin's `create` would send for a pod manifest, through
//! its `plan` export (no side effects: the host refuses HTTP and `store` writes during `plan`), or
//! the `invalid` error that would stop the pod. The pod is shaped and resolved as the pod
//! controller would hand it over, from the manifest alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::DaemonConfig;
use crate::plugin::check::read_config_file;
use crate::plugin::settings::PluginSettings;
use crate::plugin::v0_2_0::{CallContext, CreatePlan, HttpRequest, InvalidInput, ProviderError};
use crate::plugin::{CallError, Plugin, PluginRuntime};
use crate::pods::resolve;

/// What stands in for each credential a daemon config names.
pub const STAND_IN: &str = "not-needed-to-translate";

/// The uid given to a pod of a manifest (not a live object).
pub const DRY_RUN_UID: &str = "00000000-0000-4000-8000-000000000000";

/// Print what a plugin's `create` would send for a pod manifest (its `plan`), or the error that
/// would stop the pod, without any side effect. Exits 0 with a plan, 1 when the provider refuses
/// the pod, 2 when no plan could be made (unreadable input, plugin refused or failing).
#[derive(Debug, Clone, clap::Args)]
pub struct TranslateArgs {
    /// A Pod, or a Deployment/StatefulSet/DaemonSet/ReplicaSet/Job/CronJob whose pod template is
    /// used; ConfigMaps and Secrets in the same file stand in for the cluster's.
    pub manifest: PathBuf,
    /// The provider plugin (`*.wasm`).
    #[arg(long)]
    pub plugin: PathBuf,
    /// The node's provider config: a file holding the `[nodes.provider]` table (TOML, or JSON
    /// when named `*.json`), or the daemon's config, whose node `--node` is used (with stand-ins
    /// for the credentials it names, which are never read).
    #[arg(long, short, env = "VKHOST_CONFIG")]
    pub config: PathBuf,
    /// With a daemon config: the config node id (default: the first node).
    #[arg(long)]
    pub node: Option<String>,
    /// `yaml` or `json`.
    #[arg(long, short, default_value = "yaml")]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Exit codes.
const REFUSED: i32 = 1;
const FAILED: i32 = 2;

/// Runs the translation and prints the plan (stdout) or the refusal (stdout in the chosen format,
/// and one line on stderr). Returns the exit code.
pub async fn run_translate(args: TranslateArgs) -> anyhow::Result<i32> {
    let (node_name, config) = match node_config(&args.config, args.node.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: config {e}");
            return Ok(FAILED);
        }
    };
    let manifest = match std::fs::read_to_string(&args.manifest) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: {}: {e}", args.manifest.display());
            return Ok(FAILED);
        }
    };
    let pod = match pod_from_manifest(&manifest, &node_name) {
        Ok(pod) => pod,
        Err(invalid) => return refused(&invalid, args.output),
    };
    let refs = resolve::offline_references(&pod.pod, &pod.config_maps, &pod.secrets);
    let resolution = match resolve::resolve(&pod.pod, &refs) {
        Ok(r) => r,
        Err(missing) => {
            eprintln!("not ready (the daemon would wait and retry): {missing}");
            return Ok(FAILED);
        }
    };

    let runtime = PluginRuntime::new()?;
    let plugin = match Plugin::load(runtime, PluginSettings::new(&args.plugin), vec![]).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}", crate::plugin::check::describe_failure(&args.plugin.display().to_string(), &e));
            return Ok(FAILED);
        }
    };
    // As the daemon does: calls carry the config as the plugin normalised it.
    let normalised = match plugin.validate_config(&node_name, &config.to_string()).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: plugin rejects the config of node {node_name}: {e}");
            return Ok(FAILED);
        }
    };
    let ctx = CallContext { node_name: node_name.clone(), config: normalised };
    let info = plugin.info();
    match plugin.plan(&ctx, &resolution.pod).await {
        Ok(plan) => {
            let view = PlanView::new(&info, &node_name, &pod.pod, &resolution.warnings, plan);
            print(&view, args.output)?;
            Ok(0)
        }
        Err(CallError::Provider(ProviderError::Invalid(invalid))) => refused(&invalid, args.output),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(FAILED)
        }
    }
}

fn refused(invalid: &InvalidInput, format: Format) -> anyhow::Result<i32> {
    print(&json!({"invalid": {"reason": invalid.reason, "field": invalid.field, "message": invalid.message}}), format)?;
    eprintln!("{}: {}: {}", invalid.reason, invalid.field, invalid.message);
    Ok(REFUSED)
}

fn print(value: &impl Serialize, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value)?),
    }
    Ok(())
}

/// The node name and provider config (JSON) `--config` gives: a daemon config's node, or a
/// provider table.
fn node_config(path: &Path, node: Option<&str>) -> Result<(String, Value), String> {
    let value = read_config_file(path)?;
    if value.get("nodes").is_none() {
        return Ok(("vk-translate".into(), value));
    }
    let cfg = DaemonConfig::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let settings = match node {
        Some(id) => {
            cfg.nodes.iter().find(|n| n.id == id).ok_or_else(|| format!("no node {id:?} in {}", path.display()))?
        }
        None => cfg.nodes.first().ok_or_else(|| format!("no node in {}", path.display()))?,
    };
    // The credentials the daemon config names are never read: a dry run needs none, and the plan
    // (a signed request, say) would show them. Stand-ins let the plugin plan.
    let mut table = settings.provider.clone();
    for key in settings.secrets.keys() {
        table.insert(key.clone(), toml::Value::String(STAND_IN.into()));
    }
    let provider = serde_json::to_value(table).map_err(|e| e.to_string())?;
    Ok((format!("{}-vk-xxxxx", cfg.cluster_id), provider))
}

/// The pod of a manifest as the controller would hand it over, and the ConfigMaps and Secrets
/// the file holds.
struct ManifestPod {
    pod: Pod,
    config_maps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
}

fn manifest_invalid(message: impl Into<String>) -> InvalidInput {
    InvalidInput { reason: "InvalidManifest".into(), field: "manifest".into(), message: message.into() }
}

/// The first Pod (or pod template) of a multi-document manifest, named, namespaced, given the
/// dry-run uid and bound to `node_name`.
fn pod_from_manifest(yaml: &str, node_name: &str) -> Result<ManifestPod, InvalidInput> {
    let mut pod = None;
    let mut kinds = Vec::new();
    let (mut config_maps, mut secrets) = (BTreeMap::new(), BTreeMap::new());
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| manifest_invalid(format!("not YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "ConfigMap" => {
                let cm = serde_json::from_value(v).map_err(|e| manifest_invalid(format!("ConfigMap {name}: {e}")))?;
                config_maps.insert(name, cm);
                continue;
            }
            "Secret" => {
                let mut v = v;
                // `stringData` is the apiserver's to fold into `data`.
                if let Some(string_data) = v.get("stringData").and_then(Value::as_object).cloned() {
                    use base64::Engine as _;
                    for (k, text) in string_data {
                        let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_str().unwrap_or(""));
                        v["data"][k] = json!(encoded);
                    }
                }
                let secret = serde_json::from_value(v).map_err(|e| manifest_invalid(format!("Secret {name}: {e}")))?;
                secrets.insert(name, secret);
                continue;
            }
            _ => {}
        }
        if pod.is_none() {
            pod = pod_of(&kind, &v);
        }
        if pod.is_none() {
            kinds.push(if kind.is_empty() { "(no kind)".to_owned() } else { kind });
        }
    }
    let Some(mut pod) = pod else {
        return Err(manifest_invalid(format!("no Pod or pod template in the manifest (found: {})", kinds.join(", "))));
    };
    pod["spec"]["nodeName"] = json!(node_name);
    let pod: Pod = serde_json::from_value(pod).map_err(|e| manifest_invalid(format!("not a Pod: {e}")))?;
    Ok(ManifestPod { pod, config_maps, secrets })
}

fn pod_of(kind: &str, v: &Value) -> Option<Value> {
    let owner = v["metadata"]["name"].as_str().unwrap_or("pod");
    let (template, name) = match kind {
        "Pod" => (v.clone(), owner.to_owned()),
        "StatefulSet" => (v["spec"]["template"].clone(), format!("{owner}-0")),
        "Deployment" | "DaemonSet" | "ReplicaSet" | "Job" => (v["spec"]["template"].clone(), format!("{owner}-dryrun")),
        "CronJob" => (v["spec"]["jobTemplate"]["spec"]["template"].clone(), format!("{owner}-dryrun")),
        _ => return None,
    };
    if !template.is_object() {
        return None;
    }
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    let meta = &mut pod["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    if meta["name"].as_str().is_none_or(str::is_empty) {
        meta["name"] = json!(name);
    }
    if meta["namespace"].as_str().is_none_or(str::is_empty) {
        meta["namespace"] = json!(v["metadata"]["namespace"].as_str().unwrap_or("default"));
    }
    if meta["uid"].as_str().is_none_or(str::is_empty) {
        meta["uid"] = json!(DRY_RUN_UID);
    }
    Some(pod)
}

/// The printed plan.
#[derive(Debug, Serialize)]
struct PlanView {
    plugin: String,
    contract: String,
    node: String,
    pod: String,
    /// What the host itself would record on the pod before the call (optional objects missing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<EventView>,
    requests: Vec<RequestView>,
    annotations: BTreeMap<String, String>,
    events: Vec<EventView>,
}

#[derive(Debug, Serialize)]
struct RequestView {
    method: String,
    url: String,
    headers: Vec<HeaderView>,
    /// The body as text when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// Otherwise, base64.
    #[serde(rename = "bodyBase64", skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

#[derive(Debug, Serialize)]
struct HeaderView {
    name: String,
    value: String,
}

#[derive(Debug, Serialize)]
struct EventView {
    kind: &'static str,
    reason: String,
    message: String,
}

impl PlanView {
    fn new(
        info: &crate::plugin::PluginInfo,
        node: &str,
        pod: &Pod,
        warnings: &[(String, String)],
        plan: CreatePlan,
    ) -> Self {
        let meta = &pod.metadata;
        PlanView {
            plugin: format!("{} {}", info.name, info.version),
            contract: info.contract_version.clone(),
            node: node.to_owned(),
            pod: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
            warnings: warnings
                .iter()
                .map(|(reason, message)| EventView {
                    kind: "Warning",
                    reason: reason.clone(),
                    message: message.clone(),
                })
                .collect(),
            requests: plan.requests.into_iter().map(RequestView::new).collect(),
            annotations: plan.annotations.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            events: plan
                .events
                .into_iter()
                .map(|e| EventView { kind: e.kind.as_str(), reason: e.reason, message: e.message })
                .collect(),
        }
    }
}

impl RequestView {
    fn new(req: HttpRequest) -> Self {
        let (body, body_base64) = match String::from_utf8(req.body) {
            Ok(text) => (Some(text), None),
            Err(e) => {
                use base64::Engine as _;
                (None, Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())))
            }
        };
        RequestView {
            method: req.method,
            url: req.url,
            headers: req.headers.into_iter().map(|kv| HeaderView { name: kv.key, value: kv.value }).collect(),
            body,
            body_base64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_manifest_gives_its_pod_template_named_bound_and_with_the_dry_run_uid() {
        let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: hunter2}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: c, image: nginx}]
"#;
        let m = pod_from_manifest(yaml, "vk-1").unwrap();
        assert_eq!(m.pod.metadata.name.as_deref(), Some("db-0"));
        assert_eq!(m.pod.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(m.pod.metadata.uid.as_deref(), Some(DRY_RUN_UID));
        assert_eq!(m.pod.spec.as_ref().unwrap().node_name.as_deref(), Some("vk-1"));
        assert!(m.config_maps.contains_key("conf"));
        let data = m.secrets["creds"].data.as_ref().unwrap();
        assert_eq!(data["password"].0, b"hunter2");
    }

    #[test]
    fn a_manifest_without_a_pod_is_invalid_naming_what_it_holds() {
        let err = pod_from_manifest("kind: Service\nmetadata: {name: s}\n", "vk-1").err().unwrap();
        assert_eq!(err.reason, "InvalidManifest");
        assert!(err.message.contains("Service"), "{}", err.message);
    }

    #[test]
    fn a_binary_body_is_shown_as_base64_and_text_as_text() {
        let req = |body: &[u8]| HttpRequest {
            method: "POST".into(),
            url: "https://api.example.com/".into(),
            headers: vec![],
            body: body.to_vec(),
            timeout_ms: 0,
        };
        let text = RequestView::new(req(b"Action=CreateCubePod"));
        assert_eq!((text.body.as_deref(), text.body_base64.as_deref()), (Some("Action=CreateCubePod"), None));
        let binary = RequestView::new(req(&[0xff, 0x00]));
        assert_eq!((binary.body.as_deref(), binary.body_base64.as_deref()), (None, Some("/wA=")));
    }
}
