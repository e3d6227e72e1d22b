//! Logs, exec, attach and usage (P8). No byte passes through the plugin: it fetches a short-lived
//! token and tells the host where to connect. The stream endpoints are not public; this follows the
//! simulator's contract and is kept small so it can be swapped.

use serde_json::Value;

use crate::api::Params;
use crate::api::form::urlencode;
use crate::error::ProviderError;
use crate::host::Host;
use crate::instances::Cube;
use vk_provider_sdk::time::format_rfc3339;
use vk_provider_sdk::{ContainerUsage, ExecOptions, LogOptions, PodRef, PodUsage, StreamProtocol, StreamTarget};

/// The metrics asked of GetCubeMetrics, in this order.
pub const METRICS: [&str; 4] =
    ["CPUUsageCoreNanoSeconds", "CPUUsageNanoCores", "MemoryWorkingSetBytes", "MemoryUsageBytes"];
/// How far back usage samples are asked for.
const USAGE_WINDOW_SECS: i64 = 300;

/// The log stream URL for a token.
pub fn logs_url(api_url: &str, token: &str, o: &LogOptions) -> String {
    let mut url = format!("{api_url}/cube-stream/logs?token={}&follow={}", urlencode(token), o.follow);
    if let Some(n) = o.tail_lines {
        url.push_str(&format!("&tailLines={n}"));
    }
    if let Some(n) = o.since_seconds {
        url.push_str(&format!("&sinceSeconds={n}"));
    }
    if let Some(t) = &o.since_time {
        url.push_str(&format!("&sinceTime={}", urlencode(t)));
    }
    if o.timestamps {
        url.push_str("&timestamps=true");
    }
    if let Some(n) = o.limit_bytes {
        url.push_str(&format!("&limitBytes={n}"));
    }
    if o.previous {
        url.push_str("&previous=true");
    }
    url
}

/// The exec (or attach) WebSocket URL: the terminal URL with the command and stream flags.
pub fn exec_url(terminal_url: &str, o: &ExecOptions, attach: bool) -> String {
    let mut url = terminal_url.to_string();
    let sep = |u: &String| if u.contains('?') { '&' } else { '?' };
    if attach {
        url.push(sep(&url));
        url.push_str("attach=1");
    } else {
        for arg in &o.command {
            url.push(sep(&url));
            url.push_str(&format!("command={}", urlencode(arg)));
        }
    }
    for (flag, on) in [("stdin", o.stdin), ("stdout", o.stdout), ("stderr", o.stderr), ("tty", o.tty)] {
        if on {
            url.push(sep(&url));
            url.push_str(&format!("{flag}=1"));
        }
    }
    url
}

fn token_params<H: Host + ?Sized>(cube: &Cube<H>, pod: &PodRef, container: &str) -> Params {
    cube.common().set("Uid", &pod.uid).set("ContainerName", container)
}

fn field(v: &Value, key: &str, action: &str) -> Result<String, ProviderError> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Internal(format!("{action} answered without {key}: {v}")))
}

pub fn logs<H: Host + ?Sized>(
    cube: &Cube<H>,
    pod: &PodRef,
    container: &str,
    o: &LogOptions,
) -> Result<StreamTarget, ProviderError> {
    let v = cube.client.call("GetCubeToken", &token_params(cube, pod, container))?;
    let token = field(&v, "Token", "GetCubeToken")?;
    Ok(StreamTarget {
        url: logs_url(cube.client.api_url(), &token, o),
        headers: vec![],
        protocol: StreamProtocol::HttpBody,
    })
}

pub fn exec<H: Host + ?Sized>(
    cube: &Cube<H>,
    pod: &PodRef,
    container: &str,
    o: &ExecOptions,
    attach: bool,
) -> Result<StreamTarget, ProviderError> {
    if !attach && o.command.is_empty() {
        return Err(crate::error::InvalidInput::new("InvalidExec", "command", "exec needs a command").into());
    }
    let v = cube.client.call("GetCubeExecToken", &token_params(cube, pod, container))?;
    let terminal = field(&v, "TerminalUrl", "GetCubeExecToken")?;
    Ok(StreamTarget {
        url: exec_url(&terminal, o, attach),
        headers: vec![],
        protocol: StreamProtocol::WebsocketChannels,
    })
}

/// The latest value of each metric in a GetCubeMetrics answer.
pub fn latest(v: &Value) -> [u64; 4] {
    let mut out = [0u64; 4];
    for set in v.get("DataSets").and_then(Value::as_array).into_iter().flatten() {
        let name = set.get("MetricName").and_then(Value::as_str).unwrap_or_default();
        let Some(i) = METRICS.iter().position(|m| *m == name) else { continue };
        let newest = set
            .get("Values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p.get("Timestamp")?.as_i64()?, p.get("Value")?.as_f64()?)))
            .max_by_key(|(t, _)| *t);
        if let Some((_, value)) = newest {
            out[i] = value.max(0.0).round() as u64;
        }
    }
    out
}

/// Above this many pods, one ListCubePod sweep is cheaper than a GetCubePod per pod.
const LIST_ABOVE: usize = 2;

/// Usage of the pods that have instances.
pub fn usage<H: Host + ?Sized>(cube: &Cube<H>, pods: &[PodRef]) -> Result<Vec<PodUsage>, ProviderError> {
    let now = cube.host.now_unix();
    let instances: Vec<(&PodRef, String, vk_provider_sdk::PodStatus)> = if pods.len() > LIST_ABOVE {
        let mut by_uid: std::collections::HashMap<String, (String, vk_provider_sdk::PodStatus)> =
            cube.list()?.into_iter().map(|i| (i.pod.uid, (i.instance_id, i.status))).collect();
        pods.iter().filter_map(|p| by_uid.remove(&p.uid).map(|(id, s)| (p, id, s))).collect()
    } else {
        let mut found = Vec::new();
        for p in pods {
            if let Some((id, returned)) = cube.find(&p.uid)? {
                found.push((p, id, crate::status::pod_status(&returned)));
            }
        }
        found
    };
    let mut out = Vec::new();
    for (pod, cube_id, status) in instances {
        let mut containers = Vec::new();
        for c in &status.container_statuses {
            let params = cube
                .common()
                .set("ResourceId", &cube_id)
                .set("ContainerName", &c.name)
                .list("MetricName", METRICS)
                .set("BeginTime", now - USAGE_WINDOW_SECS)
                .set("EndTime", now);
            let [cpu_total, cpu_rate, working_set, usage] = latest(&cube.client.call("GetCubeMetrics", &params)?);
            let start_time = match &c.state {
                vk_provider_sdk::ContainerState::Running(r) => r.started_at.clone(),
                _ => status.start_time.clone().unwrap_or_default(),
            };
            containers.push(ContainerUsage {
                name: c.name.clone(),
                cpu_usage_core_nano_seconds: cpu_total,
                cpu_usage_nano_cores: cpu_rate,
                memory_working_set_bytes: working_set,
                memory_usage_bytes: usage,
                start_time,
            });
        }
        out.push(PodUsage { pod: pod.clone(), timestamp: format_rfc3339(now), containers });
    }
    Ok(out)
}

/// Where to forward connections to `port` of the pod: the instance's address in the VPC, which
/// the host reaches directly. `not-found` without an instance; `unsupported` while it has no IP.
pub fn port_forward<H: Host + ?Sized>(cube: &Cube<H>, pod: &PodRef, port: u16) -> Result<StreamTarget, ProviderError> {
    let Some((cube_id, returned)) = cube.find(&pod.uid)? else {
        return Err(ProviderError::NotFound(format!("no Cube instance for pod {pod} (uid {})", pod.uid)));
    };
    match returned.status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        Some(ip) => Ok(StreamTarget { url: tcp_url(ip, port), headers: vec![], protocol: StreamProtocol::Tcp }),
        None => Err(ProviderError::Unsupported(format!(
            "Cube instance {cube_id} of pod {pod} has no IP address yet, so there is nothing to forward port {port} to"
        ))),
    }
}

/// `tcp://ip:port`, an IPv6 address in brackets.
pub fn tcp_url(ip: &str, port: u16) -> String {
    if ip.contains(':') { format!("tcp://[{ip}]:{port}") } else { format!("tcp://{ip}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn log_urls_carry_only_the_options_set() {
        let cases = [
            (LogOptions::default(), "https://api.x/cube-stream/logs?token=T%2B1&follow=false"),
            (
                LogOptions {
                    follow: true,
                    tail_lines: Some(10),
                    since_seconds: Some(60),
                    since_time: Some("2026-11-26T16:00:00Z".into()),
                    timestamps: true,
                    limit_bytes: Some(4096),
                    previous: true,
                },
                "https://api.x/cube-stream/logs?token=T%2B1&follow=true&tailLines=10&sinceSeconds=60&sinceTime=2026-11-26T16%3A00%3A00Z&timestamps=true&limitBytes=4096&previous=true",
            ),
        ];
        for (o, want) in cases {
            assert_eq!(logs_url("https://api.x", "T+1", &o), want);
        }
    }

    #[test]
    fn exec_urls_add_command_args_and_flags() {
        let t = "ws://127.0.0.1:9/cube-stream/exec?token=T";
        let o = ExecOptions {
            command: vec!["sh".into(), "-c".into(), "echo a&b".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        assert_eq!(
            exec_url(t, &o, false),
            format!("{t}&command=sh&command=-c&command=echo%20a%26b&stdin=1&stdout=1&tty=1")
        );
        assert_eq!(exec_url(t, &o, true), format!("{t}&attach=1&stdin=1&stdout=1&tty=1"));
    }

    #[test]
    fn port_forward_urls_bracket_ipv6() {
        assert_eq!(tcp_url("10.23.0.7", 8080), "tcp://10.23.0.7:8080");
        assert_eq!(tcp_url("fd00::7", 80), "tcp://[fd00::7]:80");
    }

    #[test]
    fn takes_the_latest_value_of_each_metric() {
        let v = json!({"DataSets": [
            {"MetricName": "CPUUsageNanoCores", "Values": [{"Timestamp": 20, "Value": 5.0}, {"Timestamp": 30, "Value": 250000000.4}, {"Timestamp": 10, "Value": 9.0}]},
            {"MetricName": "MemoryUsageBytes", "Values": [{"Timestamp": 30, "Value": 1048576}]},
            {"MetricName": "Other", "Values": [{"Timestamp": 30, "Value": 1}]},
        ]});
        assert_eq!(latest(&v), [0, 250_000_000, 0, 1_048_576]);
    }
}
