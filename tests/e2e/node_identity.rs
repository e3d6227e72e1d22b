//! Node identities under the apiserver's Node authorizer and NodeRestriction admission (both on
//! in the harness): a certificate from the kubelet client signer makes `system:node:<name>`,
//! which reaches only its own Node and the Secrets and ServiceAccount tokens of pods bound to
//! it (and reads Services, for service links); the daemon's nodes act with such certificates and
//! rotate them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, node_of, start, with_bootstrap};
use vkcube_e2e::{Cluster, cluster, running_ready, wait_for};
use vkhost::kubelet::csr::{self, ClientCert};

/// A certificate for `node` from the real signer, requested with the admin (bootstrap) client.
async fn node_certificate(admin: &Client, node: &str) -> ClientCert {
    csr::request_client(admin, node, Duration::from_secs(600), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("client certificate for {node}: {e}"))
}

/// A client authenticating with `cert`, otherwise like the admin kubeconfig.
async fn client_with(cluster: &Cluster, cert: &ClientCert) -> Client {
    let base = vkhost::apiclient::bootstrap_config(Some(&cluster.kubeconfig)).await.unwrap();
    let config = vkhost::apiclient::with_client_certificate(&base, &cert.cert_pem, &cert.key_pem).unwrap();
    Client::try_from(config).unwrap()
}

/// A kubeconfig in `dir` that authenticates with `cert`, for the real kubectl.
fn kubeconfig_with(cluster: &Cluster, cert: &ClientCert, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let (crt, key) = (dir.join("node.crt"), dir.join("node.key"));
    std::fs::write(&crt, &cert.cert_pem).unwrap();
    std::fs::write(&key, &cert.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join("kubeconfig");
    let kc = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}}}]\n\
         users: [{{name: u, user: {{client-certificate: \"{crt}\", client-key: \"{key}\"}}}}]\n\
         contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
        server = cluster.apiserver,
        ca = cluster.env["CA_CRT"],
        crt = crt.display(),
        key = key.display(),
    );
    std::fs::write(&path, kc).unwrap();
    path
}

/// `kubectl auth can-i` (with `args` saying who and what); true for "yes".
fn can_i(cluster: &Cluster, kubeconfig: Option<&Path>, args: &[&str]) -> bool {
    let mut cmd = std::process::Command::new(&cluster.kubectl);
    cmd.arg("--kubeconfig").arg(kubeconfig.unwrap_or(&cluster.kubeconfig)).args(["auth", "can-i"]).args(args);
    let out = cmd.output().expect("run kubectl");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// `kubectl auth can-i` as node user `user` (group `system:nodes`), impersonated by the admin.
fn can_i_as(cluster: &Cluster, user: &str, args: &[&str]) -> bool {
    let mut all = args.to_vec();
    all.extend(["--as", user, "--as-group", "system:nodes"]);
    can_i(cluster, None, &all)
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref e)) if e.code == 403)
}

fn token_request(pod: &Pod) -> TokenRequest {
    serde_json::from_value(json!({"spec": {
        "expirationSeconds": 600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
    }}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_identity_reaches_its_own_pods_secrets_and_tokens_and_nothing_of_another_node() {
    let cluster = cluster();
    let ns = cluster.namespace("ident").await;
    let admin = ns.client.clone();
    let suffix = fresh_cluster_id().trim_start_matches("uk8s-").to_string();
    let (node_a, node_b) = (format!("ident-a-{suffix}"), format!("ident-b-{suffix}"));
    let nodes: Api<Node> = Api::all(admin.clone());
    for n in [&node_a, &node_b] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    // Per node: a Secret, a ServiceAccount, and a pod bound to the node that uses both.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let mut bound = Vec::new();
    for (tag, node) in [("a", &node_a), ("b", &node_b)] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": format!("secret-{tag}")}, "stringData": {"k": "v"}}))
                .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": format!("sa-{tag}")}})).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("pod-{tag}")},
            "spec": {
                "nodeName": node,
                "serviceAccountName": format!("sa-{tag}"),
                "containers": [{"name": "app", "image": "busybox",
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": format!("secret-{tag}"), "key": "k"}}}]}],
            },
        }))
        .unwrap();
        bound.push(pods.create(&PostParams::default(), &pod).await.unwrap());
    }
    let (pod_a, pod_b) = (&bound[0], &bound[1]);

    let cert = node_certificate(&admin, &node_a).await;
    // Signed because the csrapproving controller approved it, not because anyone else did.
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let approval = csrs.get(&cert.csr).await.unwrap().status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        approval.iter().any(|c| c.type_ == "Approved" && c.reason.as_deref() == Some("AutoApproved")),
        "{approval:?}"
    );
    let as_a = client_with(cluster, &cert).await;
    let dir = std::env::temp_dir().join(format!("vkcube-ident-{}-{suffix}", std::process::id()));
    let kubeconfig = kubeconfig_with(cluster, &cert, &dir);
    let (code, whoami, err) = {
        let out = std::process::Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{err}");
    assert!(whoami.starts_with(&format!("system:node:{node_a} ")) && whoami.contains("system:nodes"), "{whoami}");

    // Its own pod's Secret: yes (once the authorizer's graph has the pod); the other node's: no.
    let secrets_a: Api<Secret> = Api::namespaced(as_a.clone(), &ns.name);
    wait_for(Duration::from_secs(30), "node A may read its pod's Secret", || async {
        secrets_a.get("secret-a").await.ok()
    })
    .await;
    assert!(forbidden(secrets_a.get("secret-b").await), "node A read the Secret of a pod on node B");
    assert!(forbidden(secrets_a.list(&ListParams::default()).await), "node A listed Secrets");

    // Tokens: for its pod's ServiceAccount, bound to its pod, with the audience of the pod's
    // projected token volume (the default one); none for a ServiceAccount whose pods all run
    // elsewhere, even bound to that pod.
    let sas_a: Api<ServiceAccount> = Api::namespaced(as_a.clone(), &ns.name);
    let minted: TokenRequest =
        sas_a.create_subresource("token", "sa-a", &PostParams::default(), &token_request(pod_a)).await.unwrap();
    assert!(minted.status.and_then(|s| s.token).is_some_and(|t| !t.is_empty()));
    let other: Result<TokenRequest, _> =
        sas_a.create_subresource("token", "sa-b", &PostParams::default(), &token_request(pod_b)).await;
    assert!(forbidden(other), "node A minted a token for a ServiceAccount with no pod on it");

    // Nodes: its own status, yes; another Node, no (NodeRestriction); nor pod metadata through
    // the pod itself.
    let nodes_a: Api<Node> = Api::all(as_a.clone());
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Test"}]}});
    nodes_a.patch_status(&node_a, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert!(forbidden(nodes_a.patch_status(&node_b, &PatchParams::default(), &Patch::Merge(&status)).await));
    let label = json!({"metadata": {"labels": {"x": "y"}}});
    assert!(forbidden(nodes_a.patch(&node_b, &PatchParams::default(), &Patch::Merge(&label)).await));
    assert!(forbidden(nodes_a.get(&node_b).await), "node A read another Node");
    let pods_a: Api<Pod> = Api::namespaced(as_a.clone(), &ns.name);
    let note = json!({"metadata": {"annotations": {"x": "y"}}});
    assert!(forbidden(pods_a.patch("pod-a", &PatchParams::default(), &Patch::Merge(&note)).await));
    // Its pods' annotations through their status, with the status, yes: how the pod controller
    // writes the instance id in one write (NodeRestriction refuses labels there, and another
    // node's pods).
    let annotated_status = json!({"metadata": {"annotations": {"x": "y"}}, "status": {"message": "annotated"}});
    let written =
        pods_a.patch_status("pod-a", &PatchParams::default(), &Patch::Merge(&annotated_status)).await.unwrap();
    assert_eq!(written.annotations().get("x").map(String::as_str), Some("y"));
    assert_eq!(written.status.and_then(|s| s.message).as_deref(), Some("annotated"));
    assert_eq!(pods.get("pod-a").await.unwrap().annotations().get("x").map(String::as_str), Some("y"), "stored");
    let labelled = json!({"metadata": {"labels": {"x": "y"}}});
    assert!(forbidden(pods_a.patch_status("pod-a", &PatchParams::default(), &Patch::Merge(&labelled)).await));
    assert!(forbidden(pods_a.patch_status("pod-b", &PatchParams::default(), &Patch::Merge(&note)).await));
    assert!(forbidden(pods_a.list(&ListParams::default()).await), "node A listed pods of every node");

    // The same, asked with kubectl: as the certificate itself, and impersonated by an admin.
    let n = ns.name.as_str();
    let as_cert = Some(kubeconfig.as_path());
    assert!(can_i(cluster, as_cert, &["get", "secret/secret-a", "-n", n]));
    assert!(!can_i(cluster, as_cert, &["get", "secret/secret-b", "-n", n]));
    assert!(!can_i(cluster, as_cert, &["list", "secrets", "-n", n]));
    assert!(can_i(cluster, as_cert, &["create", "serviceaccounts/sa-a", "--subresource=token", "-n", n]));
    assert!(!can_i(cluster, as_cert, &["create", "serviceaccounts/sa-b", "--subresource=token", "-n", n]));
    assert!(!can_i(cluster, as_cert, &["get", &format!("nodes/{node_b}")]));
    // Services, for service-link variables: the node watches its pods' namespaces and `default`.
    for verb in ["get", "list", "watch"] {
        assert!(can_i(cluster, as_cert, &[verb, "services", "-n", n]), "{verb} services");
        assert!(can_i(cluster, as_cert, &[verb, "services", "-n", "default"]), "{verb} services in default");
    }
    assert!(!can_i(cluster, as_cert, &["create", "services", "-n", n]));
    let user = format!("system:node:{node_a}");
    assert!(can_i_as(cluster, &user, &["get", "secret/secret-a", "-n", n]));
    assert!(!can_i_as(cluster, &user, &["get", "secret/secret-b", "-n", n]));
    assert!(!can_i_as(cluster, &user, &["create", "serviceaccounts/sa-b", "--subresource=token", "-n", n]));
    let _ = std::fs::remove_dir_all(&dir);
    for n in [&node_a, &node_b] {
        let _ = nodes.delete(n, &Default::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_nodes_act_with_their_own_rotated_certificates() {
    let cluster = cluster();
    let ns = cluster.namespace("nodecert").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let identity = daemon.shared.node_identity(&node).expect("the node has its own identity");
    let first = identity.certificate();
    let dir = std::env::temp_dir().join(format!("vkcube-nodecert-{}-{cid}", std::process::id()));
    let (code, whoami, err) = cluster.kubectl(&[
        "--kubeconfig",
        kubeconfig_with(cluster, &first, &dir).to_str().unwrap(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(whoami, format!("system:node:{node}"));

    // A pod with the default projected ServiceAccount token: the token and kube-root-ca.crt
    // come through the node identity, under the Node authorizer.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox"}],
            },
        }))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("before")).await.unwrap();
    wait_for(Duration::from_secs(60), "pod Running", || async { pods.get("before").await.ok().filter(running_ready) })
        .await;

    // Rotation: a new CSR and key; the node keeps beating and serving pods on the new one.
    identity.rotate(&daemon.shared.client).await.unwrap();
    let second = identity.certificate();
    assert_ne!(first.csr, second.csr);
    assert_ne!(first.key_pem, second.key_pem);
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let renewed = |l: Lease| l.spec.and_then(|s| s.renew_time).map(|t| t.0);
    let before = renewed(leases.get(&node).await.unwrap());
    wait_for(Duration::from_secs(30), "node Lease renewed after rotation", || async {
        let now = renewed(leases.get(&node).await.ok()?);
        (now > before).then_some(())
    })
    .await;
    pods.create(&PostParams::default(), &pod("after")).await.unwrap();
    wait_for(Duration::from_secs(60), "pod Running after rotation", || async {
        pods.get("after").await.ok().filter(running_ready)
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_certificate_is_not_approved_keeps_asking_and_comes_up_once_allowed() {
    let cluster = cluster();
    let ns = cluster.namespace("unapproved").await;
    let n = ns.name.clone();
    // A bootstrap identity with everything the daemon needs but `certificatesigningrequests/
    // nodeclient`, without which the csrapproving controller leaves its CSRs pending.
    let rbac = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: boot, namespace: {n}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: boot-{n}}}\nrules:\n\
         - {{apiGroups: [\"\"], resources: [nodes], verbs: [get, list, create, patch]}}\n\
         - {{apiGroups: [\"\"], resources: [pods], verbs: [patch]}}\n\
         - {{apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [create, get]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: boot-{n}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: boot-{n}}}\n\
         subjects: [{{kind: ServiceAccount, name: boot, namespace: {n}}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: boot, namespace: {n}}}\nrules:\n\
         - {{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update, patch]}}\n\
         - {{apiGroups: [\"\"], resources: [configmaps], verbs: [get, create, update, patch]}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: boot, namespace: {n}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: boot}}\n\
         subjects: [{{kind: ServiceAccount, name: boot, namespace: {n}}}]\n"
    );
    let manifest = std::env::temp_dir().join(format!("vkcube-boot-{}-{n}.yaml", std::process::id()));
    std::fs::write(&manifest, rbac).unwrap();
    let (code, _, err) = cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    let _ = std::fs::remove_file(&manifest);
    assert_eq!(code, 0, "{err}");
    let kubeconfig = cluster.service_account_kubeconfig(&n, "boot");
    let cid = fresh_cluster_id();
    let config = example_config(cluster, &cid, &n, "[api]\nnode_cert_wait_seconds = 3\n");
    let daemon = start(&with_bootstrap(cluster, &config, &kubeconfig, &n)).await;

    // It asks, is not answered, and asks again; meanwhile no Node is registered.
    let csrs: Api<CertificateSigningRequest> = Api::all(ns.client.clone());
    let requester = format!("system:serviceaccount:{n}:boot");
    let pending = wait_for(Duration::from_secs(40), "a second CSR after the first went unanswered", || async {
        let all = csrs.list(&ListParams::default()).await.ok()?.items;
        let mine: Vec<_> = all.into_iter().filter(|c| c.spec.username.as_deref() == Some(requester.as_str())).collect();
        (mine.len() >= 2).then_some(mine)
    })
    .await;
    for c in &pending {
        assert_eq!(c.spec.signer_name, csr::CLIENT_SIGNER);
        let approved = c.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| !cs.is_empty());
        assert!(!approved, "{:?} was decided without the nodeclient permission", c.metadata.name);
    }
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let selector = format!("vkcube.io/cluster-id={cid}");
    assert!(nodes.list(&ListParams::default().labels(&selector)).await.unwrap().items.is_empty());

    // Allowed to: the next request is approved and the node comes up.
    let binding = format!("boot-nodeclient-{n}");
    let (code, _, err) = cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole=system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        &format!("--serviceaccount={n}:boot"),
    ]);
    assert_eq!(code, 0, "{err}");
    node_of(&ns.client, &cid).await;
    daemon.stop().await;
    let _ = std::fs::remove_file(&kubeconfig);
    let role = format!("boot-{n}");
    cluster.kubectl(&["delete", "clusterrolebinding", &binding, &role]);
    cluster.kubectl(&["delete", "clusterrole", &role]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_credentials_keep_the_daemons_identity_for_clusters_without_the_signer() {
    let cluster = cluster();
    let ns = cluster.namespace("sharedcred").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "[api]\nnode_credentials = \"shared\"\n")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    assert!(daemon.shared.node_identity(&node).is_none(), "no node certificate in shared mode");
    let csrs: Api<CertificateSigningRequest> = Api::all(ns.client.clone());
    let prefix = format!("vkcube-client-{node}-");
    let asked =
        csrs.list(&ListParams::default()).await.unwrap().items.into_iter().any(|c| c.name_any().starts_with(&prefix));
    assert!(!asked, "shared mode asked for a node certificate");
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox"}],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for(Duration::from_secs(60), "pod Running", || async { pods.get("web").await.ok().filter(running_ready) })
        .await;
    daemon.stop().await;
}

/// A loopback relay to the apiserver at `apiserver` (`https://host:port`): its URL, and how
/// many connections it accepted.
async fn counting_relay(apiserver: &str) -> (String, Arc<AtomicUsize>) {
    let upstream = apiserver.trim_start_matches("https://").trim_end_matches('/').to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_node_client_speaks_http2_and_carries_its_requests_and_a_watch_on_one_connection() {
    let cluster = cluster();
    let ns = cluster.namespace("h2").await;
    let node = format!("h2-{}", fresh_cluster_id().trim_start_matches("uk8s-"));
    let cert = node_certificate(&ns.client, &node).await;
    // The node's client as the daemon builds it, reaching the apiserver through a relay that
    // counts its connections (the apiserver's certificate names 127.0.0.1, whatever the port).
    let (relay, connections) = counting_relay(&cluster.apiserver).await;
    let mut base = vkhost::apiclient::bootstrap_config(Some(&cluster.kubeconfig)).await.unwrap();
    base.cluster_url = relay.parse().unwrap();
    let config = vkhost::apiclient::with_client_certificate(&base, &cert.cert_pem, &cert.key_pem).unwrap();
    let client = vkhost::apiclient::limited(config, &vkhost::apiclient::ApiLimits::default()).unwrap();

    let version = client.send(http::Request::get("/version").body(kube::client::Body::empty()).unwrap()).await.unwrap();
    assert_eq!(version.version(), http::Version::HTTP_2, "ALPN did not give h2");
    drop(version);

    // The node's pod watch stays open while 32 listings run at once, all on that one connection.
    let pods: Api<Pod> = Api::all(client.clone());
    let mine = format!("spec.nodeName={node}");
    let watch = pods.watch(&WatchParams::default().fields(&mine), "0").await.unwrap();
    let listing = ListParams::default().fields(&mine);
    let lists = futures::future::join_all((0..32).map(|_| pods.list(&listing))).await;
    assert!(lists.iter().all(|l| l.as_ref().is_ok_and(|l| l.items.is_empty())), "{lists:?}");
    // What the node authorizer allows it: its own Node (absent here), not another's Secrets.
    let own = Api::<Node>::all(client.clone()).get_opt(&node).await.unwrap();
    assert!(own.is_none());
    assert!(forbidden(Api::<Secret>::namespaced(client.clone(), &ns.name).list(&ListParams::default()).await));
    assert_eq!(connections.load(Ordering::SeqCst), 1, "requests and the watch took connections of their own");
    drop(watch);
}
