//! `/pods`, `/runningpods/`, `/stats/summary` and `/metrics/resource`: the node's pods and their
//! usage, in the shapes metrics-server and `kubectl top` read (kubelet stats v1alpha1 JSON,
//! Prometheus text).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use super::backend::PodUsage;
use super::{ApiState, error_response};

/// The pods bound to the node, as the host last saw them.
pub async fn pods(State(state): State<Arc<ApiState>>) -> Response {
    pod_list(state.backend.pods())
}

/// The pods the provider runs, as the kubelet serves its runtime's pods and upstream
/// virtual-kubelet its provider's `GetPods`: a `v1` PodList.
pub async fn running_pods(State(state): State<Arc<ApiState>>) -> Response {
    match state.backend.running_pods().await {
        Ok(pods) => pod_list(pods),
        Err(e) => error_response(e.status(), format!("running pods of node {}: {e}", state.node)),
    }
}

fn pod_list(items: Vec<Pod>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    });
    axum::Json(list).into_response()
}

pub async fn summary(State(state): State<Arc<ApiState>>) -> Response {
    match state.backend.usage().await {
        Ok(usage) => axum::Json(build_summary(&state.node, state.started, Utc::now(), &usage, &state.backend.pods()))
            .into_response(),
        Err(e) => error_response(e.status(), format!("usage of node {}: {e}", state.node)),
    }
}

pub async fn resource_metrics(State(state): State<Arc<ApiState>>) -> Response {
    let text = match state.backend.usage().await {
        Ok(usage) => render_metrics(Utc::now(), &usage, false),
        Err(e) => {
            tracing::warn!(node = %state.node, error = %e, "kubelet API: usage unavailable for /metrics/resource");
            render_metrics(Utc::now(), &[], true)
        }
    };
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub system_containers: Vec<ContainerStats>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: String,
    pub containers: Vec<ContainerStats>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Debug, Serialize, PartialEq, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    pub usage_nano_cores: u64,
    pub usage_core_nano_seconds: u64,
}

#[derive(Debug, Serialize, PartialEq, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    pub working_set_bytes: u64,
    pub usage_bytes: u64,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Builds the Summary: container samples as given, pods and the node as their sums.
pub fn build_summary(
    node: &str,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    usage: &[PodUsage],
    pods: &[Pod],
) -> Summary {
    let now_s = rfc3339(now);
    let pod_start: HashMap<(String, String), (String, Option<String>)> = pods
        .iter()
        .map(|p| {
            let key = (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
            let start = p.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string());
            (key, (p.metadata.uid.clone().unwrap_or_default(), start))
        })
        .collect();
    let mut node_cpu = CpuStats { time: now_s.clone(), ..CpuStats::default() };
    let mut node_mem = MemoryStats { time: now_s.clone(), ..MemoryStats::default() };
    let mut out = Vec::with_capacity(usage.len());
    for pod in usage {
        let time = if pod.timestamp.is_empty() { now_s.clone() } else { pod.timestamp.clone() };
        let mut cpu = CpuStats { time: time.clone(), ..CpuStats::default() };
        let mut memory = MemoryStats { time: time.clone(), ..MemoryStats::default() };
        let containers: Vec<ContainerStats> = pod
            .containers
            .iter()
            .map(|c| {
                cpu.usage_nano_cores += c.cpu_usage_nano_cores;
                cpu.usage_core_nano_seconds += c.cpu_usage_core_nano_seconds;
                memory.working_set_bytes += c.memory_working_set_bytes;
                memory.usage_bytes += c.memory_usage_bytes;
                ContainerStats {
                    name: c.name.clone(),
                    start_time: c.start_time.clone(),
                    cpu: CpuStats {
                        time: time.clone(),
                        usage_nano_cores: c.cpu_usage_nano_cores,
                        usage_core_nano_seconds: c.cpu_usage_core_nano_seconds,
                    },
                    memory: MemoryStats {
                        time: time.clone(),
                        working_set_bytes: c.memory_working_set_bytes,
                        usage_bytes: c.memory_usage_bytes,
                    },
                }
            })
            .collect();
        node_cpu.usage_nano_cores += cpu.usage_nano_cores;
        node_cpu.usage_core_nano_seconds += cpu.usage_core_nano_seconds;
        node_mem.working_set_bytes += memory.working_set_bytes;
        node_mem.usage_bytes += memory.usage_bytes;
        let known = pod_start.get(&(pod.namespace.clone(), pod.name.clone()));
        let uid = if pod.uid.is_empty() { known.map(|k| k.0.clone()).unwrap_or_default() } else { pod.uid.clone() };
        let start_time = known
            .and_then(|k| k.1.clone())
            .or_else(|| containers.iter().map(|c| c.start_time.clone()).filter(|s| !s.is_empty()).min())
            .unwrap_or_else(|| time.clone());
        out.push(PodStats {
            pod_ref: PodReference { name: pod.name.clone(), namespace: pod.namespace.clone(), uid },
            start_time,
            containers,
            cpu,
            memory,
        });
    }
    Summary {
        node: NodeStats {
            node_name: node.to_string(),
            start_time: rfc3339(started),
            cpu: node_cpu,
            memory: node_mem,
            system_containers: Vec::new(),
        },
        pods: out,
    }
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn millis(rfc: &str, fallback: i64) -> i64 {
    DateTime::parse_from_rfc3339(rfc).map(|t| t.timestamp_millis()).unwrap_or(fallback)
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// Renders the resource metrics endpoint in Prometheus text format 0.0.4.
pub fn render_metrics(now: DateTime<Utc>, usage: &[PodUsage], scrape_error: bool) -> String {
    let now_ms = now.timestamp_millis();
    let mut out = String::new();
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let container_rows = |out: &mut String, value: &dyn Fn(&super::backend::ContainerUsage) -> String| {
        for pod in usage {
            let ts = millis(&pod.timestamp, now_ms);
            for c in &pod.containers {
                let _ = writeln!(
                    out,
                    "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ts}",
                    label(&c.name),
                    label(&pod.namespace),
                    label(&pod.name),
                    value(c)
                );
            }
        }
    };
    // Each metric family's rows are written as "<name>" + the row, so build the row text first.
    let family = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&super::backend::ContainerUsage) -> String| {
        header(out, name, kind, help);
        let mut rows = String::new();
        container_rows(&mut rows, value);
        for row in rows.lines() {
            let _ = writeln!(out, "{name}{row}");
        }
    };
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        &|c| seconds(c.cpu_usage_core_nano_seconds).to_string(),
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the container in bytes",
        &|c| c.memory_working_set_bytes.to_string(),
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "[STABLE] Start time of the container since unix epoch in seconds",
        &|c| (millis(&c.start_time, 0) as f64 / 1000.0).to_string(),
    );

    let (mut node_cpu, mut node_mem) = (0u64, 0u64);
    header(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    for pod in usage {
        let cpu: u64 = pod.containers.iter().map(|c| c.cpu_usage_core_nano_seconds).sum();
        node_cpu += cpu;
        let _ = writeln!(
            out,
            "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            label(&pod.namespace),
            label(&pod.name),
            seconds(cpu),
            millis(&pod.timestamp, now_ms)
        );
    }
    header(&mut out, "pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes");
    for pod in usage {
        let mem: u64 = pod.containers.iter().map(|c| c.memory_working_set_bytes).sum();
        node_mem += mem;
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            label(&pod.namespace),
            label(&pod.name),
            mem,
            millis(&pod.timestamp, now_ms)
        );
    }
    if !scrape_error {
        header(
            &mut out,
            "node_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        );
        // Stamped with the pods' sample time, not the time of this answer: metrics-server divides
        // the counter's increase by the time between two samples, and the counter is the pods'.
        let node_ms = usage.iter().map(|p| millis(&p.timestamp, now_ms)).max().unwrap_or(now_ms);
        let _ = writeln!(out, "node_cpu_usage_seconds_total {} {node_ms}", seconds(node_cpu));
        header(&mut out, "node_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the node in bytes");
        let _ = writeln!(out, "node_memory_working_set_bytes {node_mem} {node_ms}");
    }
    header(
        &mut out,
        "scrape_error",
        "gauge",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
    );
    let _ = writeln!(out, "scrape_error {}", u8::from(scrape_error));
    out
}

#[cfg(test)]
mod tests {
    use super::super::backend::ContainerUsage;
    use super::*;

    fn sample() -> Vec<PodUsage> {
        vec![PodUsage {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u-1".into(),
            timestamp: "2026-11-26T16:00:00Z".into(),
            containers: vec![
                ContainerUsage {
                    name: "app".into(),
                    cpu_usage_core_nano_seconds: 2_500_000_000,
                    cpu_usage_nano_cores: 100_000_000,
                    memory_working_set_bytes: 1000,
                    memory_usage_bytes: 1500,
                    start_time: "2026-11-26T15:00:00Z".into(),
                },
                ContainerUsage {
                    name: "side\"car".into(),
                    cpu_usage_core_nano_seconds: 500_000_000,
                    cpu_usage_nano_cores: 50_000_000,
                    memory_working_set_bytes: 24,
                    memory_usage_bytes: 30,
                    start_time: "2026-11-26T15:00:05Z".into(),
                },
            ],
        }]
    }

    #[test]
    fn summary_sums_containers_into_pod_and_node() {
        let now = "2026-11-26T16:00:10Z".parse().unwrap();
        let s = build_summary("vk", now, now, &sample(), &[]);
        assert_eq!(s.pods[0].cpu.usage_nano_cores, 150_000_000);
        assert_eq!(s.pods[0].memory.working_set_bytes, 1024);
        assert_eq!(s.node.cpu.usage_core_nano_seconds, 3_000_000_000);
        assert_eq!(s.node.memory.usage_bytes, 1530);
        assert_eq!(s.pods[0].start_time, "2026-11-26T15:00:00Z");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["node"]["nodeName"], "vk");
        assert_eq!(json["pods"][0]["podRef"]["uid"], "u-1");
        assert_eq!(json["pods"][0]["containers"][0]["cpu"]["usageCoreNanoSeconds"], 2_500_000_000u64);
        assert_eq!(json["pods"][0]["containers"][1]["memory"]["workingSetBytes"], 24);
    }

    #[test]
    fn metrics_text_has_every_family_metrics_server_reads() {
        let text = render_metrics("2026-11-26T16:00:10Z".parse().unwrap(), &sample(), false);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2.5 1795708800000"
        ), "{text}");
        assert!(text.contains(
            "container_memory_working_set_bytes{container=\"side\\\"car\",namespace=\"default\",pod=\"web\"} 24 "
        ));
        assert!(
            text.contains(
                "container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1795705200 "
            )
        );
        assert!(text.contains("pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"web\"} 3 "));
        assert!(text.contains("pod_memory_working_set_bytes{namespace=\"default\",pod=\"web\"} 1024 "));
        // At the pods' sample time (16:00:00), not the answer's (16:00:10).
        assert!(text.contains("node_cpu_usage_seconds_total 3 1795708800000\n"), "{text}");
        assert!(text.contains("node_memory_working_set_bytes 1024 1795708800000\n"), "{text}");
        assert!(text.contains("scrape_error 0\n"));
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter"));
    }

    #[test]
    fn failed_usage_reports_a_scrape_error_without_node_samples() {
        let text = render_metrics(Utc::now(), &[], true);
        assert!(text.contains("scrape_error 1\n"));
        assert!(!text.contains("node_cpu_usage_seconds_total "));
    }
}
