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
use tokio_util::task::TaskTracker;

use super::backend::{BackendError, KubeletBackend, StreamProtocol};
use super::server::{ApiState, error_response};
use super::{channel, exec, spdy, ws};

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
    let stream = match fwd.connect(port).await {
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
    let upgrade = match negotiate(&req, raw.as_deref()) {
        Ok(u) => u,
        Err((status, e)) => return error_response(status, e),
    };
    let name = format!("{namespace}/{pod}");
    let fwd = Arc::new(Forwarder::new(state.backend.clone(), namespace, pod));
    let (sessions, shutdown) = (state.sessions.clone(), state.shutdown.clone());
    let counter = match upgrade {
        Upgrade::Spdy => &state.counters.spdy,
        Upgrade::Tunnel | Upgrade::Channels { .. } => &state.counters.websocket,
    };
    match upgrade {
        Upgrade::Spdy => {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            spdy::forward::upgrade(req, fwd, sessions, shutdown, name)
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
    let session = tasks.spawn(spdy::forward::serve(session_io, fwd, tasks.clone()));
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
