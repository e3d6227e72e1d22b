//! The kubelet API of a virtual node, driven by the real `kubectl` through the real apiserver:
//! logs with every option, exec and attach over both the WebSocket passthrough and the SPDY path
//! (with a TTY and a resize), port forwarding over both, stats and resource metrics, and the API's own authn/authz.
//!
//! The backend is a small in-test server speaking the Kubernetes channel protocol, standing in
//! for a provider's stream targets. Run with `VKCUBE_APISERVER_FLAGS=--feature-gates=ExtendWebSocketsToKubelet=false`
//! to check that every path still works when the apiserver never passes WebSockets through.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vkcube_e2e::port_forward::{PortForward, local_client};
use vkcube_e2e::{Cluster, cluster, wait_for};
use vkhost::kubelet::{
    BackendError, ContainerUsage, ExecQuery, KubeletBackend, KubeletConfig, KubeletServer, LogQuery, PodUsage,
    ServingTls, StreamProtocol, StreamTarget,
};

// ---------------------------------------------------------------------------------------------
// The stand-in backend: log lines over HTTP, commands over a channel-protocol WebSocket.

/// The header the backend demands, to show target headers reach it.
const BACKEND_TOKEN: &str = "backend-secret";

fn backend_router() -> axum::Router {
    axum::Router::new()
        .route("/logs/{ns}/{pod}/{container}", get(backend_logs))
        .route("/exec", get(backend_exec))
        .route("/attach", get(backend_attach))
        // What port forwarding reaches: the pod's web server.
        .route("/", get(|| async { "<html><body>hello from the forwarded port</body></html>\n" }))
        .route("/big", get(|| async { big_body() }))
}

/// A body of many SPDY frames and WebSocket messages, every byte telling its offset.
fn big_body() -> Vec<u8> {
    (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

async fn start_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, backend_router()).await });
    addr
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LogParams {
    follow: bool,
    tail: Option<usize>,
    since: Option<u64>,
    timestamps: bool,
}

/// Ten lines one minute apart, the last one "now"; `since` keeps the lines inside the window.
async fn backend_logs(
    Path((_ns, pod, container)): Path<(String, String, String)>,
    Query(p): Query<LogParams>,
    headers: HeaderMap,
) -> Response {
    if headers.get("x-backend-token").and_then(|v| v.to_str().ok()) != Some(BACKEND_TOKEN) {
        return (axum::http::StatusCode::UNAUTHORIZED, "no backend token").into_response();
    }
    let mut lines: Vec<String> = (1..=10)
        .filter(|i| p.since.is_none_or(|s| (10 - i) * 60 < s as i64))
        .map(|i| {
            let ts = if p.timestamps { format!("2026-11-26T16:{i:02}:00Z ") } else { String::new() };
            format!("{ts}{pod}/{container} line {i}\n")
        })
        .collect();
    if let Some(tail) = p.tail {
        lines = lines.split_off(lines.len().saturating_sub(tail));
    }
    let head = futures::stream::iter(lines.into_iter().map(|l| Ok::<_, std::io::Error>(bytes::Bytes::from(l))));
    let body = if p.follow {
        // Bounded: a followed log in a test ends by itself after a while.
        let tail = futures::stream::unfold(1u32, |n| async move {
            if n > 300 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok(bytes::Bytes::from(format!("follow line {n}\n"))), n + 1))
        });
        axum::body::Body::from_stream(head.chain(tail))
    } else {
        axum::body::Body::from_stream(head)
    };
    body.into_response()
}

#[derive(serde::Deserialize)]
struct SessionParams {
    /// JSON list of the command words.
    cmd: String,
    stdin: bool,
    tty: bool,
}

async fn backend_exec(ws: WebSocketUpgrade, Query(p): Query<SessionParams>) -> Response {
    let cmd: Vec<String> = serde_json::from_str(&p.cmd).unwrap();
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run_command(socket, cmd, p.stdin, p.tty, false))
}

async fn backend_attach(ws: WebSocketUpgrade, Query(p): Query<SessionParams>) -> Response {
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run_command(socket, vec!["cat".into()], p.stdin, p.tty, true))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = vec![channel];
    out.extend_from_slice(data);
    Message::Binary(out.into())
}

fn status(code: i32) -> Vec<u8> {
    if code == 0 {
        return br#"{"metadata":{},"status":"Success"}"#.to_vec();
    }
    serde_json::to_vec(&json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
    }))
    .unwrap()
}

/// `echo WORDS`, `exit N`, and `cat` (echoes stdin; reports resizes; a TTY session ends on
/// "exit" or ^D, a plain one when stdin closes).
async fn run_command(mut socket: WebSocket, cmd: Vec<String>, stdin: bool, tty: bool, attach: bool) {
    let code = match cmd.first().map(String::as_str) {
        Some("echo") => {
            let _ = socket.send(frame(1, format!("{}\n", cmd[1..].join(" ")).as_bytes())).await;
            0
        }
        Some("exit") => {
            let code: i32 = cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
            let _ = socket.send(frame(2, format!("exiting with {code}\n").as_bytes())).await;
            code
        }
        Some("cat") => {
            if attach {
                let _ = socket.send(frame(1, b"attached to app\n")).await;
            }
            let mut seen = Vec::new();
            if stdin {
                loop {
                    let Some(Ok(msg)) = socket.next().await else { break };
                    let Message::Binary(data) = msg else {
                        if matches!(msg, Message::Close(_)) { break } else { continue }
                    };
                    match (data.first(), data.get(1..)) {
                        (Some(0), Some(body)) => {
                            let _ = socket.send(frame(1, body)).await;
                            seen.extend_from_slice(body);
                            if tty && (seen.windows(4).any(|w| w == b"exit") || body.contains(&4)) {
                                break;
                            }
                        }
                        (Some(4), Some(body)) => {
                            let size: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                            let line = format!("resize {}x{}\r\n", size["Width"], size["Height"]);
                            let _ = socket.send(frame(1, line.as_bytes())).await;
                        }
                        (Some(255), Some([0])) => break,
                        _ => {}
                    }
                }
            }
            0
        }
        _ => {
            let _ = socket.send(frame(2, format!("{cmd:?}: command not found\n").as_bytes())).await;
            127
        }
    };
    let _ = socket.send(frame(3, &status(code))).await;
    let _ = socket.send(Message::Close(None)).await;
}

/// The kubelet backend of the test: targets at the stand-in server, fixed usage samples.
struct TestBackend {
    node: String,
    upstream: SocketAddr,
    pods: Mutex<Vec<Pod>>,
}

impl TestBackend {
    fn known(&self, ns: &str, pod: &str) -> Result<(), BackendError> {
        let pods = self.pods.lock().unwrap();
        pods.iter()
            .any(|p| p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(pod))
            .then_some(())
            .ok_or_else(|| BackendError::NotFound(format!("pod {ns}/{pod} has no instance")))
    }

    fn session(&self, path: &str, ns: &str, pod: &str, opts: &ExecQuery) -> Result<StreamTarget, BackendError> {
        self.known(ns, pod)?;
        let cmd = serde_json::to_string(&opts.command).unwrap();
        let query = serde_urlencoded::to_string([
            ("cmd", cmd),
            ("stdin", opts.stdin.to_string()),
            ("tty", opts.tty.to_string()),
        ])
        .unwrap();
        Ok(StreamTarget {
            url: format!("ws://{}/{path}?{query}", self.upstream),
            headers: vec![],
            protocol: StreamProtocol::WebSocketChannels,
        })
    }
}

impl KubeletBackend for TestBackend {
    fn node_name(&self) -> String {
        self.node.clone()
    }

    fn pods(&self) -> Vec<Pod> {
        self.pods.lock().unwrap().clone()
    }

    fn running_pods(&self) -> BoxFuture<'_, Result<Vec<Pod>, BackendError>> {
        let pods = self.pods();
        Box::pin(async move { Ok(pods) })
    }

    fn logs<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: LogQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        Box::pin(async move {
            self.known(ns, pod)?;
            let mut query = vec![("follow", opts.follow.to_string()), ("timestamps", opts.timestamps.to_string())];
            if let Some(t) = opts.tail_lines {
                query.push(("tail", t.to_string()));
            }
            if let Some(s) = opts.since_seconds {
                query.push(("since", s.to_string()));
            }
            // limitBytes is deliberately not passed on: the host must enforce it itself.
            Ok(StreamTarget {
                url: format!(
                    "http://{}/logs/{ns}/{pod}/{container}?{}",
                    self.upstream,
                    serde_urlencoded::to_string(&query).unwrap()
                ),
                headers: vec![("x-backend-token".into(), BACKEND_TOKEN.into())],
                protocol: StreamProtocol::HttpBody,
            })
        })
    }

    fn exec<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        _container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        Box::pin(async move { self.session("exec", ns, pod, &opts) })
    }

    fn attach<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        _container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        Box::pin(async move { self.session("attach", ns, pod, &opts) })
    }

    /// Port 80 is the stand-in server's; 81 cannot be forwarded; 82 refuses connections.
    fn port_forward<'a>(
        &'a self,
        ns: &'a str,
        pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        Box::pin(async move {
            self.known(ns, pod)?;
            let url = match port {
                80 => format!("tcp://{}", self.upstream),
                81 => {
                    return Err(BackendError::Unsupported(
                        "the test provider cannot forward ports: port 81 is not served".into(),
                    ));
                }
                _ => {
                    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
                    format!("tcp://{closed}")
                }
            };
            Ok(StreamTarget { url, headers: vec![], protocol: StreamProtocol::Tcp })
        })
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<PodUsage>, BackendError>> {
        let pods = self.pods();
        Box::pin(async move {
            Ok(pods
                .iter()
                .map(|p| PodUsage {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                    timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    containers: vec![ContainerUsage {
                        name: "app".into(),
                        cpu_usage_core_nano_seconds: 12_500_000_000,
                        cpu_usage_nano_cores: 250_000_000,
                        memory_working_set_bytes: 64 * 1024 * 1024,
                        memory_usage_bytes: 80 * 1024 * 1024,
                        start_time: "2026-11-26T15:00:00Z".into(),
                    }],
                })
                .collect())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture: a virtual node served by a KubeletServer, with one Running pod bound to it.

struct Fixture {
    cluster: &'static Cluster,
    ns: String,
    node: String,
    pod: String,
    server: KubeletServer,
    client: kube::Client,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new(prefix: &str, websockets: bool) -> Fixture {
        Self::with_tls(prefix, websockets, ServingTls::SelfSigned).await
    }

    async fn with_tls(prefix: &str, websockets: bool, tls: ServingTls) -> Fixture {
        let cluster = cluster();
        let ns = cluster.namespace(prefix).await;
        let client = ns.client.clone();
        let node = format!("vk-{}", ns.name);
        let pod = "web".to_string();
        let upstream = start_backend().await;
        let backend = Arc::new(TestBackend { node: node.clone(), upstream, pods: Mutex::new(vec![]) });
        let shutdown = CancellationToken::new();
        let cfg = KubeletConfig { tls, ..KubeletConfig::default() };
        let server = KubeletServer::start(cfg, backend.clone(), client.clone(), client.clone(), shutdown.clone())
            .await
            .expect("start kubelet API");

        let nodes: Api<Node> = Api::all(client.clone());
        let node_obj: Node = serde_json::from_value(json!({
            "metadata": {"name": node, "labels": {"type": "virtual-kubelet", "kubernetes.io/hostname": node}}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node_obj).await.expect("create node");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": server.port()}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        }});
        if websockets {
            status["status"]["declaredFeatures"] = json!(["ExtendWebSocketsToKubelet"]);
        }
        nodes.patch_status(&node, &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch node status");

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let pod_obj: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod},
            "spec": {"nodeName": node, "automountServiceAccountToken": false,
                     "containers": [{"name": "app", "image": "example.invalid/app:1"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod_obj).await.expect("create pod");
        let running = json!({"status": {
            "phase": "Running", "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "example.invalid/app:1",
                                   "imageID": "", "started": true, "state": {"running": {"startedAt": now}}}]
        }});
        let pod_now =
            pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(&running)).await.expect("set pod running");
        backend.pods.lock().unwrap().push(pod_now);
        Fixture { cluster, ns: ns.name, node, pod, server, client, shutdown }
    }

    async fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::from(self.cluster.kubectl_command(args));
        cmd.stdin(Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .expect("run kubectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A ClusterRole `role` allowing `get` on `resource`, bound to the ServiceAccount `ns:name`.
    async fn grant_get(&self, role: &str, resource: &str, service_account: &str) {
        let (code, _, err) =
            self.kubectl(&["create", "clusterrole", role, "--verb=get", &format!("--resource={resource}")]).await;
        assert_eq!(code, 0, "{err}");
        let binding = [
            "create",
            "clusterrolebinding",
            role,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={service_account}"),
        ];
        let (code, _, err) = self.kubectl(&binding).await;
        assert_eq!(code, 0, "{err}");
    }

    /// kubectl with the given stdin.
    async fn kubectl_with_input(&self, args: &[&str], input: &[u8]) -> (i32, String, String) {
        let mut cmd = tokio::process::Command::from(self.cluster.kubectl_command(args));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Deletes the node and stops the server, checking that it really stops listening.
    async fn teardown(self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let _ = nodes.delete(&self.node, &DeleteParams::default()).await;
        let addr = self.server.local_addr();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.server.wait())
            .await
            .expect("kubelet API stops within 15s of shutdown")
            .expect("kubelet API task ends cleanly");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "{addr} still accepts connections after shutdown");
    }
}

fn gate_off() -> bool {
    std::env::var("VKCUBE_APISERVER_FLAGS").unwrap_or_default().contains("ExtendWebSocketsToKubelet=false")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_logs_streams_the_backend_log_with_every_option() {
    let fx = Fixture::new("klogs", true).await;
    let ns = fx.ns.clone();
    let pod = fx.pod.clone();
    let base = ["logs", "-n", ns.as_str(), pod.as_str()];

    let (code, out, err) = fx.kubectl(&base).await;
    assert_eq!(code, 0, "kubectl logs failed: {err}");
    assert_eq!(out.lines().count(), 10, "{out}");
    assert!(out.starts_with("web/app line 1\n"), "{out}");

    let (code, out, err) = fx.kubectl(&[&base[..], &["--tail=3"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "web/app line 8\nweb/app line 9\nweb/app line 10\n");

    let (code, out, err) = fx.kubectl(&[&base[..], &["--since=3m"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "web/app line 8\nweb/app line 9\nweb/app line 10\n");

    let (code, out, err) = fx.kubectl(&[&base[..], &["--timestamps", "--tail=1"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "2026-11-26T16:10:00Z web/app line 10\n");

    let (code, out, err) = fx.kubectl(&[&base[..], &["--limit-bytes=20"]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "web/app line 1\nweb/a");

    // Follow: lines keep coming after the first ten.
    let mut cmd = tokio::process::Command::from(fx.cluster.kubectl_command(&[&base[..], &["-f", "--tail=2"]].concat()));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line);
            if seen.last().map(String::as_str) == Some("follow line 3") {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("kubectl logs -f did not follow: {seen:?}"));
    assert_eq!(&seen[..3], &["web/app line 9", "web/app line 10", "follow line 1"]);
    child.kill().await.unwrap();

    fx.teardown().await;
}

/// Reads a terminal's output until it shows `needle` (or ends); returns everything read.
async fn read_until(needle: &str, mut screen: Vec<u8>, stdout: &mut tokio::process::ChildStdout) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&screen).contains(needle) {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        screen.extend_from_slice(&buf[..n]);
    }
    screen
}

/// Runs the exec and attach checks against one node.
async fn exec_checks(fx: &Fixture) {
    let ns = fx.ns.as_str();
    let pod = fx.pod.as_str();
    let (code, out, err) = fx.kubectl(&["exec", "-n", ns, pod, "--", "echo", "hello", "world"]).await;
    assert_eq!((code, out.as_str()), (0, "hello world\n"), "stderr: {err}");

    let (code, _out, err) = fx.kubectl(&["exec", "-n", ns, pod, "--", "exit", "7"]).await;
    assert_eq!(code, 7, "kubectl should exit with the command's code; stderr: {err}");
    assert!(err.contains("exiting with 7"), "{err}");

    let (code, out, err) =
        fx.kubectl_with_input(&["exec", "-i", "-n", ns, pod, "--", "cat"], b"line one\nline two\n").await;
    assert_eq!((code, out.as_str()), (0, "line one\nline two\n"), "stderr: {err}");

    let (code, out, err) = fx.kubectl(&["attach", "-n", ns, pod, "-c", "app"]).await;
    assert_eq!(code, 0, "kubectl attach: {err}");
    assert!(out.contains("attached to app"), "{out}");

    let (code, out, err) =
        fx.kubectl_with_input(&["attach", "-i", "-n", ns, pod, "-c", "app"], b"to the main process\n").await;
    assert_eq!(code, 0, "kubectl attach -i: {err}");
    assert!(out.contains("attached to app\nto the main process\n"), "{out}");

    // A TTY through a real pseudo-terminal: the initial size arrives as a resize, input echoes.
    let kubectl = format!(
        "stty cols 101 rows 41; exec {} --kubeconfig {} exec -it -n {ns} {pod} -- cat",
        fx.cluster.kubectl.display(),
        fx.cluster.kubeconfig.display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &kubectl, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut screen = Vec::new();
    screen = tokio::time::timeout(
        Duration::from_secs(30),
        read_until("resize 101x41", std::mem::take(&mut screen), &mut stdout),
    )
    .await
    .expect("the TTY size should reach the command as a resize");
    stdin.write_all(b"typed text").await.unwrap();
    screen = tokio::time::timeout(
        Duration::from_secs(30),
        read_until("typed text", std::mem::take(&mut screen), &mut stdout),
    )
    .await
    .expect("TTY input should echo");
    stdin.write_all(b" exit").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("kubectl exec -it should end")
        .unwrap();
    assert!(status.success(), "kubectl exec -it: {status}; screen: {}", String::from_utf8_lossy(&screen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_exec_and_attach_work_over_websocket_passthrough_and_spdy() {
    for websockets in [true, false] {
        let fx = Fixture::new(if websockets { "kexws" } else { "kexspdy" }, websockets).await;
        exec_checks(&fx).await;
        let counts = fx.server.session_counts();
        if websockets && !gate_off() {
            assert!(counts.websocket >= 6 && counts.spdy == 0, "expected WebSocket passthrough: {counts:?}");
        } else {
            assert!(counts.spdy >= 6 && counts.websocket == 0, "expected SPDY from the apiserver: {counts:?}");
        }
        fx.teardown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_port_forward_reaches_the_target_over_websocket_passthrough_and_spdy() {
    for websockets in [true, false] {
        let fx = Fixture::new(if websockets { "kpfws" } else { "kpfspdy" }, websockets).await;
        let http = local_client();

        let pf = PortForward::start(fx.cluster, &fx.ns, "pod/web", 80).await;
        let base = pf.url();
        for _ in 0..3 {
            let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
            assert_eq!(page, "<html><body>hello from the forwarded port</body></html>\n");
        }
        // Several connections at once, each many frames long, arrive whole and unmixed.
        let started = std::time::Instant::now();
        let bodies = futures::future::join_all((0..3).map(|_| {
            let get = http.get(format!("{base}/big")).send();
            async move { get.await.unwrap().bytes().await.unwrap() }
        }))
        .await;
        let took = started.elapsed();
        for body in &bodies {
            assert!(body[..] == big_body()[..], "a forwarded download of {} bytes differs", body.len());
        }
        let mib = bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / (1 << 20) as f64;
        eprintln!(
            "port-forward ({}): {mib:.0} MiB over 3 connections in {took:.2?} ({:.0} MiB/s)",
            if websockets && !gate_off() { "tunnel passed through" } else { "SPDY from the apiserver" },
            mib / took.as_secs_f64()
        );
        pf.stop().await;

        // A port the provider cannot forward: kubectl shows the provider's words.
        let mut pf = PortForward::start(fx.cluster, &fx.ns, "pod/web", 81).await;
        assert!(http.get(pf.url()).send().await.is_err());
        let err = pf.stderr_until("cannot forward ports").await;
        assert!(
            err.contains(&format!(
                "error forwarding port 81 to pod {}/web: the test provider cannot forward ports",
                fx.ns
            )),
            "{err}"
        );
        pf.stop().await;

        // A target that refuses the connection: the reason reaches kubectl too.
        let mut pf = PortForward::start(fx.cluster, &fx.ns, "pod/web", 82).await;
        assert!(http.get(pf.url()).send().await.is_err());
        let err = pf.stderr_until("error forwarding port 82").await;
        assert!(err.contains("refused"), "{err}");
        pf.stop().await;

        let counts = fx.server.session_counts();
        if websockets && !gate_off() {
            assert!(counts.websocket >= 3 && counts.spdy == 0, "expected the tunnel passed through: {counts:?}");
        } else {
            assert!(counts.spdy >= 3 && counts.websocket == 0, "expected SPDY from the apiserver: {counts:?}");
        }
        fx.teardown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_summary_and_resource_metrics_are_served_to_the_apiserver_identity() {
    let fx = Fixture::new("kstats", true).await;
    // Read as metrics-server does: straight from the node's address with a client certificate.
    // (The apiserver's `nodes/proxy` refuses loopback node addresses: "address not allowed".)
    let base = format!("https://127.0.0.1:{}", fx.server.port());
    let client = apiserver_client(fx.cluster);
    let get = |path: &'static str| {
        let req = client.get(format!("{base}{path}"));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.text().await.unwrap()
        }
    };
    let out = get("/stats/summary").await;
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["node"]["nodeName"], fx.node.as_str());
    assert_eq!(summary["node"]["cpu"]["usageNanoCores"], 250_000_000);
    let pod = &summary["pods"][0];
    assert_eq!(pod["podRef"]["name"], "web");
    assert_eq!(pod["podRef"]["namespace"], fx.ns.as_str());
    assert!(pod["podRef"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(pod["containers"][0]["name"], "app");
    assert_eq!(pod["containers"][0]["cpu"]["usageCoreNanoSeconds"], 12_500_000_000u64);
    assert_eq!(pod["containers"][0]["memory"]["workingSetBytes"], 64 * 1024 * 1024);
    assert_eq!(pod["memory"]["workingSetBytes"], 64 * 1024 * 1024);

    let out = get("/metrics/resource").await;
    let labels = format!("container=\"app\",namespace=\"{}\",pod=\"web\"", fx.ns);
    for needle in [
        format!("container_cpu_usage_seconds_total{{{labels}}} 12.5 "),
        format!("container_memory_working_set_bytes{{{labels}}} 67108864 "),
        format!("container_start_time_seconds{{{labels}}} 1795705200 "),
        format!("pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"web\"}} 12.5 ", fx.ns),
        format!("pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"web\"}} 67108864 ", fx.ns),
        "node_cpu_usage_seconds_total 12.5 ".to_string(),
        "node_memory_working_set_bytes 67108864 ".to_string(),
        "scrape_error 0".to_string(),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }

    let out = get("/pods").await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    fx.teardown().await;
}

/// A client presenting the apiserver's kubelet client certificate (CN kube-apiserver-kubelet-client,
/// O system:masters).
fn apiserver_client(cluster: &Cluster) -> reqwest::Client {
    let mut pem = std::fs::read(&cluster.env["KUBELET_CLIENT_CRT"]).unwrap();
    pem.extend(std::fs::read(&cluster.env["KUBELET_CLIENT_KEY"]).unwrap());
    direct_client(Some(reqwest::Identity::from_pem(&pem).unwrap()))
}

fn direct_client(identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(Duration::from_secs(20));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_requests_need_credentials_and_rbac() {
    let fx = Fixture::new("kauth", false).await;
    let base = format!("https://127.0.0.1:{}", fx.server.port());
    let anonymous = direct_client(None);

    let health = anonymous.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let resp = anonymous.get(format!("{base}/pods")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let resp = anonymous.get(format!("{base}/pods")).bearer_auth("not-a-real-token").send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // A service account without RBAC on nodes: authenticated, but refused.
    let ns = fx.ns.as_str();
    let (code, _, err) = fx.kubectl(&["create", "serviceaccount", "-n", ns, "reader"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, token, err) = fx.kubectl(&["create", "token", "-n", ns, "reader"]).await;
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let resp = anonymous.get(format!("{base}/stats/summary")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("subresource=stats"));

    // Granting nodes/stats lets the same token in (after the cached denial expires, or at once
    // for a decision not cached yet: metrics is still refused, stats is not cached as allowed).
    fx.grant_get(&format!("{ns}-node-stats"), "nodes/stats", &format!("{ns}:reader")).await;
    let resp = wait_for(Duration::from_secs(60), "RBAC grant to take effect past the decision cache", || async {
        let r = anonymous.get(format!("{base}/stats/summary")).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(resp.status(), 200);
    let resp = anonymous.get(format!("{base}/metrics/resource")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 403);

    // nodes/log is the node's own log files (/logs), as on a real kubelet: it does not open pod
    // logs, which need nodes/proxy.
    fx.grant_get(&format!("{ns}-node-log"), "nodes/log", &format!("{ns}:reader")).await;
    // /logs is authorized by the grant, then not found: this node serves no log files.
    wait_for(Duration::from_secs(60), "nodes/log grant to take effect", || async {
        let r = anonymous.get(format!("{base}/logs/messages")).bearer_auth(&token).send().await.ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    let resp = anonymous.get(format!("{base}/containerLogs/{ns}/web/app")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("subresource=proxy"));

    // A read grant on nodes/proxy (what monitoring is often given) opens /pods, but a WebSocket
    // exec, though a GET, needs `create`.
    fx.grant_get(&format!("{ns}-node-proxy-read"), "nodes/proxy", &format!("{ns}:reader")).await;
    wait_for(Duration::from_secs(60), "nodes/proxy get grant to take effect", || async {
        let r = anonymous.get(format!("{base}/pods")).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let resp = anonymous
        .get(format!("{base}/exec/{ns}/web/app?command=id&output=1"))
        .bearer_auth(&token)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("verb=create"));

    // The apiserver's kubelet client certificate (system:masters) is allowed everything.
    let apiserver = apiserver_client(fx.cluster);
    let resp = apiserver.get(format!("{base}/pods")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp =
        apiserver.get(format!("{base}/containerLogs/{ns}/web/app?tailLines=1&limitBytes=5")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "web/a");
    let resp = apiserver.get(format!("{base}/containerLogs/{ns}/web/app?tailLines=x")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = apiserver.get(format!("{base}/containerLogs/{ns}/ghost/app")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the backend's NotFound is a 404");

    // Port forwarding needs an upgrade, and a pod of this node.
    let resp = apiserver.post(format!("{base}/portForward/{ns}/web")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("needs a connection upgrade"));
    let resp = apiserver
        .post(format!("{base}/portForward/{ns}/ghost"))
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    fx.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serving_certificate_can_come_from_the_kubelet_serving_signer() {
    let fx = Fixture::with_tls(
        "kcsr",
        false,
        ServingTls::Csr { self_approve: true, lifetime: Duration::from_secs(3600), wait: Duration::from_secs(60) },
    )
    .await;
    assert_eq!(fx.server.ca_pem(), None, "a signer-issued certificate is not its own CA");
    // Verified against the cluster CA, with 127.0.0.1 as a SAN.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&fx.cluster.env["CA_CRT"]).unwrap()).unwrap();
    let verified = reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(20)).build().unwrap();
    let resp = verified
        .get(format!("https://127.0.0.1:{}/healthz", fx.server.port()))
        .send()
        .await
        .expect("serving certificate verifies against the cluster CA");
    assert_eq!(resp.status(), 200);
    // And the apiserver still reaches the node.
    let (code, out, err) = fx.kubectl(&["logs", "-n", &fx.ns, &fx.pod, "--tail=1"]).await;
    assert_eq!((code, out.as_str()), (0, "web/app line 10\n"), "{err}");
    fx.teardown().await;
}

/// The process's resident memory; the kubelet API runs in this process.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A SYN_STREAM whose header block is a few hundred bytes on the wire but a 64 KiB name with a
/// value of 64 Ki NULs inflated: 64 Ki header values, once 64 Ki copies of the name (4 GiB).
fn header_bomb_syn_stream() -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend(1u32.to_be_bytes());
    raw.extend(65536u32.to_be_bytes());
    raw.extend(std::iter::repeat_n(b'a', 65536));
    raw.extend(65536u32.to_be_bytes());
    raw.extend(std::iter::repeat_n(0u8, 65536));
    // Peers may deflate without the SPDY dictionary; the server only loads it when asked.
    let mut z = flate2::Compress::new(flate2::Compression::default(), true);
    let mut block = Vec::with_capacity(raw.len() + 1024);
    while (z.total_in() as usize) < raw.len() {
        let at = z.total_in() as usize;
        z.compress_vec(&raw[at..], &mut block, flate2::FlushCompress::Sync).unwrap();
    }
    let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0x00];
    frame.extend(&((10 + block.len()) as u32).to_be_bytes()[1..]);
    frame.extend(1u32.to_be_bytes()); // stream id
    frame.extend(0u32.to_be_bytes()); // associated stream
    frame.extend([0, 0]); // priority, slot
    frame.extend(block);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spdy_header_bomb_is_refused_and_the_node_keeps_serving() {
    let fx = Fixture::new("kbomb", false).await;
    let url =
        format!("https://127.0.0.1:{}/exec/{}/{}/app?command=cat&input=1&output=1", fx.server.port(), fx.ns, fx.pod);
    let resp = apiserver_client(fx.cluster)
        .post(url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let mut conn = resp.upgrade().await.unwrap();
    let bomb = header_bomb_syn_stream();
    assert!(bomb.len() < 1024, "the bomb is {} bytes on the wire", bomb.len());
    let before = rss_kib();
    conn.write_all(&bomb).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer))
        .await
        .expect("the session is closed after the bomb")
        .unwrap();
    let after = rss_kib();
    println!("header bomb ({} bytes): VmRSS {before} KiB before, {after} KiB after", bomb.len());
    // GOAWAY: no stream served, status PROTOCOL_ERROR.
    assert_eq!(answer, [0x80, 0x03, 0x00, 0x07, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert!(after < before + 64 * 1024, "VmRSS grew from {before} to {after} KiB");

    // And the node still serves exec, through the apiserver, over SPDY.
    let (code, out, err) =
        fx.kubectl_with_input(&["exec", "-i", "-n", &fx.ns, &fx.pod, "--", "cat"], b"still serving\n").await;
    assert_eq!((code, out.as_str()), (0, "still serving\n"), "stderr: {err}");
    fx.teardown().await;
}
