//! A daemon whose plugin comes from a real OCI registry on loopback, against the real control
//! plane: the pinned digest on the node's annotation and on `GET /plugin`, an unsigned tag move
//! refused with a Warning Event and the metric while the running version stays, then a signed
//! one reloaded with `PluginReloaded`.

#[path = "../../host/tests/registry_support.rs"]
mod registry_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use registry_support::Registry;
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, plugin_path, start, test_config};
use vkcube_e2e::{cluster, wait_for};
use vkhost::plugin::source::publish::{KeygenArgs, PushArgs, run_keygen, run_push};

const SOURCE_ANNOTATION: &str = "vkcube.io/plugin-source";

/// A copy of the example provider with a custom section appended: a new digest, same behaviour.
fn new_build(dir: &Path, label: &str) -> PathBuf {
    let mut bytes = std::fs::read(plugin_path("example")).unwrap();
    let name = b"vkcube-e2e";
    let size = 1 + name.len() + label.len();
    bytes.extend_from_slice(&[0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(label.as_bytes());
    let path = dir.join(format!("example-{label}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn push(file: PathBuf, reference: &str, key: Option<&Path>) -> String {
    let args = PushArgs { file, reference: reference.into(), key: key.map(Path::to_path_buf) };
    assert_eq!(run_push(args).await.unwrap(), 0);
    // The digest the tag names now, as the registry answers.
    let (host, rest) = reference.trim_start_matches("oci://").split_once('/').unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    let resp = reqwest::Client::new()
        .head(format!("http://{host}/v2/{repo}/manifests/{tag}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    resp.headers()["docker-content-digest"].to_str().unwrap().to_string()
}

async fn annotation(nodes: &Api<Node>, name: &str) -> String {
    let node = nodes.get(name).await.unwrap();
    node.annotations().get(SOURCE_ANNOTATION).cloned().unwrap_or_default()
}

async fn node_event(events: &Api<Event>, node: &str, reason: &str) -> Option<String> {
    let list = events.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .find(|e| e.involved_object.name.as_deref() == Some(node) && e.reason.as_deref() == Some(reason))
        .and_then(|e| e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemon_runs_the_pinned_digest_refuses_an_unsigned_tag_move_and_reloads_a_signed_one() {
    let cluster = cluster();
    let ns = cluster.namespace("oci").await;
    let registry = Registry::start();
    let dir = std::env::temp_dir().join(format!("vkcube-e2e-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("author");
    assert_eq!(run_keygen(KeygenArgs { prefix: prefix.clone() }).unwrap(), 0);
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    let tag = registry.reference("vk/example:stable");
    let v1 = push(new_build(&dir, "v1"), &tag, Some(&key)).await;

    let cid = fresh_cluster_id();
    let plugin = format!(
        "source = \"{tag}\"\npublic_key = \"{}\"\npoll_interval_ms = 200\ncache_dir = \"{}\"",
        public.display(),
        dir.join("cache").display()
    );
    let daemon = start(&test_config(cluster, &cid, &ns.name, "", &plugin, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let pinned = format!("oci://{}/vk/example@{v1}", registry.addr);
    let shown = annotation(&nodes, &node).await;
    assert!(shown.starts_with(&pinned) && shown.contains("verified by"), "{shown}");
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    let http = reqwest::Client::new();
    let active: serde_json::Value =
        http.get(format!("http://{admin}/plugin")).send().await.unwrap().json().await.unwrap();
    assert_eq!(active["load"]["source"]["digest"], v1.as_str(), "{active}");

    // An unsigned version under the tag: refused with a Warning on the node; v1 keeps serving.
    push(new_build(&dir, "unsigned"), &tag, None).await;
    let events: Api<Event> = Api::all(ns.client.clone());
    let why = wait_for(Duration::from_secs(60), "a PluginSignatureRefused Event on the node", || {
        node_event(&events, &node, "PluginSignatureRefused")
    })
    .await;
    assert!(why.contains("unsigned") && why.contains("keeps serving"), "{why}");
    let metrics = http.get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("vkhost_plugin_signature_refusals_total 1"), "{metrics}");
    assert!(annotation(&nodes, &node).await.starts_with(&pinned));
    assert_eq!(daemon.plugin().provenance().unwrap().digest.as_deref(), Some(v1.as_str()));

    // A signed one: reloaded, and the node names its digest.
    let v2 = push(new_build(&dir, "v2"), &tag, Some(&key)).await;
    let moved = format!("oci://{}/vk/example@{v2}", registry.addr);
    wait_for(Duration::from_secs(60), "the node annotated with the new digest", || async {
        annotation(&nodes, &node).await.starts_with(&moved).then_some(())
    })
    .await;
    let note = node_event(&events, &node, "PluginReloaded").await.expect("a PluginReloaded Event");
    assert!(note.contains("replaced by"), "{note}");

    daemon.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
