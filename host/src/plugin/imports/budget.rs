//! A plugin's cloud-API budget: a token bucket in front of its HTTP egress, sized to the rate its
//! cloud publishes, so a burst of calls waits in the host (within each call's timeout) instead of
//! earning throttling answers that the plugin would retry into a storm.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde::Deserialize;

/// The `[plugin.egress]` table: how fast the plugin may send. Off (no limit) by default: the host
/// knows no cloud, the operator sets the figure of theirs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    /// Requests per second the bucket refills with; 0: no budget.
    pub requests_per_second: f64,
    /// Requests that may go at once after a quiet spell (the bucket's size); at least 1.
    pub burst: u32,
}

impl BudgetSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !self.requests_per_second.is_finite() || self.requests_per_second < 0.0 {
            return Err(format!(
                "plugin.egress.requests_per_second is {}, but must be 0 (no budget) or more",
                self.requests_per_second
            ));
        }
        Ok(())
    }
}

/// What the budget did so far (cumulative, for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetStats {
    /// Requests that waited for a token.
    pub waited: u64,
    /// Their waits, summed.
    pub wait_seconds: f64,
    /// Requests failed with a timeout because their turn would have come after it.
    pub refused: u64,
}

/// A token bucket whose tokens may go below zero: each request reserves the next token and
/// sleeps until it is due, so waiting requests go out in order, evenly spaced.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    bucket: Mutex<(f64, Instant)>,
    waited: AtomicU64,
    wait_micros: AtomicU64,
    refused: AtomicU64,
}

impl Budget {
    /// `None` when the settings ask for no budget.
    pub fn new(settings: &BudgetSettings) -> Option<Budget> {
        (settings.requests_per_second > 0.0).then(|| {
            let burst = f64::from(settings.burst.max(1));
            Budget {
                rate: settings.requests_per_second,
                burst,
                bucket: Mutex::new((burst, Instant::now())),
                waited: AtomicU64::new(0),
                wait_micros: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }
        })
    }

    /// Waits for the next token. A request whose turn would come later than `patience` takes
    /// none and gets `Err` with how long it would have waited.
    pub async fn take(&self, patience: Duration) -> Result<Duration, Duration> {
        let wait = self.reserve(Instant::now(), patience)?;
        if !wait.is_zero() {
            self.waited.fetch_add(1, Ordering::Relaxed);
            self.wait_micros.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }

    fn reserve(&self, now: Instant, patience: Duration) -> Result<Duration, Duration> {
        let mut bucket = self.bucket.lock().unwrap();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        let wait = if tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - tokens) / self.rate) };
        if wait > patience {
            *bucket = (tokens, now);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(wait);
        }
        *bucket = (tokens - 1.0, now);
        Ok(wait)
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            waited: self.waited.load(Ordering::Relaxed),
            wait_seconds: self.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rate: f64, burst: u32) -> Budget {
        Budget::new(&BudgetSettings { requests_per_second: rate, burst }).unwrap()
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_are_spaced_at_the_rate() {
        let b = budget(10.0, 3);
        let now = Instant::now();
        let patience = Duration::from_secs(10);
        let waits: Vec<Duration> = (0..6).map(|_| b.reserve(now, patience).unwrap()).collect();
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
        // A second later the queue has drained and 6 tokens came in, capped at the burst.
        let later = now + Duration::from_millis(1300);
        let ms: Vec<u128> = (0..4).map(|_| b.reserve(later, patience).unwrap().as_millis()).collect();
        assert_eq!(ms, [0, 0, 0, 100]);
    }

    #[test]
    fn a_turn_past_the_patience_is_refused_and_takes_no_token() {
        let b = budget(1.0, 1);
        let now = Instant::now();
        assert_eq!(b.reserve(now, Duration::from_millis(500)), Ok(Duration::ZERO));
        assert_eq!(b.reserve(now, Duration::from_millis(500)), Err(Duration::from_secs(1)));
        assert_eq!(b.reserve(now, Duration::from_secs(2)), Ok(Duration::from_secs(1)), "the refusal took nothing");
        assert_eq!(b.stats().refused, 1);
    }

    #[test]
    fn no_rate_means_no_budget_and_a_negative_one_is_refused() {
        assert!(Budget::new(&BudgetSettings::default()).is_none());
        let err = BudgetSettings { requests_per_second: -1.0, burst: 1 }.validate().unwrap_err();
        assert!(err.contains("plugin.egress.requests_per_second is -1"), "{err}");
        let s: BudgetSettings = toml::from_str("requests_per_second = 10\nburst = 20").unwrap();
        assert_eq!(s, BudgetSettings { requests_per_second: 10.0, burst: 20 });
    }
}
