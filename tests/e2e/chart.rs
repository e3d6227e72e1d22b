//! The Helm chart (charts/vkhost): its defaults render the objects of deploy/, and values for
//! nodes, credentials, the plugin volume, replicas and securityContext render objects the
//! apiserver accepts (server-side dry run, Pod Security "restricted" enforced). `helm` is built by
//! tests/chart/build from the Go module proxy.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use vkcube_e2e::{cluster, repo_root};

/// The helm binary (built on first use when `make test` has not built it yet).
fn helm() -> PathBuf {
    let out = Command::new(repo_root().join("tests/chart/build")).output().expect("run tests/chart/build");
    assert!(out.status.success(), "tests/chart/build: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().expect("helm's path").trim())
}

/// `helm template` of the chart with `args` (values); the rendered YAML.
fn render(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["template", "vkhost"])
        .arg(repo_root().join("charts/vkhost"))
        .args(args)
        .output()
        .expect("run helm template");
    assert!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a YAML stream by kind/namespace/name; the daemon's TOML config parsed, so
/// comments and layout do not count.
fn objects(yaml: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let mut v: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
        if v.is_null() {
            continue;
        }
        if let Some(toml_text) = v["data"]["vkhost.toml"].as_str() {
            let parsed: toml::Value =
                toml::from_str(toml_text).unwrap_or_else(|e| panic!("vkhost.toml: {e}\n{toml_text}"));
            v["data"]["vkhost.toml"] = serde_json::to_value(parsed).unwrap();
        }
        let m = &v["metadata"];
        let key = format!(
            "{}/{}/{}",
            v["kind"].as_str().unwrap(),
            m["namespace"].as_str().unwrap_or(""),
            m["name"].as_str().unwrap()
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key} twice");
    }
    out
}

fn deploy_objects() -> BTreeMap<String, Value> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let all: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    objects(&all.join("\n---\n"))
}

#[test]
fn chart_defaults_render_the_objects_of_deploy() {
    let chart = objects(&render(&[]));
    let deploy = deploy_objects();
    assert_eq!(chart.keys().collect::<Vec<_>>(), deploy.keys().collect::<Vec<_>>());
    for (key, want) in &deploy {
        assert_eq!(&chart[key], want, "{key}: the chart's defaults differ from deploy/");
    }
}

#[test]
fn chart_values_render_objects_the_apiserver_accepts() {
    let cluster = cluster();
    let values = std::env::temp_dir().join(format!("vkcube-chart-values-{}.yaml", std::process::id()));
    std::fs::write(
        &values,
        r#"
namespace: vkhost-chart
replicas: 3
image: registry.example.com/vkhost:0.2.0
plugin: {file: other.wasm, existingClaim: my-plugins, egress: {requestsPerSecond: 10, burst: 20}}
credentials: {existingSecret: my-cube-keys}
nodes:
  - {id: a, taintValue: cube, provider: {api_url: "https://api.example.com", region: cn-sh2, zone: cn-sh2-01, vpc_id: uvnet-1, subnet_id: subnet-1}}
  - {id: b, taintValue: cube, provider: {api_url: "https://api.example.com", region: cn-sh2, zone: cn-sh2-02, vpc_id: uvnet-1, subnet_id: subnet-2}}
securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}, runAsNonRoot: true}
"#,
    )
    .unwrap();
    let yaml = render(&["-f", values.to_str().unwrap()]);
    std::fs::remove_file(&values).unwrap();
    let rendered = objects(&yaml);

    // What the values say, where they say it.
    let deployment = &rendered["Deployment/vkhost-chart/vkhost"];
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "registry.example.com/vkhost:0.2.0");
    assert_eq!(pod["containers"][0]["securityContext"]["runAsNonRoot"], true);
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(volume("plugins")["persistentVolumeClaim"]["claimName"], "my-plugins");
    assert_eq!(volume("credentials")["secret"]["secretName"], "my-cube-keys");
    assert!(
        !rendered.keys().any(|k| k.starts_with("Secret/") || k.starts_with("PersistentVolumeClaim/")),
        "{:?}",
        rendered.keys()
    );
    let config = &rendered["ConfigMap/vkhost-chart/vkhost-config"]["data"]["vkhost.toml"];
    assert_eq!(config["plugin"]["path"], "/var/lib/vkhost/plugins/other.wasm");
    assert_eq!(config["plugin"]["egress"]["requests_per_second"], 10);
    assert_eq!(config["plugin"]["egress"]["burst"], 20);
    assert_eq!(config["ha"]["namespace"], "vkhost-chart");
    let zones: Vec<_> =
        config["nodes"].as_array().unwrap().iter().map(|n| (&n["id"], &n["provider"]["zone"])).collect();
    assert_eq!(zones, [(&"a".into(), &"cn-sh2-01".into()), (&"b".into(), &"cn-sh2-02".into())]);
    let bindings = &rendered["ClusterRoleBinding//vkhost"]["subjects"][0];
    assert_eq!(bindings["namespace"], "vkhost-chart");

    // The apiserver takes all of it: the namespace for real, then everything as a dry run.
    let apply = |args: &[&str], input: &str| {
        let mut child = cluster
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let namespace = serde_json::to_string(&rendered["Namespace//vkhost-chart"]).unwrap();
    let (ok, out) = apply(&["apply", "--server-side", "-f", "-"], &namespace);
    assert!(ok, "{out}");
    let (ok, out) = apply(&["apply", "--server-side", "--dry-run=server", "-f", "-"], &yaml);
    assert!(ok, "dry run refused: {out}");
    assert!(!out.contains("PodSecurity"), "the pods would violate Pod Security: {out}");
    assert!(out.contains("deployment.apps/vkhost serverside-applied (server dry run)"), "{out}");
}
