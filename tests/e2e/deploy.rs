//! `deploy/` is what it takes to run vkhost in a real cluster: the apiserver accepts every object
//! (server-side dry run, so admission and validation run), it applies server-side into a
//! namespace that enforces Pod Security "restricted", the daemon's ServiceAccount holds exactly
//! the permissions listed here (node work goes through node identities), and a daemon with
//! nothing more runs pods.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, node_of, start, with_bootstrap};
use vkcube_e2e::{Cluster, cluster, repo_root, running_ready, wait_for};

const SA: &str = "system:serviceaccount:vkhost-system:vkhost";

fn apply_rbac(cluster: &Cluster) {
    let dir = repo_root().join("deploy");
    let (code, _, err) = cluster.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        dir.join("00-namespace.yaml").to_str().unwrap(),
        "-f",
        dir.join("10-rbac.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn deploy_manifests_pass_server_side_dry_run() {
    let cluster = cluster();
    let dir = repo_root().join("deploy");
    // The namespace must exist for a dry run of namespaced objects.
    apply_rbac(cluster);
    let (code, out, err) = cluster.kubectl(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "dry run refused: {err}");
    for object in [
        "serviceaccount/vkhost",
        "clusterrole.rbac.authorization.k8s.io/vkhost",
        "role.rbac.authorization.k8s.io/vkhost-election",
        "deployment.apps/vkhost",
        "configmap/vkhost-config",
        "networkpolicy.networking.k8s.io/vkhost",
    ] {
        assert!(out.contains(object), "{object} missing from: {out}");
    }
}

#[test]
fn deploy_applies_server_side_under_pod_security_restricted() {
    let cluster = cluster();
    let dir = repo_root().join("deploy");
    let (code, _, err) = cluster.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "server-side apply refused: {err}");
    assert!(!err.contains("PodSecurity"), "the Deployment's pods would violate Pod Security: {err}");
    let (_, labels, _) = cluster.kubectl(&["get", "namespace", "vkhost-system", "-o", "jsonpath={.metadata.labels}"]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted", "{labels}");

    // A pod from the Deployment's own template is admitted; the same pod without its security
    // context is refused, so the namespace really enforces "restricted".
    let (code, deployment, err) =
        cluster.kubectl(&["get", "deployment", "vkhost", "-n", "vkhost-system", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let deployment: Value = serde_json::from_str(&deployment).unwrap();
    let template = &deployment["spec"]["template"];
    let pod = |spec: &Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vkhost-pss", "namespace": "vkhost-system",
               "labels": template["metadata"]["labels"]}, "spec": spec})
    };
    let create = |manifest: Value| {
        let path =
            std::env::temp_dir().join(format!("vkcube-pss-{}-{}.json", std::process::id(), rand::random::<u32>()));
        std::fs::write(&path, manifest.to_string()).unwrap();
        let out = cluster.kubectl(&["create", "--dry-run=server", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        out
    };
    let (code, _, err) = create(pod(&template["spec"]));
    assert_eq!(code, 0, "the Deployment's pod is refused under restricted: {err}");
    let mut loose = template["spec"].clone();
    loose.as_object_mut().unwrap().remove("securityContext");
    loose["containers"][0].as_object_mut().unwrap().remove("securityContext");
    let (code, _, err) = create(pod(&loose));
    assert_ne!(code, 0, "a pod without a security context was admitted");
    assert!(err.contains("violates PodSecurity"), "{err}");

    // Nothing listens for the world but the kubelet API.
    let (_, policy, _) = cluster.kubectl(&["get", "networkpolicy", "vkhost", "-n", "vkhost-system", "-o", "json"]);
    let policy: Value = serde_json::from_str(&policy).unwrap();
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    let open: Vec<&Value> = ingress.iter().filter(|r| r.get("from").is_none()).collect();
    assert_eq!(open.len(), 1, "{ingress:?}");
    assert_eq!(open[0]["ports"], json!([{"protocol": "TCP", "port": 10250}]));
    let (_, config, _) =
        cluster.kubectl(&["get", "configmap", "vkhost-config", "-n", "vkhost-system", "-o", "jsonpath={.data}"]);
    assert!(!config.contains("http://") && !config.contains("ws://"), "cloud URLs must be https: {config}");
}

/// Every (apiGroup, resource, verb, resourceName) a role grants, one string each.
fn grants(role: &Value) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    let group = if g.is_empty() { "core".to_string() } else { g.clone() };
                    if names.is_empty() {
                        out.insert(format!("{group} {r} {v}"));
                    }
                    for n in &names {
                        out.insert(format!("{group} {r} {v} {n}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_daemon_identity_holds_exactly_the_listed_permissions() {
    let cluster = cluster();
    apply_rbac(cluster);
    let get = |args: &[&str]| -> Value {
        let (code, out, err) = cluster.kubectl(&[args, &["-o", "json"]].concat());
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    // The whole ClusterRole: anything added or dropped fails here, with its reason to be given
    // in deploy/10-rbac.yaml.
    let expected: BTreeSet<String> = [
        "core nodes get",
        "core nodes list",
        "core nodes create",
        "core nodes patch",
        "certificates.k8s.io certificatesigningrequests create",
        "certificates.k8s.io certificatesigningrequests get",
        "certificates.k8s.io certificatesigningrequests/nodeclient create",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(grants(&get(&["get", "clusterrole", "vkhost"])), expected);
    let election: BTreeSet<String> = ["get", "create", "update", "patch"]
        .into_iter()
        .flat_map(|v| [format!("coordination.k8s.io leases {v}"), format!("core configmaps {v}")])
        .collect();
    assert_eq!(grants(&get(&["get", "role", "vkhost-election", "-n", "vkhost-system"])), election);

    // Every binding of the ServiceAccount, so no other role sneaks in.
    let bound = |list: Value| -> BTreeSet<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["subjects"].as_array().is_some_and(|s| {
                    s.iter().any(|s| {
                        s["kind"] == "ServiceAccount" && s["name"] == "vkhost" && s["namespace"] == "vkhost-system"
                    })
                })
            })
            .map(|b| {
                format!(
                    "{}/{} -> {}",
                    b["metadata"]["namespace"].as_str().unwrap_or("*"),
                    b["metadata"]["name"].as_str().unwrap(),
                    b["roleRef"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let mut bindings = bound(get(&["get", "clusterrolebindings"]));
    bindings.extend(bound(get(&["get", "rolebindings", "-A"])));
    let expected_bindings: BTreeSet<String> = [
        "*/vkhost -> vkhost",
        "kube-system/vkhost-authentication-reader -> extension-apiserver-authentication-reader",
        "vkhost-system/vkhost-election -> vkhost-election",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(bindings, expected_bindings);

    // What the old role gave and node identities now do instead: the bootstrap identity gets
    // no Secret, mints no token, reads no pod, writes no pod status or Lease elsewhere.
    let can = |args: &[&str]| cluster.kubectl(&[&["auth", "can-i"], args, &["--as", SA]].concat()).1.trim() == "yes";
    assert!(!can(&["get", "secrets", "-A"]), "no Secret of any namespace");
    assert!(!can(&["list", "secrets", "-n", "default"]));
    assert!(!can(&["create", "serviceaccounts/default", "--subresource=token", "-n", "default"]));
    assert!(!can(&["list", "pods", "-A"]));
    assert!(!can(&["patch", "pods", "--subresource=status", "-n", "default"]));
    assert!(!can(&["patch", "pods", "-n", "default"]), "pod annotations are the nodes' own writes");
    assert!(!can(&["update", "leases.coordination.k8s.io", "-n", "kube-node-lease"]));
    assert!(!can(&["delete", "nodes"]));
    assert!(!can(&["update", "certificatesigningrequests", "--subresource=approval"]), "never approves a CSR");
    assert!(can(&["create", "certificatesigningrequests", "--subresource=nodeclient"]));
    assert!(can(&["update", "leases.coordination.k8s.io", "-n", "vkhost-system"]));
    assert!(can(&["update", "configmaps", "-n", "vkhost-system"]), "the nodes' durable records");
    assert!(!can(&["update", "configmaps", "-n", "default"]), "in the HA namespace only");
    assert!(!can(&["delete", "configmaps", "-n", "vkhost-system"]));
    assert!(!can(&["create", "tokenreviews.authentication.k8s.io"]), "nodes review their callers themselves");
    assert!(can(&["get", "configmaps/extension-apiserver-authentication", "-n", "kube-system"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_with_only_the_deploy_rbac_runs_pods_through_its_node_identity() {
    let cluster = cluster();
    apply_rbac(cluster);
    let ns = cluster.namespace("deployrbac").await;
    // The deploy ServiceAccount is the daemon's bootstrap identity, with nothing more.
    let kubeconfig = cluster.service_account_kubeconfig("vkhost-system", "vkhost");
    let cid = fresh_cluster_id();
    let config = with_bootstrap(cluster, &example_config(cluster, &cid, &ns.name, ""), &kubeconfig, "vkhost-system");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await;
    let port = node.status.as_ref().and_then(|s| s.daemon_endpoints.as_ref()).and_then(|d| d.kubelet_endpoint.as_ref());
    let kubelet = format!("https://127.0.0.1:{}", port.map(|p| p.port).unwrap_or_default());
    let node = node.name_any();
    // A pod with a Secret and the default projected token: both need the node identity now.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret = serde_json::from_value(json!({"metadata": {"name": "app"}, "stringData": {"k": "v"}})).unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox",
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "app", "key": "k"}}}]}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running =
        wait_for(Duration::from_secs(60), "pod Running", || async { pods.get("web").await.ok().filter(running_ready) })
            .await;
    assert!(running.annotations().contains_key("vkcube.io/instance-id"), "the node wrote the instance annotation");
    pods.delete("web", &Default::default()).await.unwrap();
    wait_for(Duration::from_secs(30), "pod deleted by the node", || async {
        matches!(pods.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;

    // The kubelet API reviews a caller's token (TokenReview) and rights (SubjectAccessReview) as
    // the node, not the daemon: a token without nodes/stats is authenticated, then refused; with
    // it, let in.
    let https = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let (code, _, err) = cluster.kubectl(&["create", "serviceaccount", "reader", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let (code, token, err) = cluster.kubectl(&["create", "token", "reader", "-n", &ns.name]);
    assert_eq!(code, 0, "{err}");
    let stats = || https.get(format!("{kubelet}/stats/summary")).bearer_auth(token.trim()).send();
    let refused = stats().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("subresource=stats"));
    let role = format!("{}-stats", ns.name);
    assert_eq!(cluster.kubectl(&["create", "clusterrole", &role, "--verb=get", "--resource=nodes/stats"]).0, 0);
    let sa = format!("--serviceaccount={}:reader", ns.name);
    assert_eq!(cluster.kubectl(&["create", "clusterrolebinding", &role, &format!("--clusterrole={role}"), &sa]).0, 0);
    wait_for(Duration::from_secs(60), "nodes/stats granted past the decision cache", || async {
        (stats().await.ok()?.status() == 200).then_some(())
    })
    .await;
    cluster.kubectl(&["delete", "clusterrolebinding", &role]);
    cluster.kubectl(&["delete", "clusterrole", &role]);
    daemon.stop().await;
    let _ = std::fs::remove_file(&kubeconfig);
}
