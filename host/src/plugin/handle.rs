//! `Plugin`, the handle the rest of the daemon holds: which version each node calls (its
//! routes) behind an `ArcSwap`, replaced atomically when `reload` admits a new file that passed
//! every check and as the rollout (`rollout`) moves it from the canaries to every node or rolls
//! it back. A call takes its own `Arc` of the version it started on, so in-flight calls finish on
//! the old version; nodes running the same version share one compiled `Loaded`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::fence::Fence;
use crate::plugin::cache::Origin;
use crate::plugin::error::LoadError;
use crate::plugin::loaded::{self, Compile, LoadReport, Loaded};
use crate::plugin::rollout::{NodeSwap, Offer, RolledBack, Rollout, Step, Window, short};
use crate::plugin::runtime::PluginRuntime;
use crate::plugin::settings::PluginSettings;
use crate::plugin::source::{Provenance, Source};
use crate::plugin::stats::{PluginStats, StatsSnapshot};
use crate::plugin::v0_2_0::PluginInfo;

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadTrigger {
    /// `Plugin::reload` (the admin endpoint, tests).
    Request,
    /// The watcher saw the file change.
    FileChanged,
    /// SIGHUP.
    Signal,
    /// The polled OCI tag names a new digest.
    TagMoved,
}

/// One reload attempt, successful or not, for node Events and annotations.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadEvent {
    pub at: SystemTime,
    pub trigger: ReloadTrigger,
    /// The version active before the attempt (still active if it failed).
    pub old: PluginInfo,
    /// The new version's info, or why it was refused.
    pub outcome: Result<PluginInfo, String>,
    pub took_ms: f64,
    /// Where the new version came from (`None` when refused).
    pub source: Option<Provenance>,
    /// The attempt was refused because the version is unsigned or not signed by the key.
    pub signature_refused: bool,
}

impl ReloadEvent {
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// The active plugin's description for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveSummary {
    pub info: PluginInfo,
    pub load: LoadReport,
    pub stats: StatsSnapshot,
}

/// One node's version changed (a canary, a promotion, a rollback, a pin, a plain reload), for
/// that node's Events and annotation and its pod controller.
#[derive(Debug, Clone, Serialize)]
pub struct VersionEvent {
    pub at: SystemTime,
    /// The node's config id.
    pub node: String,
    /// The node's name in the cluster, once the node runner named it.
    pub names: Vec<String>,
    pub from: PluginInfo,
    pub from_sha256: String,
    pub to: PluginInfo,
    pub to_sha256: String,
    #[serde(flatten)]
    pub step: Step,
}

impl VersionEvent {
    /// Whether the event is about `node` (a config id or a node name).
    pub fn concerns(&self, node: &str) -> bool {
        self.node == node || self.names.iter().any(|n| n == node)
    }

    /// The node Event to publish: warning?, reason and note.
    pub fn node_event(&self) -> (bool, &'static str, String) {
        let (from, to) = (crate::plugin::label(&self.from), crate::plugin::label(&self.to));
        let (to_sha, from_sha) = (short(&self.to_sha256), short(&self.from_sha256));
        match &self.step {
            Step::Reloaded => (false, "PluginReloaded", format!("provider plugin {from} replaced by {to}")),
            Step::Canary => (
                false,
                "PluginCanary",
                format!(
                    "provider plugin {to} (sha256 {to_sha}) runs here as a canary, replacing {from}; the other nodes follow once it stays healthy"
                ),
            ),
            Step::Promoted => (
                false,
                "PluginReloaded",
                format!("provider plugin {from} replaced by {to} (sha256 {to_sha}): healthy on the canary nodes"),
            ),
            Step::RolledBack { reason } => (
                true,
                "PluginRolledBack",
                format!(
                    "provider plugin {from} (sha256 {from_sha}) rolled back to {to}: error budget exceeded on {reason}"
                ),
            ),
            Step::Superseded => (
                false,
                "PluginReloaded",
                format!("provider plugin {from} replaced by {to}: a newer file superseded its rollout"),
            ),
            Step::Pinned => (
                false,
                "PluginPinned",
                format!("provider plugin pinned to {to} (sha256 {to_sha}) by the operator, replacing {from}"),
            ),
            Step::Unpinned => (false, "PluginUnpinned", format!("provider plugin pin released: {to} replaces {from}")),
        }
    }
}

/// One version the daemon holds, for `GET /plugin/versions`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub contract: String,
    pub origin: Origin,
}

/// A node's version, for `GET /plugin/versions`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeVersion {
    pub node: String,
    pub names: Vec<String>,
    pub version: String,
    pub sha256: String,
    pub pinned: bool,
    /// Calls made on the version in rollout since the node got it, while it is watched.
    pub watched_calls: Option<u64>,
}

/// Every node's version and where the rollout stands.
#[derive(Debug, Clone, Serialize)]
pub struct VersionsView {
    /// Whether `[plugin.rollout]` is configured.
    pub rollout: bool,
    pub canary_nodes: Vec<String>,
    pub healthy_seconds: Option<u64>,
    pub stable: VersionView,
    pub candidate: Option<CandidateView>,
    pub previous: Option<VersionView>,
    pub nodes: Vec<NodeVersion>,
    pub rolled_back: Option<RolledBack>,
    /// Every version held, to pin to.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateView {
    #[serde(flatten)]
    pub version: VersionView,
    pub phase: crate::plugin::rollout::Phase,
    pub phase_seconds: u64,
}

/// Why a pin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("no node {node} here; the nodes are {known:?} (config ids) and their names")]
    UnknownNode { node: String, known: Vec<String> },
    #[error("no version {version} is held; the versions held are {known:?} (a version or a sha256 prefix)")]
    UnknownVersion { version: String, known: Vec<String> },
    #[error("version {version} names several builds ({matches:?}): give a sha256 prefix")]
    Ambiguous { version: String, matches: Vec<String> },
}

/// What a call for one node runs on, and the error budget its outcome feeds (while watched).
#[derive(Clone)]
pub(crate) struct Route {
    pub loaded: Arc<Loaded>,
    pub window: Option<Arc<Window>>,
}

/// Every node's route, by config id and by node name; nodes not listed (calls from outside
/// the daemon's nodes) run the stable version.
struct Routes {
    stable: Arc<Loaded>,
    nodes: HashMap<String, Route>,
}

/// The versions held and the rollout deciding which node runs which; changed under one lock.
struct Versions {
    rollout: Rollout,
    loaded: HashMap<String, Arc<Loaded>>,
    /// Error budgets of the nodes watched, by config id.
    windows: HashMap<String, Arc<Window>>,
    /// Node name to config id.
    names: HashMap<String, String>,
}

impl Versions {
    fn names_of(&self, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self.names.iter().filter(|(_, of)| *of == id).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    fn view(&self, digest: &str) -> VersionView {
        let l = &self.loaded[digest];
        VersionView {
            name: l.info.name.clone(),
            version: l.info.version.clone(),
            sha256: digest.to_string(),
            contract: l.report.contract.clone(),
            origin: l.report.origin,
        }
    }
}

/// A hot-swappable provider plugin.
///
/// A file the disk cache has not seen is compiled by the baseline compiler when the platform has
/// one (and `baseline_compile` is on), so a load or reload is quick; the Cranelift build then
/// replaces that version in the background, same bytes, same version, without a reload event.
pub struct Plugin {
    me: Weak<Plugin>,
    pub(crate) rt: Arc<PluginRuntime>,
    pub(crate) settings: PluginSettings,
    /// Where versions come from (a file or an OCI reference) and the key they must be signed by.
    pub(crate) source: Source,
    smoke_configs: Mutex<Vec<(String, String)>>,
    routes: ArcSwap<Routes>,
    versions: Mutex<Versions>,
    // Reloads are serialised: two racing reloads could otherwise swap in the older file last.
    reloading: tokio::sync::Mutex<()>,
    events: broadcast::Sender<ReloadEvent>,
    swaps: broadcast::Sender<VersionEvent>,
    /// Woken when a call exceeded a node's error budget.
    budget_exceeded: tokio::sync::Notify,
    pub(crate) stats: PluginStats,
    /// The fences of the nodes this daemon acts for, by node name (and config id): a call made
    /// for one of them may send HTTP only while its fence holds.
    fences: Mutex<HashMap<String, Fence>>,
}

/// How often the rollout looks at the clock (promotions are due in seconds, not milliseconds).
const ROLLOUT_TICK: Duration = Duration::from_secs(1);

impl Plugin {
    /// The durable node stores the plugin's `store` import reaches (register a node's there).
    pub fn stores(&self) -> &Arc<crate::plugin::Stores> {
        self.rt.stores()
    }

    /// Loads the plugin at `settings.path` and validates each `(node, config json)` with it; any
    /// failure refuses the load. The nodes named there are those the rollout moves versions
    /// across.
    pub async fn load(
        rt: Arc<PluginRuntime>,
        settings: PluginSettings,
        smoke_configs: Vec<(String, String)>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let source = settings.source()?;
        let loaded = loaded::load(&rt, &settings, source.fetch().await?, compile_mode(&settings)).await?;
        loaded.smoke_test(&smoke_configs).await?;
        tracing::info!(
            plugin = %loaded.info.name, version = %loaded.info.version, contract = %loaded.report.contract,
            compile_ms = loaded.report.compile_ms, origin = ?loaded.report.origin, "plugin loaded"
        );
        let (events, _) = broadcast::channel(64);
        let (swaps, _) = broadcast::channel(256);
        let digest = loaded.report.sha256.clone();
        let loaded = Arc::new(loaded);
        let nodes = smoke_configs.iter().map(|(node, _)| node.clone()).collect();
        let versions = Versions {
            rollout: Rollout::new(settings.rollout.clone(), nodes, digest.clone()),
            loaded: HashMap::from([(digest, loaded.clone())]),
            windows: HashMap::new(),
            names: HashMap::new(),
        };
        let plugin = Arc::new_cyclic(|me| Plugin {
            me: me.clone(),
            rt,
            settings,
            source,
            smoke_configs: Mutex::new(smoke_configs),
            routes: ArcSwap::from_pointee(Routes { stable: loaded.clone(), nodes: HashMap::new() }),
            versions: Mutex::new(versions),
            reloading: tokio::sync::Mutex::new(()),
            events,
            swaps,
            budget_exceeded: tokio::sync::Notify::new(),
            stats: PluginStats::default(),
            fences: Mutex::new(HashMap::new()),
        });
        plugin.publish(&plugin.versions.lock().unwrap());
        plugin.spawn_optimized_build(&loaded);
        Ok(plugin)
    }

    /// Rebuilds every node's route from `v`.
    fn publish(&self, v: &Versions) {
        let stable = v.loaded[v.rollout.stable()].clone();
        let mut nodes = HashMap::new();
        for (id, digest) in v.rollout.assignment() {
            let route = Route { loaded: v.loaded[&digest].clone(), window: v.windows.get(&id).cloned() };
            for name in v.names_of(&id) {
                nodes.insert(name, route.clone());
            }
            nodes.insert(id, route);
        }
        self.routes.store(Arc::new(Routes { stable, nodes }));
    }

    /// What a call for `node` (a config id or node name; `None`: no node) runs on.
    pub(crate) fn route(&self, node: Option<&str>) -> Route {
        let routes = self.routes.load();
        node.and_then(|n| routes.nodes.get(n))
            .cloned()
            .unwrap_or_else(|| Route { loaded: routes.stable.clone(), window: None })
    }

    /// Records that config node `id` is named `name` in the cluster, so calls made under either
    /// run the node's version.
    pub fn name_node(&self, id: &str, name: &str) {
        let mut v = self.versions.lock().unwrap();
        if v.names.insert(name.to_string(), id.to_string()).as_deref() != Some(id) {
            self.publish(&v);
        }
    }

    /// Applies a rollout step: new error budgets for the nodes now watched, the versions no node
    /// needs released, the routes republished, one event per node that changed version.
    fn apply(&self, v: &mut Versions, swaps: Vec<NodeSwap>) {
        let budget = v.rollout.policy().map(|p| p.budget.clone());
        for s in &swaps {
            v.windows.remove(&s.node);
            if let Some(budget) = &budget
                && v.rollout.watched(&s.node)
            {
                v.windows.insert(s.node.clone(), Arc::new(Window::new(budget)));
            }
        }
        let Versions { rollout, windows, .. } = v;
        windows.retain(|node, _| rollout.watched(node));
        let events: Vec<VersionEvent> = swaps
            .into_iter()
            .map(|s| {
                if matches!(s.step, Step::RolledBack { .. }) {
                    self.stats.record_rollback();
                }
                tracing::info!(
                    node = %s.node, from = %short(&s.from), to = %short(&s.to), step = ?s.step,
                    "plugin version of the node changed"
                );
                VersionEvent {
                    at: SystemTime::now(),
                    names: v.names_of(&s.node),
                    from: v.loaded[&s.from].info.clone(),
                    to: v.loaded[&s.to].info.clone(),
                    node: s.node,
                    from_sha256: s.from,
                    to_sha256: s.to,
                    step: s.step,
                }
            })
            .collect();
        let retained = v.rollout.retained();
        v.loaded.retain(|digest, _| retained.contains(digest));
        self.publish(v);
        for ev in events {
            let _ = self.swaps.send(ev);
        }
    }

    /// When `baseline` is a baseline build, compiles its bytes with Cranelift off the hot path and
    /// swaps the result in wherever that version is still held by then. A failure leaves the
    /// baseline build serving (it passed every check), with a warning.
    fn spawn_optimized_build(&self, baseline: &Loaded) {
        let Some(bytes) = baseline.baseline_source.clone() else { return };
        let (me, rt, settings) = (self.me.clone(), self.rt.clone(), self.settings.clone());
        let sha256 = baseline.report.sha256.clone();
        let (path, provenance) = (baseline.report.path.clone(), baseline.report.source.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let built =
                loaded::load_bytes(&rt, &settings, &path, bytes, started, Compile::Optimized).await.map(|mut built| {
                    built.report.source = provenance;
                    built
                });
            let Some(plugin) = me.upgrade() else { return };
            let mut v = plugin.versions.lock().unwrap();
            let Some(held) = v.loaded.get(&sha256).filter(|l| l.baseline_source.is_some()).cloned() else {
                plugin.stats.record_optimized_superseded(); // replaced by a newer file meanwhile
                return;
            };
            match built {
                Ok(optimized) => {
                    tracing::info!(
                        plugin = %optimized.info.name, version = %optimized.info.version,
                        compile_ms = optimized.report.compile_ms, "optimized build of the plugin swapped in"
                    );
                    v.loaded.insert(sha256, Arc::new(optimized));
                    plugin.publish(&v);
                    plugin.stats.record_optimized_swap();
                }
                Err(e) => tracing::warn!(
                    plugin = %held.info.name, version = %held.info.version, error = %e,
                    "optimized build of the plugin failed; the baseline build keeps serving"
                ),
            }
        });
    }

    /// Fences the calls made for `node` (a node name or config id, as calls name it): their HTTP
    /// requests are refused, never sent, once `fence` lapsed. Calls for nodes with no fence here
    /// (`vkhost node delete`, which acts on a node from outside the daemon) are not fenced.
    pub fn fence_node(&self, node: &str, fence: Fence) {
        self.fences.lock().unwrap().insert(node.to_string(), fence);
    }

    /// The fence of the calls made for `node`, if it has one.
    pub(crate) fn fence_of(&self, node: &str) -> Option<Fence> {
        self.fences.lock().unwrap().get(node).cloned()
    }

    /// The stable version's metadata: what every node runs outside a rollout.
    pub fn info(&self) -> PluginInfo {
        self.routes.load().stable.info.clone()
    }

    /// The metadata of the version `node` (config id or name) runs.
    pub fn info_for(&self, node: &str) -> PluginInfo {
        self.route(Some(node)).loaded.info.clone()
    }

    /// The stable version's metadata, load report and counters.
    pub fn summary(&self) -> ActiveSummary {
        self.summary_of(&self.routes.load().stable)
    }

    /// [`Self::summary`] of the version `node` runs.
    pub fn summary_for(&self, node: &str) -> ActiveSummary {
        self.summary_of(&self.route(Some(node)).loaded)
    }

    fn summary_of(&self, loaded: &Loaded) -> ActiveSummary {
        ActiveSummary { info: loaded.info.clone(), load: loaded.report.clone(), stats: self.stats.snapshot() }
    }

    /// How the stable version was compiled; `Origin::Baseline` until its optimized build is in.
    pub fn origin(&self) -> Origin {
        self.routes.load().stable.report.origin
    }

    /// Waits until the stable version is an optimized (Cranelift) build, or `timeout` passes;
    /// returns whether it is.
    pub async fn optimized_within(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.origin() == Origin::Baseline {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    /// The counters the plugin keeps through the `metrics` import: (name, labels) and value.
    pub fn counters(&self) -> Vec<(crate::plugin::imports::metrics::Series, u64)> {
        self.routes.load().stable.counters.snapshot()
    }

    /// What the plugin's cloud-API budget has done, if it has one (`[plugin.egress]`).
    pub fn budget_stats(&self) -> Option<crate::plugin::BudgetStats> {
        self.rt.budget_stats(&self.info().name)
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    /// Where the active version came from: the pinned OCI digest or the file, and its signer.
    pub fn provenance(&self) -> Option<Provenance> {
        self.routes.load().stable.report.source.clone()
    }

    /// Where the version `node` (config id or name) runs came from.
    pub fn provenance_for(&self, node: &str) -> Option<Provenance> {
        self.route(Some(node)).loaded.report.source.clone()
    }

    /// Replaces the node configs a reload must validate (nodes were added or reconfigured).
    pub fn set_smoke_configs(&self, configs: Vec<(String, String)>) {
        *self.smoke_configs.lock().unwrap() = configs;
    }

    /// Every reload attempt from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// Every node's version change from now on.
    pub fn subscribe_versions(&self) -> broadcast::Receiver<VersionEvent> {
        self.swaps.subscribe()
    }

    /// Every node's version, the versions held and where the rollout stands.
    pub fn versions(&self) -> VersionsView {
        let v = self.versions.lock().unwrap();
        let policy = v.rollout.policy();
        let nodes = v
            .rollout
            .assignment()
            .into_iter()
            .map(|(node, digest)| NodeVersion {
                names: v.names_of(&node),
                version: v.loaded[&digest].info.version.clone(),
                pinned: v.rollout.pins().contains_key(&node),
                watched_calls: v.windows.get(&node).map(|w| w.calls()),
                node,
                sha256: digest,
            })
            .collect();
        let mut versions: Vec<VersionView> = v.loaded.keys().map(|d| v.view(d)).collect();
        versions.sort_by(|a, b| (&a.version, &a.sha256).cmp(&(&b.version, &b.sha256)));
        VersionsView {
            rollout: policy.is_some(),
            canary_nodes: policy.map(|p| p.canary_nodes.clone()).unwrap_or_default(),
            healthy_seconds: policy.map(|p| p.healthy_seconds),
            stable: v.view(v.rollout.stable()),
            candidate: v.rollout.candidate().map(|c| CandidateView {
                version: v.view(&c.digest),
                phase: c.phase,
                phase_seconds: c.since.elapsed().as_secs(),
            }),
            previous: v.rollout.previous().filter(|d| v.loaded.contains_key(*d)).map(|d| v.view(d)),
            nodes,
            rolled_back: v.rollout.rolled_back().cloned(),
            versions,
        }
    }

    /// Keeps `node` (config id or name) on `version` (a version string or a sha256 prefix of a
    /// version held) whatever rollouts do, until `unpin`. Returns the node's config id.
    pub fn pin(&self, node: &str, version: &str) -> Result<String, PinError> {
        let mut v = self.versions.lock().unwrap();
        let id = resolve_node(&v, node)?;
        let wanted = version.trim().trim_start_matches("sha256:");
        let matches: Vec<String> = v
            .loaded
            .iter()
            .filter(|(digest, l)| l.info.version == wanted || (wanted.len() >= 4 && digest.starts_with(wanted)))
            .map(|(digest, _)| digest.clone())
            .collect();
        let digest = match matches.as_slice() {
            [one] => one.clone(),
            [] => {
                let known = v.loaded.iter().map(|(d, l)| format!("{} sha256:{}", l.info.version, short(d))).collect();
                return Err(PinError::UnknownVersion { version: version.into(), known });
            }
            _ => return Err(PinError::Ambiguous { version: version.into(), matches }),
        };
        let swaps = v.rollout.pin(&id, &digest);
        self.apply(&mut v, swaps);
        Ok(id)
    }

    /// Releases `node`'s pin. Returns the node's config id.
    pub fn unpin(&self, node: &str) -> Result<String, PinError> {
        let mut v = self.versions.lock().unwrap();
        let id = resolve_node(&v, node)?;
        let swaps = v.rollout.unpin(&id);
        self.apply(&mut v, swaps);
        Ok(id)
    }

    /// Moves rollouts on until `shutdown`: rolls a version back as soon as a call exceeded a
    /// node's error budget, promotes it once the canaries were healthy, and makes it the stable
    /// version after that. Without `[plugin.rollout]` there is nothing to drive.
    pub fn spawn_rollout(self: &Arc<Self>, shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        self.settings.rollout.as_ref()?;
        let plugin = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ROLLOUT_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = plugin.budget_exceeded.notified() => {}
                    _ = tick.tick() => {}
                }
                plugin.drive(Instant::now());
            }
        }))
    }

    /// One step of the rollout at `now`: blown budgets first, then the clock.
    fn drive(&self, now: Instant) {
        let mut v = self.versions.lock().unwrap();
        let mut tripped: Vec<(String, String)> =
            v.windows.iter().filter(|(_, w)| w.tripped()).map(|(node, w)| (node.clone(), w.reason())).collect();
        tripped.sort();
        for (node, reason) in tripped {
            let swaps = v.rollout.exceeded(&node, &reason, SystemTime::now());
            if !swaps.is_empty() {
                tracing::warn!(node = %node, %reason, "plugin version exceeded its error budget; rolling back");
                self.apply(&mut v, swaps);
            }
        }
        let canary_calls = v.rollout.canaries().iter().filter_map(|n| v.windows.get(n)).map(|w| w.calls()).sum();
        let phase = |v: &Versions| v.rollout.candidate().map(|c| (c.digest.clone(), c.phase));
        let before = phase(&v);
        let swaps = v.rollout.tick(now, canary_calls);
        if phase(&v) != before {
            // Promoted (swaps), or stable now (the version it replaced is released).
            self.apply(&mut v, swaps);
        }
    }

    /// Called with every call's outcome on a watched node: wakes the rollout when the budget
    /// was just exceeded.
    pub(crate) fn budget_tripped(&self) {
        self.budget_exceeded.notify_one();
    }

    /// Re-reads the file, compiles, typechecks and smoke-tests it, then hands it to the rollout
    /// (every node at once without `[plugin.rollout]`). On any failure the active versions stay.
    pub async fn reload(&self) -> Result<PluginInfo, LoadError> {
        self.reload_by(ReloadTrigger::Request).await.map(|info| info.unwrap_or_else(|| self.info()))
    }

    /// `Ok(None)` when the file turned out to be the version already in place (or in rollout).
    pub(crate) async fn reload_by(&self, trigger: ReloadTrigger) -> Result<Option<PluginInfo>, LoadError> {
        let load = async {
            let component = self.source.fetch().await?;
            loaded::load(&self.rt, &self.settings, component, compile_mode(&self.settings)).await
        };
        self.admit(trigger, load).await
    }

    /// The reload path for any source of a new version: `load` (awaited once the previous reload
    /// finished) reads and compiles it; the result is judged by the rollout (in place already,
    /// or rolled back before), smoke-tested with every node's config, and handed to the rollout.
    /// Every attempt is reported through `subscribe`.
    pub(crate) async fn admit(
        &self,
        trigger: ReloadTrigger,
        load: impl std::future::Future<Output = Result<Loaded, LoadError>>,
    ) -> Result<Option<PluginInfo>, LoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let old = self.info();
        let attempt = async {
            let new = load.await?;
            // A version in place needs no more checking; one rolled back is refused before it.
            match self.versions.lock().unwrap().rollout.judge(&new.report.sha256) {
                Some(Offer::Unchanged) => return Ok(None),
                Some(Offer::Refused(why)) => {
                    return Err(LoadError::RolledBack {
                        plugin: new.info.name.clone(),
                        version: new.info.version.clone(),
                        message: why,
                    });
                }
                _ => {}
            }
            let smoke = self.smoke_configs.lock().unwrap().clone();
            new.smoke_test(&smoke).await?;
            Ok(Some(new))
        };
        let result: Result<Option<Loaded>, LoadError> = attempt.await;
        let mut source = None;
        let outcome = match result {
            Ok(None) => return Ok(None),
            Ok(Some(new)) => {
                source = new.report.source.clone();
                let info = new.info.clone();
                let digest = new.report.sha256.clone();
                let new = Arc::new(new);
                {
                    let mut v = self.versions.lock().unwrap();
                    v.loaded.entry(digest.clone()).or_insert_with(|| new.clone());
                    match v.rollout.offer(&digest, Instant::now()) {
                        Offer::Admitted(swaps) => self.apply(&mut v, swaps),
                        // Judged a moment ago under the reload lock: nothing else offers.
                        Offer::Unchanged | Offer::Refused(_) => {}
                    }
                }
                self.spawn_optimized_build(&new);
                tracing::info!(
                    plugin = %info.name, from = %old.version, to = %info.version, ?trigger,
                    took_ms = started.elapsed().as_secs_f64() * 1e3, "plugin reloaded"
                );
                Ok(info)
            }
            Err(e) => {
                tracing::warn!(
                    plugin = %old.name, active = %old.version, ?trigger, error = %e,
                    "plugin reload refused; the active version stays"
                );
                Err(e)
            }
        };
        self.stats.record_reload(outcome.is_ok());
        let signature_refused = outcome.as_ref().is_err_and(LoadError::is_signature_refusal);
        if signature_refused {
            self.stats.record_signature_refusal();
        }
        let _ = self.events.send(ReloadEvent {
            at: SystemTime::now(),
            trigger,
            old,
            outcome: outcome.as_ref().map(Clone::clone).map_err(ToString::to_string),
            took_ms: started.elapsed().as_secs_f64() * 1e3,
            source,
            signature_refused,
        });
        outcome.map(Some)
    }
}

/// The config id of `node`, given as a config id or a node name.
fn resolve_node(v: &Versions, node: &str) -> Result<String, PinError> {
    if v.rollout.nodes().iter().any(|n| n == node) {
        return Ok(node.to_string());
    }
    v.names
        .get(node)
        .cloned()
        .ok_or_else(|| PinError::UnknownNode { node: node.into(), known: v.rollout.nodes().to_vec() })
}

fn compile_mode(settings: &PluginSettings) -> Compile {
    if settings.baseline_compile { Compile::BaselineFirst } else { Compile::Optimized }
}
