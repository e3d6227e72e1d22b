//! One loaded plugin version: its file read, contract checked, compiled (or taken from the cache),
//! typechecked once, asked for its metadata; and how a call runs against it in a fresh store under
//! its limits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::component::{Component, ComponentExportIndex, Func, TypedFunc};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::plugin::cache::{self, Origin};
use crate::plugin::contract::{self, Contract, Version};
use crate::plugin::error::{CallError, Export, LoadError};
use crate::plugin::imports::http::{Allowlist, Egress, refused_header};
use crate::plugin::imports::kv::KvStore;
use crate::plugin::imports::metrics::PluginCounters;
use crate::plugin::imports::{HostState, Identity, StoreScope};
use crate::plugin::runtime::{self, PluginRuntime};
use crate::plugin::settings::{Limits, PluginSettings};
use crate::plugin::source::{Provenance, Verified};
use crate::plugin::v0_1_2;
use crate::plugin::v0_2_0::{self, PluginInfo, ProviderError, StreamTarget};

/// How the load went, for `vkhost plugin check` and the reload events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: usize,
    pub contract: String,
    pub origin: Origin,
    pub compile_ms: f64,
    pub total_ms: f64,
    /// Where the version came from and whose signature it carries.
    pub source: Option<Provenance>,
}

/// A compiled, typechecked plugin version ready to be called. Immutable; shared by `Arc` with
/// every call in flight, so a replaced version lives until its last call returns.
pub struct Loaded {
    pub info: PluginInfo,
    pub report: LoadReport,
    pub(crate) identity: Arc<Identity>,
    engine: Engine,
    /// The component's bytes while this is a baseline build, for the optimized build to come.
    pub(crate) baseline_source: Option<Arc<[u8]>>,
    /// Contract-versioned bindings: 0.2 native, 0.1.x through the adapter in `v0_1_2`.
    pre: Bindings,
    /// Where each export sits in the component, looked up once.
    exports: ExportIndices,
    kv: Arc<KvStore>,
    pub(crate) counters: Arc<PluginCounters>,
    egress: Arc<Egress>,
    stores: Arc<crate::plugin::Stores>,
    limits: Limits,
}

enum Bindings {
    V0_1(v0_1_2::ProviderPre<HostState>),
    V0_2(v0_2_0::ProviderPre<HostState>),
}

/// The contract line a loaded plugin speaks, which decides how the host calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// 0.1.x, through the adapter in `v0_1_2`.
    V0_1,
    /// 0.2.x, natively.
    V0_2,
}

impl Line {
    /// The bindings' contract version: the one whose export names the host looks up (a 0.1.0
    /// plugin's `@0.1.0` exports resolve under `@0.1.2` by component-model semver).
    fn bindings(self) -> Version {
        match self {
            Line::V0_1 => v0_1_2::CONTRACT,
            Line::V0_2 => v0_2_0::CONTRACT,
        }
    }
}

/// The component's export index of every provider export its contract has, by `Export as usize`.
struct ExportIndices([Option<ComponentExportIndex>; Export::ALL.len()]);

impl ExportIndices {
    fn lookup(component: &Component, line: Line) -> Result<Self, String> {
        let one = |export: Export| {
            let (interface, function) = export.wit_name().split_once('.').expect("wit names are interface.function");
            let interface = format!("vk:provider/{interface}@{}", line.bindings());
            let instance = component
                .get_export_index(None, &interface)
                .ok_or_else(|| format!("no exported instance named `{interface}`"))?;
            component
                .get_export_index(Some(&instance), function)
                .ok_or_else(|| format!("`{interface}` does not export `{function}`"))
        };
        let mut indices = Vec::with_capacity(Export::ALL.len());
        for export in Export::ALL {
            debug_assert_eq!(export as usize, indices.len());
            let present = export.since().is_none_or(|since| since <= line.bindings());
            indices.push(if present { Some(one(export)?) } else { None });
        }
        Ok(ExportIndices(indices.try_into().expect("one index per export")))
    }

    fn get(&self, export: Export) -> Option<&ComponentExportIndex> {
        self.0[export as usize].as_ref()
    }
}

/// The contracts this host implements, newest first: each serves the older patch releases of its
/// line (component-model semver), never a newer one.
pub fn host_contracts() -> Vec<Version> {
    vec![v0_2_0::CONTRACT, v0_1_2::CONTRACT]
}

/// Which of the host's lines runs a plugin built against `plugin`, if any.
fn line_of(plugin: &Version) -> Option<Line> {
    let host = contract::serving(&host_contracts(), plugin)?;
    Some(if host == v0_2_0::CONTRACT { Line::V0_2 } else { Line::V0_1 })
}

/// Which compiler a load may use when the cache does not have the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compile {
    /// The baseline compiler, if the platform has it: fast to load, to be replaced.
    BaselineFirst,
    /// Cranelift.
    Optimized,
}

/// Checks, compiles and typechecks a component its source verified, then asks the plugin who it
/// is. Nothing here touches the active version.
pub(crate) async fn load(
    rt: &Arc<PluginRuntime>,
    settings: &PluginSettings,
    component: Verified,
    compile: Compile,
) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    let path = PathBuf::from(&component.provenance.pinned);
    let mut loaded = load_bytes(rt, settings, &path, component.bytes, started, compile).await?;
    loaded.report.source = Some(component.provenance);
    Ok(loaded)
}

/// `load` of bytes already read, e.g. the optimized build of a baseline version's bytes.
pub(crate) async fn load_bytes(
    rt: &Arc<PluginRuntime>,
    settings: &PluginSettings,
    path: &Path,
    bytes: Arc<[u8]>,
    started: Instant,
    compile: Compile,
) -> Result<Loaded, LoadError> {
    let path = path.to_path_buf();
    // The contract version is read from the bytes before anything is compiled or instantiated,
    // so an incompatible plugin is refused with both versions named, not with a link error.
    let plugin_contract = match contract::read(&bytes) {
        Contract::Version(v) => v,
        Contract::NotAComponent(reason) => return Err(LoadError::NotAComponent { path, reason }),
        Contract::NoProviderExports(reason) => return Err(LoadError::NotAProvider { path, reason }),
    };
    let Some(line) = line_of(&plugin_contract) else {
        let host = host_contracts();
        return Err(LoadError::IncompatibleContract {
            path,
            plugin_contract: plugin_contract.to_string(),
            host_contract: host[0].to_string(),
            host_contract_range: contract::accepted(&host),
        });
    };

    let allow = Allowlist::parse(&settings.allowed_urls).map_err(LoadError::Settings)?;
    settings.egress.validate().map_err(LoadError::Settings)?;
    let egress = Arc::new(
        Egress::new(allow, settings.limits.call_timeout(), settings.limits.memory_bytes())
            .map_err(LoadError::Settings)?,
    );

    let size_bytes = bytes.len();
    let engine = rt.optimizing.engine.clone();
    let baseline = match compile {
        Compile::BaselineFirst => rt.baseline.as_ref().map(|tier| tier.engine.clone()),
        Compile::Optimized => None,
    };
    let cache_dir = settings.effective_cache_dir();
    let source = bytes.clone();
    let compiled = tokio::task::spawn_blocking(move || {
        cache::load_or_compile(&engine, baseline.as_ref(), &source, cache_dir.as_deref())
    })
    .await
    .map_err(|e| LoadError::Runtime(format!("compile task: {e}")))?
    .map_err(|message| LoadError::Compile { path: path.clone(), message })?;
    let (tier, baseline_source) = match compiled.origin {
        Origin::Baseline => (rt.baseline.as_ref().expect("baseline builds come from the baseline tier"), Some(bytes)),
        Origin::Compiled | Origin::Cache => (&rt.optimizing, None),
    };

    let typecheck = |e: wasmtime::Error| LoadError::Typecheck {
        path: path.clone(),
        contract: plugin_contract.to_string(),
        message: format!("{e:#}"),
    };
    let instance_pre = tier.linker.instantiate_pre(&compiled.component).map_err(typecheck)?;
    let pre = match line {
        Line::V0_1 => Bindings::V0_1(v0_1_2::ProviderPre::new(instance_pre).map_err(typecheck)?),
        Line::V0_2 => Bindings::V0_2(v0_2_0::ProviderPre::new(instance_pre).map_err(typecheck)?),
    };
    let exports = ExportIndices::lookup(&compiled.component, line).map_err(|e| typecheck(wasmtime::Error::msg(e)))?;

    let mut loaded = Loaded {
        info: PluginInfo {
            name: path.display().to_string(),
            version: "?".into(),
            contract_version: plugin_contract.to_string(),
            description: String::new(),
        },
        report: LoadReport {
            path: path.clone(),
            sha256: compiled.sha256,
            size_bytes,
            contract: plugin_contract.to_string(),
            origin: compiled.origin,
            compile_ms: compiled.took.as_secs_f64() * 1e3,
            total_ms: 0.0,
            source: None,
        },
        identity: Arc::new(Identity { name: path.display().to_string(), version: "?".into() }),
        engine: tier.engine.clone(),
        baseline_source,
        pre,
        exports,
        // `info` must not call imports; a private store keeps a misbehaving one harmless.
        kv: Arc::new(KvStore::new(0)),
        counters: Arc::default(),
        egress,
        stores: rt.stores().clone(),
        limits: settings.limits.clone(),
    };
    loaded.typecheck_exports().await.map_err(typecheck)?;
    let info = loaded.info().await.map_err(|source| LoadError::Info { path: path.clone(), source })?;
    if info.contract_version != plugin_contract.to_string() {
        tracing::warn!(
            plugin = %info.name, version = %info.version, declared = %info.contract_version,
            exported = %plugin_contract,
            "plugin declares a contract version different from the one its exports carry; trusting the exports"
        );
    }
    loaded.identity = Arc::new(Identity { name: info.name.clone(), version: info.version.clone() });
    loaded.kv = rt.kv_for(&info.name, settings.limits.kv_max_bytes);
    loaded.counters = rt.counters_for(&info.name);
    if let Some(budget) = rt.budget_for(&info.name, &settings.egress) {
        loaded.egress = Arc::new(Egress { budget: Some(budget), ..(*loaded.egress).clone() });
    }
    loaded.info = info;
    loaded.report.total_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(loaded)
}

/// Epoch ticks a guest runs between yields to the async executor (and deadline checks).
const YIELD_SLICE_TICKS: u64 = 2;

/// Which limit stopped a call, read from the store after the fact.
struct Verdict {
    memory_exceeded: bool,
    cpu_exceeded: bool,
}

impl Loaded {
    /// A fresh store for one call: limits armed, nothing shared with any other call but `kv`
    /// (and `store`, for calls about `node`).
    fn new_store(&self, node: Option<&str>) -> Store<HostState> {
        let cpu = self.limits.cpu_deadline();
        let state = HostState::new(
            self.identity.clone(),
            self.kv.clone(),
            self.counters.clone(),
            self.egress.clone(),
            StoreScope { stores: self.stores.clone(), node: node.map(str::to_owned) },
            self.limits.memory_bytes(),
            cpu,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        // The first check comes after one slice, not after the whole budget, so the guest yields
        // to tokio regularly from the start.
        store.set_epoch_deadline(YIELD_SLICE_TICKS);
        // The deadline is checked against guest time (wall time minus host I/O and yields), so a slow but
        // legitimate HTTP exchange does not count as CPU. Between checks the guest yields to tokio,
        // so a spinning plugin never starves the daemon's other tasks.
        store.epoch_deadline_callback(|mut ctx| {
            let guard = &mut ctx.data_mut().guard;
            let used = guard.guest_time();
            if used >= guard.cpu_deadline {
                guard.cpu_exceeded = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            let left = runtime::ticks(guard.cpu_deadline - used).min(YIELD_SLICE_TICKS);
            let yielded = guard.yielded_nanos.clone();
            Ok(UpdateDeadline::YieldCustom(
                left,
                Box::pin(async move {
                    let since = Instant::now();
                    tokio::task::yield_now().await;
                    yielded.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }),
            ))
        });
        store
    }

    fn verdict(store: &Store<HostState>) -> Verdict {
        let g = &store.data().guard;
        Verdict { memory_exceeded: g.memory_exceeded, cpu_exceeded: g.cpu_exceeded }
    }

    /// Turns a wasmtime failure into the typed error naming the limit that was hit.
    fn classify(&self, export: Export, error: wasmtime::Error, verdict: Verdict, instantiating: bool) -> CallError {
        let (plugin, version) = (self.identity.name.clone(), self.identity.version.clone());
        if verdict.memory_exceeded {
            return CallError::MemoryExceeded { plugin, version, export, limit_mib: self.limits.memory_mib };
        }
        if verdict.cpu_exceeded || matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return CallError::CpuDeadline { plugin, version, export, deadline_ms: self.limits.cpu_deadline_ms };
        }
        let message = match error.downcast_ref::<Trap>() {
            // The trap kind is what an author needs first; the backtrace follows.
            Some(trap) => format!("{trap}; {}", first_line_backtrace(&error)),
            None => format!("{error:#}"),
        };
        if instantiating {
            CallError::Instantiate { plugin, version, export, message }
        } else {
            CallError::Trap { plugin, version, export, message }
        }
    }

    /// Typechecks every export against the host's bindings, once per version: the generated
    /// bindings do so when they instantiate. After this, `call` may skip the check (see there).
    async fn typecheck_exports(&self) -> wasmtime::Result<()> {
        let mut store = self.new_store(None);
        match &self.pre {
            Bindings::V0_1(pre) => {
                let _: v0_1_2::Provider = pre.instantiate_async(&mut store).await?;
            }
            Bindings::V0_2(pre) => {
                let _: v0_2_0::Provider = pre.instantiate_async(&mut store).await?;
            }
        }
        Ok(())
    }

    /// The contract line the plugin speaks.
    pub(crate) fn line(&self) -> Line {
        match self.pre {
            Bindings::V0_1(_) => Line::V0_1,
            Bindings::V0_2(_) => Line::V0_2,
        }
    }

    /// The `unsupported` answer for an export the plugin's contract does not have.
    pub(crate) fn lacks(&self, export: Export) -> CallError {
        let contract = &self.report.contract;
        CallError::Unsupported(format!(
            "plugin {} version {}: {export} is not in contract vk:provider@{contract}, which the plugin was built against (it came with {})",
            self.identity.name,
            self.identity.version,
            export.since().map_or_else(|| "?".into(), |v| v.to_string()),
        ))
    }

    /// Runs one call: a fresh instance, the export, the wall-clock bound, the error mapping.
    /// `invoke` receives the export's function and the store, performs the call and hands the
    /// store back (by value, which keeps borrowck simple for callers' borrowed arguments).
    ///
    /// The function comes untyped: `invoke` types a 0.2 export with `TypedFunc::new_unchecked`,
    /// which is sound because `typecheck_exports` checked every export against the same Rust
    /// types when this version was loaded. Typing each call's function again (what the generated
    /// `instantiate` does for all the exports) cost about a tenth of a call. A 0.1 export is typed
    /// checked (`Func::typed`): the host passes it 0.2 arguments of the same shapes.
    ///
    /// The plugin's `unsupported` answer comes back as `CallError::Unsupported`.
    pub(crate) async fn call<T, F, Fut>(&self, export: Export, node: Option<&str>, invoke: F) -> Result<T, CallError>
    where
        F: FnOnce(Func, Store<HostState>) -> Fut,
        Fut: Future<Output = (Store<HostState>, wasmtime::Result<Result<T, ProviderError>>)>,
    {
        let timeout = self.limits.call_timeout();
        let Some(index) = self.exports.get(export) else {
            return Err(self.lacks(export));
        };
        let work = async {
            let mut store = self.new_store(node);
            let instance_pre = match &self.pre {
                Bindings::V0_1(pre) => pre.instance_pre(),
                Bindings::V0_2(pre) => pre.instance_pre(),
            };
            let instance = match instance_pre.instantiate_async(&mut store).await {
                Ok(instance) => instance,
                Err(e) => {
                    let verdict = Self::verdict(&store);
                    return Err(self.classify(export, e, verdict, true));
                }
            };
            let func = instance.get_func(&mut store, index).expect("export indices are looked up at load");
            let (store, outcome) = invoke(func, store).await;
            match outcome {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(ProviderError::Unsupported(why))) => Err(CallError::Unsupported(why)),
                Ok(Err(provider)) => Err(CallError::Provider(provider)),
                Err(e) => {
                    let verdict = Self::verdict(&store);
                    Err(self.classify(export, e, verdict, false))
                }
            }
        };
        // Dropping the future on timeout drops the store and its instance with it.
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                plugin: self.identity.name.clone(),
                version: self.identity.version.clone(),
                export,
                timeout_ms: self.limits.call_timeout_ms,
            }),
        }
    }

    pub(crate) async fn info(&self) -> Result<PluginInfo, CallError> {
        match self.line() {
            Line::V0_2 => {
                self.call(Export::Info, None, |f, mut s| async move {
                    // SAFETY: the types of `metadata.info` in the bindings; see `call`.
                    let f = unsafe { TypedFunc::<(), (PluginInfo,)>::new_unchecked(f) };
                    let r = f.call_async(&mut s, ()).await.map(|(info,)| Ok(info));
                    (s, r)
                })
                .await
            }
            Line::V0_1 => {
                self.call(Export::Info, None, |f, mut s| async move {
                    // SAFETY: the types of `metadata.info` in the 0.1.2 bindings; see `call`.
                    let f = unsafe { TypedFunc::<(), (v0_1_2::PluginInfo,)>::new_unchecked(f) };
                    let r = f.call_async(&mut s, ()).await.map(|(info,)| Ok(v0_1_2::plugin_info(info)));
                    (s, r)
                })
                .await
            }
        }
    }

    pub(crate) async fn validate_config(&self, node: &str, config: &str) -> Result<String, CallError> {
        match self.line() {
            Line::V0_2 => {
                self.call(Export::ValidateConfig, None, |f, mut s| async move {
                    // SAFETY: the types of `metadata.validate-config` in the bindings; see `call`.
                    let f = unsafe { TypedFunc::<(&str, &str), (Result<String, ProviderError>,)>::new_unchecked(f) };
                    let r = f.call_async(&mut s, (node, config)).await.map(|(r,)| r);
                    (s, r)
                })
                .await
            }
            Line::V0_1 => {
                self.call(Export::ValidateConfig, None, |f, mut s| async move {
                    // SAFETY: the types of `metadata.validate-config` in the 0.1.2 bindings.
                    let f = unsafe {
                        TypedFunc::<(&str, &str), (Result<String, v0_1_2::ProviderError>,)>::new_unchecked(f)
                    };
                    let r = f.call_async(&mut s, (node, config)).await.map(|(r,)| v0_1_2::result(r, |c| c));
                    (s, r)
                })
                .await
            }
        }
    }

    /// Validates every smoke config in throwaway stores; the first rejection refuses the load.
    pub(crate) async fn smoke_test(&self, configs: &[(String, String)]) -> Result<(), LoadError> {
        for (node, config) in configs {
            self.validate_config(node, config).await.map_err(|source| LoadError::ConfigRejected {
                plugin: self.info.name.clone(),
                version: self.info.version.clone(),
                node: node.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Whether the host may connect to a stream target the plugin returned: its URL is in the
    /// allowlist and it asks for no header the host must own (`Host` would reach another virtual
    /// host behind the granted address). The target comes back with its URL as the allowlist
    /// parsed it, so the client that connects (tungstenite parses URLs its own way) goes exactly
    /// where was vetted.
    pub(crate) fn vet_stream_target(
        &self,
        export: Export,
        mut target: StreamTarget,
    ) -> Result<StreamTarget, CallError> {
        let parsed = reqwest::Url::parse(&target.url).ok().filter(|url| self.egress.allow.allows(url));
        let Some(parsed) = parsed else {
            return Err(CallError::StreamTargetDenied {
                plugin: self.identity.name.clone(),
                version: self.identity.version.clone(),
                export,
                url: target.url,
            });
        };
        target.url = parsed.into();
        // A tcp target carries bytes only: no header has anywhere to go.
        let tcp = target.protocol == crate::plugin::v0_2_0::StreamProtocol::Tcp;
        if let Some(kv) = target.headers.iter().find(|kv| tcp || refused_header(&kv.key)) {
            return Err(CallError::StreamHeaderRefused {
                plugin: self.identity.name.clone(),
                version: self.identity.version.clone(),
                export,
                header: kv.key.clone(),
            });
        }
        Ok(target)
    }
}

fn first_line_backtrace(error: &wasmtime::Error) -> String {
    // wasmtime renders "error while executing at wasm backtrace:\n  0: ...\n  1: ..."; the first
    // few frames name the guest function that failed.
    let text = format!("{error:?}");
    let frames: Vec<&str> =
        text.lines().map(str::trim).filter(|l| l.len() > 2 && l.as_bytes()[0].is_ascii_digit()).take(4).collect();
    if frames.is_empty() { "no backtrace".into() } else { format!("backtrace: {}", frames.join(" | ")) }
}
