//! The running simulator's shared parts: configuration, records, live faults, and the router
//! that joins the API gateway, the stream endpoints and the admin endpoints.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Faults};
use crate::state::State;

pub struct Sim {
    pub cfg: Config,
    pub state: Mutex<State>,
    pub faults: Mutex<LiveFaults>,
    /// `http://127.0.0.1:PORT`, for TerminalUrl.
    pub base_url: String,
    pub shutdown: CancellationToken,
    /// Serialises saves so two concurrent writers never interleave in the temp file.
    pub saving: Mutex<()>,
    /// Where pod addresses come from (`network.pod_cidr`, checked at start).
    pub pod_cidr: crate::network::Cidr,
    /// What listens on pod addresses (`network.serve`).
    pub servers: crate::network::Servers,
}

/// Faults plus what is left of the counted ones (bursts, create timeouts).
#[derive(Debug)]
pub struct LiveFaults {
    pub faults: Faults,
    pub burst_left: u64,
    pub timeouts_left: u64,
    /// The throttle's bucket: tokens and when they were counted.
    pub throttle: (f64, std::time::Instant),
    /// Calls the throttle answered with its code.
    pub throttled: u64,
}

impl Default for LiveFaults {
    fn default() -> Self {
        LiveFaults::new(Faults::default())
    }
}

impl LiveFaults {
    /// Whether the throttle lets one more call through now (taking a token if so).
    pub fn admit(&mut self) -> Option<i64> {
        let r = self.faults.rate_limit.as_ref()?;
        let now = std::time::Instant::now();
        let (tokens, at) = self.throttle;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * r.per_second).min(f64::from(r.burst.max(1)));
        if tokens >= 1.0 {
            self.throttle = (tokens - 1.0, now);
            None
        } else {
            self.throttle = (tokens, now);
            self.throttled += 1;
            Some(r.ret_code)
        }
    }

    pub fn new(faults: Faults) -> Self {
        let burst_left = faults.burst.as_ref().map_or(0, |b| b.count);
        let timeouts_left = faults.create_timeouts.as_ref().map_or(0, |t| t.count);
        let tokens = faults.rate_limit.as_ref().map_or(0.0, |r| f64::from(r.burst.max(1)));
        LiveFaults { faults, burst_left, timeouts_left, throttle: (tokens, std::time::Instant::now()), throttled: 0 }
    }
}

pub type Shared = Arc<Sim>;

impl Sim {
    /// A pod address for a new instance of `pod`, and its served ports bound when serving is on:
    /// an address whose ports another instance (or process) holds is skipped.
    pub fn allocate_ip(
        &self,
        state: &mut crate::state::State,
        pod: &crate::podspec::CubePod,
    ) -> (String, Option<crate::network::Bound>) {
        let mut tries = 0;
        loop {
            let ip = self.pod_cidr.pod_ip(state.next_counter());
            if !self.cfg.network.serve {
                return (ip.to_string(), None);
            }
            match crate::network::bind_pod(ip.into(), pod) {
                Ok(bound) => return (ip.to_string(), Some(bound)),
                Err(e) if tries < 64 => {
                    tracing::debug!(%ip, error = %e, "pod address taken; trying the next");
                    tries += 1;
                }
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "cannot serve the container ports of a new instance");
                    return (ip.to_string(), None);
                }
            }
        }
    }

    /// Serves an instance's container ports again (after a restart or a renew), when serving is on.
    pub fn serve(&self, inst: &crate::state::Instance) {
        if !self.cfg.network.serve || !inst.live() || inst.deleting_since.is_some() {
            return;
        }
        self.servers.stop(&inst.cube_id);
        match inst.pod_ip.parse().map(|ip| crate::network::bind_pod(ip, &inst.pod)) {
            Ok(Ok(bound)) => self.servers.start(inst, bound, &self.shutdown),
            Ok(Err(e)) => tracing::warn!(cube_id = %inst.cube_id, error = %e, "cannot serve the container ports"),
            Err(_) => {}
        }
    }

    /// Saves the records when a state file is configured. Called after mutating actions.
    pub fn persist(&self) {
        if let Some(path) = &self.cfg.state_file {
            let _one_writer = self.saving.lock();
            let bytes = self.state.lock().snapshot();
            if let Err(e) = crate::state::save_to(path, &bytes) {
                tracing::warn!(error = %e, path = %path.display(), "could not save simulator state");
            }
        }
    }
}

pub fn router(sim: Shared) -> Router {
    Router::new()
        .route("/", post(crate::gateway::handle))
        .route("/cube-stream/logs", get(crate::logs::handle))
        .route("/cube-stream/exec", get(crate::exec::handle))
        .nest("/_sim", crate::admin::router())
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(sim)
}
