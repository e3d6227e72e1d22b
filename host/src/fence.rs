//! Fencing: this replica writes for a node (to the apiserver, to the cloud through the plugin)
//! only while its claim on the node's election Lease is certainly live, so a replica that was
//! paused (SIGSTOP, a frozen VM, a stalled host) and resumes after a standby took over cannot act
//! on what it believed before the pause.
//!
//! # The rule
//!
//! A standby takes the election Lease ([`super::lease::try_claim`]) once, on its own wall clock,
//! `renewTime + leaseDurationSeconds < now`. The holder stamps `renewTime` from its wall clock as
//! it begins a claim, after the runner took the monotonic instant `sent` (see [`Fence::renewed`]);
//! so, clocks agreeing, no standby can take over before `sent + lease`. The fence lets writes
//! through until
//!
//! ```text
//! sent + lease − margin,   margin = max(1 s, lease / 5)
//! ```
//!
//! measured on both the monotonic clock (immune to wall-clock steps) and the wall clock (which,
//! unlike Linux's monotonic clock, keeps counting while the machine is suspended): past either,
//! the fence has lapsed. The margin absorbs the difference between two replicas' wall clocks
//! and the time between a check and the request's bytes leaving. A lapsed fence refuses every
//! write, counts it (`vkhost_fenced_writes_total{node,target}`), logs a warning and ends acting
//! for the node at once (its `term` is cancelled); the runner then claims the Lease afresh, as a
//! standby would, before acting again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The least the fence keeps back from the lease; see the module's rule.
const MIN_MARGIN: Duration = Duration::from_secs(1);

/// What a refused write was for, the `target` label of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A mutating request to the Kubernetes API.
    Api,
    /// A plugin's HTTP request (the cloud API) during a call for the node.
    Cloud,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Api => "api",
            Target::Cloud => "cloud",
        }
    }
}

/// A write refused because the node's lease is not held (any more).
#[derive(Debug, Clone, thiserror::Error)]
#[error("fenced: lease for node {node} lapsed; {what} was not sent")]
pub struct Lapsed {
    pub node: String,
    pub what: String,
}

/// When the claim was last confirmed, and on what it may be relied.
#[derive(Debug, Clone, Copy)]
struct Claim {
    sent: Instant,
    sent_wall: SystemTime,
}

/// Whether a claim whose request was sent at (`sent`, `sent_wall`) still covers writes at
/// (`now`, `now_wall`), for a lease of `lease`: the rule of the module, a pure function.
fn holds(sent: Instant, sent_wall: SystemTime, now: Instant, now_wall: SystemTime, lease: Duration) -> bool {
    let valid = lease.saturating_sub(margin(lease));
    // A wall clock stepped back reads as no time passed; the monotonic clock still counts.
    let wall_elapsed = now_wall.duration_since(sent_wall).unwrap_or_default();
    now.saturating_duration_since(sent) < valid && wall_elapsed < valid
}

/// What the fence keeps back from a lease of `lease`.
pub fn margin(lease: Duration) -> Duration {
    (lease / 5).max(MIN_MARGIN)
}

struct State {
    /// The node's name once known (the config id until then): the counter's `node` label.
    node: String,
    /// The last confirmed claim while acting; `None` while not acting.
    claim: Option<Claim>,
    /// The current term of acting, ended when a check finds the fence lapsed.
    term: Option<CancellationToken>,
    /// The wall-clock time the current term began (when the fence was armed), after the claim
    /// that won the Lease was answered.
    acting_since: Option<SystemTime>,
}

/// The fence of one node in this replica; cheap to clone, shared by its runner (which arms and
/// renews it), its API clients and the plugin calls made for it (which check it).
#[derive(Clone)]
pub struct Fence {
    lease: Duration,
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("node", &self.node()).field("lease", &self.lease).finish()
    }
}

impl Fence {
    /// A fence for node `node` (its config id until [`Fence::name`] tells its name) whose
    /// election Lease lasts `lease`; closed until [`Fence::arm`].
    pub fn new(node: &str, lease: Duration, metrics: Arc<Metrics>) -> Self {
        let state = State { node: node.into(), claim: None, term: None, acting_since: None };
        Fence { lease, state: Arc::new(Mutex::new(state)), metrics }
    }

    /// Names the node (registration found or chose its name).
    pub fn name(&self, node: &str) {
        self.state.lock().unwrap().node = node.into();
    }

    pub fn node(&self) -> String {
        self.state.lock().unwrap().node.clone()
    }

    /// Opens the fence for a term of acting: the claim whose request was sent at `sent` won the
    /// Lease; a lapse found by a check cancels `term`.
    pub fn arm(&self, sent: Instant, term: CancellationToken) {
        let mut s = self.state.lock().unwrap();
        s.claim = Some(Claim { sent, sent_wall: wall_at(sent) });
        s.term = Some(term);
        s.acting_since = Some(SystemTime::now());
    }

    /// A renewal whose request was sent at `sent` succeeded: the fence holds until
    /// `sent + lease − margin`. `sent` must be taken before the claim stamps `renewTime`.
    pub fn renewed(&self, sent: Instant) {
        let mut s = self.state.lock().unwrap();
        if s.claim.is_some() {
            s.claim = Some(Claim { sent, sent_wall: wall_at(sent) });
        }
    }

    /// Closes the fence: acting for the node ended.
    pub fn disarm(&self) {
        let mut s = self.state.lock().unwrap();
        s.claim = None;
        s.term = None;
        s.acting_since = None;
    }

    /// When (wall clock) this replica's current term of acting for the node began; `None` while
    /// not acting. No other replica wrote for the node after this less [`Fence::clock_margin`]:
    /// its fence had lapsed by then (module rule), clocks agreeing within the margin.
    pub fn acting_since(&self) -> Option<SystemTime> {
        self.state.lock().unwrap().acting_since
    }

    /// The difference between replicas' (and the apiserver's) clocks the fence allows for.
    pub fn clock_margin(&self) -> Duration {
        margin(self.lease)
    }

    /// Whether writes may go out now.
    pub fn holds(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.claim.is_some_and(|c| holds(c.sent, c.sent_wall, Instant::now(), SystemTime::now(), self.lease))
    }

    /// Lets a write (`what`, for the log) through while the lease is held; otherwise refuses it:
    /// counted, logged, and acting for the node ends.
    pub fn check(&self, target: Target, what: &dyn std::fmt::Display) -> Result<(), Lapsed> {
        let mut s = self.state.lock().unwrap();
        let live = s.claim.is_some_and(|c| holds(c.sent, c.sent_wall, Instant::now(), SystemTime::now(), self.lease));
        if live {
            return Ok(());
        }
        let node = s.node.clone();
        let stepping_down = s.term.take();
        drop(s);
        self.metrics.fenced_write(&node, target.label());
        tracing::warn!(%node, target = target.label(), request = %what, "fenced: the node's election lease lapsed; write refused");
        if let Some(term) = stepping_down {
            tracing::warn!(%node, "fenced: stepping down for the node");
            term.cancel();
        }
        Err(Lapsed { node, what: what.to_string() })
    }
}

/// The wall-clock reading matching monotonic instant `at` (in the past or now).
fn wall_at(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn fence() -> (Fence, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (Fence::new("vk-n1", LEASE, metrics.clone()), metrics)
    }

    #[test]
    fn the_margin_is_a_fifth_of_the_lease_and_at_least_a_second() {
        assert_eq!(margin(Duration::from_secs(15)), Duration::from_secs(3));
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(12));
    }

    #[test]
    fn holds_until_lease_minus_margin_after_the_claim_was_sent() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        let at = |secs: f64| (t0 + Duration::from_secs_f64(secs), w0 + Duration::from_secs_f64(secs));
        for (secs, live) in [(0.0, true), (5.0, true), (11.9, true), (12.0, false), (14.9, false), (60.0, false)] {
            let (now, now_wall) = at(secs);
            assert_eq!(holds(t0, w0, now, now_wall, LEASE), live, "{secs} s after the claim was sent");
        }
    }

    #[test]
    fn a_suspended_machine_lapses_on_the_wall_clock_though_the_monotonic_one_stood_still() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        assert!(!holds(t0, w0, t0 + Duration::from_secs(1), w0 + Duration::from_secs(30), LEASE));
    }

    #[test]
    fn a_wall_clock_stepped_back_does_not_extend_the_fence() {
        let (t0, w0) = (Instant::now(), SystemTime::now());
        assert!(!holds(t0, w0, t0 + Duration::from_secs(13), w0 - Duration::from_secs(3600), LEASE));
        assert!(holds(t0, w0, t0 + Duration::from_secs(2), w0 - Duration::from_secs(3600), LEASE));
    }

    #[test]
    fn closed_until_armed_and_after_disarmed() {
        let (f, _) = fence();
        assert!(!f.holds());
        f.arm(Instant::now(), CancellationToken::new());
        assert!(f.holds());
        assert!(f.check(Target::Api, &"PATCH pod").is_ok());
        f.disarm();
        assert!(f.check(Target::Api, &"PATCH pod").is_err());
    }

    #[test]
    fn a_lapsed_check_refuses_counts_and_ends_the_term() {
        let (f, metrics) = fence();
        let term = CancellationToken::new();
        // The last claim was sent longer ago than the lease less the margin.
        f.arm(Instant::now() - Duration::from_secs(13), term.clone());
        assert!(!f.holds());
        let err = f.check(Target::Cloud, &"POST http://cloud/").unwrap_err();
        assert_eq!(err.to_string(), "fenced: lease for node vk-n1 lapsed; POST http://cloud/ was not sent");
        assert!(term.is_cancelled());
        f.name("vk-renamed");
        assert!(f.check(Target::Api, &"PATCH pod").is_err());
        let text = metrics.render();
        assert!(text.contains(r#"vkhost_fenced_writes_total{node="vk-n1",target="cloud"} 1"#), "{text}");
        assert!(text.contains(r#"vkhost_fenced_writes_total{node="vk-renamed",target="api"} 1"#), "{text}");
    }

    #[test]
    fn a_renewal_extends_the_fence_from_when_its_request_was_sent() {
        let (f, _) = fence();
        f.arm(Instant::now() - Duration::from_secs(13), CancellationToken::new());
        assert!(!f.holds());
        // A renewal sent before the pause and answered after it does not reopen the fence.
        f.renewed(Instant::now() - Duration::from_secs(12));
        assert!(!f.holds());
        f.renewed(Instant::now() - Duration::from_secs(1));
        assert!(f.holds());
    }

    #[test]
    fn acting_since_is_when_the_term_began_and_not_moved_by_renewals() {
        let (f, _) = fence();
        assert_eq!(f.acting_since(), None);
        let before = SystemTime::now();
        f.arm(Instant::now(), CancellationToken::new());
        let since = f.acting_since().unwrap();
        assert!(since >= before);
        f.renewed(Instant::now());
        assert_eq!(f.acting_since(), Some(since));
        f.disarm();
        assert_eq!(f.acting_since(), None);
    }

    #[test]
    fn a_renewal_does_not_open_a_disarmed_fence() {
        let (f, _) = fence();
        f.renewed(Instant::now());
        assert!(!f.holds());
    }
}
