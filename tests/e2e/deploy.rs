//! `deploy/` is what it takes to run vkhost in a real cluster: the apiserver accepts every object
//! (server-side dry run, so admission and validation run), and the ClusterRole grants exactly
//! what the daemon's API calls need.

use vkcube_e2e::{cluster, repo_root};

#[test]
fn deploy_manifests_pass_server_side_dry_run() {
    let cluster = cluster();
    let dir = repo_root().join("deploy");
    // The namespace must exist for a dry run of namespaced objects.
    let (code, _, err) = cluster.kubectl(&["apply", "-f", dir.join("00-namespace.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cluster.kubectl(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "dry run refused: {err}");
    for object in [
        "serviceaccount/vkhost",
        "clusterrole.rbac.authorization.k8s.io/vkhost",
        "deployment.apps/vkhost",
        "configmap/vkhost-config",
    ] {
        assert!(out.contains(object), "{object} missing from: {out}");
    }
}

#[test]
fn the_daemon_identity_may_do_what_vkhost_does_and_no_more() {
    let cluster = cluster();
    let dir = repo_root().join("deploy");
    let (code, _, err) = cluster.kubectl(&[
        "apply",
        "-f",
        dir.join("00-namespace.yaml").to_str().unwrap(),
        "-f",
        dir.join("10-rbac.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let sa = "system:serviceaccount:vkhost-system:vkhost";
    // `resource` may carry a subresource after a `/` (kubectl reads `a/b` as a name otherwise).
    let can = |verb: &str, resource: &str, ns: Option<&str>| {
        let (res, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
        let sub_flag = sub.map(|s| format!("--subresource={s}"));
        let mut args = vec!["auth", "can-i", verb, res, "--as", sa];
        if let Some(f) = &sub_flag {
            args.push(f);
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        cluster.kubectl(&args).1.trim() == "yes"
    };
    assert!(can("patch", "pods/status", Some("default")));
    assert!(can("create", "serviceaccounts/token", Some("default")));
    assert!(can("create", "tokenreviews.authentication.k8s.io", None));
    assert!(can("update", "leases.coordination.k8s.io", Some("kube-node-lease")));
    assert!(
        cluster
            .kubectl(&[
                "auth",
                "can-i",
                "get",
                "configmaps/extension-apiserver-authentication",
                "--as",
                sa,
                "-n",
                "kube-system"
            ])
            .1
            .trim()
            == "yes"
    );
    assert!(!can("create", "pods/exec", Some("default")), "no exec into pods");
    assert!(!can("create", "pods", Some("default")), "vkhost never creates pods");
    assert!(!can("delete", "secrets", Some("default")), "vkhost never changes secrets");
    assert!(!can("create", "deployments.apps", Some("default")));
}
