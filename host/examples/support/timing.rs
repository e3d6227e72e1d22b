//! What the plugin benches share: their arguments and how they time calls and print rows
//! (included with `#[path]`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A duration in µs below a millisecond, else in ms.
pub fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

/// Median, p99 and max of `samples`, as a table row.
pub fn row(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label:<52} n={:<6} median {:>10}  p99 {:>10}  max {:>10}",
        samples.len(),
        fmt(at(0.5)),
        fmt(at(0.99)),
        fmt(*samples.last().unwrap())
    );
}

/// `n` timed calls after a tenth as many (at least 10) untimed ones.
pub async fn time_calls<F, Fut>(n: usize, mut call: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..(n / 10).max(10) {
        call().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call().await;
        samples.push(t.elapsed());
    }
    samples
}
