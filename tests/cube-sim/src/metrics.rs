//! GetCubeMetrics: per-container series that are deterministic functions of the container's
//! limits and the instance's age, so tests can predict them.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::actions::{Answer, Ctx, fields};
use crate::error::ApiError;
use crate::params::Params;
use crate::podspec::{parse_cpu, parse_mem_bytes};
use crate::state::Instance;

pub const METRICS: &[&str] =
    &["CPUUsageCoreNanoSeconds", "CPUUsageNanoCores", "MemoryWorkingSetBytes", "MemoryUsageBytes"];

/// Seconds between points.
pub const STEP: i64 = 60;

/// One metric's value for a container with `cpu_millis`/`mem_bytes` limits, `age` seconds
/// after the instance was created.
pub fn value(metric: &str, cpu_millis: u64, mem_bytes: u64, age: i64) -> f64 {
    let age = age.max(0) as f64;
    // A quarter of the CPU limit, always.
    let nano_cores = cpu_millis as f64 * 1e6 * 0.25;
    // 32 MiB at start, growing 256 KiB a minute, capped at 60% of the limit.
    let working_set = (32.0 * 1048576.0 + age / 60.0 * 262144.0).min(mem_bytes as f64 * 0.6).floor();
    match metric {
        "CPUUsageNanoCores" => nano_cores,
        "CPUUsageCoreNanoSeconds" => (nano_cores * age).floor(),
        "MemoryWorkingSetBytes" => working_set,
        "MemoryUsageBytes" => (working_set + 8.0 * 1048576.0).min(mem_bytes as f64),
        _ => 0.0,
    }
}

fn limits_of(inst: &Instance, container: Option<&str>) -> Result<(u64, u64), ApiError> {
    let mut cpu = 0;
    let mut mem = 0;
    let mut found = false;
    for c in &inst.pod.spec.containers {
        if container.is_some_and(|n| n != c.name) {
            continue;
        }
        found = true;
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        cpu += limits.and_then(|l| l.get("cpu")).and_then(parse_cpu).unwrap_or(0);
        mem += limits.and_then(|l| l.get("memory")).and_then(parse_mem_bytes).unwrap_or(0);
    }
    if !found {
        let name = container.unwrap_or_default();
        return Err(ApiError::invalid("ContainerName", format!("{name:?} is not a container of {}", inst.cube_id)));
    }
    Ok((cpu, mem))
}

/// Points on the minute within [begin, end] and the instance's life, plus the end itself.
pub fn timestamps(created: DateTime<Utc>, until: DateTime<Utc>, begin: i64, end: i64) -> Vec<i64> {
    let from = begin.max(created.timestamp());
    let to = end.min(until.timestamp());
    if from > to {
        return Vec::new();
    }
    let mut ts: Vec<i64> = ((from + STEP - 1) / STEP * STEP..=to).step_by(STEP as usize).collect();
    if ts.last() != Some(&to) {
        ts.push(to);
    }
    ts
}

pub fn get(ctx: &Ctx, p: &Params) -> Answer {
    let id = p.required("ResourceId")?;
    let names = p.list("MetricName");
    if names.is_empty() {
        return Err(ApiError::MissingParam("MetricName".into()));
    }
    for n in &names {
        if !METRICS.contains(&n.as_str()) {
            return Err(ApiError::invalid("MetricName", format!("{n:?} is not one of {}", METRICS.join(", "))));
        }
    }
    let end = p.int("EndTime")?.unwrap_or(ctx.now.timestamp());
    let begin = p.int("BeginTime")?.unwrap_or(end - 600);
    if begin > end {
        return Err(ApiError::invalid("BeginTime", format!("{begin} is after EndTime {end}")));
    }
    let state = ctx.sim.state.lock();
    let inst = state
        .instances
        .get(id)
        .filter(|i| i.live() && i.region == ctx.region)
        .ok_or_else(|| ApiError::CubeNotFound(id.to_string()))?;
    let (cpu, mem) = limits_of(inst, p.get("ContainerName"))?;
    let ts = timestamps(inst.created_at, ctx.now, begin, end);
    let sets: Vec<Value> = names
        .iter()
        .map(|n| {
            let values: Vec<Value> = ts
                .iter()
                .map(|t| {
                    let at = Utc.timestamp_opt(*t, 0).single().unwrap_or(ctx.now);
                    json!({"Timestamp": t, "Value": value(n, cpu, mem, (at - inst.created_at).num_seconds())})
                })
                .collect();
            json!({"MetricName": n, "Values": values})
        })
        .collect();
    Ok(fields(json!({"DataSets": sets})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_cpu_grows_with_age_and_memory_stays_under_the_limit() {
        let a = value("CPUUsageCoreNanoSeconds", 1000, 1 << 30, 60);
        let b = value("CPUUsageCoreNanoSeconds", 1000, 1 << 30, 120);
        assert_eq!(b, 2.0 * a);
        assert_eq!(value("CPUUsageNanoCores", 1000, 1 << 30, 5), 250_000_000.0);
        assert!(value("MemoryWorkingSetBytes", 500, 512 << 20, 1_000_000) <= (512u64 << 20) as f64 * 0.6);
    }

    #[test]
    fn timestamps_stay_within_the_instances_life() {
        let created = Utc.timestamp_opt(1000, 0).unwrap();
        let now = Utc.timestamp_opt(1130, 0).unwrap();
        assert_eq!(timestamps(created, now, 0, 5000), vec![1020, 1080, 1130]);
        assert!(timestamps(created, now, 2000, 3000).is_empty());
    }
}
