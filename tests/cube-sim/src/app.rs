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
}

/// Faults plus what is left of the counted ones (bursts, create timeouts).
#[derive(Debug, Default)]
pub struct LiveFaults {
    pub faults: Faults,
    pub burst_left: u64,
    pub timeouts_left: u64,
}

impl LiveFaults {
    pub fn new(faults: Faults) -> Self {
        let burst_left = faults.burst.as_ref().map_or(0, |b| b.count);
        let timeouts_left = faults.create_timeouts.as_ref().map_or(0, |t| t.count);
        LiveFaults { faults, burst_left, timeouts_left }
    }
}

pub type Shared = Arc<Sim>;

impl Sim {
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
