//! `vkhost plugin translate`: a manifest and a node's provider config in, what the plugin's
//! `create` would send (its `plan`) or the error that would stop the pod out, without any side
//! effect. `vkhost translate` is the same command.

#[path = "plugin_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{plugin, scratch_dir};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `vkhost <command…> MANIFEST --plugin PLUGIN --config CONFIG [extra…]`.
fn run(command: &[&str], manifest: &str, plugin: &Path, config: &Path, extra: &[&str]) -> (i32, String, String) {
    let path = scratch_dir("translate").join("manifest.yaml");
    std::fs::write(&path, manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vkhost"))
        .args(command)
        .arg(&path)
        .arg("--plugin")
        .arg(plugin)
        .arg("--config")
        .arg(config)
        .args(extra)
        // A credential the daemon config names is never read, so never printed.
        .env("CUBE_PUBLIC_KEY", "REAL-PUBLIC-KEY")
        .env("XDG_CACHE_HOME", scratch_dir("translate-cache"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The example provider's node config: a `[nodes.provider]` table on its own.
fn example_config() -> PathBuf {
    let path = scratch_dir("translate-config").join("provider.toml");
    std::fs::write(&path, "max_pods = 20\n").unwrap();
    path
}

const DEPLOYMENT: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: web-conf}
data: {app.yaml: "listen: 8080"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        volumeMounts: [{name: conf, mountPath: /etc/web}]
      volumes: [{name: conf, configMap: {name: web-conf}}]
"#;

#[test]
fn a_workload_translates_through_the_plugins_plan_as_yaml_and_json() {
    let (code, out, err) = run(&["plugin", "translate"], DEPLOYMENT, &plugin("example.wasm"), &example_config(), &[]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(plan["plugin"].as_str().unwrap().split(' ').next(), Some("example"));
    assert_eq!(plan["contract"], "0.2.0");
    assert_eq!(plan["pod"], "shop/web-dryrun");
    // The example's create sends nothing: its plan is what create answers.
    assert_eq!(plan["requests"], serde_json::json!([]));
    assert_eq!(plan["annotations"]["example.vk.io/instance-id"], "example-00000000");
    assert_eq!(plan["events"][0]["kind"], "Normal");
    assert_eq!(plan["events"][0]["reason"], "InstanceCreated");

    let (code, out, err) =
        run(&["translate"], DEPLOYMENT, &plugin("example.wasm"), &example_config(), &["--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json, plan, "`vkhost translate` and `vkhost plugin translate` print the same plan");
}

#[test]
fn a_pod_that_cannot_be_read_is_refused_naming_reason_field_and_message() {
    let (code, out, err) = run(
        &["plugin", "translate"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        &plugin("example.wasm"),
        &example_config(),
        &["-o", "json"],
    );
    assert_eq!(code, 1, "{out}{err}");
    let refusal: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(refusal["invalid"]["reason"], "InvalidManifest");
    assert_eq!(refusal["invalid"]["field"], "manifest");
    assert!(refusal["invalid"]["message"].as_str().unwrap().contains("Service"), "{out}");
    assert!(err.starts_with("InvalidManifest: manifest: "), "{err}");
}

#[test]
fn a_plugin_without_plan_or_a_config_it_rejects_gives_no_plan() {
    // The faulty fixture is built against 0.1.0, which has no `plan`.
    let (code, out, err) = run(&["plugin", "translate"], DEPLOYMENT, &plugin("faulty-v1.wasm"), &example_config(), &[]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("pods.plan") && err.contains("vk:provider@0.1.0"), "{err}");

    let bad = scratch_dir("translate-config").join("provider.toml");
    std::fs::write(&bad, "max_pod = 20\n").unwrap();
    let (code, _, err) = run(&["plugin", "translate"], DEPLOYMENT, &plugin("example.wasm"), &bad, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("rejects the config") && err.contains("max_pod"), "{err}");
}

#[test]
fn the_guide_pod_translates_to_the_cube_create_request_on_the_first_node_of_the_daemon_config() {
    let yaml = std::fs::read_to_string(root().join("tests/demo/manifests/01-nginx-pod.yaml")).unwrap();
    let config = root().join("config.example.toml");
    let (code, out, err) = run(&["plugin", "translate"], &yaml, &plugin("cube.wasm"), &config, &[]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert_eq!(plan["node"], "uk8s-a1b2c3d4-vk-xxxxx");
    let requests = plan["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{out}");
    assert_eq!(requests[0]["method"], "POST");
    let body = requests[0]["body"].as_str().unwrap();
    assert!(body.starts_with("Action=CreateCubePod&"), "{body}");
    assert!(body.contains("Zone=cn-bj2-05") && body.contains("VPCId=uvnet-xxxxxxxx"), "{body}");
    // The size the pod's requests round to, as create would annotate it.
    assert_eq!(plan["annotations"]["cube.ucloud.cn/size"], "2-2Gi");
    // Credentials are never read: the plan is signed with stand-ins.
    assert!(!out.contains("REAL-PUBLIC-KEY") && body.contains("PublicKey=not-needed-to-translate"), "{out}");
}

#[test]
fn a_wrong_cube_annotation_is_reported_naming_it() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    cube.ucloud.cn/cube-eip-paymode: sharebandwidth
    cube.ucloud.cn/cube-eip: "true"
    cube.ucloud.cn/cube-eip-bandwidth: "5"
spec:
  automountServiceAccountToken: false
  containers:
  - name: c
    image: uhub.service.ucloud.cn/library/nginx:1.25
"#;
    let config = root().join("config.example.toml");
    let (code, out, err) = run(&["translate"], yaml, &plugin("cube.wasm"), &config, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let refusal: serde_json::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert!(refusal["invalid"]["field"].as_str().unwrap().contains("cube-eip-bandwidth"), "{out}");
    assert!(err.contains("cube-eip-bandwidth"), "{err}");
}
