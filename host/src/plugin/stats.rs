//! Counters of reloads and calls (by export and outcome), kept as plain atomics so the hot path
//! pays one relaxed increment; exported to Prometheus by whoever owns metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::plugin::error::{CallError, Export};

/// Every outcome a call can have, `ok` first; the names of `CallError::outcome`.
pub const OUTCOMES: [&str; 13] = [
    "ok",
    "invalid",
    "not_found",
    "transient",
    "quota_exceeded",
    "internal",
    "unsupported",
    "trap",
    "cpu_deadline",
    "timeout",
    "memory_exceeded",
    "stream_denied",
    "instantiate",
];

#[derive(Default)]
pub struct PluginStats {
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    optimized_swaps: AtomicU64,
    optimized_superseded: AtomicU64,
    signature_refusals: AtomicU64,

    rollbacks: AtomicU64,
    calls: [[AtomicU64; OUTCOMES.len()]; Export::ALL.len()],
    micros: [AtomicU64; Export::ALL.len()],
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSnapshot {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Baseline builds replaced by their Cranelift build.
    pub optimized_swaps: u64,
    /// Cranelift builds that finished after a newer file had replaced their version, and were
    /// dropped.
    pub optimized_superseded: u64,
    /// Versions refused because they were unsigned or not signed by the configured key.
    pub signature_refusals: u64,

    /// Node version changes that were automatic rollbacks (one per node rolled back).
    pub rollbacks: u64,
    /// Non-zero counters only.
    pub calls: Vec<CallCount>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallCount {
    pub export: &'static str,
    pub outcome: &'static str,
    pub count: u64,
    /// Total time spent in calls of this export (all outcomes), in microseconds.
    pub export_micros_total: u64,
}

fn export_index(export: Export) -> usize {
    Export::ALL.iter().position(|e| *e == export).unwrap_or(0)
}

impl PluginStats {
    pub(crate) fn record_call<T>(&self, export: Export, result: &Result<T, CallError>, took: Duration) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        let o = OUTCOMES.iter().position(|n| *n == outcome).unwrap_or(0);
        let e = export_index(export);
        self.calls[e][o].fetch_add(1, Relaxed);
        self.micros[e].fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub(crate) fn record_reload(&self, ok: bool) {
        if ok { &self.reloads_ok } else { &self.reloads_failed }.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_signature_refusal(&self) {
        self.signature_refusals.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_optimized_swap(&self) {
        self.optimized_swaps.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_rollback(&self) {
        self.rollbacks.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_optimized_superseded(&self) {
        self.optimized_superseded.fetch_add(1, Relaxed);
    }

    pub fn calls(&self, export: Export, outcome: &str) -> u64 {
        OUTCOMES.iter().position(|n| *n == outcome).map_or(0, |o| self.calls[export_index(export)][o].load(Relaxed))
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut calls = Vec::new();
        for (e, export) in Export::ALL.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let count = self.calls[e][o].load(Relaxed);
                if count > 0 {
                    calls.push(CallCount {
                        export: export.wit_name(),
                        outcome,
                        count,
                        export_micros_total: self.micros[e].load(Relaxed),
                    });
                }
            }
        }
        StatsSnapshot {
            reloads_ok: self.reloads_ok.load(Relaxed),
            reloads_failed: self.reloads_failed.load(Relaxed),
            optimized_swaps: self.optimized_swaps.load(Relaxed),
            optimized_superseded: self.optimized_superseded.load(Relaxed),
            signature_refusals: self.signature_refusals.load(Relaxed),

            rollbacks: self.rollbacks.load(Relaxed),
            calls,
        }
    }
}
