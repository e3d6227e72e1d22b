//! `Plugin`, the handle the rest of the daemon holds: the active version behind an `ArcSwap`,
//! replaced atomically by `reload` after the new file passed every check. A call takes its own
//! `Arc` of the version it started on, so in-flight calls finish on the old version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::fence::Fence;
use crate::plugin::cache::Origin;
use crate::plugin::error::LoadError;
use crate::plugin::loaded::{self, Compile, LoadReport, Loaded};
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
    pub(crate) active: ArcSwap<Loaded>,
    // Reloads are serialised: two racing reloads could otherwise swap in the older file last.
    reloading: tokio::sync::Mutex<()>,
    events: broadcast::Sender<ReloadEvent>,
    pub(crate) stats: PluginStats,
    /// The fences of the nodes this daemon acts for, by node name (and config id): a call made
    /// for one of them may send HTTP only while its fence holds.
    fences: Mutex<HashMap<String, Fence>>,
}

impl Plugin {
    /// The durable node stores the plugin's `store` import reaches (register a node's there).
    pub fn stores(&self) -> &Arc<crate::plugin::Stores> {
        self.rt.stores()
    }

    /// Loads the plugin at `settings.path` and validates each `(node, config json)` with it; any
    /// failure refuses the load.
    pub async fn load(
        rt: Arc<PluginRuntime>,
        settings: PluginSettings,
        smoke_configs: Vec<(String, String)>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let source = Source::new(&settings)?;
        let loaded = loaded::load(&rt, &settings, source.fetch().await?, compile_mode(&settings)).await?;
        loaded.smoke_test(&smoke_configs).await?;
        tracing::info!(
            plugin = %loaded.info.name, version = %loaded.info.version, contract = %loaded.report.contract,
            compile_ms = loaded.report.compile_ms, origin = ?loaded.report.origin, "plugin loaded"
        );
        let (events, _) = broadcast::channel(64);
        let plugin = Arc::new_cyclic(|me| Plugin {
            me: me.clone(),
            rt,
            settings,
            source,
            smoke_configs: Mutex::new(smoke_configs),
            active: ArcSwap::from_pointee(loaded),
            reloading: tokio::sync::Mutex::new(()),
            events,
            stats: PluginStats::default(),
            fences: Mutex::new(HashMap::new()),
        });
        plugin.spawn_optimized_build(&plugin.active.load());
        Ok(plugin)
    }

    /// When `baseline` is a baseline build, compiles its bytes with Cranelift off the hot path and
    /// swaps the result in if that version is still the active one by then. A failure leaves the
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
            let _one_at_a_time = plugin.reloading.lock().await;
            let active = plugin.active.load_full();
            if active.report.sha256 != sha256 || active.baseline_source.is_none() {
                plugin.stats.record_optimized_superseded(); // replaced by a newer file meanwhile
                return;
            }
            match built {
                Ok(optimized) => {
                    tracing::info!(
                        plugin = %optimized.info.name, version = %optimized.info.version,
                        compile_ms = optimized.report.compile_ms, "optimized build of the plugin swapped in"
                    );
                    plugin.active.store(Arc::new(optimized));
                    plugin.stats.record_optimized_swap();
                }
                Err(e) => tracing::warn!(
                    plugin = %active.info.name, version = %active.info.version, error = %e,
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

    /// The active version's metadata.
    pub fn info(&self) -> PluginInfo {
        self.active.load().info.clone()
    }

    /// The active version's metadata, load report and counters.
    pub fn summary(&self) -> ActiveSummary {
        let active = self.active.load();
        ActiveSummary { info: active.info.clone(), load: active.report.clone(), stats: self.stats.snapshot() }
    }

    /// How the active version was compiled; `Origin::Baseline` until its optimized build is in.
    pub fn origin(&self) -> Origin {
        self.active.load().report.origin
    }

    /// Waits until the active version is an optimized (Cranelift) build, or `timeout` passes;
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
        self.active.load().counters.snapshot()
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
        self.active.load().report.source.clone()
    }

    /// Replaces the node configs a reload must validate (nodes were added or reconfigured).
    pub fn set_smoke_configs(&self, configs: Vec<(String, String)>) {
        *self.smoke_configs.lock().unwrap() = configs;
    }

    /// Every reload attempt from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// Re-reads the file, compiles, typechecks and smoke-tests it, then swaps it in. On any
    /// failure the active version stays.
    pub async fn reload(&self) -> Result<PluginInfo, LoadError> {
        self.reload_by(ReloadTrigger::Request).await.map(|info| info.unwrap_or_else(|| self.info()))
    }

    /// `Ok(None)` when the watcher's file change turned out to leave the bytes unchanged.
    pub(crate) async fn reload_by(&self, trigger: ReloadTrigger) -> Result<Option<PluginInfo>, LoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let old = self.active.load_full();
        let attempt = async {
            let component = self.source.fetch().await?;
            let new = loaded::load(&self.rt, &self.settings, component, compile_mode(&self.settings)).await?;
            let unchanged = new.report.sha256 == old.report.sha256 && new.report.source == old.report.source;
            if matches!(trigger, ReloadTrigger::FileChanged | ReloadTrigger::TagMoved) && unchanged {
                return Ok(None);
            }
            let smoke = self.smoke_configs.lock().unwrap().clone();
            new.smoke_test(&smoke).await?;
            Ok(Some(new))
        };
        let result: Result<Option<Loaded>, LoadError> = attempt.await;
        let outcome = match result {
            Ok(None) => return Ok(None),
            Ok(Some(new)) => {
                let info = new.info.clone();
                let new = Arc::new(new);
                self.active.store(new.clone());
                self.spawn_optimized_build(&new);
                tracing::info!(
                    plugin = %info.name, from = %old.info.version, to = %info.version, ?trigger,
                    took_ms = started.elapsed().as_secs_f64() * 1e3, "plugin reloaded"
                );
                Ok(info)
            }
            Err(e) => {
                tracing::warn!(
                    plugin = %old.info.name, active = %old.info.version, ?trigger, error = %e,
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
            old: old.info.clone(),
            outcome: outcome.as_ref().map(Clone::clone).map_err(ToString::to_string),
            took_ms: started.elapsed().as_secs_f64() * 1e3,
            source: outcome.is_ok().then(|| self.active.load().report.source.clone()).flatten(),
            signature_refused,
        });
        outcome.map(Some)
    }
}

fn compile_mode(settings: &PluginSettings) -> Compile {
    if settings.baseline_compile { Compile::BaselineFirst } else { Compile::Optimized }
}
