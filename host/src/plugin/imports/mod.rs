//! What a plugin's guest code can reach: the state of one call's store and the host side of the
//! contract's imports (`http`, `log`, `kv`, `metrics`, `store`), plus WASI with nothing granted;
//! the cloud-API budget `http` spends (`budget`).

pub mod budget;
pub mod http;
pub mod kv;
mod log;
pub mod metrics;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::http::{Egress, Refusal};
use self::kv::KvStore;
use self::metrics::PluginCounters;
use crate::fence::{Fence, Target};
#[cfg(test)]
use crate::plugin::v0_2_0::StoreError;
use crate::plugin::v0_2_0::vk::provider as wit;
use crate::plugin::v0_2_0::{HttpError, HttpRequest, HttpResponse, KeyValue, LogLevel};

/// What the `store` import of a call reaches: the durable node records, and the node of the
/// call's context (none: no `store`).
pub(crate) struct StoreScope {
    pub stores: Arc<crate::plugin::Stores>,
    pub node: Option<String>,
}

/// Who is calling, for logs and error messages.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub version: String,
}

/// The data of one store, i.e. of one call: built fresh, dropped after the call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) identity: Arc<Identity>,
    kv: Arc<KvStore>,
    counters: Arc<PluginCounters>,
    egress: Arc<Egress>,
    store: StoreScope,
    /// The fence of the node the call is made for, when this daemon acts for it: no request
    /// leaves once it lapsed.
    pub(crate) fence: Option<Fence>,
    /// The call is a `plan`, which must have no side effects: `http.send` is denied and `store`
    /// writes are unavailable.
    pub(crate) dry_run: bool,
    /// Log records this call has written (see `log::MAX_RECORDS_PER_CALL`).
    logged: u32,
    pub(crate) guard: Guard,
}

/// Accounting of the limits the store enforces, read back to name the limit a failed call hit.
pub(crate) struct Guard {
    limits: StoreLimits,
    memory_cap: usize,
    pub memory_exceeded: bool,
    pub cpu_exceeded: bool,
    started: Instant,
    /// Wall time spent in host I/O, which does not count against the CPU deadline.
    host_io: Duration,
    /// Nanoseconds spent yielded to the executor (other tasks ran), likewise not the guest's.
    /// Shared with the yield futures, which cannot borrow the store.
    pub yielded_nanos: Arc<AtomicU64>,
    pub cpu_deadline: Duration,
}

impl Guard {
    /// Guest time used so far: wall time since the call began minus host I/O and yields.
    pub fn guest_time(&self) -> Duration {
        let yielded = Duration::from_nanos(self.yielded_nanos.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(self.host_io).saturating_sub(yielded)
    }
}

impl HostState {
    pub(crate) fn new(
        identity: Arc<Identity>,
        kv: Arc<KvStore>,
        counters: Arc<PluginCounters>,
        egress: Arc<Egress>,
        store: StoreScope,
        memory_cap: usize,
        cpu_deadline: Duration,
    ) -> Self {
        // wasm32-wasip2 guests import WASI (clocks, random, and stdio through std) even when they
        // never touch it; an empty context satisfies the imports while granting nothing: no
        // preopened directories, no env, no args, no sockets, no name lookup.
        let wasi = WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            identity,
            kv,
            counters,
            egress,
            store,
            fence: None,
            dry_run: false,
            logged: 0,
            guard: Guard {
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory_cap)
                    .instances(64)
                    .tables(64)
                    .memories(8)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_cap,
                memory_exceeded: false,
                cpu_exceeded: false,
                started: Instant::now(),
                host_io: Duration::ZERO,
                yielded_nanos: Arc::new(AtomicU64::new(0)),
                cpu_deadline,
            },
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Delegates to wasmtime's `StoreLimits` and remembers that the memory cap was what failed, so
/// the resulting trap becomes `CallError::MemoryExceeded`.
impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let verdict = self.guard.limits.memory_growing(current, desired, maximum);
        if desired > self.guard.memory_cap && !matches!(verdict, Ok(true)) {
            self.guard.memory_exceeded = true;
        }
        verdict
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.guard.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.guard.limits.instances()
    }
    fn tables(&self) -> usize {
        self.guard.limits.tables()
    }
    fn memories(&self) -> usize {
        self.guard.limits.memories()
    }
}

impl wit::types::Host for HostState {}

impl wit::http::Host for HostState {
    async fn send(&mut self, req: HttpRequest) -> wasmtime::Result<Result<HttpResponse, HttpError>> {
        if self.dry_run {
            return Ok(Err(HttpError::Denied(format!(
                "{} {}: refused during `plan`, which has no side effects and sends nothing",
                req.method, req.url
            ))));
        }
        let began = Instant::now();
        let method = req.method.clone();
        // Checked last before the request is handed to the connection: see `fence`.
        let fenced = self.fence.as_ref().and_then(|f| f.check(Target::Cloud, &format!("{method} {}", req.url)).err());
        let result = match fenced {
            Some(lapsed) => Err(Refusal::Other(HttpError::Transport(lapsed.to_string()))),
            None => self.egress.send(req).await,
        };
        self.guard.host_io += began.elapsed();
        Ok(match result {
            Ok(resp) => Ok(resp),
            Err(Refusal::Denied(url)) => {
                tracing::warn!(
                    plugin = %self.identity.name,
                    version = %self.identity.version,
                    %method,
                    %url,
                    "plugin tried to reach a URL outside its allowed_urls; refused"
                );
                Err(HttpError::Denied(url))
            }
            Err(Refusal::Other(e)) => Err(e),
        })
    }
}

impl wit::log::Host for HostState {
    async fn emit(&mut self, level: LogLevel, message: String, fields: Vec<KeyValue>) -> wasmtime::Result<()> {
        log::emit(&self.identity, &mut self.logged, level, &message, &fields);
        Ok(())
    }
}

impl wit::kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.kv.get(&key))
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<bool> {
        Ok(self.kv.set(&key, value, ttl_ms.map(Duration::from_millis)))
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        Ok(self.kv.delete(&key))
    }
    async fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.kv.keys(&prefix))
    }
}

impl wit::metrics::Host for HostState {
    async fn counter_add(&mut self, name: String, labels: Vec<KeyValue>, delta: u64) -> wasmtime::Result<()> {
        self.counters.add(&self.identity, &name, &labels, delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use tokio_util::sync::CancellationToken;
    use wit::http::Host as _;

    use super::*;
    use crate::metrics::Metrics;
    use crate::plugin::imports::http::Allowlist;

    /// A stand-in cloud API counting the requests it receives.
    async fn cloud() -> (String, Arc<AtomicUsize>) {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { r#"{"RetCode":0}"# }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), seen)
    }

    fn call_state(url: &str, fence: Fence) -> HostState {
        let allow = Allowlist::parse(&[url.to_string()]).unwrap();
        let egress = Arc::new(Egress::new(allow, Duration::from_secs(5), 64 << 20).unwrap());
        let identity = Arc::new(Identity { name: "cube".into(), version: "1.0.0".into() });
        let mut state = HostState::new(
            identity,
            Arc::new(KvStore::new(1 << 20)),
            Arc::new(PluginCounters::default()),
            egress,
            StoreScope { stores: Arc::default(), node: None },
            64 << 20,
            Duration::from_secs(1),
        );
        state.fence = Some(fence);
        state
    }

    fn post(url: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![],
            body: br#"{"Action":"CreateCubePod"}"#.to_vec(),
            timeout_ms: 0,
        }
    }

    #[tokio::test]
    async fn during_plan_http_is_denied_and_store_writes_are_unavailable() {
        use wit::store::Host as _;
        let (url, seen) = cloud().await;
        let metrics = Arc::new(Metrics::new());
        let fence = Fence::new("vk-n1", Duration::from_secs(15), metrics);
        fence.arm(tokio::time::Instant::now(), CancellationToken::new());
        let mut state = call_state(&url, fence);
        state.dry_run = true;
        match state.send(post(&url)).await.unwrap() {
            Err(HttpError::Denied(why)) => {
                assert!(why.contains(&url) && why.contains("`plan`") && why.contains("no side effects"), "{why}")
            }
            other => panic!("expected denied, got {other:?}"),
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0, "a request left during plan");
        for refused in
            [state.set("k".into(), b"v".to_vec()).await.unwrap().err(), state.delete("k".into()).await.unwrap().err()]
        {
            assert!(matches!(&refused, Some(StoreError::Unavailable(m)) if m.contains("`plan`")), "{refused:?}");
        }
        // Reads stay allowed (nothing here to read).
        assert_eq!(state.get("k".into()).await.unwrap(), None);
        state.dry_run = false;
        assert_eq!(state.send(post(&url)).await.unwrap().unwrap().status, 200);
    }

    #[tokio::test]
    async fn a_lapsed_fence_refuses_a_plugin_request_before_it_reaches_the_cloud() {
        let (url, seen) = cloud().await;
        let metrics = Arc::new(Metrics::new());
        let fence = Fence::new("vk-n1", Duration::from_secs(15), metrics.clone());
        let term = CancellationToken::new();
        fence.arm(tokio::time::Instant::now(), term.clone());
        let mut state = call_state(&url, fence.clone());
        assert_eq!(state.send(post(&url)).await.unwrap().unwrap().status, 200);
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        fence.arm(tokio::time::Instant::now() - Duration::from_secs(13), term.clone());
        match state.send(post(&url)).await.unwrap() {
            Err(HttpError::Transport(why)) => assert!(why.starts_with("fenced: lease for node vk-n1 lapsed"), "{why}"),
            other => panic!("expected a transport error, got {other:?}"),
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the refused request reached the cloud");
        assert!(term.is_cancelled());
        assert!(metrics.render().contains(r#"vkhost_fenced_writes_total{node="vk-n1",target="cloud"} 1"#));
    }
}
