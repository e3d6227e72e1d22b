//! How an instance looks at a given moment: Pending → ContainerCreating → Running, image pull
//! failures, crash loops, finished commands; and the pod YAML Cube returns for it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_yaml_ng::{Mapping, Value};

use crate::config::Config;
use crate::podspec::{Container, registry_allowed};
use crate::program::{End, Program};
use crate::state::Instance;

#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting { reason: String },
    Running { started_at: DateTime<Utc> },
    Terminated { exit_code: i32, reason: String, started_at: DateTime<Utc>, finished_at: DateTime<Utc> },
}

#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub ready: bool,
    pub restart_count: u32,
    pub state: ContainerState,
    /// Start of the current run (for logs), if it ever started.
    pub run_started_at: Option<DateTime<Utc>>,
    /// Start and end of the previous run (for `previous=true` logs).
    pub previous_run: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub last_exit: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct PodView {
    /// Cube's status word: Pending, ContainerCreating, Running, Completed, Error,
    /// CrashLoopBackOff, ErrImagePull.
    pub phase: &'static str,
    pub start_time: Option<DateTime<Utc>>,
    pub containers: Vec<ContainerView>,
}

pub fn hostname(inst: &Instance) -> String {
    inst.pod.spec.hostname.clone().or_else(|| inst.pod.metadata_str("name")).unwrap_or_else(|| inst.cube_id.clone())
}

pub fn crashes(cfg: &Config, c: &Container) -> bool {
    cfg.lifecycle.crash_containers.iter().any(|n| n == "*" || *n == c.name)
}

/// Milliseconds from an instance's (re)start to its containers running: `pending_ms`, then
/// `creating_ms` plus the instance's own share of `creating_jitter_ms`.
pub fn start_ms(inst: &Instance, cfg: &Config) -> (u64, u64) {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let jitter = match cfg.lifecycle.creating_jitter_ms {
        0 => 0,
        j => {
            let mut h = DefaultHasher::new();
            inst.cube_id.hash(&mut h);
            h.finish() % (j + 1)
        }
    };
    (cfg.lifecycle.pending_ms, cfg.lifecycle.creating_ms + jitter)
}

pub fn observe(inst: &Instance, cfg: &Config, now: DateTime<Utc>) -> PodView {
    let mut view = observe_running(inst, cfg, now);
    if inst.deleting_since.is_some() {
        view.phase = "Terminating";
    }
    view
}

fn observe_running(inst: &Instance, cfg: &Config, now: DateTime<Utc>) -> PodView {
    let since = (now - inst.started_at).num_milliseconds().max(0) as u64;
    let (pending, creating) = start_ms(inst, cfg);
    let waiting = |reason: &str| -> Vec<ContainerView> {
        inst.pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerView {
                name: c.name.clone(),
                image: c.image.clone(),
                ready: false,
                restart_count: inst.reboots,
                state: ContainerState::Waiting { reason: reason.to_string() },
                run_started_at: None,
                previous_run: None,
                last_exit: None,
            })
            .collect()
    };
    if since < pending {
        return PodView { phase: "Pending", start_time: None, containers: waiting("ContainerCreating") };
    }
    if since < pending + creating {
        return PodView { phase: "ContainerCreating", start_time: None, containers: waiting("ContainerCreating") };
    }
    let run_start = inst.started_at + Duration::milliseconds((pending + creating) as i64);
    let host = hostname(inst);
    let policy = inst.pod.spec.restart_policy.as_deref().unwrap_or("Always");
    let interval = cfg.lifecycle.crash_interval_secs.max(1) as i64 * 1000;
    let t = (now - run_start).num_milliseconds().max(0);
    let containers: Vec<ContainerView> = inst
        .pod
        .spec
        .containers
        .iter()
        .map(|c| {
            let base = ContainerView {
                name: c.name.clone(),
                image: c.image.clone(),
                ready: false,
                restart_count: inst.reboots,
                state: ContainerState::Waiting { reason: "ErrImagePull".into() },
                run_started_at: None,
                previous_run: None,
                last_exit: None,
            };
            if !registry_allowed(&c.image, cfg) {
                return base;
            }
            // A run of `run_ms` then an exit with `code`; None: runs forever.
            let (run_ms, code) = if crashes(cfg, c) {
                (Some(1000), 1)
            } else {
                match Program::of(c, &host).end {
                    End::Exit { at_secs, code } => (Some(at_secs as i64 * 1000), code),
                    End::Idle | End::Server => (None, 0),
                }
            };
            let Some(run_ms) = run_ms else {
                return ContainerView {
                    ready: true,
                    state: ContainerState::Running { started_at: run_start },
                    run_started_at: Some(run_start),
                    ..base
                };
            };
            let restarts = policy == "Always" || (policy == "OnFailure" && code != 0);
            if !restarts {
                let finished = run_start + Duration::milliseconds(run_ms);
                if t < run_ms {
                    return ContainerView {
                        ready: true,
                        state: ContainerState::Running { started_at: run_start },
                        run_started_at: Some(run_start),
                        ..base
                    };
                }
                let reason = if code == 0 { "Completed" } else { "Error" };
                return ContainerView {
                    state: ContainerState::Terminated {
                        exit_code: code,
                        reason: reason.into(),
                        started_at: run_start,
                        finished_at: finished,
                    },
                    run_started_at: Some(run_start),
                    last_exit: Some(code),
                    ..base
                };
            }
            // Restarting after every exit, with a flat back-off of `interval`.
            let cycle = run_ms + interval;
            let n = t / cycle;
            let within = t - n * cycle;
            let this_start = run_start + Duration::milliseconds(n * cycle);
            let previous_run = (n > 0).then(|| {
                let s = run_start + Duration::milliseconds((n - 1) * cycle);
                (s, s + Duration::milliseconds(run_ms))
            });
            if within < run_ms {
                ContainerView {
                    ready: true,
                    restart_count: inst.reboots + n as u32,
                    state: ContainerState::Running { started_at: this_start },
                    run_started_at: Some(this_start),
                    previous_run,
                    last_exit: (n > 0).then_some(code),
                    ..base
                }
            } else {
                ContainerView {
                    restart_count: inst.reboots + n as u32,
                    state: ContainerState::Waiting { reason: "CrashLoopBackOff".into() },
                    run_started_at: Some(this_start),
                    previous_run: Some((this_start, this_start + Duration::milliseconds(run_ms))),
                    last_exit: Some(code),
                    ..base
                }
            }
        })
        .collect();
    let has = |reason: &str| {
        containers.iter().any(|c| matches!(&c.state, ContainerState::Waiting { reason: r } if r == reason))
    };
    let all_done = containers.iter().all(|c| matches!(c.state, ContainerState::Terminated { .. }));
    let phase = if has("ErrImagePull") {
        "ErrImagePull"
    } else if has("CrashLoopBackOff") {
        "CrashLoopBackOff"
    } else if all_done && containers.iter().all(|c| c.last_exit == Some(0)) {
        "Completed"
    } else if all_done {
        "Error"
    } else {
        "Running"
    };
    PodView { phase, start_time: Some(run_start), containers }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

/// The client's pod document with Cube's metadata and status added. The client's own
/// metadata keys (name, namespace, uid, labels, annotations…) are left exactly as sent.
pub fn render(inst: &Instance, cfg: &Config, now: DateTime<Utc>) -> Value {
    let view = observe(inst, cfg, now);
    let mut doc = inst.pod.doc.clone();
    let Value::Mapping(root) = &mut doc else { return doc };
    let meta = root.entry(s("metadata")).or_insert_with(|| Value::Mapping(Mapping::new()));
    if !meta.is_mapping() {
        *meta = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(m) = meta {
        m.insert(s("cubeId"), s(&inst.cube_id));
        m.insert(s("creationTimestamp"), s(&rfc3339(inst.created_at)));
        m.insert(s("group"), s(inst.group.as_deref().unwrap_or("")));
        m.insert(
            s("provider"),
            map(vec![
                ("chargeType", s(&inst.charge_type)),
                ("containerCount", Value::Number(inst.pod.spec.containers.len().into())),
                ("cpuPlatform", s(&inst.cpu_platform)),
                ("region", s(&inst.region)),
                ("subnetId", s(&inst.subnet_id)),
                ("vpcId", s(&inst.vpc_id)),
                ("zone", s(&inst.zone)),
            ]),
        );
    }
    let statuses: Vec<Value> = view
        .containers
        .iter()
        .map(|c| {
            let state = match &c.state {
                ContainerState::Waiting { reason } => map(vec![("waiting", map(vec![("reason", s(reason))]))]),
                ContainerState::Running { started_at } => {
                    map(vec![("running", map(vec![("startedAt", s(&rfc3339(*started_at)))]))])
                }
                ContainerState::Terminated { exit_code, reason, started_at, finished_at } => map(vec![(
                    "terminated",
                    map(vec![
                        ("exitCode", Value::Number((*exit_code).into())),
                        ("reason", s(reason)),
                        ("startedAt", s(&rfc3339(*started_at))),
                        ("finishedAt", s(&rfc3339(*finished_at))),
                    ]),
                )]),
            };
            let mut fields = vec![
                ("name", s(&c.name)),
                ("image", s(&c.image)),
                ("ready", Value::Bool(c.ready)),
                ("restartCount", Value::Number(c.restart_count.into())),
                ("state", state),
            ];
            if let (Some(code), Some((start, end))) = (c.last_exit, c.previous_run) {
                let reason = if code == 0 { "Completed" } else { "Error" };
                fields.push((
                    "lastState",
                    map(vec![(
                        "terminated",
                        map(vec![
                            ("exitCode", Value::Number(code.into())),
                            ("reason", s(reason)),
                            ("startedAt", s(&rfc3339(start))),
                            ("finishedAt", s(&rfc3339(end))),
                        ]),
                    )]),
                ));
            }
            map(fields)
        })
        .collect();
    let mut status = vec![("phase", s(view.phase)), ("podIp", s(&inst.pod_ip))];
    if let Some(t) = view.start_time {
        status.push(("startTime", s(&rfc3339(t))));
    }
    status.push(("containerStatuses", Value::Sequence(statuses)));
    root.insert(s("status"), map(status));
    doc
}

pub fn render_base64(inst: &Instance, cfg: &Config, now: DateTime<Utc>) -> String {
    let yaml = serde_yaml_ng::to_string(&render(inst, cfg, now)).unwrap_or_default();
    B64.encode(yaml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::podspec::CubePod;

    fn instance(command: &str, policy: &str, cfg: &Config) -> Instance {
        let yaml = format!(
            "metadata: {{name: p, uid: u}}\nspec:\n  restartPolicy: {policy}\n  containers:\n  - name: app\n    image: uhub.service.ucloud.cn/x/y:1\n    command: {command}\n    resources: {{limits: {{cpu: 1, memory: 1Gi}}}}\n"
        );
        let t0 = DateTime::parse_from_rfc3339("2026-11-26T16:00:00Z").unwrap().with_timezone(&Utc);
        Instance {
            cube_id: "cube-test".into(),
            uid: Some("u".into()),
            region: "cn-bj2".into(),
            zone: "cn-bj2-05".into(),
            project_id: String::new(),
            vpc_id: "uvnet-1".into(),
            subnet_id: "subnet-1".into(),
            group: None,
            deployment_id: None,
            name: "p".into(),
            tag: "Default".into(),
            charge_type: "Postpay".into(),
            quantity: 1,
            cpu_platform: "Auto".into(),
            pod: CubePod::from_yaml(&yaml, cfg).unwrap(),
            created_at: t0,
            started_at: t0,
            reboots: 0,
            pod_ip: "10.23.0.2".into(),
            eip_id: None,
            deleted_at: None,
            deleting_since: None,
        }
    }

    fn at(inst: &Instance, secs: i64) -> DateTime<Utc> {
        inst.started_at + Duration::seconds(secs)
    }

    #[test]
    fn restart_policy_decides_between_terminated_and_crash_loop() {
        let mut cfg = Config::default();
        cfg.lifecycle.pending_ms = 0;
        cfg.lifecycle.creating_ms = 0;
        cfg.lifecycle.crash_interval_secs = 10;
        let cases = [
            ("[echo, hi]", "Never", 5, "Completed", 0),
            ("[sh, -c, 'exit 2']", "Never", 5, "Error", 0),
            ("[echo, hi]", "OnFailure", 5, "Completed", 0),
            ("[sh, -c, 'exit 2']", "OnFailure", 5, "CrashLoopBackOff", 0),
            ("[sh, -c, 'exit 2']", "OnFailure", 25, "CrashLoopBackOff", 2),
            ("[echo, hi]", "Always", 15, "CrashLoopBackOff", 1),
            ("[sh, -c, 'sleep 30']", "Always", 5, "Running", 0),
            ("[sh, -c, 'sleep 30']", "Always", 45, "Running", 1),
            ("[nginx]", "Always", 500, "Running", 0),
        ];
        for (command, policy, secs, phase, restarts) in cases {
            let inst = instance(command, policy, &cfg);
            let view = observe(&inst, &cfg, at(&inst, secs));
            assert_eq!(
                (view.phase, view.containers[0].restart_count),
                (phase, restarts),
                "{command} {policy} at {secs}s"
            );
        }
    }

    #[test]
    fn pending_and_creating_come_before_running() {
        let mut cfg = Config::default();
        cfg.lifecycle.pending_ms = 1000;
        cfg.lifecycle.creating_ms = 2000;
        let inst = instance("[nginx]", "Always", &cfg);
        assert_eq!(observe(&inst, &cfg, at(&inst, 0)).phase, "Pending");
        assert_eq!(observe(&inst, &cfg, at(&inst, 2)).phase, "ContainerCreating");
        let running = observe(&inst, &cfg, at(&inst, 3));
        assert_eq!(running.phase, "Running");
        assert_eq!(running.start_time, Some(at(&inst, 3)));
    }

    #[test]
    fn render_keeps_client_metadata_and_adds_cube_fields() {
        let cfg = Config::default();
        let inst = instance("[nginx]", "Always", &cfg);
        let doc = render(&inst, &cfg, at(&inst, 60));
        assert_eq!(doc["metadata"]["uid"].as_str(), Some("u"));
        assert_eq!(doc["metadata"]["cubeId"].as_str(), Some("cube-test"));
        assert_eq!(doc["metadata"]["provider"]["zone"].as_str(), Some("cn-bj2-05"));
        assert_eq!(doc["status"]["phase"].as_str(), Some("Running"));
        assert_eq!(doc["status"]["podIp"].as_str(), Some("10.23.0.2"));
    }
}
