//! Plugins from a real OCI registry on loopback (go-containerregistry's, built by
//! `tests/registry/build`): pulled and pinned by digest, a tag move hot-reloaded, unsigned and
//! wrongly signed versions refused while the running one stays, an offline start from the cache,
//! detached signatures of file sources, components over `max_component_mib` refused (by their
//! declared size, and from a lying registry on loopback by what it sends), and `vkhost plugin
//! check` on a reference going through all of it.

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
use vkhost::plugin::source::oci::OciRef;
use vkhost::plugin::source::publish::{KeygenArgs, PushArgs, SignArgs, run_keygen, run_push, run_sign};
use vkhost::plugin::{LoadError, Plugin, PluginRuntime, PluginSettings, ReloadEvent, ReloadTrigger, SourceError};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_over_max_component_mib_is_refused_by_its_declared_size_and_the_running_one_stays() {
    let registry = Registry::start();
    let dir = scratch_dir("oci-too-large");
    let tag = registry.reference("vk/faulty:stable");
    push("faulty-v1.wasm", &tag, None).await;
    let mut s = oci_settings(&tag, None, &dir.join("cache"));
    s.max_component_mib = 1;
    let plugin = load(s).await.unwrap();
    let v1 = digest_of(&plugin);
    let shutdown = CancellationToken::new();
    let mut events = plugin.subscribe();
    let watcher = plugin.spawn_watcher(shutdown.clone());

    // Whoever can move the tag pushes a 3 MiB layer (what it holds does not matter: it is never read).
    let big = vec![0u8; 3 << 20];
    OciRef::parse(&tag).unwrap().push(&big, "big.wasm", None).await.unwrap();
    let ev = next_tag_reload(&mut events).await;
    let why = ev.outcome.as_ref().unwrap_err();
    assert!(
        why.contains("refused: its component layer is 3145728 bytes, more than the 1048576 bytes [plugin] max_component_mib allows"),
        "{why}"
    );
    assert!(!ev.signature_refused, "{ev:?}");
    assert_eq!((plugin.info().version.as_str(), digest_of(&plugin)), ("1.0.0", v1));

    // A version within the bound still goes in after it.
    push("faulty-v2.wasm", &tag, None).await;
    let ev = next_tag_reload(&mut events).await;
    assert_eq!(ev.outcome.as_ref().map(|i| i.version.as_str()), Ok("2.0.0"), "{ev:?}");
    shutdown.cancel();
    watcher.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_max_component_mib_is_refused_and_the_running_one_stays() {
    let dir = scratch_dir("file-too-large");
    let file = dir.join("faulty.wasm");
    std::fs::copy(plugin("faulty-v1.wasm"), &file).unwrap();
    let mut s = settings(&file);
    s.max_component_mib = 1;
    let plugin = load(s).await.unwrap();

    std::fs::write(&file, vec![0u8; 2 << 20]).unwrap();
    let err = plugin.reload().await.unwrap_err();
    assert!(
        matches!(&err, LoadError::Source(SourceError::TooLarge { size: Some(2097152), limit: 1048576, .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            "refused: the file is 2097152 bytes, more than the 1048576 bytes [plugin] max_component_mib allows"
        ),
        "{err}"
    );
    assert_eq!(plugin.info().version, "1.0.0");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vkhost plugin check` run on `plugin` with `args`, its compile cache and pulled copies in
/// `dir`: (exit code, stdout, stderr).
fn plugin_check(dir: &Path, plugin: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vkhost"))
        .args(["plugin", "check", plugin])
        .args(args)
        .env("XDG_CACHE_HOME", dir.join("xdg"))
        .env_remove("VKHOST_REGISTRY_USERNAME")
        .env_remove("VKHOST_REGISTRY_PASSWORD")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What an operator runs before putting a reference in `[plugin] source`: the same pull, size
/// bound and signature check as the daemon's, then the same checks as a file gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_check_pulls_an_oci_reference_through_the_daemons_checks() {
    let registry = Registry::start();
    let dir = scratch_dir("oci-check");
    let (key, public) = keys(&dir, "author");
    let public = public.to_str().unwrap();

    // Signed by the key: pulled, verified, loaded; the report names the digest that was checked.
    let tag = registry.reference("vk/faulty:stable");
    push("faulty-v1.wasm", &tag, Some(&key)).await;
    let digest = OciRef::parse(&tag).unwrap().resolve().await.unwrap();
    let (code, out, err) = plugin_check(&dir, &tag, &["--public-key", public]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("plugin      faulty 1.0.0"), "{out}");
    assert!(out.contains(&format!("artifact    oci://{}/vk/faulty@{digest} (", registry.addr)), "{out}");
    assert!(out.contains(&format!("pulled from {tag}")), "{out}");
    assert!(out.contains("signature   verified with ") && out.contains("author.pub"), "{out}");
    assert!(out.trim_end().ends_with("result      OK"), "{out}");
    let (code, json, err) = plugin_check(&dir, &tag, &["--public-key", public, "--json"]);
    assert_eq!(code, Some(0), "{json}{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["load"]["source"]["digest"], digest.as_str(), "{json}");

    // Unsigned, with a key required: refused, saying why.
    let unsigned = registry.reference("vk/faulty:unsigned");
    push("faulty-v2.wasm", &unsigned, None).await;
    let (code, out, err) = plugin_check(&dir, &unsigned, &["--public-key", public]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("refused: unsigned: no cosign signature at"), "{err}");
    assert!(err.contains("result      REFUSED"), "{err}");
    // Without a key it loads, and the report says nothing was verified.
    let (code, out, err) = plugin_check(&dir, &unsigned, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("plugin      faulty 2.0.0") && out.contains("signature   not checked"), "{out}");

    // A layer over --max-component-mib: refused by its declared size (it is not even a
    // component, which nobody finds out: it is never pulled).
    let big = registry.reference("vk/big:1");
    OciRef::parse(&big).unwrap().push(&vec![0u8; 3 << 20], "big.wasm", None).await.unwrap();
    let (code, out, err) = plugin_check(&dir, &big, &["--max-component-mib", "1"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("refused: its component layer is 3145728 bytes, more than the 1048576 bytes [plugin] max_component_mib allows"),
        "{err}"
    );

    // A file gets the same key option: its detached signature is required.
    let file = dir.join("faulty.wasm");
    std::fs::copy(plugin("faulty-v1.wasm"), &file).unwrap();
    let (code, out, err) = plugin_check(&dir, file.to_str().unwrap(), &["--public-key", public]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("faulty.wasm.sig"), "{err}");
    assert_eq!(run_sign(SignArgs { file: file.clone(), key }).unwrap(), 0);
    let (code, out, err) = plugin_check(&dir, file.to_str().unwrap(), &["--public-key", public]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("file        ") && out.contains("signature   verified with "), "{out}");
}

/// A registry on loopback that lies: its manifests name a 10-byte layer, and the layer (or a
/// manifest itself) is an endless stream. Each stream reports, when it is dropped because the
/// reader hung up, how much it had sent. `vk/liar` is pulled with a token from its `/token`
/// realm, as public registries ask.
mod liar {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::Response;
    use sha2::{Digest, Sha256};
    use tokio::sync::mpsc;

    /// More than any bound: what an endless stream sends when nobody hangs up.
    pub const ENDLESS: u64 = 1 << 30;

    pub struct Liar {
        pub addr: String,
        /// Bytes each endless stream had sent when it was dropped.
        pub hangups: mpsc::UnboundedReceiver<u64>,
        _server: tokio::task::JoinHandle<()>,
    }

    impl Liar {
        /// What the next endless stream had sent when the reader hung up.
        pub async fn hangup(&mut self) -> u64 {
            tokio::time::timeout(Duration::from_secs(60), self.hangups.recv())
                .await
                .expect("the endless stream is dropped once the daemon stops reading")
                .unwrap()
        }
    }

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// The manifest of `vk/liar`: one `application/wasm` layer said to be 10 bytes.
    pub fn manifest() -> Vec<u8> {
        let config = b"{}";
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": sha256(config), "size": 2},
            "layers": [{"mediaType": "application/wasm", "digest": sha256(b"0123456789"), "size": 10}],
        }))
        .unwrap()
    }

    /// What an endless stream has sent, reported when it is dropped.
    struct Hangup {
        sent: u64,
        report: mpsc::UnboundedSender<u64>,
    }

    impl Drop for Hangup {
        fn drop(&mut self) {
            let _ = self.report.send(self.sent);
        }
    }

    fn endless(report: mpsc::UnboundedSender<u64>) -> Body {
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        let stream = futures::stream::unfold(Hangup { sent: 0, report }, move |mut state| {
            let chunk = chunk.clone();
            async move {
                if state.sent >= ENDLESS {
                    return None;
                }
                state.sent += chunk.len() as u64;
                Some((Ok::<_, std::io::Error>(chunk), state))
            }
        });
        Body::from_stream(stream)
    }

    const TOKEN: &str = "t0k3n";

    async fn answer(
        report: mpsc::UnboundedSender<u64>,
        addr: String,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let manifest = manifest();
        let path = uri.path();
        let status = |code: StatusCode| Response::builder().status(code).body(Body::empty()).unwrap();
        if path == "/token" {
            let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap();
            let asked = |k: &str, v: &str| query.iter().any(|(key, value)| key == k && value == v);
            if !(asked("scope", "repository:vk/liar:pull") && asked("service", "liar")) {
                return status(StatusCode::FORBIDDEN);
            }
            return Response::new(Body::from(format!(r#"{{"token":"{TOKEN}"}}"#)));
        }
        let bearer = format!("Bearer {TOKEN}");
        if path.starts_with("/v2/vk/liar/")
            && headers.get(header::AUTHORIZATION).is_none_or(|v| v.as_bytes() != bearer.as_bytes())
        {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, format!(r#"Bearer realm="http://{addr}/token",service="liar""#))
                .body(Body::empty())
                .unwrap();
        }
        let ok = |digest: String, body: Body| {
            Response::builder()
                .header(header::CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")
                .header("docker-content-digest", digest)
                .body(body)
                .unwrap()
        };
        if path == "/v2/" {
            return Response::new(Body::empty());
        }
        if path.starts_with("/v2/vk/liar/manifests/") {
            let body = if method == Method::HEAD { Body::empty() } else { Body::from(manifest.clone()) };
            return ok(sha256(&manifest), body);
        }
        if path.starts_with("/v2/vk/liar/blobs/") {
            return Response::new(endless(report));
        }
        // A tag whose manifest never ends.
        if path.starts_with("/v2/vk/endless/manifests/") {
            let digest = format!("sha256:{}", "a".repeat(64));
            let body = if method == Method::HEAD { Body::empty() } else { endless(report) };
            return ok(digest, body);
        }
        status(StatusCode::NOT_FOUND)
    }

    pub async fn start() -> Liar {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, hangups) = mpsc::unbounded_channel();
        let at = addr.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
            answer(tx.clone(), at.clone(), method, uri, headers)
        });
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Liar { addr, hangups, _server: server }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_sending_more_than_it_declared_is_cut_off_at_the_declared_size() {
    let mut liar = liar::start().await;
    let dir = scratch_dir("oci-liar");
    // The layer is said to be 10 bytes and never ends: nothing past 10 bytes is kept.
    let tag = format!("oci://{}/vk/liar:v1", liar.addr);
    let err = load(oci_settings(&tag, None, &dir.join("cache"))).await.err().unwrap();
    assert!(matches!(&err, LoadError::Source(SourceError::TooLarge { size: None, limit: 10, .. })), "{err:?}");
    assert!(err.to_string().contains("its component layer is longer than the 10 bytes its manifest declares"), "{err}");
    // The daemon hung up: the registry got to send a few socket buffers, not the gigabyte.
    let sent = liar.hangup().await;
    assert!(sent < 64 << 20, "the registry sent {sent} bytes before the daemon hung up");

    // A manifest that never ends is cut off at the manifest bound.
    let tag = format!("oci://{}/vk/endless:v1", liar.addr);
    let err = load(oci_settings(&tag, None, &dir.join("cache2"))).await.err().unwrap();
    assert!(err.to_string().contains("its manifest is longer than the 4194304 bytes a manifest may have"), "{err}");
    let sent = liar.hangup().await;
    assert!(sent < 64 << 20, "the registry sent {sent} bytes before the daemon hung up");

    // `vkhost plugin check` pulls through the same client: the token exchange, then the bound.
    let tag = format!("oci://{}/vk/liar:v1", liar.addr);
    let (code, out, err) = plugin_check(&dir, &tag, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("its component layer is longer than the 10 bytes its manifest declares"), "{err}");
    let sent = liar.hangup().await;
    assert!(sent < 64 << 20, "the registry sent {sent} bytes before the check hung up");
    let _ = std::fs::remove_dir_all(&dir);
}
