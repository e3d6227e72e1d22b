//! The daemon: loads the plugin, starts one runner per configured node, the plugin file watcher
//! and the admin endpoint (Prometheus `/metrics`, plugin reload); stops them all on shutdown,
//! leaving instances running.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::node::{self, Shared};
use crate::plugin::{Plugin, PluginRuntime};

/// This replica's identity for leader election.
pub fn identity(config: &DaemonConfig) -> String {
    config.ha.identity.clone().or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Loads the plugin with every node's config as its smoke test.
pub async fn load_plugin(config: &DaemonConfig) -> anyhow::Result<Arc<Plugin>> {
    let rt = PluginRuntime::new()?;
    let mut smoke = Vec::new();
    for n in &config.nodes {
        smoke.push((n.id.clone(), n.provider_json()?.to_string()));
    }
    Ok(Plugin::load(rt, config.plugin.clone(), smoke).await?)
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: DaemonConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = crate::apiclient::client(config.kubeconfig.as_deref(), &config.api).await?;
    let plugin = load_plugin(&config).await?;
    let info = plugin.info();
    tracing::info!(plugin = %info.name, version = %info.version, contract = %info.contract_version, "provider plugin loaded");
    let metrics = Arc::new(Metrics::new());
    let watcher = plugin.spawn_watcher(shutdown.clone());
    let admin = start_admin(&config, plugin.clone(), metrics.clone(), shutdown.clone()).await?;
    let shared = Arc::new(Shared { client, plugin, identity: identity(&config), metrics, config: config.clone() });
    let mut runners = Vec::new();
    for n in &config.nodes {
        runners.push(tokio::spawn(node::run(shared.clone(), n.clone(), shutdown.clone())));
    }
    for r in runners {
        let _ = r.await;
    }
    let _ = watcher.await;
    if let Some(a) = admin {
        let _ = a.await;
    }
    tracing::info!("stopped; instances keep running");
    Ok(())
}

async fn start_admin(
    config: &DaemonConfig,
    plugin: Arc<Plugin>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.admin.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", config.admin.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint (/metrics, /plugin/reload)");
    let metrics_plugin = plugin.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                let p = metrics_plugin.clone();
                async move {
                    m.set_provider_calls(p.stats().snapshot().calls.into_iter().map(|c| (c.export.to_string(), c.outcome.to_string(), c.count)));
                    m.render()
                }
            }),
        )
        .merge(crate::plugin::admin_router(plugin));
    Ok(Some(tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    })))
}
