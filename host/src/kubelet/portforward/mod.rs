//! `/portForward`: forwards the TCP connections a client opens through the apiserver to the
//! target the provider names for each port (`tcp://ip:port`), one TCP connection per forwarded
//! connection. Three client protocols, as a kubelet serves them:
//! - SPDY/3.1 `portforward.k8s.io` (POST), what the apiserver speaks when it translates;
//! - SPDY tunnelled through a WebSocket (`SPDY/3.1+portforward.k8s.io`, GET), what kubectl sends
//!   and the apiserver passes through to a node declaring `ExtendWebSocketsToKubelet`;
//! - the WebSocket channel protocol (`v4.channel.k8s.io`, or no subprotocol; ports in the `port`
//!   query): per port a data channel and an error channel, each opened by the port in 2 bytes
//!   little-endian, carrying one connection per port.
//!
//! In every case a failure (the provider cannot forward, the target refuses) is text on the
//! connection's error stream, which kubectl prints.

mod over_spdy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backend::{BackendError, KubeletBackend, StreamProtocol};
use super::{ApiState, SessionCounters, error_response};
use super::{channel, exec, ws};

/// The SPDY subprotocol of port forwarding (`X-Stream-Protocol-Version`).
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The same, tunnelled through a WebSocket (its subprotocol).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Forwarded connections one session holds at once; streams for more are refused.
pub const MAX_CONNECTIONS: usize = 128;
/// Ports one WebSocket channel session may name.
const MAX_CHANNEL_PORTS: usize = 32;
/// Largest chunk read from a target at a time (one DATA frame or message).
pub const READ_CHUNK: usize = 32 * 1024;
/// Chunks of client data held for a connection before the session stops reading the client.
pub const INPUT_QUEUE: usize = 16;
/// How long the host waits for a target to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn port_forward(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    session(state, namespace, pod, raw, req).await
}

pub async fn port_forward_with_uid(
    State(state): State<Arc<ApiState>>,
    Path((namespace, pod, uid)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    if let Some(refused) = exec::other_pod(&state, &namespace, &pod, &uid) {
        return refused;
    }
    session(state, namespace, pod, raw, req).await
}

/// Where one session's connections go: the backend is asked once per port, and every
/// connection to that port goes to the answer.
pub struct Forwarder {
    backend: Arc<dyn KubeletBackend>,
    namespace: String,
    pod: String,
    targets: tokio::sync::Mutex<HashMap<u16, SocketAddr>>,
}

/// Why a port cannot be forwarded: the HTTP status a request gets before upgrading, and the
/// message a forwarded connection's error stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardError {
    pub status: StatusCode,
    pub message: String,
}

impl Forwarder {
    pub fn new(backend: Arc<dyn KubeletBackend>, namespace: String, pod: String) -> Self {
        Forwarder { backend, namespace, pod, targets: Default::default() }
    }

    fn error(&self, port: u16, status: StatusCode, why: impl std::fmt::Display) -> ForwardError {
        ForwardError {
            status,
            message: format!("error forwarding port {port} to pod {}/{}: {why}", self.namespace, self.pod),
        }
    }

    /// The address connections to `port` go to, asking the backend the first time.
    pub async fn target(&self, port: u16) -> Result<SocketAddr, ForwardError> {
        let mut targets = self.targets.lock().await;
        if let Some(addr) = targets.get(&port) {
            return Ok(*addr);
        }
        let target = self
            .backend
            .port_forward(&self.namespace, &self.pod, port)
            .await
            .map_err(|e: BackendError| self.error(port, e.status(), e))?;
        let addr = tcp_address(&target.url, target.protocol, &target.headers)
            .map_err(|why| self.error(port, StatusCode::BAD_GATEWAY, why))?;
        targets.insert(port, addr);
        Ok(addr)
    }

    /// Opens one forwarded connection to `port`.
    pub async fn connect(&self, port: u16) -> Result<TcpStream, ForwardError> {
        let addr = self.target(port).await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(self.error(port, StatusCode::BAD_GATEWAY, format_args!("connecting to {addr}: {e}"))),
            Err(_) => Err(self.error(
                port,
                StatusCode::GATEWAY_TIMEOUT,
                format_args!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"),
            )),
        }
    }
}

/// The socket address of a `tcp` stream target: `tcp://IP:PORT` with an IP literal (a name would
/// be resolved by the host, wherever DNS points it), no path, query, credentials or headers.
pub fn tcp_address(url: &str, protocol: StreamProtocol, headers: &[(String, String)]) -> Result<SocketAddr, String> {
    if protocol != StreamProtocol::Tcp {
        return Err(format!(
            "the provider's stream target {url} is {protocol:?}, but port forwarding needs a tcp target"
        ));
    }
    if !headers.is_empty() {
        return Err(format!("the provider's tcp stream target {url} carries headers, which tcp targets cannot have"));
    }
    let bad = |why: &str| format!("the provider's stream target {url:?} {why}; expected tcp://IP:PORT");
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if parsed.scheme() != "tcp" {
        return Err(bad("is not a tcp:// URL"));
    }
    if !parsed.username().is_empty()
        || parsed.password().is_some()
        || !matches!(parsed.path(), "" | "/")
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(bad("has more than a host and a port"));
    }
    let host = parsed.host_str().unwrap_or_default();
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad("names no IP address (host names are not resolved)"))?;
    let port = parsed.port().filter(|p| *p != 0).ok_or_else(|| bad("names no port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// What a forwarded connection's task reports to its session; `u64` is the session's key for the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes the target sent.
    Data(u64, Bytes),
    /// The target closed the connection.
    Closed(u64),
    /// The connection could not be made or broke; the message is for the client.
    Failed(u64, String),
}

/// Runs one forwarded connection: connects, then moves bytes both ways until the target closes
/// (client data from `input`; `input` closing half-closes the connection towards the target).
/// Ends with exactly one `Closed` or `Failed`, unless the session is gone.
pub async fn run_connection(
    fwd: Arc<Forwarder>,
    key: u64,
    port: u16,
    mut input: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<Event>,
) {
    // A session that ends (its client gone, the daemon stopping) drops its receiver: every
    // connection of it ends then, even one waiting on an idle target.
    let connected = tokio::select! {
        connected = fwd.connect(port) => connected,
        _ = events.closed() => return,
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(Event::Failed(key, e.message)).await;
            return;
        }
    };
    let (mut r, mut w) = stream.into_split();
    let to_target = async move {
        while let Some(chunk) = input.recv().await {
            w.write_all(&chunk).await?;
        }
        w.shutdown().await?;
        // Half-closed: the target may still answer; the reader decides when this ends.
        std::future::pending::<std::io::Result<()>>().await
    };
    let from_target = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            let n = r.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok(true);
            }
            if events.send(Event::Data(key, buf.split().freeze())).await.is_err() {
                return Ok(false);
            }
        }
    };
    let ended = tokio::select! {
        read = from_target => read.map_err(|e: std::io::Error| format!("reading: {e}")),
        written = to_target => written.map(|_| true).map_err(|e| format!("writing: {e}")),
        _ = events.closed() => return,
    };
    let event = match ended {
        Ok(true) => Event::Closed(key),
        Ok(false) => return,
        Err(why) => Event::Failed(key, fwd.error(port, StatusCode::BAD_GATEWAY, why).message),
    };
    let _ = events.send(event).await;
}

/// Which client protocol a request upgrades to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Upgrade {
    Spdy,
    Tunnel,
    Channels { ports: Vec<u16> },
}

fn negotiate(req: &Request, raw_query: Option<&str>) -> Result<Upgrade, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let list = |name: &str| -> Vec<String> {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    };
    let upgrade =
        req.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if upgrade.contains("websocket") {
        let offered = list("sec-websocket-protocol");
        if offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
            return Ok(Upgrade::Tunnel);
        }
        if offered.is_empty() || offered.iter().any(|p| p == channel::V4) {
            return channel_ports(raw_query).map(|ports| Upgrade::Channels { ports }).map_err(bad);
        }
        return Err(bad(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported for port forwarding; use {TUNNEL_PROTOCOL} or {}",
            channel::V4
        )));
    }
    if upgrade.starts_with("spdy/3") {
        // As for exec: forwarding is authorized as `create`, which a GET would not be.
        if req.method() != http::Method::POST {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("SPDY upgrades for port forwarding must use POST, not {}", req.method()),
            ));
        }
        let offered = list("x-stream-protocol-version");
        if offered.iter().any(|p| p == SPDY_PROTOCOL) {
            return Ok(Upgrade::Spdy);
        }
        return Err(bad(format!(
            "none of the offered stream protocols {offered:?} is supported for port forwarding; use {SPDY_PROTOCOL}"
        )));
    }
    Err(bad(format!(
        "port forwarding needs a connection upgrade: SPDY/3.1 (POST, {SPDY_PROTOCOL}) or WebSocket (GET, {TUNNEL_PROTOCOL} or {})",
        channel::V4
    )))
}

/// The ports of a WebSocket channel session: every `port` query value, each a list separated by
/// commas, as the kubelet reads them.
fn channel_ports(raw_query: Option<&str>) -> Result<Vec<u16>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw_query.unwrap_or("")).map_err(|e| format!("the query does not parse: {e}"))?;
    let mut ports = Vec::new();
    for (_, value) in pairs.iter().filter(|(k, _)| k == "port") {
        if value.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in value.split(',') {
            let port: u16 = p.trim().parse().map_err(|_| format!("unable to parse {p:?} as a port"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_CHANNEL_PORTS {
        return Err(format!("at most {MAX_CHANNEL_PORTS} ports can be forwarded in one session"));
    }
    Ok(ports)
}

async fn session(state: Arc<ApiState>, namespace: String, pod: String, raw: Option<String>, req: Request) -> Response {
    let known = state
        .backend
        .pods()
        .iter()
        .any(|p| p.metadata.namespace.as_deref() == Some(&namespace) && p.metadata.name.as_deref() == Some(&pod));
    if !known {
        return error_response(StatusCode::NOT_FOUND, format!("pod {namespace}/{pod} does not exist on this node"));
    }
    let fwd = Arc::new(Forwarder::new(state.backend.clone(), namespace, pod));
    upgrade(fwd, raw, req, state.sessions.clone(), state.shutdown.clone(), &state.counters).await
}

/// Negotiates the client protocol and upgrades to it; the sessions run on `sessions`.
async fn upgrade(
    fwd: Arc<Forwarder>,
    raw: Option<String>,
    req: Request,
    sessions: TaskTracker,
    shutdown: CancellationToken,
    counters: &SessionCounters,
) -> Response {
    let upgrade = match negotiate(&req, raw.as_deref()) {
        Ok(u) => u,
        Err((status, e)) => return error_response(status, e),
    };
    let name = format!("{}/{}", fwd.namespace, fwd.pod);
    let counter = match upgrade {
        Upgrade::Spdy => &counters.spdy,
        Upgrade::Tunnel | Upgrade::Channels { .. } => &counters.websocket,
    };
    match upgrade {
        Upgrade::Spdy => {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            over_spdy::upgrade(req, fwd, sessions, shutdown, name)
        }
        Upgrade::Tunnel => {
            let ws = match websocket(req).await {
                Ok(ws) => ws,
                Err(rejection) => return rejection,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ws::limits(ws).protocols([TUNNEL_PROTOCOL]).on_upgrade(move |socket| async move {
                let tasks = sessions.clone();
                tokio::select! {
                    _ = tunnel(socket, fwd, tasks) => {}
                    _ = shutdown.cancelled() => {}
                }
                tracing::debug!(session = %name, "kubelet API: tunnelled port-forward session ended");
            })
        }
        Upgrade::Channels { ports } => {
            // The ports are known before the upgrade: a port the provider cannot forward is an
            // HTTP error rather than a session that fails at once.
            for port in &ports {
                if let Err(e) = fwd.target(*port).await {
                    return error_response(e.status, e.message);
                }
            }
            let ws = match websocket(req).await {
                Ok(ws) => ws,
                Err(rejection) => return rejection,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A client that offered no subprotocol gets none in the answer (the kubelet's `""`).
            ws::limits(ws).protocols([channel::V4]).on_upgrade(move |socket| async move {
                let tasks = sessions.clone();
                tokio::select! {
                    _ = serve_channels(socket, ports, fwd, tasks) => {}
                    _ = shutdown.cancelled() => {}
                }
                tracing::debug!(session = %name, "kubelet API: port-forward channel session ended");
            })
        }
    }
}

async fn websocket(req: Request) -> Result<WebSocketUpgrade, Response> {
    let (mut parts, _body) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(axum::response::IntoResponse::into_response)
}

/// SPDY through a WebSocket: binary messages carry the SPDY byte stream both ways, message
/// boundaries meaning nothing. The SPDY session runs on one end of an in-memory pipe and this
/// moves bytes between its other end and the socket.
async fn tunnel(socket: WebSocket, fwd: Arc<Forwarder>, tasks: TaskTracker) {
    let (session_io, bridge) = tokio::io::duplex(4 * READ_CHUNK);
    let session = tasks.spawn(over_spdy::serve(session_io, fwd, tasks.clone()));
    let (mut sink, mut stream) = socket.split();
    let (mut from_session, mut to_session) = tokio::io::split(bridge);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        tokio::select! {
            read = from_session.read_buf(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    if sink.send(Message::Binary(buf.split().freeze())).await.is_err() {
                        break;
                    }
                }
                // The session ended: end the WebSocket the way client-go reads as a clean end.
                _ => {
                    let normal = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
                    let _ = sink.send(Message::Close(Some(normal))).await;
                    break;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if to_session.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "kubelet API: tunnelled port-forward ended by a client error");
                    break;
                }
                // Text has no place in a tunnel; pings are answered by the library.
                Some(Ok(_)) => {}
            },
        }
    }
    drop(to_session);
    drop(from_session);
    session.abort();
}

/// The WebSocket channel protocol: one connection per port, channel `2i` its data and `2i+1` its
/// errors; the session ends when every connection has.
async fn serve_channels(socket: WebSocket, ports: Vec<u16>, fwd: Arc<Forwarder>, tasks: TaskTracker) {
    let (mut sink, mut stream) = socket.split();
    let (events_tx, mut events) = mpsc::channel(INPUT_QUEUE);
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut handles = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let le = port.to_le_bytes();
        for ch in [2 * i, 2 * i + 1] {
            if sink.send(Message::Binary(channel::encode(ch as u8, &le).into())).await.is_err() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        inputs.push(Some(tx));
        handles.push(tasks.spawn(run_connection(fwd.clone(), i as u64, *port, rx, events_tx.clone())));
    }
    drop(events_tx);
    let mut open = ports.len();
    while open > 0 {
        tokio::select! {
            event = events.recv() => {
                let (ch, data, done) = match event {
                    Some(Event::Data(i, data)) => (2 * i, data, false),
                    Some(Event::Closed(i)) => (2 * i, Bytes::new(), true),
                    Some(Event::Failed(i, message)) => (2 * i + 1, Bytes::from(message), true),
                    None => break,
                };
                if done {
                    open -= 1;
                    inputs[(ch / 2) as usize] = None;
                }
                if !data.is_empty() && sink.send(Message::Binary(channel::encode(ch as u8, &data).into())).await.is_err() {
                    break;
                }
            }
            msg = stream.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Some(channel::Frame::Data { channel: ch, data }) = channel::decode(&data, false) else { continue };
                let slot = usize::from(ch / 2);
                if ch % 2 == 0 && !data.is_empty()
                    && let Some(Some(tx)) = inputs.get(slot)
                    && tx.send(data).await.is_err()
                {
                    inputs[slot] = None;
                }
            }
        }
    }
    for h in handles {
        h.abort();
    }
    let normal = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
    let _ = sink.send(Message::Close(Some(normal))).await;
}

/// A backend and targets for the port-forward tests of this module and of `over_spdy`.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use k8s_openapi::api::core::v1::Pod;
    use tokio::net::TcpListener;

    use super::*;
    use crate::kubelet::backend::{ExecQuery, LogQuery, PodUsage, StreamTarget};

    /// Pod ns/web: port 80 goes to `target`, 81 cannot be forwarded, others refuse connections.
    struct Backend {
        target: SocketAddr,
    }

    impl KubeletBackend for Backend {
        fn node_name(&self) -> String {
            "vk-1".into()
        }
        fn pods(&self) -> Vec<Pod> {
            vec![]
        }
        fn running_pods(&self) -> BoxFuture<'_, Result<Vec<Pod>, BackendError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn logs<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: LogQuery,
        ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
            Box::pin(async { Err(BackendError::NotFound("no logs".into())) })
        }
        fn exec<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: ExecQuery,
        ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
            Box::pin(async { Err(BackendError::NotFound("no exec".into())) })
        }
        fn attach<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
            _: ExecQuery,
        ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
            Box::pin(async { Err(BackendError::NotFound("no attach".into())) })
        }
        fn usage(&self) -> BoxFuture<'_, Result<Vec<PodUsage>, BackendError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn port_forward<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            port: u16,
        ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
            let url = match port {
                80 => format!("tcp://{}", self.target),
                81 => {
                    return Box::pin(async move {
                        Err(BackendError::Unsupported(format!("the test provider cannot forward ports: {port}")))
                    });
                }
                _ => "tcp://127.0.0.1:1".into(),
            };
            Box::pin(async move { Ok(StreamTarget { url, headers: vec![], protocol: StreamProtocol::Tcp }) })
        }
    }

    pub fn forwarder(target: SocketAddr) -> Arc<Forwarder> {
        Arc::new(Forwarder::new(Arc::new(Backend { target }), "ns".into(), "web".into()))
    }

    /// A TCP server on loopback standing in for a pod's port.
    pub struct Target {
        pub addr: SocketAddr,
        accepted: Arc<tokio::sync::Semaphore>,
        ended: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    }

    #[derive(Clone, Copy)]
    enum Mode {
        /// Reads to EOF, then answers `got: ` and what it read, then closes.
        ReplyAfterEof,
        /// Echoes what it reads as it comes.
        Echo,
        /// Says `hi` and closes.
        Greet,
    }

    impl Target {
        pub async fn reply_after_eof() -> Target {
            Self::start(Mode::ReplyAfterEof).await
        }
        pub async fn echo() -> Target {
            Self::start(Mode::Echo).await
        }
        pub async fn greet() -> Target {
            Self::start(Mode::Greet).await
        }

        async fn start(mode: Mode) -> Target {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(tokio::sync::Semaphore::new(0));
            let (ended_tx, ended) = mpsc::unbounded_channel();
            let count = accepted.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    count.add_permits(1);
                    let ended_tx = ended_tx.clone();
                    tokio::spawn(async move {
                        let mut got = Vec::new();
                        let mut buf = [0u8; 4096];
                        if let Mode::Greet = mode {
                            let _ = conn.write_all(b"hi").await;
                            let _ = ended_tx.send(got);
                            return;
                        }
                        loop {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    got.extend_from_slice(&buf[..n]);
                                    if let Mode::Echo = mode {
                                        let _ = conn.write_all(&buf[..n]).await;
                                    }
                                }
                            }
                        }
                        if let Mode::ReplyAfterEof = mode {
                            let _ = conn.write_all(&[b"got: ", &got[..]].concat()).await;
                        }
                        let _ = ended_tx.send(got);
                    });
                }
            });
            Target { addr, accepted, ended: Mutex::new(ended) }
        }

        /// Waits until `n` connections were accepted.
        pub async fn wait_for_connections(&self, n: u32) {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.accepted.acquire_many(n))
                .await
                .expect("connections");
        }

        /// What the next connection to end had received.
        pub async fn closed(&self) -> Vec<u8> {
            let mut rx = std::mem::replace(&mut *self.ended.lock().unwrap(), mpsc::unbounded_channel().1);
            let got =
                tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a connection ended").unwrap();
            *self.ended.lock().unwrap() = rx;
            got
        }
    }
}

#[cfg(test)]
// tungstenite's handshake types fix the large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use super::test_support::{Target, forwarder};
    use super::*;

    /// A server upgrading every request to `/pf` for a forwarder to `target`; its address.
    async fn server(target: SocketAddr) -> SocketAddr {
        let app = axum::Router::new().route(
            "/pf",
            axum::routing::any(move |RawQuery(raw): RawQuery, req: Request| async move {
                let counters = SessionCounters::default();
                upgrade(forwarder(target), raw, req, TaskTracker::new(), CancellationToken::new(), &counters).await
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn channels(
        addr: SocketAddr,
        query: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        let mut req = format!("ws://{addr}/pf?{query}").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(channel::V4));
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], channel::V4);
        ws
    }

    async fn next_binary(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> Option<Vec<u8>> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a message in time")? {
                Ok(WsMessage::Binary(b)) => return Some(b.to_vec()),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn channel_sessions_announce_each_port_and_carry_one_connection_per_port() {
        let target = Target::echo().await;
        let addr = server(target.addr).await;
        let mut ws = channels(addr, "port=80&port=80").await;
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(next_binary(&mut ws).await.unwrap());
        }
        assert_eq!(first, vec![vec![0, 80, 0], vec![1, 80, 0], vec![2, 80, 0], vec![3, 80, 0]]);
        ws.send(WsMessage::Binary(channel::encode(0, b"one").into())).await.unwrap();
        assert_eq!(next_binary(&mut ws).await.unwrap(), b"\x00one");
        ws.send(WsMessage::Binary(channel::encode(2, b"two").into())).await.unwrap();
        assert_eq!(next_binary(&mut ws).await.unwrap(), b"\x02two");
        target.wait_for_connections(2).await;
        ws.close(None).await.unwrap();
        // The session's connections end with it.
        let mut ended = vec![target.closed().await, target.closed().await];
        ended.sort();
        assert_eq!(ended, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[tokio::test]
    async fn a_channel_session_ends_when_its_connections_have() {
        let target = Target::greet().await;
        let addr = server(target.addr).await;
        let mut ws = channels(addr, "port=80").await;
        let mut got = Vec::new();
        while let Some(msg) = next_binary(&mut ws).await {
            got.push(msg);
        }
        assert_eq!(got, vec![vec![0, 80, 0], vec![1, 80, 0], b"\x00hi".to_vec()]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_text_on_the_ports_error_channel() {
        let target = Target::echo().await;
        let addr = server(target.addr).await;
        let mut ws = channels(addr, "port=82").await;
        let mut got = Vec::new();
        while let Some(msg) = next_binary(&mut ws).await {
            got.push(msg);
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2][0], 1);
        let text = String::from_utf8_lossy(&got[2][1..]).into_owned();
        assert!(text.starts_with("error forwarding port 82 to pod ns/web: connecting to 127.0.0.1:1"), "{text}");
    }

    #[tokio::test]
    async fn channel_requests_are_refused_before_upgrading_when_they_cannot_work() {
        let target = Target::echo().await;
        let addr = server(target.addr).await;
        let http = reqwest::Client::new();
        let ws = |query: &str| {
            http.get(format!("http://{addr}/pf?{query}"))
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        };
        let resp = ws("port=81").send().await.unwrap();
        assert_eq!(resp.status(), 501);
        assert_eq!(
            resp.text().await.unwrap(),
            "error forwarding port 81 to pod ns/web: the test provider cannot forward ports: 81\n"
        );
        for (query, why) in [("", "is required"), ("port=0", "must be > 0"), ("port=http", "unable to parse")] {
            let resp = ws(query).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{query}");
            assert!(resp.text().await.unwrap().contains(why), "{query}");
        }
        let resp = ws("port=80").header("sec-websocket-protocol", "v5.channel.k8s.io").send().await.unwrap();
        assert_eq!(resp.status(), 400);
        // SPDY must be posted and offer portforward.k8s.io.
        let spdy = |method: reqwest::Method, protocol: &'static str| {
            http.request(method, format!("http://{addr}/pf"))
                .header("connection", "Upgrade")
                .header("upgrade", "SPDY/3.1")
                .header("x-stream-protocol-version", protocol)
        };
        assert_eq!(spdy(reqwest::Method::GET, SPDY_PROTOCOL).send().await.unwrap().status(), 405);
        assert_eq!(spdy(reqwest::Method::POST, "v4.channel.k8s.io").send().await.unwrap().status(), 400);
    }

    #[test]
    fn tcp_targets_are_ip_literals_with_a_port() {
        let tcp = |url: &str| tcp_address(url, StreamProtocol::Tcp, &[]);
        assert_eq!(tcp("tcp://10.0.0.7:80"), Ok("10.0.0.7:80".parse().unwrap()));
        assert_eq!(tcp("tcp://[fd00::7]:8080"), Ok("[fd00::7]:8080".parse().unwrap()));
        for bad in
            ["tcp://pod.local:80", "tcp://10.0.0.7", "tcp://10.0.0.7:80/x", "http://10.0.0.7:80", "tcp://10.0.0.7:0"]
        {
            assert!(tcp(bad).is_err(), "{bad}");
        }
        assert!(tcp_address("tcp://10.0.0.7:80", StreamProtocol::WebSocketChannels, &[]).is_err());
        assert!(tcp_address("tcp://10.0.0.7:80", StreamProtocol::Tcp, &[("x".into(), "y".into())]).is_err());
    }
}
