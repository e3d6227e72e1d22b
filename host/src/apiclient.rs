//! The daemon's Kubernetes client: kubeconfig or in-cluster credentials, with a client-side rate
//! limit (a burst, then a steady rate) so a pod burst cannot flood the apiserver.

use std::path::Path;
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};

use crate::config::ApiLimits;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes credentials: set `kubeconfig` in the config or $KUBECONFIG, or run in a cluster ({0})")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Build(String),
}

/// A client for `kubeconfig` (or the inferred config), limited to `limits.burst` requests per
/// `burst / qps` seconds and `limits.max_in_flight` requests at once.
pub async fn client(kubeconfig: Option<&Path>, limits: &ApiLimits) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc_err = |message: String| ClientError::Kubeconfig { path: path.display().to_string(), message };
            let kc = Kubeconfig::read_from(path).map_err(|e| kc_err(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kc_err(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| ClientError::Infer(e.to_string()))?,
    };
    let window = Duration::from_secs_f64(limits.burst as f64 / limits.qps.max(1) as f64);
    let builder = ClientBuilder::try_from(config).map_err(|e| ClientError::Build(e.to_string()))?;
    Ok(builder
        .with_layer(&RateLimitLayer::new(limits.burst as u64, window))
        .with_layer(&ConcurrencyLimitLayer::new(limits.max_in_flight.max(1) as usize))
        .build())
}
