//! Seeing a recorded deletion through, one step at a time: once it is due, `status` until the
//! provider answers `not-found`, then `finalize` with the work `delete` handed over (if any) until
//! it succeeds, then the record goes. The record lives in the node's durable records, so a
//! restart or another replica takes over where this one stopped. Used by the pod controller (a
//! deleted pod's reconcile, and its listing task for deletions whose pod is gone) and by
//! `vkhost node delete`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::plugin::{CallContext, CallError, Plugin, PodRef, ProviderError};
use crate::records::{NodeRecords, PendingDeletion};

/// What seeing a deletion through asks of the provider.
pub trait Provider {
    /// `Ok` while the instance exists; `not-found` once it is gone.
    fn status(&self, pod: &PodRef) -> impl Future<Output = Result<(), CallError>> + Send;
    fn finalize(&self, pod: &PodRef, work: &[u8]) -> impl Future<Output = Result<(), CallError>> + Send;
}

/// The plugin's calls for one node.
pub struct Calls<'a> {
    pub plugin: &'a Plugin,
    pub call: &'a CallContext,
}

impl Provider for Calls<'_> {
    async fn status(&self, pod: &PodRef) -> Result<(), CallError> {
        self.plugin.status(self.call, pod).await.map(|_| ())
    }

    async fn finalize(&self, pod: &PodRef, work: &[u8]) -> Result<(), CallError> {
        self.plugin.finalize(self.call, pod, work).await
    }
}

/// Where one step left a deletion.
#[derive(Debug)]
pub enum Progress {
    /// Not due yet, or the instance still exists.
    Waiting,
    /// `status` failed; the next step asks again.
    StatusFailed(CallError),
    /// The instance is gone and nothing is left to do: the record is dropped.
    Finished,
    /// The instance is gone, `finalize` failed and is retried with backoff (the record stays).
    FinalizeFailed(CallError),
    /// The instance is gone and the provider refused `finalize` for good (`invalid`,
    /// `unsupported`): the work is abandoned and the record dropped.
    FinalizeAbandoned(CallError),
}

/// Backoff of the `finalize` retries, by pod UID, in memory: after a restart the first retry
/// comes at once.
#[derive(Default)]
pub struct Retries(Mutex<HashMap<String, (u32, Instant)>>);

/// The first retry of a failed `finalize` comes after this long, doubling up to `MAX_RETRY_WAIT`.
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

impl Retries {
    fn due(&self, uid: &str) -> bool {
        self.0.lock().unwrap().get(uid).is_none_or(|(_, at)| *at <= Instant::now())
    }

    fn failed(&self, uid: &str) {
        let mut map = self.0.lock().unwrap();
        let entry = map.entry(uid.to_owned()).or_insert((0, Instant::now()));
        let wait = FIRST_RETRY_WAIT.saturating_mul(2u32.saturating_pow(entry.0.min(16))).min(MAX_RETRY_WAIT);
        entry.0 += 1;
        entry.1 = Instant::now() + wait;
    }

    fn forget(&self, uid: &str) {
        self.0.lock().unwrap().remove(uid);
    }
}

/// One step of `pending`; see the module.
pub async fn step(
    provider: &impl Provider,
    records: &NodeRecords,
    retries: &Retries,
    pending: &PendingDeletion,
) -> Progress {
    let uid = pending.pod.uid.as_str();
    if !pending.due() || !retries.due(uid) {
        return Progress::Waiting;
    }
    match provider.status(&pending.pod).await {
        Err(CallError::Provider(ProviderError::NotFound(_))) => {}
        Ok(_) => return Progress::Waiting,
        Err(e) => return Progress::StatusFailed(e),
    }
    let progress = if pending.finalize.is_empty() {
        Progress::Finished
    } else {
        match provider.finalize(&pending.pod, &pending.finalize).await {
            // `not-found`: what the work was about is gone already.
            Ok(()) | Err(CallError::Provider(ProviderError::NotFound(_))) => Progress::Finished,
            Err(e) if e.is_retryable() => {
                retries.failed(uid);
                return Progress::FinalizeFailed(e);
            }
            Err(e) => Progress::FinalizeAbandoned(e),
        }
    };
    retries.forget(uid);
    if let Err(e) = records.drop_deletion(uid).await {
        // The record stays; the next step finds the instance gone and finalizes again (the
        // provider's `finalize` is idempotent).
        tracing::warn!(pod_uid = %uid, error = %e, "could not drop a finished deletion's record");
    }
    progress
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::*;
    use crate::plugin::InvalidInput;
    use crate::records::tests::{FakeApi, deletion, records};

    /// A provider answering from scripts: `status` pops the next answer (then `not-found`),
    /// `finalize` likewise (then `Ok`), and the work of every `finalize` call is kept.
    #[derive(Default)]
    struct Scripted {
        status: Mutex<VecDeque<Result<(), CallError>>>,
        finalize: Mutex<VecDeque<Result<(), CallError>>>,
        finalized: Mutex<Vec<Vec<u8>>>,
    }

    impl Provider for Scripted {
        async fn status(&self, pod: &PodRef) -> Result<(), CallError> {
            self.status
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(CallError::Provider(ProviderError::NotFound(pod.uid.clone()))))
        }

        async fn finalize(&self, _: &PodRef, work: &[u8]) -> Result<(), CallError> {
            self.finalized.lock().unwrap().push(work.to_vec());
            self.finalize.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
    }

    fn with_work(uid: &str, work: &[u8]) -> PendingDeletion {
        let mut d = deletion(uid);
        d.finalize = work.to_vec();
        d
    }

    fn transient() -> CallError {
        CallError::Provider(ProviderError::Transient("backend busy".into()))
    }

    #[tokio::test]
    async fn finalize_comes_once_the_instance_is_gone_and_then_the_record_goes() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let pending = with_work("u1", b"disks=bs-1");
        r.record_deletion(pending.clone()).await.unwrap();
        let provider = Scripted::default();
        provider.status.lock().unwrap().push_back(Ok(()));
        let retries = Retries::default();

        assert!(matches!(step(&provider, &r, &retries, &pending).await, Progress::Waiting));
        assert!(provider.finalized.lock().unwrap().is_empty(), "finalized while the instance exists");
        assert!(r.is_deleting("u1"));

        assert!(matches!(step(&provider, &r, &retries, &pending).await, Progress::Finished));
        assert_eq!(*provider.finalized.lock().unwrap(), vec![b"disks=bs-1".to_vec()]);
        assert!(!records(&api).await.is_deleting("u1"), "the record stayed in the ConfigMap");
    }

    #[tokio::test]
    async fn a_deletion_without_work_is_not_finalized() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let pending = deletion("u1");
        r.record_deletion(pending.clone()).await.unwrap();
        let provider = Scripted::default();
        assert!(matches!(step(&provider, &r, &Retries::default(), &pending).await, Progress::Finished));
        assert!(provider.finalized.lock().unwrap().is_empty());
        assert!(!r.is_deleting("u1"));
    }

    #[tokio::test]
    async fn a_failing_finalize_is_retried_with_backoff_and_across_a_restart_until_it_succeeds() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let pending = with_work("u1", b"w");
        r.record_deletion(pending.clone()).await.unwrap();
        let provider = Scripted::default();
        provider.finalize.lock().unwrap().extend([Err(transient()), Err(transient())]);
        let retries = Retries::default();

        assert!(matches!(step(&provider, &r, &retries, &pending).await, Progress::FinalizeFailed(_)));
        // Backed off: the next step does not call the provider at all.
        assert!(matches!(step(&provider, &r, &retries, &pending).await, Progress::Waiting));
        assert_eq!(provider.finalized.lock().unwrap().len(), 1);

        // A restart: the record is read back from the ConfigMap, the backoff starts afresh.
        let after_restart = records(&api).await;
        let recorded = after_restart.pending_deletions();
        assert_eq!(recorded, vec![pending.clone()]);
        let retries = Retries::default();
        assert!(matches!(step(&provider, &after_restart, &retries, &recorded[0]).await, Progress::FinalizeFailed(_)));
        retries.0.lock().unwrap().clear();
        assert!(matches!(step(&provider, &after_restart, &retries, &recorded[0]).await, Progress::Finished));
        assert_eq!(provider.finalized.lock().unwrap().len(), 3);
        assert!(records(&api).await.pending_deletions().is_empty());
    }

    #[tokio::test]
    async fn a_finalize_refused_for_good_is_abandoned_and_the_record_dropped() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let refusals = [
            CallError::Provider(ProviderError::Invalid(InvalidInput {
                reason: "BadWork".into(),
                field: "finalize".into(),
                message: "unreadable".into(),
            })),
            CallError::Unsupported("no finalize here".into()),
        ];
        for (i, refusal) in refusals.into_iter().enumerate() {
            let pending = with_work(&format!("u{i}"), b"w");
            r.record_deletion(pending.clone()).await.unwrap();
            let provider = Scripted::default();
            provider.finalize.lock().unwrap().push_back(Err(refusal));
            assert!(matches!(step(&provider, &r, &Retries::default(), &pending).await, Progress::FinalizeAbandoned(_)));
            assert!(!r.is_deleting(&pending.pod.uid));
        }
    }

    #[tokio::test]
    async fn status_is_not_asked_before_the_first_poll_is_due_and_its_failures_are_reported() {
        let api = Arc::new(FakeApi::default());
        let r = records(&api).await;
        let later = crate::plugin::PendingDeletion { finalize: b"w".to_vec(), poll_after_ms: 3_600_000 };
        let pending = deletion("u1").with_pending(&later);
        r.record_deletion(pending.clone()).await.unwrap();
        let provider = Scripted::default();
        provider.status.lock().unwrap().push_back(Err(transient()));
        assert!(matches!(step(&provider, &r, &Retries::default(), &pending).await, Progress::Waiting));
        assert_eq!(provider.status.lock().unwrap().len(), 1, "status was asked before the first poll was due");

        let due = with_work("u1", b"w");
        assert!(matches!(step(&provider, &r, &Retries::default(), &due).await, Progress::StatusFailed(_)));
        assert!(provider.finalized.lock().unwrap().is_empty());
        assert!(r.is_deleting("u1"));
    }
}
