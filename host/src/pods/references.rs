//! Change detection for what running pods reference, as the kubelet's Watch strategy does it: one
//! watch per ConfigMap and Secret that a pod with an instance mounts or reads env from (field
//! selector `metadata.name`: what the Node authorizer lets a node identity watch), shared by the
//! pods that reference it and stopped when the last of them goes. A change of an object's contents
//! queues a change for every pod whose instance was given other contents and asks the controller
//! to reconcile that pod; the controller tells the provider (`update`) and drops the changes once
//! that succeeded. The same watches are the node's cache of those objects for resolving pods
//! (`read`): a pod whose objects are watched already costs no request, the first reader of an
//! object is answered by its watch's initial list, and an object no pod references any more stays
//! watched for [`LINGER`] (a burst, a recreated pod, a read before its instance exists). Of each
//! object only what reaches a pod is kept (data, type, name), with a digest of it.
//!
//! The Services that service-link variables read are held the same way, one watch per namespace
//! (the pods' own when they want links, and `default` for the master service): started by the
//! first pod of the namespace to be resolved, held while a pod of the node there has an instance
//! (a token renewal or a ConfigMap change resolves it again), lingering as the others do. Of each
//! Service only what the variables read is kept (`resolve::linked_service`). No change of a Service
//! is told to a running pod: a container's environment is fixed at its start, as with the kubelet.
//! Like the kubelet's Service informer, the watch is eventually consistent: a pod resolved a moment
//! after a Service was created sees it once the watch's event arrived.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

use super::cached::CachedPod;
use super::resolve::{self, HeldObjects, Kind, ObjectKey, References, Seen};
use crate::plugin::PodChange;

/// What an object's contents hash to (a truncated SHA-256).
pub type Digest = [u8; 16];

/// The digest of an object that does not exist (an optional reference): its creation is a change.
pub const ABSENT: Digest = [0; 16];

/// How long an object no pod references any more stays watched (and cached).
pub const LINGER: Duration = Duration::from_secs(10);

/// How long a read waits for a watch's first answer before the caller reads the object itself.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What of a ConfigMap reaches a pod: its name and contents.
fn kept_config_map(cm: &ConfigMap) -> Seen {
    Seen::ConfigMap(Arc::new(ConfigMap {
        metadata: ObjectMeta { name: cm.metadata.name.clone(), ..ObjectMeta::default() },
        data: cm.data.clone(),
        binary_data: cm.binary_data.clone(),
        ..ConfigMap::default()
    }))
}

/// What of a Secret reaches a pod: its name, type and contents.
fn kept_secret(s: &Secret) -> Seen {
    Seen::Secret(Arc::new(Secret {
        metadata: ObjectMeta { name: s.metadata.name.clone(), ..ObjectMeta::default() },
        type_: s.type_.clone(),
        data: s.data.clone(),
        ..Secret::default()
    }))
}

/// Annotation on a pod recording the digests of the contents its instance was given, so a restart
/// or a failover does not lose a change made meanwhile: `ConfigMap/<name>=<hex>,Secret/<name>=<hex>`.
pub const GIVEN_ANNOTATION: &str = "vkcube.io/references-given";

impl ObjectKey {
    /// The change to tell a pod when the object changed; none for Services.
    fn change(&self) -> Option<Change> {
        match self.kind {
            Kind::ConfigMap => Some(Change::ConfigMap(self.name.clone())),
            Kind::Secret => Some(Change::Secret(self.name.clone())),
            Kind::Services => None,
        }
    }
}

/// A change of a referenced object's contents, to tell the pod's provider about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    ConfigMap(String),
    Secret(String),
}

impl From<&Change> for PodChange {
    fn from(c: &Change) -> PodChange {
        match c {
            Change::ConfigMap(name) => PodChange::ConfigMap(name.clone()),
            Change::Secret(name) => PodChange::Secret(name.clone()),
        }
    }
}

/// The contents of a ConfigMap that reach a pod: `data` and `binaryData`.
pub fn config_map_digest(cm: &ConfigMap) -> Digest {
    let mut h = Sha256::new();
    h.update(b"configmap");
    for (k, v) in cm.data.iter().flatten() {
        entry(&mut h, b'd', k, v.as_bytes());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        entry(&mut h, b'b', k, &v.0);
    }
    truncate(h)
}

/// The contents of a Secret that reach a pod: its type and `data`.
pub fn secret_digest(s: &Secret) -> Digest {
    let mut h = Sha256::new();
    h.update(b"secret");
    entry(&mut h, b't', "type", s.type_.as_deref().unwrap_or_default().as_bytes());
    for (k, v) in s.data.iter().flatten() {
        entry(&mut h, b'd', k, &v.0);
    }
    truncate(h)
}

/// Length-prefixed, so no two different maps hash the same input.
fn entry(h: &mut Sha256, tag: u8, key: &str, value: &[u8]) {
    h.update([tag]);
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

fn truncate(h: Sha256) -> Digest {
    let full = h.finalize();
    let mut d = [0; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// What `pod` holds watched while it has an instance: the objects it references whose changes its
/// provider is told about, and the namespaces whose Services give its service-link variables.
pub fn watched(pod: &Pod) -> Vec<ObjectKey> {
    let ns = pod.namespace().unwrap_or_default();
    let (config_maps, secrets) = resolve::watched_names(pod);
    let key = |kind, name: String| ObjectKey { kind, namespace: ns.clone(), name };
    config_maps
        .into_iter()
        .map(|n| key(Kind::ConfigMap, n))
        .chain(secrets.into_iter().map(|n| key(Kind::Secret, n)))
        .chain(resolve::service_namespaces(pod).iter().map(|n| ObjectKey::services(n)))
        .collect()
}

/// `pod`'s watched objects, each with the digest of the contents `fetched` read (which its
/// instance was given); without `fetched`, what the pod's [`GIVEN_ANNOTATION`] says; `None` where
/// neither tells.
pub fn given(pod: &Pod, fetched: Option<&References>) -> Vec<(ObjectKey, Option<Digest>)> {
    let recorded = if fetched.is_none() { recorded(pod) } else { HashMap::new() };
    watched(pod)
        .into_iter()
        .map(|key| {
            let digest = match fetched {
                Some(f) => match key.kind {
                    Kind::ConfigMap => {
                        f.config_maps.get(&key.name).map(|o| o.as_ref().map_or(ABSENT, config_map_digest))
                    }
                    Kind::Secret => f.secrets.get(&key.name).map(|o| o.as_ref().map_or(ABSENT, secret_digest)),
                    Kind::Services => None,
                },
                None => recorded.get(&(key.kind, key.name.clone())).copied(),
            };
            (key, digest)
        })
        .collect()
}

/// The value of [`GIVEN_ANNOTATION`] for `given` (entries without a digest left out).
pub fn annotation(given: &[(ObjectKey, Option<Digest>)]) -> String {
    let entries: Vec<String> = given
        .iter()
        .filter_map(|(key, digest)| {
            let kind = match key.kind {
                Kind::ConfigMap => "ConfigMap",
                Kind::Secret => "Secret",
                Kind::Services => return None,
            };
            digest.map(|d| format!("{kind}/{}={}", key.name, hex::encode(d)))
        })
        .collect();
    entries.join(",")
}

/// What `pod`'s [`GIVEN_ANNOTATION`] records, by kind and name; malformed entries are skipped.
fn recorded(pod: &Pod) -> HashMap<(Kind, String), Digest> {
    let Some(value) = pod.annotations().get(GIVEN_ANNOTATION) else { return HashMap::new() };
    value
        .split(',')
        .filter_map(|entry| {
            let (object, digest) = entry.rsplit_once('=')?;
            let (kind, name) = object.split_once('/')?;
            let kind = match kind {
                "ConfigMap" => Kind::ConfigMap,
                "Secret" => Kind::Secret,
                _ => return None,
            };
            let digest: Digest = hex::decode(digest).ok()?.try_into().ok()?;
            Some(((kind, name.to_string()), digest))
        })
        .collect()
}

/// Watches to start and stop, and a pod to reconcile, after a change of the [`Table`].
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub start: Vec<ObjectKey>,
    pub stop: Vec<ObjectKey>,
    pub trigger: Option<ObjectRef<CachedPod>>,
}

/// One watched object: what its watch saw last, and what each referencing pod's instance has.
#[derive(Debug, Default)]
struct Watched {
    /// `None` until the watch first answers with the object.
    latest: Option<Digest>,
    /// By pod UID: the contents the pod's instance was given last; `None` when unknown (an
    /// instance adopted after a restart), then the watch's first answer is taken as given.
    given: HashMap<String, Option<Digest>>,
    /// Since when no pod references it (it was only read, or its last pod went).
    idle_since: Option<Instant>,
}

#[derive(Debug)]
struct Tracked {
    pod: ObjectRef<CachedPod>,
    /// Sorted. A pod holds two or three (its namespace's Services and `default`'s, and what it
    /// mounts): a `BTreeSet` of them took a 0.7 KiB node per pod, 1 MiB at 1,600 pods.
    objects: Vec<ObjectKey>,
    /// Changes not yet applied by a successful `update`.
    pending: BTreeSet<Change>,
}

/// The bookkeeping of one node's reference watches, without I/O: which pods reference which
/// objects (the refcount of a watch), and the changes each pod has pending.
#[derive(Debug, Default)]
pub struct Table {
    objects: HashMap<ObjectKey, Watched>,
    pods: HashMap<String, Tracked>,
    /// How long an object no pod references stays watched; zero: it stops with its last pod.
    linger: Duration,
}

impl Table {
    /// A table whose objects stay watched for `linger` after their last pod.
    pub fn lingering(linger: Duration) -> Table {
        Table { linger, ..Table::default() }
    }

    /// `key` is read at `now` for a pod that has no instance yet: watched from then on (idle until
    /// a pod is tracked with it; an idle one read again lingers from this read, so pods that keep
    /// being resolved without an instance, waiting for a missing object, do not restart its
    /// watch). Whether its watch must start.
    pub fn read(&mut self, key: &ObjectKey, now: Instant) -> bool {
        if let Some(object) = self.objects.get_mut(key) {
            if object.idle_since.is_some() {
                object.idle_since = Some(now);
            }
            return false;
        }
        self.objects.insert(key.clone(), Watched { idle_since: Some(now), ..Watched::default() });
        true
    }

    /// The objects idle for `linger` by `now`, no longer watched.
    pub fn sweep(&mut self, now: Instant) -> Vec<ObjectKey> {
        let linger = self.linger;
        let idle: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, o)| o.idle_since.is_some_and(|at| now.saturating_duration_since(at) >= linger))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &idle {
            self.objects.remove(key);
        }
        idle
    }

    /// Pod `uid` has an instance and references `refs`, each with the digest its instance was
    /// given (`None`: unknown, keep what is known). Objects it no longer references are let go.
    pub fn track(&mut self, uid: &str, pod: ObjectRef<CachedPod>, refs: &[(ObjectKey, Option<Digest>)]) -> Delta {
        let mut delta = Delta::default();
        let wanted: BTreeSet<ObjectKey> = refs.iter().map(|(k, _)| k.clone()).collect();
        let before: BTreeSet<ObjectKey> =
            self.pods.get(uid).map(|t| t.objects.iter().cloned().collect()).unwrap_or_default();
        for gone in before.difference(&wanted) {
            self.release(uid, gone, &mut delta.stop);
        }
        let tracked = self.pods.entry(uid.to_string()).or_insert_with(|| Tracked {
            pod: pod.clone(),
            objects: Vec::new(),
            pending: BTreeSet::new(),
        });
        tracked.pod = pod;
        let mut queued = false;
        for (key, seed) in refs {
            let object = self.objects.entry(key.clone()).or_insert_with(|| {
                delta.start.push(key.clone());
                Watched::default()
            });
            object.idle_since = None;
            let given = match (seed, object.latest) {
                (Some(seed), Some(latest)) if *seed != latest => {
                    if let Some(change) = key.change() {
                        queued |= tracked.pending.insert(change);
                    }
                    Some(latest)
                }
                (Some(seed), _) => Some(*seed),
                (None, latest) => object.given.get(uid).copied().flatten().or(latest),
            };
            object.given.insert(uid.to_string(), given);
        }
        tracked.objects = wanted.into_iter().collect();
        if queued {
            delta.trigger = Some(tracked.pod.clone());
        }
        delta
    }

    /// Whether pod `uid` is tracked with exactly the objects `refs` names.
    pub fn tracks(&self, uid: &str, refs: &[ObjectKey]) -> bool {
        self.pods.get(uid).is_some_and(|t| t.objects.len() == refs.len() && refs.iter().all(|k| t.objects.contains(k)))
    }

    /// The watch of `key` saw contents `digest`: the pods whose instance has other contents get
    /// a change queued and are returned, to be reconciled.
    pub fn observed(&mut self, key: &ObjectKey, digest: Digest) -> Vec<ObjectRef<CachedPod>> {
        let Some(object) = self.objects.get_mut(key) else { return vec![] };
        object.latest = Some(digest);
        let mut triggered = Vec::new();
        for (uid, given) in object.given.iter_mut() {
            match given {
                None => *given = Some(digest),
                Some(g) if *g != digest => {
                    *given = Some(digest);
                    if let (Some(t), Some(change)) = (self.pods.get_mut(uid), key.change()) {
                        t.pending.insert(change);
                        triggered.push(t.pod.clone());
                    }
                }
                Some(_) => {}
            }
        }
        triggered
    }

    /// The changes pod `uid` has pending.
    pub fn pending(&self, uid: &str) -> Vec<Change> {
        self.pods.get(uid).map(|t| t.pending.iter().cloned().collect()).unwrap_or_default()
    }

    /// `update` applied `done` for pod `uid` with the contents `refs` (as in [`Table::track`]):
    /// those changes go; one that came in since with other contents is queued again.
    pub fn applied(&mut self, uid: &str, done: &[Change], refs: &[(ObjectKey, Option<Digest>)]) -> Delta {
        let Some(tracked) = self.pods.get_mut(uid) else { return Delta::default() };
        for c in done {
            tracked.pending.remove(c);
        }
        let pod = tracked.pod.clone();
        self.track(uid, pod, refs)
    }

    /// Pod `uid` has no instance any more (deleted, lost, finished): the watches it alone held stop.
    pub fn untrack(&mut self, uid: &str) -> Vec<ObjectKey> {
        let mut stop = Vec::new();
        if let Some(t) = self.pods.remove(uid) {
            for key in &t.objects {
                self.release(uid, key, &mut stop);
            }
        }
        stop
    }

    /// Untracks every pod `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Vec<ObjectKey> {
        let gone: Vec<String> = self.pods.keys().filter(|uid| !keep(uid)).cloned().collect();
        gone.iter().flat_map(|uid| self.untrack(uid)).collect()
    }

    fn release(&mut self, uid: &str, key: &ObjectKey, stop: &mut Vec<ObjectKey>) {
        if let Some(object) = self.objects.get_mut(key) {
            object.given.remove(uid);
            if object.given.is_empty() {
                if self.linger.is_zero() {
                    self.objects.remove(key);
                    stop.push(key.clone());
                } else {
                    object.idle_since = Some(Instant::now());
                }
            }
        }
        if let Some(t) = self.pods.get_mut(uid) {
            t.objects.retain(|k| k != key);
        }
    }

    /// ConfigMaps and Secrets watched.
    pub fn watches(&self) -> usize {
        self.objects.keys().filter(|k| k.kind != Kind::Services).count()
    }

    /// Namespaces whose Services are watched.
    pub fn service_watches(&self) -> usize {
        self.objects.keys().filter(|k| k.kind == Kind::Services).count()
    }

    /// Watches of any kind.
    fn len(&self) -> usize {
        self.objects.len()
    }
}

/// One running watch and what it holds of its object.
struct Watching {
    _task: AbortOnDropHandle<()>,
    seen: watch::Sender<Seen>,
}

/// The reference watches of one node: the [`Table`], a watch task per object, and the stream of
/// pods to reconcile that the controller takes.
pub struct ReferenceWatches {
    client: Client,
    node: String,
    table: Arc<Mutex<Table>>,
    /// Held while the table changes and its watches start or stop, so the two never disagree;
    /// with each watch, what it holds of its object.
    tasks: Mutex<HashMap<ObjectKey, Watching>>,
    triggers: mpsc::UnboundedSender<ObjectRef<CachedPod>>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<CachedPod>>>>,
}

impl HeldObjects for ReferenceWatches {
    fn read(&self, key: &ObjectKey) -> impl std::future::Future<Output = Option<Seen>> + Send {
        ReferenceWatches::read(self, key)
    }
}

impl ReferenceWatches {
    /// Watches with `client` (the node's identity, which reads what its pods reference).
    pub fn new(client: Client, node: &str) -> Self {
        let (triggers, receiver) = mpsc::unbounded_channel();
        ReferenceWatches {
            client,
            node: node.to_string(),
            table: Arc::new(Mutex::new(Table::lingering(LINGER))),
            tasks: Mutex::default(),
            triggers,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// The pods to reconcile because something they reference changed; the first caller gets it.
    pub fn triggers(&self) -> Option<impl Stream<Item = ObjectRef<CachedPod>> + Send + 'static> {
        let mut rx = self.receiver.lock().unwrap().take()?;
        Some(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// `pod` has an instance, given the contents `fetched` read (`None`: unknown, as for an
    /// instance adopted after a restart). Cheap when nothing changed.
    pub fn track(&self, pod: &Pod, fetched: Option<&References>) {
        let uid = pod.uid().unwrap_or_default();
        if fetched.is_none() && self.table.lock().unwrap().tracks(&uid, &watched(pod)) {
            return;
        }
        let refs = given(pod, fetched);
        self.change(|t| t.track(&uid, ObjectRef::from_obj(pod).into_kind_unchecked(()), &refs));
    }

    /// The changes `pod` has pending.
    pub fn pending(&self, uid: &str) -> Vec<Change> {
        self.table.lock().unwrap().pending(uid)
    }

    /// `update` applied `done` to `pod`'s instance with the contents `fetched` read.
    pub fn applied(&self, pod: &Pod, done: &[Change], fetched: &References) {
        let uid = pod.uid().unwrap_or_default();
        let refs = given(pod, Some(fetched));
        self.change(|t| t.applied(&uid, done, &refs));
    }

    /// Pod `uid` has no instance any more.
    pub fn untrack(&self, uid: &str) {
        self.change(|t| Delta { stop: t.untrack(uid), ..Delta::default() });
    }

    /// Untracks every pod `keep` refuses (pods gone from the cache, finished, without instance),
    /// and stops the watches idle for [`LINGER`].
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.change(|t| {
            let mut stop = t.retain(&keep);
            stop.extend(t.sweep(Instant::now()));
            Delta { stop, ..Delta::default() }
        });
    }

    /// What the watch of `key` holds, for resolving a pod; a watch is started (and its first
    /// answer awaited) when none runs. `None` when the watch cannot tell (it failed before its
    /// first answer, or stopped meanwhile): the caller reads the object itself.
    pub async fn read(&self, key: &ObjectKey) -> Option<Seen> {
        let now = Instant::now();
        self.change(|t| Delta { start: if t.read(key, now) { vec![key.clone()] } else { vec![] }, ..Delta::default() });
        let mut seen = self.tasks.lock().unwrap().get(key)?.seen.subscribe();
        let answer = tokio::time::timeout(FIRST_ANSWER_TIMEOUT, seen.wait_for(|s| !matches!(s, Seen::Unknown)));
        match answer.await.ok()?.ok()?.clone() {
            Seen::Failed | Seen::Unknown => None,
            known => Some(known),
        }
    }

    /// ConfigMaps and Secrets watched now.
    pub fn watches(&self) -> usize {
        self.table.lock().unwrap().watches()
    }

    /// Namespaces whose Services are watched now.
    pub fn service_watches(&self) -> usize {
        self.table.lock().unwrap().service_watches()
    }

    /// Stops every watch (acting for the node ended).
    pub fn stop(&self) {
        let mut tasks = self.tasks.lock().unwrap();
        *self.table.lock().unwrap() = Table::lingering(LINGER);
        tasks.clear();
    }

    fn change(&self, f: impl FnOnce(&mut Table) -> Delta) {
        let mut tasks = self.tasks.lock().unwrap();
        let delta = f(&mut self.table.lock().unwrap());
        for key in delta.stop {
            tasks.remove(&key);
        }
        for key in delta.start {
            let (seen, _) = watch::channel(Seen::Unknown);
            let watch =
                follow(self.client.clone(), key.clone(), self.table.clone(), self.triggers.clone(), seen.clone());
            tasks.insert(key, Watching { _task: AbortOnDropHandle::new(tokio::spawn(watch)), seen });
        }
        if tasks.len() != self.table.lock().unwrap().len() {
            tracing::warn!(node = %self.node, tasks = tasks.len(), "reference watches and their table disagree");
        }
        if let Some(pod) = delta.trigger {
            let _ = self.triggers.send(pod);
        }
    }
}

/// Follows one object until aborted: every answer's digest goes to the table, and the pods it
/// names are sent to be reconciled; what a pod gets of the object goes to `seen`. For the pods
/// running, a deletion changes nothing (the instance keeps what it had, as a kubelet keeps a
/// deleted ConfigMap's files); a re-creation with other contents is a change. A pod resolved
/// after the deletion finds the object absent. A namespace's Services only go to `seen`.
async fn follow(
    client: Client,
    key: ObjectKey,
    table: Arc<Mutex<Table>>,
    triggers: mpsc::UnboundedSender<ObjectRef<CachedPod>>,
    seen: watch::Sender<Seen>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    match key.kind {
        Kind::Services => {
            let api: Api<Service> = Api::namespaced(client, &key.namespace);
            services(watcher(api, watcher::Config::default()), &key, &seen).await
        }
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client, &key.namespace);
            let kind = Follow { digest: config_map_digest, keep: kept_config_map };
            digests(watcher(api, config), kind, &key, &table, &triggers, &seen).await
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client, &key.namespace);
            let kind = Follow { digest: secret_digest, keep: kept_secret };
            digests(watcher(api, config), kind, &key, &table, &triggers, &seen).await
        }
    }
}

/// How one kind of object is followed: its digest and what of it is kept.
struct Follow<K> {
    digest: fn(&K) -> Digest,
    keep: fn(&K) -> Seen,
}

async fn digests<K: kube::Resource>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    kind: Follow<K>,
    key: &ObjectKey,
    table: &Mutex<Table>,
    triggers: &mpsc::UnboundedSender<ObjectRef<CachedPod>>,
    seen: &watch::Sender<Seen>,
) {
    let mut events = std::pin::pin!(events.default_backoff());
    // What a (re)list found, published once it is complete.
    let mut listed = Seen::Absent;
    while let Some(event) = events.next().await {
        let o = match event {
            Ok(watcher::Event::Init) => {
                listed = Seen::Absent;
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                seen.send_replace(std::mem::replace(&mut listed, Seen::Absent));
                continue;
            }
            Ok(watcher::Event::Delete(_)) => {
                seen.send_replace(Seen::Absent);
                continue;
            }
            Err(e) => {
                seen.send_if_modified(|s| matches!(s, Seen::Unknown).then(|| *s = Seen::Failed).is_some());
                tracing::debug!(object = ?key, error = %e, "reference watch");
                continue;
            }
            // The field selector names the object; anything else is not it.
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o))
                if o.meta().name.as_deref() != Some(key.name.as_str()) =>
            {
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                listed = (kind.keep)(&o);
                o
            }
            Ok(watcher::Event::Apply(o)) => {
                seen.send_replace((kind.keep)(&o));
                o
            }
        };
        let pods = table.lock().unwrap().observed(key, (kind.digest)(&o));
        for pod in pods {
            tracing::info!(pod = %pod, object = ?key, "referenced object changed");
            let _ = triggers.send(pod);
        }
    }
}

/// Keeps what the variables read of a namespace's Services ([`resolve::linked_service`]) in
/// `seen`, after each complete (re)list and each change.
async fn services(
    events: impl Stream<Item = Result<watcher::Event<Service>, watcher::Error>> + Send,
    key: &ObjectKey,
    seen: &watch::Sender<Seen>,
) {
    let mut events = std::pin::pin!(events.default_backoff());
    let mut held: BTreeMap<String, Service> = BTreeMap::new();
    // What a (re)list found so far, published once it is complete.
    let mut listed: BTreeMap<String, Service> = BTreeMap::new();
    let publish = |held: &BTreeMap<String, Service>| {
        seen.send_replace(Seen::Services(Arc::new(held.values().cloned().collect())));
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(kept) = resolve::linked_service(&s) {
                    listed.insert(s.name_any(), kept);
                }
            }
            Ok(watcher::Event::InitDone) => {
                held = std::mem::take(&mut listed);
                publish(&held);
            }
            Ok(watcher::Event::Apply(s)) => {
                // One that no longer gives variables (made headless or ExternalName) goes.
                match resolve::linked_service(&s) {
                    Some(kept) => held.insert(s.name_any(), kept),
                    None => held.remove(&s.name_any()),
                };
                publish(&held);
            }
            Ok(watcher::Event::Delete(s)) => {
                held.remove(&s.name_any());
                publish(&held);
            }
            Err(e) => {
                seen.send_if_modified(|s| matches!(s, Seen::Unknown).then(|| *s = Seen::Failed).is_some());
                tracing::debug!(services = %key.namespace, error = %e, "service watch");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(uid: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": format!("p-{uid}"), "namespace": "ns", "uid": uid}, "spec": spec}),
        )
        .unwrap()
    }

    fn cm_key(name: &str) -> ObjectKey {
        ObjectKey { kind: Kind::ConfigMap, namespace: "ns".into(), name: name.into() }
    }

    fn secret_key(name: &str) -> ObjectKey {
        ObjectKey { kind: Kind::Secret, namespace: "ns".into(), name: name.into() }
    }

    fn pref(uid: &str) -> ObjectRef<CachedPod> {
        ObjectRef::new(&format!("p-{uid}")).within("ns")
    }

    fn d(n: u8) -> Digest {
        [n; 16]
    }

    /// What a pod of `ns` with service links holds besides its objects: its namespace's Services
    /// and `default`'s.
    fn services_held() -> Vec<(ObjectKey, Option<Digest>)> {
        vec![(ObjectKey::services("ns"), None), (ObjectKey::services("default"), None)]
    }

    #[test]
    fn a_pod_holds_its_namespaces_services_when_it_wants_links_and_defaults_for_the_master_service() {
        let namespaces = |p: &Pod| -> Vec<String> {
            watched(p).into_iter().filter(|k| k.kind == Kind::Services).map(|k| k.namespace).collect()
        };
        let containers = json!([{"name": "c", "image": "x"}]);
        assert_eq!(namespaces(&pod("u1", json!({"containers": containers}))), ["ns", "default"]);
        let unlinked = pod("u2", json!({"enableServiceLinks": false, "containers": containers}));
        assert_eq!(namespaces(&unlinked), ["default"]);
        let mut in_default = pod("u3", json!({"containers": containers}));
        in_default.metadata.namespace = Some("default".into());
        assert_eq!(namespaces(&in_default), ["default"]);
    }

    #[test]
    fn a_namespaces_services_are_held_by_its_pods_with_an_instance_and_never_a_change_to_tell() {
        let mut t = Table::default();
        let first = t.track("u1", pref("u1"), &services_held());
        assert_eq!(first.start, [ObjectKey::services("ns"), ObjectKey::services("default")]);
        assert_eq!(t.track("u2", pref("u2"), &services_held()), Delta::default(), "one watch per namespace");
        assert_eq!((t.watches(), t.service_watches()), (0, 2));
        assert!(t.observed(&ObjectKey::services("ns"), d(1)).is_empty());
        assert!(t.observed(&ObjectKey::services("ns"), d(2)).is_empty(), "a Service change is not told");
        assert!(t.pending("u1").is_empty());
        assert!(t.untrack("u1").is_empty());
        assert_eq!(t.untrack("u2"), [ObjectKey::services("default"), ObjectKey::services("ns")]);
        assert_eq!(t.service_watches(), 0);
    }

    #[test]
    fn an_idle_watch_lingers_from_its_last_read_and_after_its_last_pod() {
        let mut t = Table::lingering(LINGER);
        let ns = ObjectKey::services("ns");
        let t0 = Instant::now();
        assert!(t.read(&ns, t0), "the first reader starts the watch");
        let later = t0 + Duration::from_secs(6);
        assert!(!t.read(&ns, later), "the next reader finds it");
        assert!(t.sweep(t0 + LINGER).is_empty(), "read again, it lingers from that read");
        assert_eq!(t.sweep(later + LINGER), std::slice::from_ref(&ns));

        // Held by a pod with an instance it stays however long; after the pod it lingers.
        assert!(t.read(&ns, Instant::now()));
        assert!(t.track("u1", pref("u1"), &[(ns.clone(), None)]).start.is_empty());
        assert!(t.sweep(Instant::now() + LINGER * 100).is_empty());
        assert!(t.untrack("u1").is_empty(), "kept for the pods that follow");
        assert_eq!(t.sweep(Instant::now() + LINGER), [ns]);
    }

    #[test]
    fn a_pod_references_volumes_projections_and_env_but_not_its_image_pull_secrets() {
        let p = pod(
            "u1",
            json!({
                "imagePullSecrets": [{"name": "pull"}],
                "initContainers": [{"name": "i", "image": "x", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{"name": "c", "image": "x",
                    "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "envFrom": [{"configMapRef": {"name": "all-cm"}}]}],
                "volumes": [
                    {"name": "v1", "configMap": {"name": "vol-cm"}},
                    {"name": "v2", "secret": {"secretName": "vol-secret"}},
                    {"name": "v3", "projected": {"sources": [
                        {"configMap": {"name": "proj-cm"}}, {"secret": {"name": "proj-secret"}},
                        {"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "v4", "emptyDir": {}}]
            }),
        );
        let keys = watched(&p);
        let names = |kind| keys.iter().filter(|k| k.kind == kind).map(|k| k.name.as_str()).collect::<Vec<_>>();
        assert_eq!(names(Kind::ConfigMap), ["all-cm", "env-cm", "proj-cm", "vol-cm"]);
        assert_eq!(names(Kind::Secret), ["env-secret", "init-env", "proj-secret", "vol-secret"]);
        assert!(keys.iter().filter(|k| k.kind != Kind::Services).all(|k| k.namespace == "ns"));
    }

    #[test]
    fn a_pull_secret_also_mounted_is_watched() {
        let p = pod(
            "u1",
            json!({"imagePullSecrets": [{"name": "creds"}], "containers": [{"name": "c", "image": "x"}],
                   "volumes": [{"name": "v", "secret": {"secretName": "creds"}}]}),
        );
        assert_eq!(watched(&p)[0], secret_key("creds"));
        assert!(watched(&p)[1..].iter().all(|k| k.kind == Kind::Services), "{:?}", watched(&p));
    }

    #[test]
    fn digests_follow_the_contents_only() {
        let cm = |v: serde_json::Value| -> ConfigMap { serde_json::from_value(v).unwrap() };
        let a = cm(json!({"metadata": {"name": "a", "resourceVersion": "1"}, "data": {"k": "v"}}));
        let relabelled =
            cm(json!({"metadata": {"name": "a", "resourceVersion": "2", "labels": {"x": "y"}}, "data": {"k": "v"}}));
        let changed = cm(json!({"metadata": {"name": "a"}, "data": {"k": "w"}}));
        let moved = cm(json!({"metadata": {"name": "a"}, "binaryData": {"k": "dg=="}}));
        assert_eq!(config_map_digest(&a), config_map_digest(&relabelled));
        assert_ne!(config_map_digest(&a), config_map_digest(&changed));
        assert_ne!(config_map_digest(&a), config_map_digest(&moved), "data and binaryData are told apart");
        let s = |v: serde_json::Value| -> Secret { serde_json::from_value(v).unwrap() };
        let opaque = s(json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"pw": "aHVudGVyMg=="}}));
        let rotated = s(json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"pw": "aHVudGVyMw=="}}));
        assert_ne!(secret_digest(&opaque), secret_digest(&rotated));
        assert_ne!(config_map_digest(&a), ABSENT);
    }

    #[test]
    fn one_watch_per_object_however_many_pods_reference_it_stopped_with_the_last() {
        let mut t = Table::default();
        let shared = cm_key("shared");
        let first = t.track("u1", pref("u1"), &[(shared.clone(), Some(d(1))), (cm_key("own"), Some(d(2)))]);
        assert_eq!(first.start, [shared.clone(), cm_key("own")]);
        let second = t.track("u2", pref("u2"), &[(shared.clone(), Some(d(1)))]);
        assert!(second.start.is_empty(), "{second:?}");
        assert_eq!(t.watches(), 2);
        assert_eq!(t.untrack("u1"), [cm_key("own")]);
        assert_eq!(t.watches(), 1);
        assert_eq!(t.untrack("u2"), [shared]);
        assert_eq!(t.watches(), 0);
        assert!(t.untrack("u2").is_empty(), "untracking twice is harmless");
    }

    #[test]
    fn tracking_again_with_the_same_references_changes_nothing() {
        let mut t = Table::default();
        let refs = [(cm_key("a"), Some(d(1))), (secret_key("s"), Some(d(2)))];
        t.track("u1", pref("u1"), &refs);
        assert_eq!(t.track("u1", pref("u1"), &refs), Delta::default());
        assert_eq!(t.track("u1", pref("u1"), &[(cm_key("a"), None), (secret_key("s"), None)]), Delta::default());
        assert!(t.tracks("u1", &[secret_key("s"), cm_key("a")]));
        assert!(!t.tracks("u1", &[cm_key("a")]));
    }

    #[test]
    fn a_change_triggers_exactly_the_pods_referencing_the_object() {
        let mut t = Table::default();
        t.track("u1", pref("u1"), &[(cm_key("a"), Some(d(1)))]);
        t.track("u2", pref("u2"), &[(cm_key("a"), Some(d(1))), (secret_key("s"), Some(d(5)))]);
        t.track("u3", pref("u3"), &[(cm_key("b"), Some(d(1)))]);
        // The watches' first answers: the contents the instances have.
        assert!(t.observed(&cm_key("a"), d(1)).is_empty());
        assert!(t.observed(&cm_key("b"), d(1)).is_empty());
        assert!(t.observed(&secret_key("s"), d(5)).is_empty());

        let mut triggered = t.observed(&cm_key("a"), d(2));
        triggered.sort_by_key(|r| r.name.clone());
        assert_eq!(triggered, [pref("u1"), pref("u2")]);
        assert_eq!(t.pending("u1"), [Change::ConfigMap("a".into())]);
        assert_eq!(t.pending("u2"), [Change::ConfigMap("a".into())]);
        assert!(t.pending("u3").is_empty());

        assert_eq!(t.observed(&secret_key("s"), d(6)), [pref("u2")]);
        assert_eq!(t.pending("u2"), [Change::ConfigMap("a".into()), Change::Secret("s".into())]);
    }

    #[test]
    fn an_unchanged_resync_triggers_nothing() {
        let mut t = Table::default();
        t.track("u1", pref("u1"), &[(cm_key("a"), Some(d(1)))]);
        for _ in 0..3 {
            // A relist (watch expired, apiserver restarted) answers the same contents again.
            assert!(t.observed(&cm_key("a"), d(1)).is_empty());
        }
        assert!(t.pending("u1").is_empty());
        // An object nobody tracks any more (its watch is stopping) triggers nothing either.
        t.untrack("u1");
        assert!(t.observed(&cm_key("a"), d(9)).is_empty());
    }

    #[test]
    fn a_change_between_the_fetch_and_the_first_answer_is_not_missed() {
        let mut t = Table::default();
        // The pod was created with contents 1; its watch's first answer already shows 2.
        t.track("u1", pref("u1"), &[(cm_key("a"), Some(d(1)))]);
        assert_eq!(t.observed(&cm_key("a"), d(2)), [pref("u1")]);
        // A second pod created from an older read than the watch has seen is triggered at once.
        let late = t.track("u2", pref("u2"), &[(cm_key("a"), Some(d(1)))]);
        assert_eq!(late.trigger, Some(pref("u2")));
        assert_eq!(t.pending("u2"), [Change::ConfigMap("a".into())]);
    }

    #[test]
    fn an_adopted_instance_takes_the_first_answer_as_given() {
        let mut t = Table::default();
        t.track("u1", pref("u1"), &[(cm_key("a"), None)]);
        assert!(t.observed(&cm_key("a"), d(4)).is_empty());
        assert_eq!(t.observed(&cm_key("a"), d(5)), [pref("u1")]);
    }

    #[test]
    fn changes_stay_pending_until_applied_and_a_newer_one_is_queued_again() {
        let mut t = Table::default();
        let refs = |n| [(cm_key("a"), Some(d(n))), (secret_key("s"), Some(d(7)))];
        t.track("u1", pref("u1"), &refs(1));
        t.observed(&cm_key("a"), d(1));
        t.observed(&cm_key("a"), d(2));
        t.observed(&secret_key("s"), d(8));
        let pending = t.pending("u1");
        assert_eq!(pending.len(), 2);
        // The update read the ConfigMap at 2 and the Secret at 8: both applied.
        let done = t.applied("u1", &pending, &[(cm_key("a"), Some(d(2))), (secret_key("s"), Some(d(8)))]);
        assert_eq!(done, Delta::default());
        assert!(t.pending("u1").is_empty());

        // Changed to 3 while an update that read 2 was running: applied, but queued again.
        assert_eq!(t.observed(&cm_key("a"), d(3)), [pref("u1")]);
        let pending = t.pending("u1");
        let again = t.applied("u1", &pending, &[(cm_key("a"), Some(d(2))), (secret_key("s"), Some(d(8)))]);
        assert_eq!(again.trigger, Some(pref("u1")));
        assert_eq!(t.pending("u1"), [Change::ConfigMap("a".into())]);
    }

    #[test]
    fn an_optional_object_created_later_is_a_change() {
        let mut t = Table::default();
        t.track("u1", pref("u1"), &[(cm_key("opt"), Some(ABSENT))]);
        assert_eq!(t.observed(&cm_key("opt"), d(3)), [pref("u1")]);
    }

    #[test]
    fn retain_lets_go_of_pods_without_an_instance() {
        let mut t = Table::default();
        t.track("u1", pref("u1"), &[(cm_key("a"), Some(d(1)))]);
        t.track("u2", pref("u2"), &[(cm_key("b"), Some(d(1)))]);
        assert_eq!(t.retain(|uid| uid == "u2"), [cm_key("a")]);
        assert_eq!(t.watches(), 1);
    }

    #[test]
    fn what_an_instance_was_given_survives_a_restart_in_the_pods_annotation() {
        let spec = json!({"containers": [{"name": "c", "image": "x", "envFrom": [{"secretRef": {"name": "s"}}]}],
                          "volumes": [{"name": "v", "configMap": {"name": "cfg"}}]});
        let given_before = [(cm_key("cfg"), Some(d(1))), (secret_key("s"), Some(d(2)))];
        let value = annotation(&given_before);
        assert_eq!(value, format!("ConfigMap/cfg={},Secret/s={}", "01".repeat(16), "02".repeat(16)));
        let mut p = pod("u1", spec);
        p.metadata.annotations = Some([(GIVEN_ANNOTATION.to_string(), value)].into());
        assert_eq!(given(&p, None), [given_before.to_vec(), services_held()].concat());

        // After the restart the watch answers with other contents: a change, not the new normal.
        let mut t = Table::default();
        t.track("u1", pref("u1"), &given(&p, None));
        assert!(t.observed(&secret_key("s"), d(2)).is_empty());
        assert_eq!(t.observed(&cm_key("cfg"), d(3)), [pref("u1")]);

        // A malformed or foreign entry is ignored.
        p.metadata.annotations = Some([(GIVEN_ANNOTATION.to_string(), "ConfigMap/cfg=zz,Pod/x=00,junk".into())].into());
        assert_eq!(given(&p, None), [vec![(cm_key("cfg"), None), (secret_key("s"), None)], services_held()].concat());
    }

    #[test]
    fn given_digests_come_from_what_was_fetched() {
        let p = pod(
            "u1",
            json!({"containers": [{"name": "c", "image": "x"}],
                   "volumes": [{"name": "v", "configMap": {"name": "cfg"}}, {"name": "o", "configMap": {"name": "opt", "optional": true}}]}),
        );
        let mut fetched = References::default();
        let cfg: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}})).unwrap();
        fetched.config_maps.insert("cfg".into(), Some(cfg.clone()));
        fetched.config_maps.insert("opt".into(), None);
        assert_eq!(
            given(&p, Some(&fetched)),
            [vec![(cm_key("cfg"), Some(config_map_digest(&cfg))), (cm_key("opt"), Some(ABSENT))], services_held()]
                .concat()
        );
        assert_eq!(given(&p, None), [vec![(cm_key("cfg"), None), (cm_key("opt"), None)], services_held()].concat());
        assert!(!annotation(&given(&p, Some(&fetched))).contains("Services"), "nothing recorded of Services");
    }
}

#[cfg(test)]
mod cache_tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::pods::fixtures::{ApiServer, NODE};
    use crate::pods::resolve;

    const CM: &str = "/api/v1/namespaces/default/configmaps/cfg";

    fn config_map(value: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cfg", "namespace": "default", "annotations": {"big": "x".repeat(1000)}},
               "data": {"app.conf": value}})
    }

    fn mounting(name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"nodeName": NODE, "enableServiceLinks": false,
                     "volumes": [{"name": "c", "configMap": {"name": "cfg"}}],
                     "containers": [{"name": "app", "image": "nginx"}]}
        }))
        .unwrap()
    }

    fn value(refs: &References) -> Option<String> {
        refs.config_maps["cfg"].as_ref().map(|cm| cm.data.as_ref().unwrap()["app.conf"].clone())
    }

    #[tokio::test]
    async fn the_first_pod_reads_a_config_map_from_its_watch_list_and_the_next_makes_no_request() {
        let api = ApiServer::new();
        api.put(CM, config_map("v1"));
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);

        let first = mounting("a", "u1");
        let refs = resolve::fetch(&client, &watches, &first).await.unwrap();
        assert_eq!(value(&refs).as_deref(), Some("v1"));
        let cm = refs.config_maps["cfg"].as_ref().unwrap();
        assert!(cm.metadata.annotations.is_none(), "only what reaches a pod is kept");
        watches.track(&first, Some(&refs));
        // The watch's list and the watch itself; no GET of the object.
        assert!(api.requests_to("GET", CM).is_empty());
        let collection = api.requests_to("GET", "/api/v1/namespaces/default/configmaps");
        assert_eq!(collection.len(), 2, "{collection:?}");
        assert!(collection.iter().all(|r| r.query.contains("fieldSelector=metadata.name%3Dcfg")), "{collection:?}");

        let before = api.requests().len();
        let second = mounting("b", "u2");
        let refs = resolve::fetch(&client, &watches, &second).await.unwrap();
        assert_eq!(value(&refs).as_deref(), Some("v1"));
        assert_eq!(api.requests().len(), before, "{:?}", &api.requests()[before..]);
        assert_eq!(watches.watches(), 1);
    }

    #[tokio::test]
    async fn a_pod_resolved_after_a_change_gets_the_new_contents_and_after_a_deletion_none() {
        let api = ApiServer::new();
        api.put(CM, config_map("v1"));
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);
        let mut changed = watches.triggers().unwrap();
        let first = mounting("a", "u1");
        let refs = resolve::fetch(&client, &watches, &first).await.unwrap();
        watches.track(&first, Some(&refs));

        api.put(CM, config_map("v2"));
        // The watch saw the change: the running pod is to be told.
        let told = tokio::time::timeout(Duration::from_secs(10), changed.next()).await.unwrap().unwrap();
        assert_eq!(told.name, "a");
        let refs = resolve::fetch(&client, &watches, &mounting("b", "u2")).await.unwrap();
        assert_eq!(value(&refs).as_deref(), Some("v2"), "a new pod was given the old contents");

        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        cms.delete("cfg", &Default::default()).await.unwrap();
        let mut seen = watches.tasks.lock().unwrap()
            [&ObjectKey { kind: Kind::ConfigMap, namespace: "default".into(), name: "cfg".into() }]
            .seen
            .subscribe();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|s| matches!(s, Seen::Absent)))
            .await
            .unwrap()
            .unwrap();
        let refs = resolve::fetch(&client, &watches, &mounting("c", "u3")).await.unwrap();
        assert!(refs.config_maps["cfg"].is_none(), "a deleted ConfigMap was handed to a new pod");
    }

    #[tokio::test]
    async fn an_object_read_for_a_pod_not_yet_running_lingers_then_stops() {
        let api = ApiServer::new();
        api.put(CM, config_map("v1"));
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);
        resolve::fetch(&client, &watches, &mounting("a", "u1")).await.unwrap();
        assert_eq!(watches.watches(), 1, "watched from the first read");
        watches.retain(|_| false);
        assert_eq!(watches.watches(), 1, "kept for the pods that follow");
        let mut table = watches.table.lock().unwrap();
        let swept = table.sweep(Instant::now() + LINGER);
        assert_eq!(swept.iter().filter(|k| k.kind == Kind::ConfigMap).count(), 1, "{swept:?}");
    }

    #[tokio::test]
    async fn a_watch_that_cannot_list_leaves_the_read_to_a_get() {
        let api = ApiServer::new();
        api.put(CM, config_map("v1"));
        api.fail("GET", "/api/v1/namespaces/default/configmaps", 403, 1);
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);
        let refs = resolve::fetch(&client, &watches, &mounting("a", "u1")).await.unwrap();
        assert_eq!(value(&refs).as_deref(), Some("v1"));
        assert_eq!(api.requests_to("GET", CM).len(), 1);
    }

    const NS1_SERVICES: &str = "/api/v1/namespaces/ns1/services";
    const DEFAULT_SERVICES: &str = "/api/v1/namespaces/default/services";

    fn put_service(api: &ApiServer, ns: &str, name: &str, ip: &str) {
        api.put(
            &format!("/api/v1/namespaces/{ns}/services/{name}"),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": name, "namespace": ns, "annotations": {"big": "x".repeat(1000)}},
                   "spec": {"clusterIP": ip, "selector": {"app": name},
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
        );
    }

    fn linking(ns: &str, name: &str, uid: &str, links: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"nodeName": NODE, "enableServiceLinks": links, "containers": [{"name": "app", "image": "nginx"}]}
        }))
        .unwrap()
    }

    /// `namespace/name` of the Services read for a pod, sorted.
    fn service_names(refs: &References) -> Vec<String> {
        let mut names: Vec<String> =
            refs.services.iter().map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())).collect();
        names.sort();
        names
    }

    fn is_watch(r: &crate::pods::fixtures::Recorded) -> bool {
        r.query.split('&').any(|p| p == "watch=true")
    }

    /// The LISTs of `path` (its watches left out).
    fn lists(api: &ApiServer, path: &str) -> usize {
        api.requests_to("GET", path).iter().filter(|r| !is_watch(r)).count()
    }

    /// Waits until the watch of `namespace`'s Services holds what `held` accepts.
    async fn held(watches: &ReferenceWatches, namespace: &str, accept: impl Fn(&[Service]) -> bool) {
        let mut seen = watches.tasks.lock().unwrap()[&ObjectKey::services(namespace)].seen.subscribe();
        let wait = seen.wait_for(|s| matches!(s, Seen::Services(list) if accept(list)));
        tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_first_pod_of_a_namespace_reads_its_services_from_the_watch_list_and_the_next_make_no_request() {
        let api = ApiServer::new();
        put_service(&api, "ns1", "db", "10.0.0.9");
        put_service(&api, "default", "kubernetes", "10.0.0.1");
        put_service(&api, "default", "other", "10.0.0.2");
        put_service(&api, "ns1", "headless", "None");
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);

        let first = linking("ns1", "a", "u1", true);
        let refs = resolve::fetch(&client, &watches, &first).await.unwrap();
        assert_eq!(service_names(&refs), ["default/kubernetes", "ns1/db"]);
        for s in &refs.services {
            let spec = s.spec.as_ref().unwrap();
            assert!(s.metadata.annotations.is_none() && spec.selector.is_none(), "only what links read is kept: {s:?}");
            assert_eq!(spec.ports.as_ref().unwrap()[0].target_port, None);
        }
        assert_eq!((lists(&api, NS1_SERVICES), lists(&api, DEFAULT_SERVICES)), (1, 1), "the watches' lists");
        assert_eq!((watches.service_watches(), watches.watches()), (2, 0));
        watches.track(&first, Some(&refs));

        let before = api.requests().iter().filter(|r| !is_watch(r)).count();
        for (i, uid) in ["u2", "u3", "u4"].into_iter().enumerate() {
            let refs = resolve::fetch(&client, &watches, &linking("ns1", &format!("p{i}"), uid, true)).await.unwrap();
            assert_eq!(service_names(&refs), ["default/kubernetes", "ns1/db"]);
        }
        let after: Vec<_> = api.requests().into_iter().filter(|r| !is_watch(r)).skip(before).collect();
        assert!(after.is_empty(), "{after:?}");

        // Its last pod gone, the namespace stays watched for the pods that follow, a while.
        watches.retain(|_| false);
        assert_eq!(watches.service_watches(), 2);
        assert_eq!(watches.table.lock().unwrap().sweep(Instant::now() + LINGER).len(), 2);
    }

    #[tokio::test]
    async fn a_service_created_or_deleted_while_watched_is_seen_by_the_next_pod() {
        let api = ApiServer::new();
        put_service(&api, "ns1", "db", "10.0.0.9");
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);
        let refs = resolve::fetch(&client, &watches, &linking("ns1", "a", "u1", true)).await.unwrap();
        assert_eq!(service_names(&refs), ["ns1/db"]);

        put_service(&api, "ns1", "cache", "10.0.0.10");
        held(&watches, "ns1", |list| list.len() == 2).await;
        let refs = resolve::fetch(&client, &watches, &linking("ns1", "b", "u2", true)).await.unwrap();
        assert_eq!(service_names(&refs), ["ns1/cache", "ns1/db"]);

        let api_services: Api<Service> = Api::namespaced(client.clone(), "ns1");
        api_services.delete("db", &Default::default()).await.unwrap();
        held(&watches, "ns1", |list| list.len() == 1).await;
        let refs = resolve::fetch(&client, &watches, &linking("ns1", "c", "u3", true)).await.unwrap();
        assert_eq!(service_names(&refs), ["ns1/cache"]);
        assert_eq!(lists(&api, NS1_SERVICES), 1, "all from the one watch");
    }

    #[tokio::test]
    async fn without_links_only_the_master_service_is_read_and_a_namespaces_own_kubernetes_service_wins() {
        let api = ApiServer::new();
        put_service(&api, "default", "kubernetes", "10.0.0.1");
        put_service(&api, "default", "other", "10.0.0.2");
        put_service(&api, "ns1", "db", "10.0.0.9");
        put_service(&api, "ns2", "kubernetes", "10.0.0.77");
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);

        let refs = resolve::fetch(&client, &watches, &linking("ns1", "a", "u1", false)).await.unwrap();
        assert_eq!(service_names(&refs), ["default/kubernetes"]);
        assert_eq!(lists(&api, NS1_SERVICES), 0, "a namespace no pod wants links of is not read");
        // Every pod gets the master service's variables, one of `default` too.
        let refs = resolve::fetch(&client, &watches, &linking("default", "b", "u2", false)).await.unwrap();
        assert_eq!(service_names(&refs), ["default/kubernetes"]);
        let refs = resolve::fetch(&client, &watches, &linking("default", "c", "u3", true)).await.unwrap();
        assert_eq!(service_names(&refs), ["default/kubernetes", "default/other"]);
        assert_eq!(watches.service_watches(), 1);

        let pod = linking("ns2", "d", "u4", true);
        let refs = resolve::fetch(&client, &watches, &pod).await.unwrap();
        assert_eq!(service_names(&refs), ["ns2/kubernetes"]);
        let env = &resolve::resolve(&pod, &refs).unwrap().pod.env[0].vars;
        let host: Vec<&str> =
            env.iter().filter(|kv| kv.key == "KUBERNETES_SERVICE_HOST").map(|kv| kv.value.as_str()).collect();
        assert_eq!(host, ["10.0.0.77"], "as the kubelet: the namespace's own Service of that name wins");
        assert_eq!(watches.service_watches(), 2);
    }

    #[tokio::test]
    async fn a_service_watch_that_cannot_list_leaves_the_read_to_a_list() {
        let api = ApiServer::new();
        put_service(&api, "ns1", "db", "10.0.0.9");
        api.fail("GET", NS1_SERVICES, 403, 1);
        let client = api.client("node");
        let watches = ReferenceWatches::new(client.clone(), NODE);
        let refs = resolve::fetch(&client, &watches, &linking("ns1", "a", "u1", true)).await.unwrap();
        assert_eq!(service_names(&refs), ["ns1/db"]);
        assert!(refs.services[0].metadata.annotations.is_none(), "a listed Service is kept as a watched one");
        assert!(lists(&api, NS1_SERVICES) >= 2, "the watch's refused list, then the read's own");
    }
}
