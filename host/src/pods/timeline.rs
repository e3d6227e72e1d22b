//! The stages of a pod's passage through this node, timed: what `startup.rs` (first sight → the
//! status write showing the pod Ready) and `teardown.rs` (first sight of the deletion → the final
//! DELETE) each report. A pod is followed from its first sight; each mark ends the stage running
//! since the last one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The stages one kind of passage is cut into.
pub trait Stage: Copy + PartialEq + 'static {
    /// Every stage, in the order they are reported.
    const ALL: &'static [Self];
    /// The wait before the first reconcile (a worker), and before each later one (a requeue).
    const QUEUE: Self;
    const REQUEUE: Self;
    fn label(self) -> &'static str;
}

/// More stages than any passage has.
const MAX_STAGES: usize = 8;
/// Pods followed at most at once (a node has at most 200); one never finished (refused, failed,
/// deleted unseen, a provider that keeps failing) is let go after [`GIVE_UP`].
const MAX_FOLLOWED: usize = 1024;
const GIVE_UP: Duration = Duration::from_secs(600);

/// One pod's passage so far; `extra` is what the passage keeps beside its times.
pub struct Trace<X> {
    pub seen: Instant,
    /// The last mark: a stage ends here and the next begins.
    last: Instant,
    stages: [Duration; MAX_STAGES],
    pub reconciles: u32,
    pub extra: X,
}

impl<X> Trace<X> {
    fn mark<S: Stage>(&mut self, stage: S) {
        let now = Instant::now();
        self.stages[index(stage)] += now.duration_since(self.last);
        self.last = now;
    }

    /// The time spent in `stage`.
    pub fn took<S: Stage>(&self, stage: S) -> Duration {
        self.stages[index(stage)]
    }

    /// First sight → the last mark.
    pub fn total(&self) -> Duration {
        self.last.duration_since(self.seen)
    }
}

/// The wall clock in milliseconds since the epoch, for the lines that report a passage: a reader
/// places the node's first sight and last write against what another watcher of the pod saw (the
/// burst benchmark does).
pub fn unix_ms_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn index<S: Stage>(stage: S) -> usize {
    S::ALL.iter().position(|s| *s == stage).expect("every stage is listed")
}

/// The passages of one kind in progress on one node, by pod UID.
pub struct Timelines<S, X> {
    pods: Mutex<HashMap<String, Trace<X>>>,
    _stages: std::marker::PhantomData<S>,
}

impl<S, X> Default for Timelines<S, X> {
    fn default() -> Self {
        Timelines { pods: Mutex::default(), _stages: std::marker::PhantomData }
    }
}

impl<S: Stage, X: Default> Timelines<S, X> {
    /// Follows the pod from now, unless it is followed already (or too many are).
    pub fn follow(&self, uid: &str) {
        const { assert!(S::ALL.len() <= MAX_STAGES) };
        let mut pods = self.pods.lock().unwrap();
        if pods.contains_key(uid) {
            return;
        }
        let now = Instant::now();
        if pods.len() >= MAX_FOLLOWED {
            pods.retain(|_, t| now.duration_since(t.seen) < GIVE_UP);
            if pods.len() >= MAX_FOLLOWED {
                return;
            }
        }
        let trace = Trace { seen: now, last: now, stages: Default::default(), reconciles: 0, extra: X::default() };
        pods.insert(uid.to_owned(), trace);
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.pods.lock().unwrap().contains_key(uid)
    }

    /// Lets the pod go unreported.
    pub fn forget(&self, uid: &str) {
        self.pods.lock().unwrap().remove(uid);
    }

    /// A reconcile of the pod begins: the wait before it is [`Stage::QUEUE`] for the first,
    /// [`Stage::REQUEUE`] after.
    pub fn reconciling(&self, uid: &str) {
        self.with(uid, |t| {
            let stage = if t.reconciles == 0 { S::QUEUE } else { S::REQUEUE };
            t.reconciles += 1;
            t.mark(stage);
        });
    }

    /// `stage` of the pod's passage ended now; `then` sees its trace (a pod not followed: nothing).
    pub fn lap<R>(&self, uid: &str, stage: S, then: impl FnOnce(&mut Trace<X>) -> R) -> Option<R> {
        self.with(uid, |t| {
            t.mark(stage);
            then(t)
        })
    }

    /// `stage` ended now, and with it the pod's passage: its trace, to report.
    pub fn finish(&self, uid: &str, stage: S) -> Option<Trace<X>> {
        let mut trace = self.pods.lock().unwrap().remove(uid)?;
        trace.mark(stage);
        Some(trace)
    }

    fn with<R>(&self, uid: &str, f: impl FnOnce(&mut Trace<X>) -> R) -> Option<R> {
        self.pods.lock().unwrap().get_mut(uid).map(f)
    }

    /// Whether any pod followed is as `f` says.
    pub fn any(&self, f: impl Fn(&Trace<X>) -> bool) -> bool {
        self.pods.lock().unwrap().values().any(f)
    }

    /// How many pods are followed now.
    pub fn followed(&self) -> usize {
        self.pods.lock().unwrap().len()
    }
}
