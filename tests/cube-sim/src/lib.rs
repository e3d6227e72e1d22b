//! cube-sim: a stand-in for the Cube serverless container service (and the UNet/UDisk calls it
//! needs) that speaks the real wire protocol, for tests, demos and benchmarks.

pub mod actions;
pub mod admin;
pub mod app;
pub mod bench;
pub mod client;
pub mod config;
pub mod error;
pub mod exec;
pub mod gateway;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod params;
pub mod podspec;
pub mod program;
pub mod provisioner;
pub mod server;
pub mod signature;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::ApiClient;
pub use config::{Config, KeyPair};

use app::{LiveFaults, Sim};

/// Starts simulators in-process.
pub struct Simulator;

/// A running simulator: its address, its records, and the way to stop it.
pub struct SimHandle {
    addr: SocketAddr,
    url: String,
    sim: Arc<Sim>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    accept: JoinHandle<()>,
}

impl Simulator {
    /// Binds (loopback only), loads the state file if any, and serves until `shutdown`.
    pub async fn start(config: Config) -> anyhow::Result<SimHandle> {
        if !config.listen.ip().is_loopback() {
            anyhow::bail!("cube-sim listens on loopback only, not {}", config.listen);
        }
        let pod_cidr = config.network.pool().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let state = match &config.state_file {
            Some(path) => state::State::load(path).with_context(|| format!("loading state from {}", path.display()))?,
            None => state::State::default(),
        };
        let shutdown = CancellationToken::new();
        let sim = Arc::new(Sim {
            faults: Mutex::new(LiveFaults::new(config.faults.clone())),
            cfg: config,
            state: Mutex::new(state),
            base_url: url.clone(),
            shutdown: shutdown.clone(),
            saving: Mutex::new(()),
            pod_cidr,
            servers: Default::default(),
        });
        // Instances kept from an earlier run serve again.
        let live: Vec<state::Instance> = sim.state.lock().instances.values().filter(|i| i.live()).cloned().collect();
        for inst in &live {
            sim.serve(inst);
        }
        let tracker = TaskTracker::new();
        let accept = tokio::spawn(server::serve(listener, app::router(sim.clone()), shutdown.clone(), tracker.clone()));
        Ok(SimHandle { addr, url, sim, shutdown, tracker, accept })
    }
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`: the API endpoint (base_url for SDKs).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Direct access to the records, for in-process tests.
    pub fn sim(&self) -> &Arc<Sim> {
        &self.sim
    }

    /// Stops accepting, closes every connection and stream, saves the state file.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.accept.await;
        self.tracker.close();
        self.tracker.wait().await;
        self.sim.persist();
    }
}
