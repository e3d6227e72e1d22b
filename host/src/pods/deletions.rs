//! Seeing a recorded deletion through, one step at a time: once it is due, `status` until the
//! provider answers `not-found`, then `finalize` with the work `delete` handed over (if any) until
//! it succeeds, then the record goes. The record lives in the node's durable records, so a
//! restart or another replica takes over where this one stopped. Used by the pod controller's
//! status loop and by `vkhost node delete`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::plugin::{CallContext, CallError, Plugin, ProviderError};
use crate::records::{NodeRecords, PendingDeletion};

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
    plugin: &Plugin,
    call: &CallContext,
    records: &NodeRecords,
    retries: &Retries,
    pending: &PendingDeletion,
) -> Progress {
    let uid = pending.pod.uid.as_str();
    if !pending.due() || !retries.due(uid) {
        return Progress::Waiting;
    }
    match plugin.status(call, &pending.pod).await {
        Err(CallError::Provider(ProviderError::NotFound(_))) => {}
        Ok(_) => return Progress::Waiting,
        Err(e) => return Progress::StatusFailed(e),
    }
    let progress = if pending.finalize.is_empty() {
        Progress::Finished
    } else {
        match plugin.finalize(call, &pending.pod, &pending.finalize).await {
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
