//! Whether a pod's instance may exist before its `create` is sent (`create-attempt.may-exist`):
//! a provider looks one up first only when an earlier create could have reached the backend and
//! its answer been lost. None can have when both hold:
//! - this process sent no create for the pod's UID in its current term of acting for the node
//!   (remembered here before each create is sent), and
//! - the pod was created after that term began, by more than the clock margin of the node's fence:
//!   any earlier actor (another replica, this process before a restart or a lapse) stopped
//!   writing — to the cloud too: the plugin's HTTP goes through the same fence — before this
//!   replica's claim on the node's Lease won (`fence`), so it never saw the pod to create it.
//!
//! Without a fence (a node this process does not act for through an election) every attempt may
//! find an instance.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::fence::Fence;
use crate::plugin::CreateAttempt;

/// The pods of one node (one term of acting) a create was sent for.
#[derive(Default)]
pub struct CreateAttempts {
    sent: Mutex<HashSet<String>>,
}

impl CreateAttempts {
    /// How to call `create` for `pod` now, recording the attempt before it is sent.
    pub fn begin(&self, pod: &Pod, fence: Option<&Fence>) -> CreateAttempt {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let first = self.sent.lock().unwrap().insert(uid);
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let acting = fence.and_then(|f| Some((f.acting_since()?, f.clock_margin())));
        CreateAttempt { may_exist: may_exist(first, created, acting) }
    }

    /// The pod is gone (its deletion is done): nothing more is created for it.
    pub fn forget(&self, uid: &str) {
        self.sent.lock().unwrap().remove(uid);
    }
}

/// The rule of the module: `first` (no create sent for the pod before in this term), `created`
/// (the pod's creationTimestamp, whole seconds of the apiserver's clock) and `acting` (when this
/// term began and the clock margin). In doubt, true.
pub fn may_exist(first: bool, created: Option<Timestamp>, acting: Option<(SystemTime, Duration)>) -> bool {
    let (Some(created), Some((since, margin))) = (created, acting) else { return true };
    let Ok(since) = Timestamp::try_from(since + margin) else { return true };
    // The timestamp is truncated to the second: the pod was created at it or up to a second later,
    // so comparing it as it is errs on the safe side.
    !(first && created >= since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MARGIN: Duration = Duration::from_secs(3);

    fn at(since: SystemTime, secs: i64) -> Timestamp {
        Timestamp::try_from(since).unwrap() + k8s_openapi::jiff::SignedDuration::from_secs(secs)
    }

    #[test]
    fn a_first_attempt_for_a_pod_created_after_acting_began_needs_no_lookup() {
        let since = SystemTime::now();
        assert!(!may_exist(true, Some(at(since, 3)), Some((since, MARGIN))));
        assert!(!may_exist(true, Some(at(since, 600)), Some((since, MARGIN))));
    }

    #[test]
    fn an_instance_may_exist_when_in_doubt() {
        let since = SystemTime::now();
        // A retry: the first answer may have been lost.
        assert!(may_exist(false, Some(at(since, 60)), Some((since, MARGIN))));
        // Created before acting began, or within the clock margin after: an earlier actor may
        // have sent a create.
        assert!(may_exist(true, Some(at(since, -60)), Some((since, MARGIN))));
        assert!(may_exist(true, Some(at(since, 2)), Some((since, MARGIN))));
        // Not acting through a fence, or no creation time.
        assert!(may_exist(true, Some(at(since, 60)), None));
        assert!(may_exist(true, None, Some((since, MARGIN))));
    }

    fn pod(uid: &str, created: Timestamp) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": uid, "creationTimestamp": created.to_string()}
        }))
        .unwrap()
    }

    #[test]
    fn the_first_create_of_a_fresh_pod_skips_the_lookup_and_its_retry_does_not() {
        let fence = Fence::new("vk-n1", Duration::from_secs(15), Arc::new(crate::metrics::Metrics::new()));
        let attempts = CreateAttempts::default();
        let since = SystemTime::now();
        let fresh = pod("u1", at(since, 10));
        // Not acting yet: no term to vouch for.
        assert!(attempts.begin(&fresh, Some(&fence)).may_exist);
        attempts.forget("u1");
        fence.arm(tokio::time::Instant::now(), tokio_util::sync::CancellationToken::new());
        assert!(!attempts.begin(&fresh, Some(&fence)).may_exist);
        assert!(attempts.begin(&fresh, Some(&fence)).may_exist, "a second attempt may find the first's instance");
        // A pod created before the term began may have an instance from the previous actor.
        assert!(attempts.begin(&pod("u2", at(since, -30)), Some(&fence)).may_exist);
        // Without a fence, always.
        assert!(attempts.begin(&pod("u3", at(since, 10)), None).may_exist);
    }
}
