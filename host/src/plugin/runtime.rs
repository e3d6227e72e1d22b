//! The process-wide part of the plugin runtime: one wasmtime engine, its epoch ticker, the linker
//! with the host imports, and the per-plugin-name `kv` stores that outlive plugin versions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

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
        let engine = Engine::new(&config).map_err(|e| LoadError::Runtime(format!("creating the engine: {e:#}")))?;

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

/// Epoch ticks covering `d`, at least one.
pub(crate) fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}
