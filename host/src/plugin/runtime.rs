//! The process-wide part of the plugin runtime: one wasmtime engine, its epoch ticker, the linker
//! with the host imports, the per-plugin-name `kv` stores that outlive plugin versions, and the
//! registry of the durable node records the `store` import reaches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use crate::plugin::error::LoadError;
use crate::plugin::imports::HostState;
use crate::plugin::imports::budget::{Budget, BudgetSettings, BudgetStats};
use crate::plugin::imports::kv::KvStore;
use crate::plugin::imports::metrics::PluginCounters;
use crate::plugin::stores::Stores;
use crate::plugin::{v0_1_2, v0_2_0};

/// The epoch period: the granularity of CPU deadlines and of the guest's yields to tokio.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// One compiler's engine and the linker of host imports made for it.
pub(crate) struct Tier {
    pub engine: Engine,
    pub linker: Linker<HostState>,
}

/// Shared by every plugin (and every version of one) in the process.
///
/// Two tiers: Cranelift (`optimizing`) for the code that serves, and Winch (`baseline`), a
/// single-pass compiler about five times faster to compile (the Cube plugin: 0.14 s against
/// 0.7 s) whose code runs slower. A new file is compiled by the baseline first so a reload swaps
/// in fast; the optimized build replaces it in the background (see `Plugin`).
pub struct PluginRuntime {
    pub(crate) optimizing: Tier,
    pub(crate) baseline: Option<Tier>,
    kv: Mutex<HashMap<String, Arc<KvStore>>>,
    counters: Mutex<HashMap<String, Arc<PluginCounters>>>,
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    /// The durable stores of the nodes this process acts for, by Node name.
    stores: Arc<Stores>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl PluginRuntime {
    pub fn new() -> Result<Arc<Self>, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // CPU deadlines: the store's deadline is counted in ticks of the thread below.
        config.epoch_interruption(true);
        // The contract has no component-model-async functions; the concurrent machinery would
        // only add cost to every call.
        config.concurrency_support(false);
        let optimizing = Tier::new(config.clone())?;
        let mut winch = config;
        winch.strategy(Strategy::Winch);
        let baseline = match Tier::new(winch) {
            Ok(tier) => Some(tier),
            Err(e) => {
                tracing::info!(error = %e, "no baseline compiler on this platform; every load compiles with Cranelift");
                None
            }
        };

        let stop = Arc::new(AtomicBool::new(false));
        // The ticker holds only weak engines so it never keeps an engine alive by itself.
        let weak: Vec<_> = std::iter::once(&optimizing).chain(&baseline).map(|t| t.engine.weak()).collect();
        let stop_flag = stop.clone();
        let ticker = std::thread::Builder::new()
            .name("vkhost-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &weak {
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => return,
                        }
                    }
                }
            })
            .map_err(|e| LoadError::Runtime(format!("starting the epoch ticker: {e}")))?;

        Ok(Arc::new(PluginRuntime {
            optimizing,
            baseline,
            kv: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            stores: Arc::default(),
            stop,
            ticker: Mutex::new(Some(ticker)),
        }))
    }

    /// The `kv` store of a plugin name, created on first use with `max_bytes`; every version of
    /// the plugin shares it (the cap of the first load stays in force).
    pub(crate) fn kv_for(&self, plugin: &str, max_bytes: u64) -> Arc<KvStore> {
        self.kv.lock().unwrap().entry(plugin.to_owned()).or_insert_with(|| Arc::new(KvStore::new(max_bytes))).clone()
    }

    /// The `metrics` counters of a plugin name; every version of the plugin adds to them.
    pub(crate) fn counters_for(&self, plugin: &str) -> Arc<PluginCounters> {
        self.counters.lock().unwrap().entry(plugin.to_owned()).or_default().clone()
    }

    /// The cloud-API budget of a plugin name, made on first use from `settings` (`None`: no
    /// budget); every version of the plugin spends from it, so a reload does not refill it.
    pub(crate) fn budget_for(&self, plugin: &str, settings: &BudgetSettings) -> Option<Arc<Budget>> {
        let mut budgets = self.budgets.lock().unwrap();
        if let Some(b) = budgets.get(plugin) {
            return Some(b.clone());
        }
        let budget = Arc::new(Budget::new(settings)?);
        budgets.insert(plugin.to_owned(), budget.clone());
        Some(budget)
    }

    /// What the budget of a plugin name has done, if it has one.
    pub fn budget_stats(&self, plugin: &str) -> Option<BudgetStats> {
        self.budgets.lock().unwrap().get(plugin).map(|b| b.stats())
    }

    /// The durable node stores the plugins' `store` import reaches.
    pub fn stores(&self) -> &Arc<Stores> {
        &self.stores
    }

    /// The engine of the optimizing tier, the one the disk cache holds artefacts of.
    pub fn engine(&self) -> &Engine {
        &self.optimizing.engine
    }
}

impl Tier {
    fn new(config: Config) -> Result<Self, LoadError> {
        // Every call instantiates afresh, so instances come from a pool of pre-reserved slots
        // (reused with a cheap reset) instead of an mmap/munmap per call. The pool needs a large
        // virtual address space; where it cannot be reserved, fall back to on-demand allocation.
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config()));
        let engine = match Engine::new(&pooled) {
            Ok(engine) => engine,
            Err(e) => {
                tracing::warn!(error = %e, "instance pool unavailable; allocating instances on demand");
                Engine::new(&config).map_err(|e| LoadError::Runtime(format!("creating the engine: {e:#}")))?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Runtime(format!("linking WASI: {e:#}")))?;
        // One linker serves both contract lines: their imports have different names
        // (`vk:provider/http@0.2.0`, `@0.1.2`), and the 0.1 ones delegate to the 0.2 ones.
        v0_2_0::Provider::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| LoadError::Runtime(format!("linking the vk:provider@0.2 imports: {e:#}")))?;
        v0_1_2::Provider::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| LoadError::Runtime(format!("linking the vk:provider@0.1 imports: {e:#}")))?;
        Ok(Tier { engine, linker })
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.ticker.lock().unwrap().take() {
            let _ = handle.join();
        }
    }
}

/// Calls in flight at once, across all plugins and versions; a call beyond it fails to
/// instantiate (a retryable error) rather than exhausting memory.
pub const MAX_CONCURRENT_CALLS: u32 = 256;

/// Bytes of each linear memory kept resident (reset in place) between calls.
const KEEP_RESIDENT: usize = 2 << 20;
/// Idle pool slots kept warm (with their resident pages) for reuse.
const WARM_SLOTS: u32 = 16;

fn pool_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // A Rust wasm32-wasip2 component has a handful of core instances and one memory; the
    // per-plugin memory cap is enforced by the store limiter, below this slot size.
    pool.total_component_instances(MAX_CONCURRENT_CALLS)
        .total_core_instances(MAX_CONCURRENT_CALLS * 8)
        .max_core_instances_per_component(16)
        .total_memories(MAX_CONCURRENT_CALLS * 2)
        .max_memories_per_component(4)
        .total_tables(MAX_CONCURRENT_CALLS * 4)
        .max_tables_per_component(8)
        .total_stacks(MAX_CONCURRENT_CALLS)
        .max_memory_size(4 << 30)
        // A call touches a few hundred KiB of guest memory (stack, heap for the pod JSON). Reset
        // on reuse with memset of just the dirty pages (found by the PAGEMAP_SCAN ioctl where the
        // kernel has it) instead of madvise: no syscall-heavy decommit, no TLB shootdown, and no
        // page faults on the next call. Slots stay affine to a plugin version, so the warm set is
        // small; it is capped to bound the resident memory it costs.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .max_unused_warm_slots(WARM_SLOTS);
    pool
}

/// Epoch ticks covering `d`, at least one.
pub(crate) fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}
