//! Plugins from a real OCI registry on loopback (go-containerregistry's, built by
//! `tests/registry/build`): pulled and pinned by digest, a tag move hot-reloaded, unsigned and
//! wrongly signed versions refused while the running one stays, an offline start from the cache,
//! and detached signatures of file sources.

#[path = "plugin_support.rs"]
mod plugin_support;
#[path = "registry_support.rs"]
mod registry_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plugin_support::{plugin, scratch_dir, settings};
use registry_support::Registry;
use tokio_util::sync::CancellationToken;
use vkhost::plugin::source::publish::{KeygenArgs, PushArgs, SignArgs, run_keygen, run_push, run_sign};
use vkhost::plugin::{Plugin, PluginRuntime, PluginSettings, ReloadEvent, ReloadTrigger};

/// A new key pair in `dir`: (private, public).
fn keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    assert_eq!(run_keygen(KeygenArgs { prefix: prefix.clone() }).unwrap(), 0);
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

async fn push(file: &str, reference: &str, key: Option<&Path>) {
    let args = PushArgs { file: plugin(file), reference: reference.into(), key: key.map(Path::to_path_buf) };
    assert_eq!(run_push(args).await.unwrap(), 0, "push {file} to {reference}");
}

fn oci_settings(reference: &str, public_key: Option<&Path>, cache: &Path) -> PluginSettings {
    let mut s = settings("");
    s.path = PathBuf::new();
    s.source = Some(reference.into());
    s.public_key = public_key.map(Path::to_path_buf);
    s.cache_dir = Some(cache.to_path_buf());
    s.poll_interval_ms = 50;
    s
}

async fn load(s: PluginSettings) -> Result<Arc<Plugin>, vkhost::plugin::LoadError> {
    Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await
}

/// The next reload attempt the tag poll makes (bounded, so a broken poll fails the test).
async fn next_tag_reload(events: &mut tokio::sync::broadcast::Receiver<ReloadEvent>) -> ReloadEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("a reload attempt after the tag moved")
            .unwrap();
        if ev.trigger == ReloadTrigger::TagMoved {
            return ev;
        }
    }
}

fn digest_of(plugin: &Plugin) -> String {
    plugin.provenance().and_then(|p| p.digest).expect("an OCI version has a digest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_pulled_pinned_by_digest_and_a_tag_move_hot_reloads() {
    let registry = Registry::start();
    let dir = scratch_dir("oci-pin");
    let (key, public) = keys(&dir, "author");
    let tag = registry.reference("vk/faulty:stable");
    push("faulty-v1.wasm", &tag, Some(&key)).await;

    let plugin = load(oci_settings(&tag, Some(&public), &dir.join("cache"))).await.unwrap();
    assert_eq!(plugin.info().version, "1.0.0");
    let source = plugin.provenance().unwrap();
    let v1 = source.digest.clone().unwrap();
    assert_eq!(source.source, tag);
    assert_eq!(source.pinned, format!("oci://{}/vk/faulty@{v1}", registry.addr));
    assert!(source.verified_by.as_deref().unwrap().contains("author.pub"), "{source:?}");
    assert!(!source.offline);
    // What `GET /plugin` serves carries the pinned digest.
    let summary = serde_json::to_value(plugin.summary()).unwrap();
    assert_eq!(summary["load"]["source"]["digest"], v1.as_str(), "{summary}");

    let shutdown = CancellationToken::new();
    let mut events = plugin.subscribe();
    let watcher = plugin.spawn_watcher(shutdown.clone());
    push("faulty-v2.wasm", &tag, Some(&key)).await;
    let ev = next_tag_reload(&mut events).await;
    assert_eq!(ev.outcome.as_ref().map(|i| i.version.as_str()), Ok("2.0.0"), "{ev:?}");
    let v2 = digest_of(&plugin);
    assert_ne!(v1, v2);
    assert_eq!(ev.source.unwrap().digest.as_deref(), Some(v2.as_str()));
    assert_eq!(plugin.info().version, "2.0.0");

    // A pinned reference runs its digest whatever the tag says.
    let pinned = load(oci_settings(&format!("oci://{}/vk/faulty@{v1}", registry.addr), Some(&public), &dir.join("c2")))
        .await
        .unwrap();
    assert_eq!(pinned.info().version, "1.0.0");
    shutdown.cancel();
    watcher.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_wrongly_signed_versions_are_refused_and_the_running_one_stays() {
    let registry = Registry::start();
    let dir = scratch_dir("oci-refuse");
    let (key, public) = keys(&dir, "author");
    let (other_key, _) = keys(&dir, "someone-else");
    let tag = registry.reference("vk/faulty:stable");

    // At start: nothing runs that the key did not sign.
    push("faulty-v1.wasm", &tag, None).await;
    let err = load(oci_settings(&tag, Some(&public), &dir.join("cache"))).await.err().unwrap();
    assert!(err.is_signature_refusal(), "{err}");
    assert!(err.to_string().contains("unsigned: no cosign signature at"), "{err}");
    push("faulty-v1.wasm", &tag, Some(&other_key)).await;
    let err = load(oci_settings(&tag, Some(&public), &dir.join("cache"))).await.err().unwrap();
    assert!(err.is_signature_refusal() && err.to_string().contains("does not verify"), "{err}");

    push("faulty-v1.wasm", &tag, Some(&key)).await;
    let plugin = load(oci_settings(&tag, Some(&public), &dir.join("cache"))).await.unwrap();
    let v1 = digest_of(&plugin);
    let shutdown = CancellationToken::new();
    let mut events = plugin.subscribe();
    let watcher = plugin.spawn_watcher(shutdown.clone());

    // The tag moves to an unsigned version: refused, with the reason; v1 keeps serving.
    push("faulty-v2.wasm", &tag, None).await;
    let ev = next_tag_reload(&mut events).await;
    assert!(ev.signature_refused, "{ev:?}");
    assert!(ev.outcome.as_ref().unwrap_err().contains("unsigned"), "{ev:?}");
    assert_eq!((plugin.info().version.as_str(), digest_of(&plugin)), ("1.0.0", v1.clone()));
    assert_eq!(plugin.stats().snapshot().signature_refusals, 1);

    // Then to a version signed by another key: refused too.
    push("faulty-broken.wasm", &tag, Some(&other_key)).await;
    let ev = next_tag_reload(&mut events).await;
    assert!(ev.signature_refused && ev.outcome.as_ref().unwrap_err().contains("does not verify"), "{ev:?}");
    assert_eq!((plugin.info().version.as_str(), digest_of(&plugin)), ("1.0.0", v1));
    assert_eq!(plugin.stats().snapshot().signature_refusals, 2);

    // Signed by the key: it goes in.
    push("faulty-v2.wasm", &tag, Some(&key)).await;
    let ev = next_tag_reload(&mut events).await;
    assert_eq!(ev.outcome.as_ref().map(|i| i.version.as_str()), Ok("2.0.0"), "{ev:?}");
    shutdown.cancel();
    watcher.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_starts_from_the_cache_when_the_registry_is_down() {
    let dir = scratch_dir("oci-offline");
    let (key, public) = keys(&dir, "author");
    let cache = dir.join("cache");
    let registry = Registry::start();
    let tag = registry.reference("vk/faulty:stable");
    push("faulty-v1.wasm", &tag, Some(&key)).await;
    let first = load(oci_settings(&tag, Some(&public), &cache)).await.unwrap();
    let pulled = digest_of(&first);
    drop(registry);

    let offline = load(oci_settings(&tag, Some(&public), &cache)).await.unwrap();
    let source = offline.provenance().unwrap();
    assert!(source.offline, "{source:?}");
    assert_eq!(source.digest.as_deref(), Some(pulled.as_str()));
    assert_eq!(offline.info().version, "1.0.0");

    // The cached copy is checked against the key again: another key does not start it.
    let (_, other_public) = keys(&dir, "someone-else");
    let err = load(oci_settings(&tag, Some(&other_public), &cache)).await.err().unwrap();
    assert!(err.is_signature_refusal(), "{err}");
    // Without a cached copy the error says the registry is unreachable and nothing is cached.
    let err = load(oci_settings(&tag, Some(&public), &dir.join("empty"))).await.err().unwrap().to_string();
    assert!(err.contains("cannot be reached") && err.contains("no pulled copy is cached"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_needs_its_detached_signature_when_a_key_is_configured() {
    let dir = scratch_dir("file-sig");
    let (key, public) = keys(&dir, "author");
    let file = dir.join("faulty.wasm");
    std::fs::copy(plugin("faulty-v1.wasm"), &file).unwrap();
    let mut s = settings(&file);
    s.public_key = Some(public.clone());

    let err = load(s.clone()).await.err().unwrap();
    assert!(err.is_signature_refusal() && err.to_string().contains("faulty.wasm.sig"), "{err}");
    assert_eq!(run_sign(SignArgs { file: file.clone(), key: key.clone() }).unwrap(), 0);
    let plugin = load(s.clone()).await.unwrap();
    assert!(plugin.provenance().unwrap().verified_by.is_some());

    // The file replaced, its signature not: refused on reload, the signed version stays.
    std::fs::copy(plugin_support::plugin("faulty-v2.wasm"), &file).unwrap();
    let err = plugin.reload().await.unwrap_err();
    assert!(err.is_signature_refusal(), "{err}");
    assert_eq!(plugin.info().version, "1.0.0");
    assert_eq!(run_sign(SignArgs { file: file.clone(), key }).unwrap(), 0);
    assert_eq!(plugin.reload().await.unwrap().version, "2.0.0");
    let _ = std::fs::remove_dir_all(&dir);
}
