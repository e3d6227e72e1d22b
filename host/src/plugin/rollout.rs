//! Staged rollout of new plugin versions across the daemon's nodes: the canary nodes first, the
//! rest once the canaries were healthy for a while, and an automatic rollback when a node that
//! got the new version exceeds its error budget. The state machine here is pure (versions are
//! content digests, time is passed in); `handle` loads the versions and applies its plans, and
//! `Window` is the per-node error budget the calls feed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::plugin::stats::OUTCOMES;

/// The `[plugin.rollout]` table. Without it a new version goes to every node at once, as a plain
/// hot reload.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutSettings {
    /// Config ids (`[[nodes]] id`) of the nodes that get a new version first. Empty: every node
    /// at once, still watched and rolled back on a blown budget.
    #[serde(default)]
    pub canary_nodes: Vec<String>,
    /// How long the canaries must stay within budget before the rest get the version; and how
    /// long every node is watched after it got it.
    #[serde(default = "default_healthy_seconds")]
    pub healthy_seconds: u64,
    /// Calls the canaries must have answered on the new version before it is promoted (a canary
    /// nobody called proves nothing; a replica that does not act for the canaries never promotes).
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
    #[serde(default)]
    pub budget: Budget,
}

fn default_healthy_seconds() -> u64 {
    300
}
fn default_min_calls() -> u64 {
    20
}

/// The error budget of a new version on one node: more than `max_failures` of its last
/// `window_calls` calls ending in one of `outcomes` rolls it back.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Budget {
    pub window_calls: u32,
    pub max_failures: u32,
    /// Call outcomes that count as failures (names of `vkhost_provider_calls{outcome}`).
    pub outcomes: Vec<String>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            window_calls: 100,
            max_failures: 5,
            outcomes: ["trap", "internal", "timeout", "cpu_deadline", "memory_exceeded", "instantiate"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Longest budget window: a ring of one flag per call, per watched node.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

impl RolloutSettings {
    /// Checks the table against the configured node ids; the error is `(key, message)` with the
    /// key under `plugin.rollout`.
    pub fn check(&self, node_ids: &[String]) -> Result<(), (String, String)> {
        for (i, node) in self.canary_nodes.iter().enumerate() {
            if !node_ids.contains(node) {
                return Err((
                    format!("plugin.rollout.canary_nodes[{i}]"),
                    format!("is {node:?}, but names no [[nodes]] id; the ids are {node_ids:?}"),
                ));
            }
        }
        let b = &self.budget;
        if b.window_calls == 0 || b.window_calls > MAX_WINDOW_CALLS {
            return Err((
                "plugin.rollout.budget.window_calls".into(),
                format!("is {}, but must be between 1 and {MAX_WINDOW_CALLS}", b.window_calls),
            ));
        }
        if b.max_failures >= b.window_calls {
            return Err((
                "plugin.rollout.budget.max_failures".into(),
                format!(
                    "is {}, but must be less than window_calls ({}): the budget could never be exceeded",
                    b.max_failures, b.window_calls
                ),
            ));
        }
        for (i, outcome) in b.outcomes.iter().enumerate() {
            if outcome == "ok" || !OUTCOMES.contains(&outcome.as_str()) {
                return Err((
                    format!("plugin.rollout.budget.outcomes[{i}]"),
                    format!("is {outcome:?}, but must be one of {:?}", &OUTCOMES[1..]),
                ));
            }
        }
        Ok(())
    }
}

/// Why a node's version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// No rollout configured: every node got the new version at once.
    Reloaded,
    /// The node is a canary of the new version.
    Canary,
    /// The canaries were healthy: the node got the new version.
    Promoted,
    /// The new version exceeded its error budget (on this node or another): back to the stable one.
    RolledBack {
        reason: String,
    },
    /// A newer file replaced the version in rollout (or the stable one was put back).
    Superseded,
    /// The operator pinned the node to a version, or released its pin.
    Pinned,
    Unpinned,
}

/// One node's version change, by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSwap {
    pub node: String,
    pub from: String,
    pub to: String,
    pub step: Step,
}

/// Where a version in rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// On the canary nodes only.
    Canary,
    /// On every node, watched until the healthy period after the promotion ends.
    Promoted,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub digest: String,
    pub phase: Phase,
    /// When the current phase began.
    pub since: Instant,
}

/// A version that was rolled back, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub digest: String,
    pub node: String,
    pub reason: String,
    pub at: SystemTime,
}

/// What became of a version offered to the rollout.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// It is already the version in rollout (or the stable one, with none in rollout).
    Unchanged,
    /// It is the version in rollout now; these nodes changed version.
    Admitted(Vec<NodeSwap>),
    /// It was rolled back before and no other file appeared since.
    Refused(String),
}

/// Which version each node runs, and how a new one gets there.
#[derive(Debug)]
pub struct Rollout {
    policy: Option<RolloutSettings>,
    /// Config ids, in config order.
    nodes: Vec<String>,
    /// What every node runs outside a rollout: the last version that completed one.
    stable: String,
    /// The stable version before the last completed rollout (kept to pin to).
    previous: Option<String>,
    candidate: Option<Candidate>,
    pins: BTreeMap<String, String>,
    /// The last version rolled back, refused until another file appears.
    rolled_back: Option<RolledBack>,
}

impl Rollout {
    pub fn new(policy: Option<RolloutSettings>, nodes: Vec<String>, stable: String) -> Self {
        Rollout { policy, nodes, stable, previous: None, candidate: None, pins: BTreeMap::new(), rolled_back: None }
    }

    pub fn policy(&self) -> Option<&RolloutSettings> {
        self.policy.as_ref()
    }
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
    pub fn stable(&self) -> &str {
        &self.stable
    }
    pub fn previous(&self) -> Option<&str> {
        self.previous.as_deref()
    }
    pub fn candidate(&self) -> Option<&Candidate> {
        self.candidate.as_ref()
    }
    pub fn pins(&self) -> &BTreeMap<String, String> {
        &self.pins
    }
    pub fn rolled_back(&self) -> Option<&RolledBack> {
        self.rolled_back.as_ref()
    }

    /// The nodes that take a new version first: the configured canaries not pinned.
    pub fn canaries(&self) -> Vec<String> {
        let configured = self.policy.as_ref().map(|p| p.canary_nodes.as_slice()).unwrap_or_default();
        self.nodes.iter().filter(|n| configured.contains(n) && !self.pins.contains_key(*n)).cloned().collect()
    }

    /// The version `node` runs: its pin, else the version in rollout where it has reached the
    /// node, else the stable one.
    pub fn runs(&self, node: &str) -> &str {
        if let Some(pin) = self.pins.get(node) {
            return pin;
        }
        match &self.candidate {
            Some(c) if c.phase == Phase::Promoted || self.canaries().iter().any(|n| n == node) => &c.digest,
            _ => &self.stable,
        }
    }

    /// Whether `node` runs the version in rollout because of the rollout (not a pin): its calls
    /// are held to the error budget.
    pub fn watched(&self, node: &str) -> bool {
        self.policy.is_some()
            && !self.pins.contains_key(node)
            && self.candidate.as_ref().is_some_and(|c| self.runs(node) == c.digest)
    }

    /// Every node's version.
    pub fn assignment(&self) -> BTreeMap<String, String> {
        self.nodes.iter().map(|n| (n.clone(), self.runs(n).to_string())).collect()
    }

    /// The versions that must stay loaded: those running, and the previous stable one.
    pub fn retained(&self) -> BTreeSet<String> {
        let mut keep: BTreeSet<String> = self.assignment().into_values().collect();
        keep.insert(self.stable.clone());
        keep.extend(self.previous.clone());
        keep.extend(self.candidate.as_ref().map(|c| c.digest.clone()));
        keep
    }

    /// Runs `change` and returns the nodes whose version it changed, each with `step(to)`.
    fn diff(&mut self, change: impl FnOnce(&mut Self), step: impl Fn(&Self, &str) -> Step) -> Vec<NodeSwap> {
        let before = self.assignment();
        change(self);
        let after = self.assignment();
        before
            .into_iter()
            .zip(after)
            .filter(|((_, from), (_, to))| from != to)
            .map(|((node, from), (_, to))| NodeSwap { step: step(self, &to), node, from, to })
            .collect()
    }

    /// What `offer` would answer without changing anything: `Refused` or `Unchanged`, or `None`
    /// when the version would be admitted (so it is worth smoke-testing first).
    pub fn judge(&self, digest: &str) -> Option<Offer> {
        if let Some(r) = &self.rolled_back
            && r.digest == digest
        {
            return Some(Offer::Refused(format!(
                "version sha256:{} was rolled back ({}); it is not swapped in again until a different file appears",
                short(digest),
                r.reason
            )));
        }
        let current = self.candidate.as_ref().map_or(&self.stable, |c| &c.digest);
        (current == digest).then_some(Offer::Unchanged)
    }

    /// A new file passed every check: it becomes the version in rollout, on the canaries first
    /// (or on every node when no rollout is configured, or no canary is left unpinned).
    pub fn offer(&mut self, digest: &str, now: Instant) -> Offer {
        if let Some(verdict) = self.judge(digest) {
            return verdict;
        }
        // A different file appeared.
        self.rolled_back = None;
        if self.policy.is_none() {
            // A plain hot reload: every unpinned node now, nothing watched, nothing kept.
            let swaps = self.diff(|r| r.stable = digest.to_string(), |_, _| Step::Reloaded);
            return Offer::Admitted(swaps);
        }
        if digest == self.stable {
            // The stable version put back while another was in rollout: that one is dropped.
            let swaps = self.diff(|r| r.candidate = None, |_, _| Step::Superseded);
            return Offer::Admitted(swaps);
        }
        let phase = if self.canaries().is_empty() { Phase::Promoted } else { Phase::Canary };
        let candidate = Candidate { digest: digest.to_string(), phase, since: now };
        let swaps = self.diff(
            |r| r.candidate = Some(candidate),
            |r, to| match r.candidate.as_ref() {
                Some(c) if c.digest == to && c.phase == Phase::Canary => Step::Canary,
                Some(c) if c.digest == to => Step::Promoted,
                _ => Step::Superseded,
            },
        );
        Offer::Admitted(swaps)
    }

    /// Moves the rollout on with time: the canaries healthy for `healthy_seconds` with at least
    /// `min_calls` answered (`canary_calls`) promote the version to every node; `healthy_seconds`
    /// after that it becomes the stable version (no node changes then).
    pub fn tick(&mut self, now: Instant, canary_calls: u64) -> Vec<NodeSwap> {
        let (Some(policy), Some(c)) = (&self.policy, &self.candidate) else { return Vec::new() };
        let healthy = Duration::from_secs(policy.healthy_seconds);
        if now.saturating_duration_since(c.since) < healthy {
            return Vec::new();
        }
        match c.phase {
            Phase::Canary if canary_calls < policy.min_calls => Vec::new(),
            Phase::Canary => self.diff(
                |r| {
                    let c = r.candidate.as_mut().expect("checked above");
                    c.phase = Phase::Promoted;
                    c.since = now;
                },
                |_, _| Step::Promoted,
            ),
            Phase::Promoted => {
                let c = self.candidate.take().expect("checked above");
                self.previous = Some(std::mem::replace(&mut self.stable, c.digest));
                Vec::new()
            }
        }
    }

    /// `node`, running the version in rollout, exceeded its error budget: every node that got the
    /// version through the rollout goes back to the stable one, and the version is refused until
    /// another file appears. Nothing happens when the node no longer runs it (a rollback already
    /// under way, a pin).
    pub fn exceeded(&mut self, node: &str, reason: &str, at: SystemTime) -> Vec<NodeSwap> {
        if !self.watched(node) {
            return Vec::new();
        }
        let digest = self.candidate.as_ref().map(|c| c.digest.clone()).expect("watched implies a candidate");
        let reason = format!("node {node}: {reason}");
        self.rolled_back = Some(RolledBack { digest, node: node.to_string(), reason: reason.clone(), at });
        self.diff(|r| r.candidate = None, |_, _| Step::RolledBack { reason: reason.clone() })
    }

    /// Keeps `node` on `digest` (one of the retained versions) whatever rollouts do.
    pub fn pin(&mut self, node: &str, digest: &str) -> Vec<NodeSwap> {
        let (node, digest) = (node.to_string(), digest.to_string());
        self.diff(|r| _ = r.pins.insert(node, digest), |_, _| Step::Pinned)
    }

    /// Releases `node`'s pin: it runs what the rollout gives it again.
    pub fn unpin(&mut self, node: &str) -> Vec<NodeSwap> {
        self.diff(|r| _ = r.pins.remove(node), |_, _| Step::Unpinned)
    }
}

/// The first 12 hex digits of a digest, as logs and Events show it.
pub fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// The error budget of one node since it got a new version: a ring of the last `window_calls`
/// calls (failed or not), fed by every call on the node without a lock.
pub struct Window {
    counted: [bool; OUTCOMES.len()],
    ring: Box<[AtomicBool]>,
    calls: AtomicU64,
    /// Failures in the ring. Signed: a slot's flag is swapped before the count follows, so a
    /// racing call may see it one below for a moment.
    failures: AtomicI64,
    max_failures: i64,
    by_outcome: [AtomicU64; OUTCOMES.len()],
    tripped: AtomicBool,
    last_failure: Mutex<String>,
}

impl Window {
    pub fn new(budget: &Budget) -> Self {
        let counted = OUTCOMES.map(|o| budget.outcomes.iter().any(|c| c == o));
        Window {
            counted,
            ring: (0..budget.window_calls.max(1)).map(|_| AtomicBool::new(false)).collect(),
            calls: AtomicU64::new(0),
            failures: AtomicI64::new(0),
            max_failures: budget.max_failures.into(),
            by_outcome: Default::default(),
            tripped: AtomicBool::new(false),
            last_failure: Mutex::new(String::new()),
        }
    }

    /// Records one call's outcome (`detail`: its error, asked only for a failure); true when this
    /// call exceeded the budget (once per window).
    pub fn record(&self, outcome: &str, detail: impl FnOnce() -> String) -> bool {
        let o = OUTCOMES.iter().position(|n| *n == outcome).unwrap_or(0);
        let failed = self.counted[o];
        let at = self.calls.fetch_add(1, Relaxed) % self.ring.len() as u64;
        let was = self.ring[at as usize].swap(failed, Relaxed);
        if !failed {
            if was {
                self.failures.fetch_sub(1, Relaxed);
            }
            return false;
        }
        self.by_outcome[o].fetch_add(1, Relaxed);
        *self.last_failure.lock().unwrap() = detail();
        let failures = if was { self.failures.load(Relaxed) } else { self.failures.fetch_add(1, Relaxed) + 1 };
        failures > self.max_failures && !self.tripped.swap(true, Relaxed)
    }

    /// Calls recorded since the window opened.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    pub fn tripped(&self) -> bool {
        self.tripped.load(Relaxed)
    }

    /// Why the budget was exceeded: the failures in the window by outcome, and the last one.
    pub fn reason(&self) -> String {
        let by: Vec<String> = OUTCOMES
            .iter()
            .zip(&self.by_outcome)
            .filter(|(_, n)| n.load(Relaxed) > 0)
            .map(|(o, n)| format!("{o} {}", n.load(Relaxed)))
            .collect();
        format!(
            "{} of the last {} calls failed, over the budget of {} ({}); last: {}",
            self.failures.load(Relaxed).max(0),
            self.calls().min(self.ring.len() as u64),
            self.max_failures,
            by.join(", "),
            self.last_failure.lock().unwrap()
        )
    }

    /// The outcome that failed most, for the rollback metric's label.
    pub fn worst_outcome(&self) -> &'static str {
        OUTCOMES.iter().zip(&self.by_outcome).max_by_key(|(_, n)| n.load(Relaxed)).map(|(o, _)| *o).unwrap_or("ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(canaries: &[&str]) -> RolloutSettings {
        RolloutSettings {
            canary_nodes: canaries.iter().map(|s| s.to_string()).collect(),
            healthy_seconds: 60,
            min_calls: 10,
            budget: Budget { window_calls: 10, max_failures: 2, outcomes: vec!["trap".into(), "internal".into()] },
        }
    }

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    fn swaps(offer: Offer) -> Vec<NodeSwap> {
        match offer {
            Offer::Admitted(s) => s,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn moved(swaps: &[NodeSwap]) -> Vec<(&str, &str, &Step)> {
        swaps.iter().map(|s| (s.node.as_str(), s.to.as_str(), &s.step)).collect()
    }

    #[test]
    fn a_new_version_goes_to_the_canaries_first_and_to_the_rest_after_the_healthy_period() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n2"])), nodes(), "a".into());
        let s = swaps(r.offer("b", t0));
        assert_eq!(moved(&s), [("n2", "b", &Step::Canary)]);
        assert_eq!((r.runs("n1"), r.runs("n2"), r.runs("n3")), ("a", "b", "a"));
        assert!(r.watched("n2") && !r.watched("n1"));

        // Not before the healthy period, however many calls.
        assert!(r.tick(t0 + Duration::from_secs(59), 1000).is_empty());
        let s = r.tick(t0 + Duration::from_secs(60), 10);
        assert_eq!(moved(&s), [("n1", "b", &Step::Promoted), ("n3", "b", &Step::Promoted)]);
        assert_eq!(r.candidate().unwrap().phase, Phase::Promoted);
        assert!(r.watched("n1") && r.watched("n2") && r.watched("n3"));

        // Another healthy period watched on every node, then it is the stable version.
        assert!(r.tick(t0 + Duration::from_secs(119), 0).is_empty());
        assert!(r.candidate().is_some());
        assert!(r.tick(t0 + Duration::from_secs(120), 0).is_empty());
        assert!(r.candidate().is_none());
        assert_eq!((r.stable(), r.previous()), ("b", Some("a")));
        assert!(!r.watched("n1"));
    }

    #[test]
    fn canaries_nobody_called_enough_are_not_promoted() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        swaps(r.offer("b", t0));
        assert!(r.tick(t0 + Duration::from_secs(600), 9).is_empty());
        assert_eq!(r.runs("n2"), "a");
        assert_eq!(r.tick(t0 + Duration::from_secs(600), 10).len(), 2);
    }

    #[test]
    fn a_blown_budget_on_a_canary_rolls_back_and_the_version_is_not_retried_until_another_appears() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        swaps(r.offer("bad", t0));
        let s = r.exceeded("n1", "3 traps", SystemTime::now());
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].node.as_str(), s[0].from.as_str(), s[0].to.as_str()), ("n1", "bad", "a"));
        let Step::RolledBack { reason } = &s[0].step else { panic!("{s:?}") };
        assert!(reason.contains("node n1") && reason.contains("3 traps"), "{reason}");
        assert!(r.candidate().is_none() && r.assignment().values().all(|v| v == "a"));

        // The same file again (SIGHUP, a reload request, the tag polled again): refused.
        let Offer::Refused(why) = r.offer("bad", t0) else { panic!() };
        assert!(why.contains("rolled back") && why.contains("3 traps"), "{why}");
        assert!(r.tick(t0 + Duration::from_secs(600), 1000).is_empty());
        // A different file is rolled out; after it, the bad one is judged anew.
        assert_eq!(moved(&swaps(r.offer("c", t0))), [("n1", "c", &Step::Canary)]);
        assert!(matches!(r.offer("bad", t0), Offer::Admitted(_)));
    }

    #[test]
    fn a_blown_budget_after_promotion_rolls_back_every_node_that_got_it() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        swaps(r.offer("b", t0));
        r.tick(t0 + Duration::from_secs(60), 10);
        let s = r.exceeded("n3", "timeouts", SystemTime::now());
        assert_eq!(s.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(), ["n1", "n2", "n3"]);
        assert!(
            s.iter()
                .all(|s| s.to == "a" && matches!(&s.step, Step::RolledBack { reason } if reason.contains("node n3")))
        );
        // A second report from another node finds nothing left to roll back.
        assert!(r.exceeded("n2", "timeouts", SystemTime::now()).is_empty());
    }

    #[test]
    fn without_a_rollout_table_every_node_gets_a_new_version_at_once_and_nothing_is_watched() {
        let mut r = Rollout::new(None, nodes(), "a".into());
        let s = swaps(r.offer("b", Instant::now()));
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|s| s.step == Step::Reloaded && s.to == "b"));
        assert_eq!((r.stable(), r.previous()), ("b", None));
        assert!(!r.watched("n1"));
        assert!(r.exceeded("n1", "x", SystemTime::now()).is_empty());
        assert_eq!(r.offer("b", Instant::now()), Offer::Unchanged);
    }

    #[test]
    fn no_canaries_means_every_node_at_once_but_watched() {
        let mut r = Rollout::new(Some(policy(&[])), nodes(), "a".into());
        let s = swaps(r.offer("b", Instant::now()));
        assert!(s.len() == 3 && s.iter().all(|s| s.step == Step::Promoted));
        assert!(r.watched("n2"));
        assert_eq!(r.exceeded("n2", "x", SystemTime::now()).len(), 3);
    }

    #[test]
    fn a_newer_file_supersedes_the_version_in_rollout_and_the_stable_one_put_back_cancels_it() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        swaps(r.offer("b", t0));
        r.tick(t0 + Duration::from_secs(60), 10);
        // c starts over from the stable a: canary first, the others back to a.
        let s = swaps(r.offer("c", t0 + Duration::from_secs(61)));
        assert_eq!(
            moved(&s),
            [("n1", "c", &Step::Canary), ("n2", "a", &Step::Superseded), ("n3", "a", &Step::Superseded)]
        );
        let s = swaps(r.offer("a", t0 + Duration::from_secs(62)));
        assert_eq!(moved(&s), [("n1", "a", &Step::Superseded)]);
        assert!(r.candidate().is_none());
    }

    #[test]
    fn pinned_nodes_keep_their_version_through_rollouts_and_rollbacks() {
        let t0 = Instant::now();
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        assert!(r.pin("n3", "a").is_empty());
        swaps(r.offer("b", t0));
        r.tick(t0 + Duration::from_secs(60), 10);
        assert_eq!((r.runs("n2"), r.runs("n3")), ("b", "a"));
        // Pinning the canary elsewhere takes it out of the rollout.
        assert_eq!(moved(&r.pin("n1", "a")), [("n1", "a", &Step::Pinned)]);
        assert!(!r.watched("n1"));
        assert!(r.exceeded("n1", "x", SystemTime::now()).is_empty());
        assert_eq!(moved(&r.unpin("n1")), [("n1", "b", &Step::Unpinned)]);
        r.exceeded("n2", "x", SystemTime::now());
        assert_eq!(r.assignment().values().collect::<Vec<_>>(), ["a", "a", "a"]);
        assert!(r.retained().contains("a"));
    }

    #[test]
    fn a_pinned_canary_leaves_the_new_version_to_every_node_at_once() {
        let mut r = Rollout::new(Some(policy(&["n1"])), nodes(), "a".into());
        r.pin("n1", "a");
        let s = swaps(r.offer("b", Instant::now()));
        assert_eq!(moved(&s), [("n2", "b", &Step::Promoted), ("n3", "b", &Step::Promoted)]);
    }

    #[test]
    fn the_window_trips_once_past_the_budget_of_its_last_calls() {
        let w = Window::new(&Budget { window_calls: 4, max_failures: 1, outcomes: vec!["trap".into()] });
        assert!(!w.record("trap", || "first".into()));
        // Outcomes outside the budget's list and successes push failures out of the window.
        for outcome in ["ok", "transient", "invalid", "ok"] {
            assert!(!w.record(outcome, || unreachable!()));
        }
        assert!(!w.record("trap", || "second".into()));
        assert!(w.record("trap", || "third".into()));
        assert!(w.tripped());
        assert!(!w.record("trap", || "fourth".into()), "trips once");
        let reason = w.reason();
        assert!(
            reason.contains("of the last 4 calls") && reason.contains("trap 4") && reason.contains("fourth"),
            "{reason}"
        );
        assert_eq!(w.worst_outcome(), "trap");
        assert_eq!(w.calls(), 8);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer(usize),
        Tick(u64, u64),
        Exceeded(usize),
        Pin(usize, usize),
        Unpin(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize).prop_map(Op::Offer),
            (0..130u64, 0..30u64).prop_map(|(s, c)| Op::Tick(s, c)),
            (0..3usize).prop_map(Op::Exceeded),
            (0..3usize, 0..4usize).prop_map(|(n, d)| Op::Pin(n, d)),
            (0..3usize).prop_map(Op::Unpin),
        ]
    }

    proptest::proptest! {
        /// Any sequence of files, clock steps, blown budgets and pins: every node runs a version
        /// that is held, the swaps reported are exactly the changes, a rolled-back version runs
        /// on no unpinned node, and outside a rollout every unpinned node runs the stable one.
        #[test]
        fn any_sequence_keeps_the_assignment_consistent(
            canaries in proptest::sample::subsequence(vec!["n1", "n2", "n3"], 0..3),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let digests = ["a", "b", "c", "d"];
            let t0 = Instant::now();
            let mut elapsed = 0;
            let mut r = Rollout::new(Some(policy(&canaries)), nodes(), "a".into());
            for op in ops {
                let before = r.assignment();
                let swaps = match op {
                    Op::Offer(d) => match r.offer(digests[d], t0 + Duration::from_secs(elapsed)) {
                        Offer::Admitted(s) => s,
                        _ => Vec::new(),
                    },
                    Op::Tick(secs, calls) => {
                        elapsed += secs;
                        r.tick(t0 + Duration::from_secs(elapsed), calls)
                    }
                    Op::Exceeded(n) => r.exceeded(&nodes()[n], "x", SystemTime::now()),
                    Op::Pin(n, d) => {
                        let held = r.retained();
                        if !held.contains(digests[d]) { continue; }
                        r.pin(&nodes()[n], digests[d])
                    }
                    Op::Unpin(n) => r.unpin(&nodes()[n]),
                };
                let after = r.assignment();
                let held = r.retained();
                proptest::prop_assert!(after.values().all(|d| held.contains(d)), "{after:?} not in {held:?}");
                let changed: Vec<_> = before.iter().filter(|(n, d)| after[*n] != **d).map(|(n, _)| n.clone()).collect();
                proptest::prop_assert_eq!(swaps.iter().map(|s| s.node.clone()).collect::<Vec<_>>(), changed);
                proptest::prop_assert!(swaps.iter().all(|s| before[&s.node] == s.from && after[&s.node] == s.to));
                for (node, digest) in &after {
                    if r.pins().contains_key(node) { continue; }
                    if let Some(bad) = r.rolled_back() {
                        proptest::prop_assert_ne!(digest, &bad.digest);
                    }
                    if r.candidate().is_none() {
                        proptest::prop_assert_eq!(digest.as_str(), r.stable());
                    }
                }
            }
        }
    }

    #[test]
    fn settings_are_checked_against_the_nodes_naming_the_key() {
        let ids = nodes();
        assert!(policy(&["n1"]).check(&ids).is_ok());
        let (key, msg) = policy(&["n9"]).check(&ids).unwrap_err();
        assert_eq!(key, "plugin.rollout.canary_nodes[0]");
        assert!(msg.contains("n9") && msg.contains("n1"), "{msg}");
        let mut p = policy(&[]);
        p.budget.max_failures = 10;
        assert_eq!(p.check(&ids).unwrap_err().0, "plugin.rollout.budget.max_failures");
        p.budget = Budget { outcomes: vec!["ok".into()], ..Budget::default() };
        assert!(p.check(&ids).unwrap_err().1.contains("trap"));
        let parsed: RolloutSettings = toml::from_str("canary_nodes = [\"n1\"]\n[budget]\nmax_failures = 3\n").unwrap();
        assert_eq!((parsed.healthy_seconds, parsed.budget.max_failures, parsed.budget.window_calls), (300, 3, 100));
    }
}
