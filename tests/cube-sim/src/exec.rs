//! `kubectl exec`/`attach` against a Cube instance: a WebSocket speaking the Kubernetes
//! channel protocol (v4/v5.channel.k8s.io) in front of a small built-in command interpreter.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::app::Shared;
use crate::podspec::Container;
use crate::program::{environment, split_script};
use crate::state::TokenKind;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// What one exec session runs, resolved from the token before the upgrade.
struct ExecRequest {
    cube_id: String,
    container: Container,
    hostname: String,
    files: Vec<(String, Vec<u8>)>,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    attach: bool,
}

pub async fn handle(
    State(sim): State<Shared>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or_default()).unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let on = |k: &str| matches!(get(k), Some("1") | Some("true"));
    let now = Utc::now();
    let token = get("token").unwrap_or_default();
    let req = {
        let state = sim.state.lock();
        let Some(t) = state.tokens.get(token).filter(|t| t.kind == TokenKind::Exec && t.expires_at > now) else {
            return (StatusCode::UNAUTHORIZED, "invalid or expired token\n").into_response();
        };
        let Some(inst) = state.instances.get(&t.cube_id).filter(|i| i.live()) else {
            return (StatusCode::NOT_FOUND, format!("cube instance {} not found\n", t.cube_id)).into_response();
        };
        let Some(container) = inst.pod.container(&t.container).cloned() else {
            return (StatusCode::NOT_FOUND, format!("container {} not found\n", t.container)).into_response();
        };
        // Like the kubelet: exec and attach need a running container.
        let view = crate::lifecycle::observe(inst, &sim.cfg, now);
        let current = view.containers.iter().find(|c| c.name == container.name).map(|c| c.state.clone());
        if !matches!(current, Some(crate::lifecycle::ContainerState::Running { .. })) {
            let why = match current {
                Some(crate::lifecycle::ContainerState::Waiting { reason }) => reason,
                Some(crate::lifecycle::ContainerState::Terminated { reason, .. }) => reason,
                _ => "not started".into(),
            };
            return (StatusCode::BAD_REQUEST, format!("container {} is not running ({why})\n", container.name))
                .into_response();
        }
        let files = inst.pod.mounted_files(&container).into_iter().map(|f| (f.path, f.content)).collect();
        ExecRequest {
            cube_id: inst.cube_id.clone(),
            hostname: crate::lifecycle::hostname(inst),
            container,
            files,
            command: pairs.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
            stdin: on("stdin"),
            stdout: on("stdout"),
            stderr: on("stderr"),
            tty: on("tty"),
            attach: on("attach"),
        }
    };
    if !req.attach && req.command.is_empty() {
        return (StatusCode::BAD_REQUEST, "command is required unless attach=1\n").into_response();
    }
    let Ok(ws) = ws else {
        return (StatusCode::BAD_REQUEST, "a WebSocket upgrade is required\n").into_response();
    };
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]).on_upgrade(move |socket| async move {
        // The session ends with the simulator: it belongs to the shutdown token.
        let shutdown = sim.shutdown.clone();
        tokio::select! {
            _ = session(socket, sim, req) => {}
            _ = shutdown.cancelled() => {}
        }
    })
}

/// The output side of a session: channel framing, tty merging and newline translation.
struct Io {
    sink: SplitSink<WebSocket, Message>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    resize: watch::Receiver<Option<(u16, u16)>>,
    tty: bool,
    stdout: bool,
    stderr: bool,
}

impl Io {
    async fn write(&mut self, channel: u8, data: &[u8]) {
        let channel = if self.tty && channel == STDERR { STDOUT } else { channel };
        let enabled = match channel {
            STDOUT => self.stdout,
            STDERR => self.stderr,
            _ => true,
        };
        if !enabled || data.is_empty() {
            return;
        }
        let mut frame = vec![channel];
        if self.tty && channel != STATUS {
            // A terminal's line discipline turns "\n" into "\r\n".
            for &b in data {
                if b == b'\n' {
                    frame.push(b'\r');
                }
                frame.push(b);
            }
        } else {
            frame.extend_from_slice(data);
        }
        let _ = self.sink.send(Message::Binary(frame.into())).await;
    }

    async fn out(&mut self, s: &str) {
        self.write(STDOUT, s.as_bytes()).await
    }

    async fn err(&mut self, s: &str) {
        self.write(STDERR, s.as_bytes()).await
    }

    /// Next stdin chunk; None once stdin is closed (or was never asked for).
    async fn read(&mut self) -> Option<Vec<u8>> {
        self.stdin.as_mut()?.recv().await
    }
}

async fn session(socket: WebSocket, sim: Shared, req: ExecRequest) {
    let v5 = socket.protocol().is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    let (sink, mut stream) = socket.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(64);
    let (resize_tx, resize_rx) = watch::channel(None);
    let mut io = Io {
        sink,
        stdin: req.stdin.then_some(stdin_rx),
        resize: resize_rx,
        tty: req.tty,
        stdout: req.stdout,
        stderr: req.stderr,
    };

    let reader = async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(payload.to_vec()).await;
                    }
                }
                RESIZE => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                        let w = v["Width"].as_u64().unwrap_or(0) as u16;
                        let h = v["Height"].as_u64().unwrap_or(0) as u16;
                        let _ = resize_tx.send(Some((h, w)));
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        // The client went away: nothing left to answer.
    };

    let runner = async move {
        let code =
            if req.attach { attach(&mut io, &sim, &req).await } else { run_argv(&mut io, &req, &req.command).await };
        let status = if code == 0 {
            json!({"metadata": {}, "status": "Success"})
        } else {
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", req.command.join(" ")),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
            })
        };
        io.write(STATUS, status.to_string().as_bytes()).await;
        let _ = io.sink.send(Message::Close(None)).await;
        let _ = io.sink.close().await;
    };
    tokio::select! {
        _ = runner => {}
        _ = reader => {}
    }
}

/// Attach: the main process's output from now on, until it ends or the client leaves.
async fn attach(io: &mut Io, sim: &Shared, req: &ExecRequest) -> i32 {
    let now = Utc::now();
    let Ok(run) = crate::logs::find_run(sim, &req.cube_id, &req.container.name, false, now) else {
        io.err("container is not running\n").await;
        return 1;
    };
    let mut sent = run.elapsed(now);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Utc::now();
        let Ok(run) = crate::logs::find_run(sim, &req.cube_id, &req.container.name, false, now) else { return 0 };
        let upto = run.elapsed(now);
        for (_, line) in run.lines(Some(sent), upto) {
            io.out(&format!("{line}\n")).await;
        }
        sent = upto;
        if run.finished(now) {
            return match run.program.end {
                crate::program::End::Exit { code, .. } => code,
                _ => 0,
            };
        }
    }
}

enum Flow {
    Next(i32),
    Exit(i32),
}

fn base(cmd: &str) -> &str {
    cmd.rsplit('/').next().unwrap_or(cmd)
}

async fn run_argv(io: &mut Io, req: &ExecRequest, argv: &[String]) -> i32 {
    let Some(first) = argv.first() else { return 0 };
    if matches!(base(first), "sh" | "bash" | "ash") {
        if argv.get(1).map(String::as_str) == Some("-c") {
            return run_script(io, req, argv.get(2).map(String::as_str).unwrap_or_default()).await;
        }
        return interactive_shell(io, req).await;
    }
    match run_simple(io, req, argv).await {
        Flow::Next(c) | Flow::Exit(c) => c,
    }
}

async fn run_script(io: &mut Io, req: &ExecRequest, script: &str) -> i32 {
    let mut code = 0;
    for words in split_script(script) {
        match Box::pin(run_simple(io, req, &words)).await {
            Flow::Next(c) => code = c,
            Flow::Exit(c) => return c,
        }
    }
    code
}

/// `sh` with no script: reads lines from stdin and runs each, like a real shell would.
async fn interactive_shell(io: &mut Io, req: &ExecRequest) -> i32 {
    let prompt = |io: &Io| if io.tty { "# " } else { "" };
    let p = prompt(io);
    io.out(p).await;
    let mut line = Vec::new();
    let mut code = 0;
    while let Some(chunk) = io.read().await {
        for b in chunk {
            match b {
                b'\r' | b'\n' => {
                    if io.tty {
                        io.out("\n").await;
                    }
                    let text = String::from_utf8_lossy(&line).to_string();
                    line.clear();
                    for words in split_script(&text) {
                        match Box::pin(run_simple(io, req, &words)).await {
                            Flow::Next(c) => code = c,
                            Flow::Exit(c) => return c,
                        }
                    }
                    let p = prompt(io);
                    io.out(p).await;
                }
                0x7f | 0x08 => {
                    if line.pop().is_some() && io.tty {
                        io.out("\x08 \x08").await;
                    }
                }
                0x04 => return code,
                _ => {
                    line.push(b);
                    if io.tty {
                        io.write(STDOUT, &[b]).await;
                    }
                }
            }
        }
    }
    code
}

async fn run_simple(io: &mut Io, req: &ExecRequest, words: &[String]) -> Flow {
    let Some((cmd, args)) = words.split_first() else { return Flow::Next(0) };
    match base(cmd) {
        "echo" => {
            let (newline, rest) =
                if args.first().map(String::as_str) == Some("-n") { (false, &args[1..]) } else { (true, args) };
            let mut s = rest.join(" ");
            if newline {
                s.push('\n');
            }
            io.out(&s).await;
            Flow::Next(0)
        }
        "env" | "printenv" => {
            let env = environment(&req.container, &req.hostname, req.tty);
            if let Some(name) = args.first() {
                return match env.iter().find(|(k, _)| k == name) {
                    Some((_, v)) => {
                        io.out(&format!("{v}\n")).await;
                        Flow::Next(0)
                    }
                    None => Flow::Next(1),
                };
            }
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            io.out(&text).await;
            Flow::Next(0)
        }
        "hostname" => {
            let h = format!("{}\n", req.hostname);
            io.out(&h).await;
            Flow::Next(0)
        }
        "pwd" => {
            let d = format!("{}\n", req.container.working_dir.clone().unwrap_or_else(|| "/".into()));
            io.out(&d).await;
            Flow::Next(0)
        }
        "true" | ":" => Flow::Next(0),
        "false" => Flow::Next(1),
        "exit" => Flow::Exit(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
        "sleep" => match args.first().and_then(|a| a.parse::<f64>().ok()).filter(|n| n.is_finite() && *n >= 0.0) {
            Some(n) => {
                tokio::time::sleep(Duration::from_secs_f64(n)).await;
                Flow::Next(0)
            }
            None if args.first().map(String::as_str) == Some("infinity") => {
                std::future::pending::<()>().await;
                Flow::Next(0)
            }
            None => {
                io.err("sleep: invalid time interval\n").await;
                Flow::Next(1)
            }
        },
        "cat" => {
            if args.is_empty() {
                while let Some(chunk) = io.read().await {
                    io.write(STDOUT, &chunk).await;
                }
                return Flow::Next(0);
            }
            let mut code = 0;
            for path in args {
                match req.files.iter().find(|(p, _)| p == path) {
                    Some((_, content)) => {
                        let content = content.clone();
                        io.write(STDOUT, &content).await;
                    }
                    None => {
                        io.err(&format!("cat: {path}: No such file or directory\n")).await;
                        code = 1;
                    }
                }
            }
            Flow::Next(code)
        }
        "ls" => {
            let dir = args.first().map(|d| d.trim_end_matches('/').to_string()).unwrap_or_default();
            let mut names: Vec<String> = req
                .files
                .iter()
                .filter_map(|(p, _)| {
                    p.strip_prefix(&format!("{dir}/")).map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
                })
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                io.err(&format!("ls: cannot access '{dir}': No such file or directory\n")).await;
                return Flow::Next(2);
            }
            io.out(&(names.join("\n") + "\n")).await;
            Flow::Next(0)
        }
        "stty" if args.first().map(String::as_str) == Some("size") => {
            if !req.tty {
                io.err("stty: 'standard input': Inappropriate ioctl for device\n").await;
                return Flow::Next(1);
            }
            // The client sends its size right after connecting; give it a moment.
            if io.resize.borrow().is_none() {
                let _ = tokio::time::timeout(Duration::from_millis(500), io.resize.changed()).await;
            }
            let size = *io.resize.borrow();
            let (rows, cols) = size.unwrap_or((24, 80));
            io.out(&format!("{rows} {cols}\n")).await;
            Flow::Next(0)
        }
        "sh" | "bash" | "ash" => Flow::Next(Box::pin(run_argv(io, req, words)).await),
        _ => {
            io.err(&format!("{cmd}: not found\n")).await;
            Flow::Next(127)
        }
    }
}
