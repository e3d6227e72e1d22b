//! Test fixtures for the pod controller: a mock apiserver behind a real `kube::Client`, and a
//! [`NodeContext`] on it with the real example plugin, so reconcile paths run in milliseconds.
//!
//! The apiserver is a `tower::service_fn` over a tiny in-memory object store keyed by path, not a
//! scripted `tower_test` handle as in kube-rs' controller-rs: a reconcile makes a dozen requests
//! (Events among them) whose order is an implementation detail, and a store answers them in any
//! order, while the recorded requests are still there to assert on. A watch request is answered
//! with a stream that stays open and carries every later write of the objects it selects. Some
//! requests can be held unanswered (say, Event POSTs), to show what does not wait for them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::NodeContext;
use super::cached::CachedPod;
use crate::config::PodSettings;
use crate::metrics::Metrics;
use crate::plugin::{Plugin, PluginRuntime, PluginSettings};
use crate::records::{NodeRecords, Owner};

/// One request the mock apiserver answered.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// Which client sent it (see [`ApiServer::client`]).
    pub identity: &'static str,
    pub method: String,
    pub path: String,
    /// The query string, for tests of list and watch parameters.
    #[allow(dead_code)]
    pub query: String,
    /// The JSON body, when there was one.
    pub body: Option<Value>,
}

struct Failure {
    method: String,
    path: String,
    code: u16,
    times: u32,
}

/// An open watch: the collection it watches, the name its field selector picks (if any), and
/// where its events go.
struct Watch {
    collection: String,
    name: Option<String>,
    events: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    failures: Vec<Failure>,
    version: u64,
    watches: Vec<Watch>,
}

impl State {
    /// Tells the watches of `path`'s collection that selected it about a write.
    fn notify(&mut self, path: &str, kind: &str, object: &Value) {
        let Some((collection, name)) = path.rsplit_once('/') else { return };
        let event = json!({"type": kind, "object": object});
        self.watches.retain(|w| {
            if w.collection != collection || w.name.as_deref().is_some_and(|n| n != name) {
                return !w.events.is_closed();
            }
            w.events.send(event.clone()).is_ok()
        });
    }
}

/// The `metadata.name` a request's `fieldSelector` asks for.
fn selected_name(query: &str) -> Option<String> {
    let selector = query.split('&').find_map(|pair| pair.strip_prefix("fieldSelector="))?;
    let selector = selector.replace("%3D", "=").replace("%3d", "=");
    selector.strip_prefix("metadata.name=").map(str::to_owned)
}

type Streamed = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

fn whole(bytes: Vec<u8>) -> Streamed {
    StreamBody::new(futures::stream::once(async move { Ok(Frame::data(Bytes::from(bytes))) }).boxed())
}

/// A mock apiserver: objects by path, create/get/list/replace/merge-patch/delete, failures on
/// demand, requests held on demand, every request recorded.
#[derive(Default)]
pub(crate) struct ApiServer {
    state: Mutex<State>,
    /// The requests held (method, path suffix) until [`ApiServer::release`].
    held: Mutex<Vec<(String, String)>>,
    /// Goes up on each release: what waits for it looks again.
    released: tokio::sync::watch::Sender<u64>,
}

/// Where a request path points.
enum Target {
    Collection(String),
    Object(String),
    Subresource(String),
}

fn target(path: &str) -> Target {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // `/api/v1/...` or `/apis/<group>/<version>/...`
    let prefix = if segs.first() == Some(&"api") { 2 } else { 3 };
    let rest = &segs[prefix.min(segs.len())..];
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" { &rest[2..] } else { rest };
    match rest.len() {
        0 | 1 => Target::Collection(path.to_string()),
        2 => Target::Object(path.to_string()),
        _ => Target::Subresource(path.rsplit_once('/').map(|(o, _)| o.to_string()).unwrap_or_default()),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

impl ApiServer {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A client of this apiserver; its requests are recorded as sent by `identity`.
    pub(crate) fn client(self: &Arc<Self>, identity: &'static str) -> Client {
        let me = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await?;
                let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                let recorded = Recorded {
                    identity,
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body,
                };
                me.wait_if_held(&recorded).await;
                let watching = recorded.method == "GET" && recorded.query.split('&').any(|p| p == "watch=true");
                let (code, body) = if watching {
                    let events = me.watch(recorded);
                    let lines = tokio_stream_of(events).map(|event| {
                        let mut line = serde_json::to_vec(&event).unwrap();
                        line.push(b'\n');
                        Ok(Frame::data(Bytes::from(line)))
                    });
                    (200, StreamBody::new(lines.boxed()))
                } else {
                    let (code, answer) = me.answer(recorded);
                    (code, whole(serde_json::to_vec(&answer).unwrap()))
                };
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap();
                Ok::<_, kube::Error>(response)
            }
        });
        Client::new(service, "default")
    }

    /// Stores `object` at `path` as if another writer had created or replaced it.
    pub(crate) fn put(&self, path: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        let kind = if state.objects.contains_key(path) { "MODIFIED" } else { "ADDED" };
        state.notify(path, kind, &object);
        state.objects.insert(path.to_string(), object);
    }

    /// Opens a watch of the collection `request` names: its events from now on.
    fn watch(&self, request: Recorded) -> mpsc::UnboundedReceiver<Value> {
        let mut state = self.state.lock().unwrap();
        let (events, receiver) = mpsc::unbounded_channel();
        let name = selected_name(&request.query);
        let collection = request.path.trim_end_matches('/').to_string();
        state.requests.push(request);
        state.watches.push(Watch { collection, name, events });
        receiver
    }

    pub(crate) fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// The pod stored at `path`.
    pub(crate) fn pod(&self, path: &str) -> Pod {
        serde_json::from_value(self.get(path).unwrap_or_else(|| panic!("no pod at {path}"))).unwrap()
    }

    /// The next `times` requests `method path` are answered `code` (and change nothing).
    pub(crate) fn fail(&self, method: &str, path: &str, code: u16, times: u32) {
        let failure = Failure { method: method.into(), path: path.into(), code, times };
        self.state.lock().unwrap().failures.push(failure);
    }

    /// The next requests `method` to a path ending in `suffix` wait, unanswered and unrecorded,
    /// until [`ApiServer::release`].
    pub(crate) fn hold(&self, method: &str, suffix: &str) {
        self.held.lock().unwrap().push((method.into(), suffix.into()));
    }

    /// Answers the held requests, and holds none from now on.
    pub(crate) fn release(&self) {
        self.held.lock().unwrap().clear();
        self.released.send_modify(|n| *n += 1);
    }

    async fn wait_if_held(&self, request: &Recorded) {
        let mut released = self.released.subscribe();
        let is_held = || {
            let held = self.held.lock().unwrap();
            held.iter().any(|(method, suffix)| *method == request.method && request.path.ends_with(suffix.as_str()))
        };
        while is_held() {
            if released.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every request so far, in the order answered.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests `method path` so far.
    pub(crate) fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == method && r.path == path).collect()
    }

    /// The reasons of the Events posted so far.
    pub(crate) fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .filter_map(|r| r.body?.get("reason")?.as_str().map(str::to_owned))
            .collect()
    }

    fn answer(&self, request: Recorded) -> (u16, Value) {
        let mut state = self.state.lock().unwrap();
        state.requests.push(request.clone());
        let selected = selected_name(&request.query);
        let Recorded { method, path, body, .. } = request;
        if let Some(f) = state.failures.iter_mut().find(|f| f.times > 0 && f.method == method && f.path == path) {
            f.times -= 1;
            let code = f.code;
            return status(code, "InjectedFailure", &format!("{method} {path}: injected failure"));
        }
        state.version += 1;
        let version = state.version.to_string();
        let not_found = || status(404, "NotFound", &format!("{path} not found"));
        match (method.as_str(), target(&path)) {
            ("GET", Target::Collection(prefix)) => {
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(p, _)| p.strip_prefix(&format!("{prefix}/")).is_some_and(|name| !name.contains('/')))
                    .filter(|(_, o)| selected.as_ref().is_none_or(|n| o["metadata"]["name"] == json!(n)))
                    .map(|(_, o)| o.clone())
                    .collect();
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            ("GET", Target::Object(p)) => state.objects.get(&p).map(|o| (200, o.clone())).unwrap_or_else(not_found),
            ("POST", Target::Collection(prefix)) => {
                let mut object = body.unwrap_or_default();
                let name = match object["metadata"]["name"].as_str() {
                    Some(name) => name.to_string(),
                    None => format!("{}{version}", object["metadata"]["generateName"].as_str().unwrap_or("object-")),
                };
                let p = format!("{prefix}/{name}");
                if state.objects.contains_key(&p) {
                    return status(409, "AlreadyExists", &format!("{p} already exists"));
                }
                object["metadata"]["name"] = json!(name);
                object["metadata"]["resourceVersion"] = json!(version);
                state.notify(&p, "ADDED", &object);
                state.objects.insert(p, object.clone());
                (201, object)
            }
            ("PUT", Target::Object(p)) => {
                let mut object = body.unwrap_or_default();
                let Some(stored) = state.objects.get(&p) else { return not_found() };
                if object["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", &format!("{p} changed"));
                }
                object["metadata"]["resourceVersion"] = json!(version);
                state.notify(&p, "MODIFIED", &object);
                state.objects.insert(p, object.clone());
                (200, object)
            }
            ("PATCH", Target::Object(p) | Target::Subresource(p)) => {
                let Some(stored) = state.objects.get_mut(&p) else { return not_found() };
                merge(stored, &body.unwrap_or_default());
                stored["metadata"]["resourceVersion"] = json!(version);
                let patched = stored.clone();
                state.notify(&p, "MODIFIED", &patched);
                (200, patched)
            }
            ("DELETE", Target::Object(p)) => {
                let Some(stored) = state.objects.get(&p) else { return not_found() };
                let wanted = body.as_ref().and_then(|b| b["preconditions"]["uid"].as_str().map(str::to_owned));
                if wanted.is_some_and(|uid| stored["metadata"]["uid"] != json!(uid)) {
                    return status(409, "Conflict", &format!("{p}: precondition failed: uid"));
                }
                let gone = state.objects.remove(&p).unwrap();
                state.notify(&p, "DELETED", &gone);
                (200, gone)
            }
            _ => status(405, "MethodNotAllowed", &format!("{method} {path}: not served by the mock apiserver")),
        }
    }
}

/// The events of a watch as a stream.
fn tokio_stream_of(mut events: mpsc::UnboundedReceiver<Value>) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| events.poll_recv(cx))
}

/// `$VKCUBE_PLUGIN_DIR`, else `${CARGO_TARGET_DIR:-<repo>/target}/plugins` (as in
/// `tests/plugin_support.rs`).
fn plugin_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("VKCUBE_PLUGIN_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("plugins")
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `plugins/build example` first (with the same CARGO_TARGET_DIR), or set VKCUBE_PLUGIN_DIR",
        path.display()
    );
    path
}

pub(crate) const NODE: &str = "vk-test";
pub(crate) const HOST_IP: &str = "192.0.2.10";

/// A node of the example plugin on a mock apiserver. The pod controller's requests come from
/// the client `node` (the node's identity); `daemon` loads the node's records. Its Events are
/// posted as the controller's event task does, by a task the test's runtime ends with the test
/// (tests take the node apart, so no field of it can own that task).
pub(crate) struct TestNode {
    pub api: Arc<ApiServer>,
    pub ctx: Arc<NodeContext>,
    /// Fills the context's pod cache, as the controller's watch does.
    pub pods: Writer<CachedPod>,
}

impl TestNode {
    /// Puts `pod` in the controller's cache, as the watch would on its event.
    pub(crate) fn cache(&mut self, pod: &Pod) {
        self.pods.apply_watcher_event(&watcher::Event::Apply(CachedPod::from(pod.clone())));
    }
}

pub(crate) async fn node() -> TestNode {
    let api = ApiServer::new();
    let rt = PluginRuntime::new().unwrap();
    let mut settings = PluginSettings::new(plugin_path("example.wasm"));
    // Compiled once per machine, shared by the tests (the cache is keyed by the file's hash).
    settings.cache_dir = Some(std::env::temp_dir().join("vkhost-unit-tests-components"));
    let plugin: Arc<Plugin> = Plugin::load(rt, settings, vec![]).await.unwrap();
    let owner = Owner { cluster_id: "c1".into(), node_id: "n1".into(), node_name: NODE.into() };
    let records = NodeRecords::load_from_cluster(&api.client("daemon"), "kube-system", owner).await.unwrap();
    let (store, writer) = reflector::store();
    let ctx = NodeContext::new(
        api.client("node"),
        api.client("node"),
        plugin,
        NODE.into(),
        "{}".into(),
        HOST_IP.into(),
        PodSettings::default(),
        Arc::new(Metrics::new()),
        records,
        store,
    );
    let events = ctx.clone();
    tokio::spawn(async move { events.events.run(tokio_util::sync::CancellationToken::new()).await });
    TestNode { api, ctx, pods: writer }
}

/// The path of pod `name` in `default`.
pub(crate) fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/default/pods/{name}")
}

/// A pod bound to [`NODE`], stored in the mock apiserver, as the controller's cache hands it over.
pub(crate) fn bound_pod(api: &ApiServer, name: &str, uid: &str) -> Pod {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "nginx:1.27"}]},
        "status": {"phase": "Pending"}
    });
    api.put(&pod_path(name), pod);
    api.pod(&pod_path(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};

    fn cm(name: &str) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "uid": format!("uid-{name}")}, "data": {"a": "1"}}))
            .unwrap()
    }

    #[tokio::test]
    async fn the_mock_apiserver_serves_objects_as_an_apiserver_does_and_fails_on_demand() {
        let server = ApiServer::new();
        let api: Api<ConfigMap> = Api::namespaced(server.client("test"), "ns");
        let created = api.create(&PostParams::default(), &cm("one")).await.unwrap();
        let err = api.create(&PostParams::default(), &cm("one")).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");
        api.create(&PostParams::default(), &cm("two")).await.unwrap();
        assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 2);
        assert!(api.get_opt("three").await.unwrap().is_none());

        // Merge patch: null removes a key.
        let patch = json!({"data": {"a": null, "b": "2"}});
        let patched = api.patch("one", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        assert_eq!(patched.data.unwrap(), [("b".to_string(), "2".to_string())].into());
        // Replacing needs the current resourceVersion.
        let err = api.replace("one", &PostParams::default(), &created).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");

        server.fail("GET", "/api/v1/namespaces/ns/configmaps/two", 500, 1);
        assert!(api.get("two").await.is_err());
        assert!(api.get("two").await.is_ok(), "failed once only");

        let wrong_uid = DeleteParams {
            preconditions: Some(Preconditions { uid: Some("other".into()), resource_version: None }),
            ..DeleteParams::default()
        };
        assert!(api.delete("two", &wrong_uid).await.is_err());
        api.delete("two", &DeleteParams::default()).await.unwrap();
        assert!(server.get("/api/v1/namespaces/ns/configmaps/two").is_none());
        let recorded = server.requests_to("PATCH", "/api/v1/namespaces/ns/configmaps/one");
        assert_eq!(recorded[0].identity, "test");
        assert_eq!(recorded[0].body.as_ref().unwrap(), &patch);
    }
}
