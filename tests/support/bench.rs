//! Helpers shared by the benchmark harnesses (`tests/bench/*.rs`): release binaries, subprocesses
//! that stop when dropped, the machine's load, percentiles, Prometheus text lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// `$CARGO_TARGET_DIR/release/<name>` (or `<repo>/target/release/<name>`), failing with the build
/// command when it is missing. `VKCUBE_BENCH_VKHOST=path` measures another vkhost build (e.g. one
/// with a different profile).
pub fn release_binary(name: &str) -> Result<PathBuf> {
    if name == "vkhost"
        && let Some(path) = std::env::var_os("VKCUBE_BENCH_VKHOST")
    {
        return Ok(PathBuf::from(path));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::repo_root().join("target"));
    let path = target.join("release").join(name);
    if !path.exists() {
        bail!("{} is missing: run `cargo build --release -p {name}` first (same CARGO_TARGET_DIR)", path.display());
    }
    Ok(path)
}

/// A subprocess stopped with SIGTERM (then SIGKILL after 10 s) when dropped, so a failed run
/// leaves nothing behind.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 10 s of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails naming the log file if the process has exited.
    pub fn ensure_alive(&mut self, log: &Path) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}); see {}", self.name, log.display());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The value of label `name` in a Prometheus text line (`metric{a="x",b="y"} 3`).
pub fn metric_label(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    Some(line[start..].split('"').next()?.to_string())
}

/// The sample value of a Prometheus text line; 0 when it has none.
pub fn metric_value(line: &str) -> f64 {
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// A Prometheus histogram's cumulative counts by upper bound (`le`, `+Inf` as infinity), from its
/// `_bucket` lines; lines with other labels for the same bound add up.
#[derive(Default, Clone)]
pub struct Buckets(std::collections::BTreeMap<u64, f64>);

impl Buckets {
    pub fn add(&mut self, line: &str) {
        let Some(le) = metric_label(line, "le") else { return };
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        *self.0.entry(bound.to_bits()).or_default() += metric_value(line);
    }

    /// The counts observed since `before`.
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(self.0.iter().map(|(b, n)| (*b, n - before.0.get(b).copied().unwrap_or(0.0))).collect())
    }

    pub fn count(&self) -> f64 {
        self.0.values().copied().fold(0.0, f64::max)
    }

    /// The `q` quantile (0..1) in ms, interpolated within its bucket as PromQL's
    /// `histogram_quantile` does; `None` without samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let mut bounds: Vec<(f64, f64)> = self.0.iter().map(|(b, n)| (f64::from_bits(*b), *n)).collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (upper, cumulative) in bounds {
            if cumulative >= rank {
                if upper.is_infinite() {
                    return Some(lower * 1000.0);
                }
                let share = if cumulative > below { (rank - below) / (cumulative - below) } else { 1.0 };
                return Some((lower + (upper - lower) * share) * 1000.0);
            }
            (lower, below) = (upper, cumulative);
        }
        Some(lower * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(lines: &[(&str, f64)]) -> Buckets {
        let mut h = Buckets::default();
        for (le, n) in lines {
            h.add(&format!("x_bucket{{verb=\"PATCH\",le=\"{le}\"}} {n}"));
        }
        h
    }

    #[test]
    fn a_quantile_is_interpolated_within_its_bucket_as_promql_does() {
        // 100 samples: 50 under 0.1 s, 40 between 0.1 and 0.2 s, 10 between 0.2 and 0.4 s.
        let h = histogram(&[("0.1", 50.0), ("0.2", 90.0), ("0.4", 100.0), ("+Inf", 100.0)]);
        assert_eq!(h.count(), 100.0);
        assert_eq!(h.quantile_ms(0.5), Some(100.0));
        assert!((h.quantile_ms(0.7).unwrap() - 150.0).abs() < 1e-9);
        assert!((h.quantile_ms(0.99).unwrap() - 380.0).abs() < 1e-9);
        assert_eq!(Buckets::default().quantile_ms(0.99), None);
    }

    #[test]
    fn counts_since_an_earlier_sample_and_other_labels_add_up() {
        let before = histogram(&[("0.1", 10.0), ("+Inf", 10.0)]);
        let mut after = histogram(&[("0.1", 10.0), ("+Inf", 12.0)]);
        after.add("x_bucket{verb=\"PATCH\",scope=\"namespace\",le=\"0.1\"} 5");
        after.add("x_bucket{verb=\"PATCH\",scope=\"namespace\",le=\"+Inf\"} 5");
        let d = after.since(&before);
        assert_eq!(d.count(), 7.0);
        // 5 of the 7 new ones under 0.1 s, 2 above every bound: the top quantiles are the last
        // finite bound, as PromQL answers.
        assert_eq!(d.quantile_ms(0.99), Some(100.0));
    }
}
