//! Container logs: deterministic lines from the container's command (see `program`), served
//! at `GET /cube-stream/logs?token=…` with the kubelet's options, following when asked.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::app::{Shared, Sim};
use crate::lifecycle::{crashes, hostname, observe};
use crate::podspec::Container;
use crate::program::{End, Program};
use crate::state::TokenKind;

/// The current (or previous) run of one container, as far as logs are concerned.
pub struct Run {
    pub container: Container,
    pub start: DateTime<Utc>,
    /// When the run ended, if it did.
    pub end: Option<DateTime<Utc>>,
    pub program: Program,
    pub crashes: bool,
}

impl Run {
    /// Lines of this run with offsets in `(after, upto]` seconds (`after` None: from the start).
    pub fn lines(&self, after: Option<u64>, upto: u64) -> Vec<(DateTime<Utc>, String)> {
        let all: Vec<(u64, String)> = if self.crashes {
            let mut l = crate::program::server_lines(&self.container, 0, 0);
            l.push((1, format!("cube-sim: {} exiting with code 1", self.container.name)));
            l.into_iter().filter(|(o, _)| *o <= upto).collect()
        } else if self.program.end == End::Server {
            crate::program::server_lines(&self.container, after.map_or(0, |a| a + 1), upto)
        } else {
            self.program.lines_until(&self.container, upto)
        };
        all.into_iter()
            .filter(|(o, _)| after.is_none_or(|a| *o > a))
            .map(|(o, l)| (self.start + chrono::Duration::seconds(o as i64), l))
            .collect()
    }

    /// Seconds since start that count at `now` (capped at the end of the run).
    pub fn elapsed(&self, now: DateTime<Utc>) -> u64 {
        let until = self.end.map_or(now, |e| e.min(now));
        (until - self.start).num_seconds().max(0) as u64
    }

    /// Whether no more lines can come.
    pub fn finished(&self, now: DateTime<Utc>) -> bool {
        self.end.is_some_and(|e| e <= now)
    }
}

/// Why a container has no logs to show, as the kubelet words it.
pub enum NoRun {
    Gone,
    Waiting(String),
    NoPrevious,
}

pub fn find_run(sim: &Sim, cube_id: &str, container: &str, previous: bool, now: DateTime<Utc>) -> Result<Run, NoRun> {
    let state = sim.state.lock();
    let inst = state.instances.get(cube_id).filter(|i| i.live()).ok_or(NoRun::Gone)?;
    let view = observe(inst, &sim.cfg, now);
    let cv = view.containers.iter().find(|c| c.name == container).ok_or(NoRun::Gone)?;
    let spec = inst.pod.container(container).ok_or(NoRun::Gone)?.clone();
    let program = Program::of(&spec, &hostname(inst));
    let crashing = crashes(&sim.cfg, &spec);
    if previous {
        let (start, end) = cv.previous_run.ok_or(NoRun::NoPrevious)?;
        return Ok(Run { container: spec, start, end: Some(end), program, crashes: crashing });
    }
    let start = cv.run_started_at.ok_or_else(|| match &cv.state {
        crate::lifecycle::ContainerState::Waiting { reason } => NoRun::Waiting(reason.clone()),
        _ => NoRun::Waiting("ContainerCreating".into()),
    })?;
    let end = match &cv.state {
        crate::lifecycle::ContainerState::Terminated { finished_at, .. } => Some(*finished_at),
        crate::lifecycle::ContainerState::Waiting { .. } => cv.previous_run.map(|p| p.1),
        crate::lifecycle::ContainerState::Running { .. } => match program.end {
            End::Exit { at_secs, .. } => Some(start + chrono::Duration::seconds(at_secs as i64)),
            _ if crashing => Some(start + chrono::Duration::seconds(1)),
            _ => None,
        },
    };
    Ok(Run { container: spec, start, end, program, crashes: crashing })
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn format_line(t: DateTime<Utc>, line: &str, timestamps: bool) -> String {
    if timestamps { format!("{} {line}\n", t.to_rfc3339_opts(SecondsFormat::Nanos, true)) } else { format!("{line}\n") }
}

pub async fn handle(State(sim): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let now = Utc::now();
    let token = q.get("token").cloned().unwrap_or_default();
    let target = {
        let state = sim.state.lock();
        state
            .tokens
            .get(&token)
            .filter(|t| t.kind == TokenKind::Logs && t.expires_at > now)
            .map(|t| (t.cube_id.clone(), t.container.clone()))
    };
    let Some((cube_id, container)) = target else {
        return (StatusCode::UNAUTHORIZED, "invalid or expired token\n").into_response();
    };
    let follow = flag(&q, "follow");
    let timestamps = flag(&q, "timestamps");
    let previous = flag(&q, "previous");
    let run = match find_run(&sim, &cube_id, &container, previous, now) {
        Ok(r) => r,
        Err(NoRun::Gone) => {
            return (StatusCode::NOT_FOUND, format!("cube instance {cube_id} not found\n")).into_response();
        }
        Err(NoRun::Waiting(reason)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{cube_id}\" is waiting to start: {reason}\n"),
            )
                .into_response();
        }
        Err(NoRun::NoPrevious) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{cube_id}\" not found\n"),
            )
                .into_response();
        }
    };
    let upto = run.elapsed(now);
    let mut lines = run.lines(None, upto);
    let since = match (q.get("sinceSeconds").and_then(|s| s.parse::<i64>().ok()), q.get("sinceTime")) {
        (Some(s), _) => Some(now - chrono::Duration::seconds(s)),
        (None, Some(t)) => DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&Utc)),
        _ => None,
    };
    if let Some(since) = since {
        lines.retain(|(t, _)| *t >= since);
    }
    if let Some(n) = q.get("tailLines").and_then(|s| s.parse::<usize>().ok()) {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut budget = q.get("limitBytes").and_then(|s| s.parse::<usize>().ok()).unwrap_or(usize::MAX);
    let mut history: String = lines.iter().map(|(t, l)| format_line(*t, l, timestamps)).collect();
    if history.len() > budget {
        history.truncate(budget);
    }
    budget -= history.len();
    let plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow || previous || run.finished(now) || budget == 0 {
        return (plain, history).into_response();
    }

    // Following: one chunk per second with the lines that came due, until the run ends, the
    // instance goes, the budget is spent, the simulator stops or the client hangs up.
    struct Follow {
        sim: Shared,
        cube_id: String,
        container: String,
        start: DateTime<Utc>,
        sent_upto: u64,
        budget: usize,
        timestamps: bool,
    }
    let first = futures::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(Bytes::from(history)) });
    let init = Follow { sim: sim.clone(), cube_id, container, start: run.start, sent_upto: upto, budget, timestamps };
    let rest = futures::stream::unfold(Some(init), |f| async move {
        let mut f = f?;
        loop {
            let next_due = f.start + chrono::Duration::seconds(f.sent_upto as i64 + 1);
            let wait = (next_due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = f.sim.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            let now = Utc::now();
            let run = find_run(&f.sim, &f.cube_id, &f.container, false, now).ok()?;
            if run.start != f.start {
                return None; // restarted: the kubelet ends the stream too
            }
            let upto = run.elapsed(now);
            let mut chunk: String =
                run.lines(Some(f.sent_upto), upto).iter().map(|(t, l)| format_line(*t, l, f.timestamps)).collect();
            f.sent_upto = upto;
            let done = run.finished(now);
            if chunk.len() >= f.budget {
                chunk.truncate(f.budget);
                return Some((Ok(Bytes::from(chunk)), None));
            }
            f.budget -= chunk.len();
            if !chunk.is_empty() {
                return Some((Ok(Bytes::from(chunk)), if done { None } else { Some(f) }));
            }
            if done {
                return None;
            }
        }
    });
    use futures::StreamExt;
    (plain, Body::from_stream(first.chain(rest))).into_response()
}
