//! The daemon: loads the plugin, starts one runner per configured node, the plugin file watcher,
//! the rollout of new plugin versions and the admin endpoint (Prometheus `/metrics`, plugin reload); stops them all on shutdown,
//! leaving instances running.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::node::{self, Shared};
use crate::plugin::{Plugin, PluginRuntime};

/// This replica's identity for leader election.
pub fn identity(config: &DaemonConfig) -> String {
    config.ha.identity.clone().or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Loads the plugin with every node's config as its smoke test.
pub async fn load_plugin(config: &DaemonConfig) -> anyhow::Result<Arc<Plugin>> {
    load_plugin_with(config, PluginRuntime::new()?).await
}

async fn load_plugin_with(config: &DaemonConfig, rt: Arc<PluginRuntime>) -> anyhow::Result<Arc<Plugin>> {
    let mut smoke = Vec::new();
    for n in &config.nodes {
        smoke.push((n.id.clone(), n.provider_json()?.to_string()));
    }
    Ok(Plugin::load(rt, config.plugin.clone(), smoke).await?)
}

/// A running daemon: its node runners, plugin watcher and admin endpoint, owned by one token.
pub struct Daemon {
    pub shared: Arc<Shared>,
    /// Where the admin endpoint listens, if enabled.
    pub admin_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Loads the plugin and starts everything; `runtime` lets several daemons in one process
    /// share a plugin runtime (and so the plugins' key-value stores).
    pub async fn start(config: DaemonConfig, runtime: Option<Arc<PluginRuntime>>) -> anyhow::Result<Daemon> {
        let base = crate::apiclient::bootstrap_config(config.kubeconfig.as_deref()).await?;
        // One budget of requests in flight for the daemon's own client and every node's pod lane.
        let api_in_flight = crate::apiclient::in_flight_budget(&config.api);
        let client = crate::apiclient::limited_within(base.clone(), &config.api, &api_in_flight)?;
        let rt = match runtime {
            Some(rt) => rt,
            None => PluginRuntime::new()?,
        };
        let plugin = load_plugin_with(&config, rt).await?;
        let info = plugin.info();
        tracing::info!(plugin = %info.name, version = %info.version, contract = %info.contract_version, "provider plugin loaded");
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let mut tasks = vec![plugin.spawn_watcher(shutdown.clone())];
        tasks.extend(plugin.spawn_rollout(shutdown.clone()));
        let (admin_addr, admin) = start_admin(&config, plugin.clone(), metrics.clone(), shutdown.clone()).await?;
        tasks.extend(admin);
        let shared = Arc::new(Shared {
            client,
            base,
            api_in_flight,
            plugin,
            identity: identity(&config),
            metrics,
            config: config.clone(),
            node_identities: Default::default(),
        });
        for n in &config.nodes {
            tasks.push(tokio::spawn(node::run(shared.clone(), n.clone(), shutdown.clone())));
        }
        Ok(Daemon { shared, admin_addr, shutdown, tasks })
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.shared.plugin
    }

    /// Graceful stop: no new work, in-flight syncs finish, election leases are handed over;
    /// instances keep running.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("stopped; instances keep running");
    }

    /// Stops everything at once without handing anything over, as a crash would (the tasks a
    /// node runner spawned are aborted with it).
    pub fn abort(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let daemon = Daemon::start(config, None).await?;
    shutdown.cancelled().await;
    daemon.stop().await;
    Ok(())
}

async fn start_admin(
    config: &DaemonConfig,
    plugin: Arc<Plugin>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<(Option<std::net::SocketAddr>, Option<tokio::task::JoinHandle<()>>)> {
    if config.admin.listen.is_empty() {
        return Ok((None, None));
    }
    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", config.admin.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin endpoint (/metrics, /plugin/reload)");
    let token = config.admin.token_file.as_deref().map(crate::plugin::AdminToken::from_file).transpose()?;
    let metrics_plugin = plugin.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                let p = metrics_plugin.clone();
                async move {
                    m.set_provider_calls(
                        p.stats()
                            .snapshot()
                            .calls
                            .into_iter()
                            .map(|c| (c.export.to_string(), c.outcome.to_string(), c.count)),
                    );
                    m.set_plugin_counters(&p.info().name, p.counters());
                    if let Some(stats) = p.budget_stats() {
                        m.set_egress_budget(&p.info().name, stats.waited, stats.wait_seconds, stats.refused);
                    }
                    m.set_signature_refusals(p.stats().snapshot().signature_refusals);
                    m.render()
                }
            }),
        )
        .merge(crate::plugin::admin_router(plugin, token));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    });
    Ok((Some(addr), Some(task)))
}
