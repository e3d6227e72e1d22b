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
