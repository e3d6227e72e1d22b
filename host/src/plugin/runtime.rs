//! The process-wide part of the plugin runtime: one wasmtime engine, its epoch ticker, the linker
//! with the host imports, and the per-plugin-name `kv` stores that outlive plugin versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::plugin::error::LoadError;
use crate::plugin::imports::HostState;
use crate::plugin::imports::kv::KvStore;
use crate::plugin::since_v0_1_0;

/// The epoch period: the granularity of CPU deadlines and of the guest's yields to tokio.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Shared by every plugin (and every version of one) in the process.
pub struct PluginRuntime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    kv: Mutex<HashMap<String, Arc<KvStore>>>,
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
        since_v0_1_0::Provider::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|e| LoadError::Runtime(format!("linking the vk:provider imports: {e:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        // The ticker holds only a weak engine so it never keeps the engine alive by itself.
        let weak = engine.weak();
        let stop_flag = stop.clone();
        let ticker = std::thread::Builder::new()
            .name("vkhost-epoch".into())
            .spawn(move || {
                while !stop_flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Runtime(format!("starting the epoch ticker: {e}")))?;

        Ok(Arc::new(PluginRuntime {
            engine,
            linker,
            kv: Mutex::new(HashMap::new()),
            stop,
            ticker: Mutex::new(Some(ticker)),
        }))
    }

    /// The `kv` store of a plugin name, created on first use with `max_bytes`; every version of
    /// the plugin shares it (the cap of the first load stays in force).
    pub(crate) fn kv_for(&self, plugin: &str, max_bytes: u64) -> Arc<KvStore> {
        self.kv.lock().unwrap().entry(plugin.to_owned()).or_insert_with(|| Arc::new(KvStore::new(max_bytes))).clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
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
        .max_memory_size(4 << 30);
    pool
}

/// Epoch ticks covering `d`, at least one.
pub(crate) fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}
