//! The SPDY/3.1 side of port forwarding (`portforward.k8s.io`): the client opens streams in
//! pairs, an `error` and a `data` stream with the same `port` and `requestID` headers, for each
//! connection it forwards. Once a pair is complete the host connects to the port's target and
//! moves the connection's bytes over the data stream; a failure is text on the error stream.
//! Either way both streams are then closed, which kubectl waits for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Event, Forwarder, INPUT_QUEUE, MAX_CONNECTIONS, SPDY_PROTOCOL, run_connection};
use crate::kubelet::spdy::frame::{self, FLAG_FIN, Frame};
use crate::kubelet::spdy::headers::{self, HeaderCompressor, HeaderDecompressor};
use crate::kubelet::spdy::{FrameReader, MAX_DATA_FRAME, STREAM_CREATION_TIMEOUT, SessionError};

/// Answers the upgrade with 101 and runs the session on the tracker once hyper hands over the
/// connection.
pub fn upgrade(
    mut req: Request,
    fwd: Arc<Forwarder>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
    name: String,
) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = sessions.clone();
    sessions.spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(session = %name, error = %e, "kubelet API: SPDY upgrade failed");
                return;
            }
        };
        tokio::select! {
            result = serve(io, fwd, tracker) => log_end(&name, result),
            _ = shutdown.cancelled() => {}
        }
    });
    (
        http::StatusCode::SWITCHING_PROTOCOLS,
        [
            (http::header::CONNECTION, "Upgrade"),
            (http::header::UPGRADE, "SPDY/3.1"),
            (http::HeaderName::from_static("x-stream-protocol-version"), SPDY_PROTOCOL),
        ],
    )
        .into_response()
}

fn log_end(name: &str, result: Result<(), SessionError>) {
    match result {
        Ok(()) => tracing::debug!(session = %name, "kubelet API: port-forward session ended"),
        Err(e @ (SessionError::Frame(_) | SessionError::Headers(_))) => {
            tracing::warn!(session = %name, error = %e, "kubelet API: SPDY port-forward session refused")
        }
        Err(e) => tracing::debug!(session = %name, error = %e, "kubelet API: port-forward session ended with an error"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// One forwarded connection: its two streams as they arrive, and once both have, its task.
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// When an incomplete pair is given up.
    deadline: Instant,
    /// Client data towards the connection; `None` once the client ended its data stream.
    input: Option<mpsc::Sender<Bytes>>,
    /// Taken by the connection's task when the pair is complete.
    input_rx: Option<mpsc::Receiver<Bytes>>,
    task: Option<AbortHandle>,
}

struct Session<W> {
    writer: W,
    wbuf: BytesMut,
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
    /// Open streams: which pair and which of its two.
    streams: HashMap<u32, (u64, Kind)>,
    pairs: HashMap<u64, Pair>,
    /// Pair keys by the client's request id.
    request_ids: HashMap<String, u64>,
    next_key: u64,
    last_stream: u32,
    fwd: Arc<Forwarder>,
    tasks: TaskTracker,
    events: mpsc::Sender<Event>,
    /// How long a pair may wait for its second stream.
    creation_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Session<W> {
    fn queue(&mut self, frame: &Frame) {
        frame::encode(frame, &mut self.wbuf);
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            let buf = self.wbuf.split();
            self.writer.write_all(&buf).await?;
            self.writer.flush().await?;
        }
        Ok(())
    }

    fn refuse(&mut self, stream_id: u32, why: &str) {
        tracing::debug!(stream_id, why, "kubelet API: port-forward stream refused");
        self.queue(&Frame::RstStream { stream_id, status: frame::RST_REFUSED_STREAM });
    }

    fn write(&mut self, stream_id: u32, mut data: Bytes) {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.queue(&Frame::Data { stream_id, flags: 0, data: chunk });
        }
    }

    fn fin(&mut self, stream_id: u32) {
        self.queue(&Frame::Data { stream_id, flags: FLAG_FIN, data: Bytes::new() });
    }

    /// Ends a pair: `message` on its error stream if any, both streams closed, its task stopped.
    fn end_pair(&mut self, key: u64, message: Option<String>) {
        let Some(pair) = self.pairs.remove(&key) else { return };
        self.request_ids.retain(|_, k| *k != key);
        if let Some(task) = pair.task {
            task.abort();
        }
        if let Some(id) = pair.error {
            if let Some(message) = message {
                self.write(id, Bytes::from(message));
            }
            self.fin(id);
            self.streams.remove(&id);
        }
        if let Some(id) = pair.data {
            self.fin(id);
            self.streams.remove(&id);
        }
    }

    fn on_syn_stream(&mut self, stream_id: u32, flags: u8, header_block: &[u8]) -> Result<(), SessionError> {
        let headers = self.decompressor.decompress(header_block)?;
        self.last_stream = self.last_stream.max(stream_id);
        let kind = match headers::get(&headers, "streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            other => {
                self.refuse(stream_id, &format!("stream type {other:?}"));
                return Ok(());
            }
        };
        let Some(port) = headers::get(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0) else {
            self.refuse(stream_id, "no valid port header");
            return Ok(());
        };
        // Clients before requestID pair the data stream with the error stream opened just before.
        let request_id = match headers::get(&headers, "requestid") {
            Some(id) => id.to_string(),
            None if kind == Kind::Data => stream_id.saturating_sub(2).to_string(),
            None => stream_id.to_string(),
        };
        let key = match self.request_ids.get(&request_id) {
            Some(key) => *key,
            None if self.pairs.len() >= MAX_CONNECTIONS => {
                self.refuse(stream_id, "too many forwarded connections");
                return Ok(());
            }
            None => {
                let key = self.next_key;
                self.next_key += 1;
                let (tx, rx) = mpsc::channel(INPUT_QUEUE);
                self.pairs.insert(
                    key,
                    Pair {
                        port,
                        error: None,
                        data: None,
                        deadline: Instant::now() + self.creation_timeout,
                        input: Some(tx),
                        input_rx: Some(rx),
                        task: None,
                    },
                );
                self.request_ids.insert(request_id, key);
                key
            }
        };
        let Some(pair) = self.pairs.get_mut(&key) else { return Ok(()) };
        let slot = match kind {
            Kind::Error => &mut pair.error,
            Kind::Data => &mut pair.data,
        };
        if slot.is_some() || pair.port != port {
            self.refuse(stream_id, "a second stream of one kind, or another port, for one request");
            return Ok(());
        }
        *slot = Some(stream_id);
        if kind == Kind::Data && flags & FLAG_FIN != 0 {
            pair.input = None;
        }
        self.streams.insert(stream_id, (key, kind));
        let block = self.compressor.compress(&[])?;
        self.queue(&Frame::SynReply { stream_id, flags: 0, header_block: block });
        self.start_if_complete(key);
        Ok(())
    }

    fn start_if_complete(&mut self, key: u64) {
        let Some(pair) = self.pairs.get_mut(&key) else { return };
        if pair.error.is_none() || pair.data.is_none() || pair.task.is_some() {
            return;
        }
        let Some(rx) = pair.input_rx.take() else { return };
        let task = self.tasks.spawn(run_connection(self.fwd.clone(), key, pair.port, rx, self.events.clone()));
        pair.task = Some(task.abort_handle());
    }

    /// Handles one client frame; `false` when the client ended the connection.
    async fn on_frame(&mut self, frame: Frame) -> Result<bool, SessionError> {
        match frame {
            Frame::SynStream { stream_id, flags, header_block, .. } => {
                self.on_syn_stream(stream_id, flags, &header_block)?
            }
            Frame::Data { stream_id, flags, data } => {
                if !data.is_empty() {
                    let delta = data.len() as u32;
                    if self.streams.contains_key(&stream_id) {
                        self.queue(&Frame::WindowUpdate { stream_id, delta });
                    }
                    self.queue(&Frame::WindowUpdate { stream_id: 0, delta });
                }
                // What the client writes on an error stream means nothing.
                let Some(&(key, Kind::Data)) = self.streams.get(&stream_id) else { return Ok(true) };
                let Some(input) = self.pairs.get(&key).map(|p| p.input.clone()) else { return Ok(true) };
                // Waits while the connection is behind, as a kubelet does: the client's other
                // connections wait too.
                if let Some(tx) = input
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                    && let Some(pair) = self.pairs.get_mut(&key)
                {
                    pair.input = None;
                }
                if flags & FLAG_FIN != 0
                    && let Some(pair) = self.pairs.get_mut(&key)
                {
                    pair.input = None;
                }
            }
            Frame::RstStream { stream_id, .. } => match self.streams.remove(&stream_id) {
                // The client gave up the connection (kubectl resets the data stream once it is done
                // with it, then waits for the error stream to end).
                Some((key, Kind::Data)) => {
                    if let Some(pair) = self.pairs.get_mut(&key) {
                        pair.data = None;
                    }
                    self.end_pair(key, None);
                }
                Some((key, Kind::Error)) => {
                    if let Some(pair) = self.pairs.get_mut(&key) {
                        pair.error = None;
                    }
                }
                None => {}
            },
            Frame::Ping { id } => self.queue(&Frame::Ping { id }),
            Frame::GoAway { .. } => return Ok(false),
            // Go's spdystream neither sends nor honours flow control; output is paced by the
            // connection itself (the session waits for each write).
            Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Unknown { .. } => {}
        }
        Ok(true)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Data(key, data) => {
                if let Some(id) = self.pairs.get(&key).and_then(|p| p.data) {
                    self.write(id, data);
                }
            }
            Event::Closed(key) => self.end_pair(key, None),
            Event::Failed(key, message) => {
                tracing::debug!(%message, "kubelet API: forwarded connection failed");
                self.end_pair(key, Some(message));
            }
        }
    }

    /// Gives up pairs whose second stream never came.
    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> =
            self.pairs.iter().filter(|(_, p)| p.task.is_none() && p.deadline <= now).map(|(k, _)| *k).collect();
        for key in late {
            if let Some(id) = self.pairs.get_mut(&key).and_then(|p| p.data.take()) {
                self.streams.remove(&id);
                self.queue(&Frame::RstStream { stream_id: id, status: frame::RST_REFUSED_STREAM });
            }
            self.end_pair(
                key,
                Some(format!(
                    "timed out waiting for the streams of a forwarded connection after {STREAM_CREATION_TIMEOUT:?}"
                )),
            );
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pairs.values().filter(|p| p.task.is_none()).map(|p| p.deadline).min()
    }
}

/// Runs one SPDY port-forward session over an upgraded connection (or a tunnel) until the client
/// ends it; its connections end with it.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    fwd: Arc<Forwarder>,
    tasks: TaskTracker,
) -> Result<(), SessionError> {
    serve_with(io, fwd, tasks, STREAM_CREATION_TIMEOUT).await
}

async fn serve_with<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    fwd: Arc<Forwarder>,
    tasks: TaskTracker,
    creation_timeout: Duration,
) -> Result<(), SessionError> {
    let (reader, writer) = tokio::io::split(io);
    let mut reader = FrameReader::new(reader);
    let (events_tx, mut events) = mpsc::channel(16);
    let mut s = Session {
        writer,
        wbuf: BytesMut::new(),
        compressor: HeaderCompressor::new()?,
        decompressor: HeaderDecompressor::new(),
        streams: HashMap::new(),
        pairs: HashMap::new(),
        request_ids: HashMap::new(),
        next_key: 0,
        last_stream: 0,
        fwd,
        tasks,
        events: events_tx,
        creation_timeout,
    };
    let result = loop {
        let deadline = s.next_deadline();
        tokio::select! {
            next = reader.next() => {
                let more = match next {
                    Ok(Some(frame)) => s.on_frame(frame).await,
                    Ok(None) => Ok(false),
                    Err(e) => Err(e),
                };
                match more {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e @ (SessionError::Frame(_) | SessionError::Headers(_))) => {
                        s.queue(&Frame::GoAway { last_good_stream_id: s.last_stream, status: frame::GOAWAY_PROTOCOL_ERROR });
                        let _ = tokio::time::timeout(crate::kubelet::spdy::GOAWAY_GRACE, s.flush()).await;
                        break Err(e);
                    }
                    Err(e) => break Err(e),
                }
            }
            Some(event) = events.recv() => s.on_event(event),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                s.expire(Instant::now());
            }
        }
        if let Err(e) = s.flush().await {
            break Err(e);
        }
    };
    for pair in s.pairs.values() {
        if let Some(task) = &pair.task {
            task.abort();
        }
    }
    let _ = tokio::time::timeout(crate::kubelet::spdy::GOAWAY_GRACE, s.writer.shutdown()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::portforward::test_support::{Target, forwarder};

    /// The client side of a session, as kubectl's spdystream behaves.
    struct Client {
        io: tokio::io::DuplexStream,
        buf: BytesMut,
        c: HeaderCompressor,
        d: HeaderDecompressor,
        session: tokio::task::JoinHandle<Result<(), SessionError>>,
    }

    impl Client {
        fn start(fwd: Arc<Forwarder>, creation_timeout: Duration) -> Client {
            let (server_io, io) = tokio::io::duplex(1 << 20);
            let session = tokio::spawn(serve_with(server_io, fwd, TaskTracker::new(), creation_timeout));
            Client {
                io,
                buf: BytesMut::new(),
                c: HeaderCompressor::new().unwrap(),
                d: HeaderDecompressor::new(),
                session,
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            frame::encode(&frame, &mut out);
            self.io.write_all(&out).await.unwrap();
        }

        async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let block = self.c.compress(headers).unwrap();
            self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, header_block: block })
                .await;
        }

        async fn next(&mut self) -> Option<Frame> {
            use tokio::io::AsyncReadExt;
            loop {
                if let Some(f) = frame::decode(&mut self.buf).unwrap() {
                    if let Frame::SynReply { header_block, .. } = &f {
                        self.d.decompress(header_block).unwrap();
                    }
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }

        /// What the server sends on `streams` until each has ended (FIN or reset): bytes per
        /// stream, and the streams reset.
        async fn until_ended(&mut self, streams: &[u32]) -> (HashMap<u32, Vec<u8>>, Vec<u32>) {
            let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
            let mut ended = Vec::new();
            let mut reset = Vec::new();
            let within = tokio::time::timeout(Duration::from_secs(10), async {
                while !streams.iter().all(|s| ended.contains(s)) {
                    match self.next().await.expect("the session ended early") {
                        Frame::Data { stream_id, flags, data: d } => {
                            data.entry(stream_id).or_default().extend_from_slice(&d);
                            if flags & FLAG_FIN != 0 {
                                ended.push(stream_id);
                            }
                        }
                        Frame::RstStream { stream_id, .. } => {
                            ended.push(stream_id);
                            reset.push(stream_id);
                        }
                        _ => {}
                    }
                }
            })
            .await;
            assert!(within.is_ok(), "streams {streams:?} not ended; got {data:?}");
            (data, reset)
        }
    }

    fn pair(kind: &'static str, port: &'static str, request: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![("streamtype", kind), ("port", port), ("requestid", request)]
    }

    #[tokio::test]
    async fn a_pair_carries_one_connection_and_the_client_half_close_reaches_the_target() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        c.open(1, &pair("error", "80", "0")).await;
        c.open(3, &pair("data", "80", "0")).await;
        c.send(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"hello ") }).await;
        c.send(Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"world") }).await;
        let (data, reset) = c.until_ended(&[1, 3]).await;
        assert_eq!(data.get(&3).map(Vec::as_slice), Some(&b"got: hello world"[..]));
        assert!(data[&1].is_empty(), "no error on success");
        assert!(reset.is_empty());
    }

    #[tokio::test]
    async fn connections_in_parallel_stay_apart_and_old_clients_pair_by_stream_id() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        // No requestID: the data stream pairs with the error stream opened just before it.
        c.open(1, &[("streamtype", "error"), ("port", "80")]).await;
        c.open(3, &[("streamtype", "data"), ("port", "80")]).await;
        c.open(5, &pair("error", "80", "7")).await;
        c.open(7, &pair("data", "80", "7")).await;
        c.send(Frame::Data { stream_id: 7, flags: FLAG_FIN, data: Bytes::from_static(b"second") }).await;
        c.send(Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"first") }).await;
        let (data, _) = c.until_ended(&[1, 3, 5, 7]).await;
        assert_eq!(data[&3], b"got: first");
        assert_eq!(data[&7], b"got: second");
    }

    #[tokio::test]
    async fn a_port_the_provider_cannot_forward_is_text_on_the_error_stream() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        c.open(1, &pair("error", "81", "0")).await;
        c.open(3, &pair("data", "81", "0")).await;
        let (data, _) = c.until_ended(&[1, 3]).await;
        let message = String::from_utf8(data[&1].clone()).unwrap();
        assert_eq!(message, "error forwarding port 81 to pod ns/web: the test provider cannot forward ports: 81");
    }

    #[tokio::test]
    async fn resetting_the_data_stream_drops_the_connection_and_ends_the_error_stream() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        c.open(1, &pair("error", "80", "0")).await;
        c.open(3, &pair("data", "80", "0")).await;
        c.send(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"partial") }).await;
        target.wait_for_connections(1).await;
        c.send(Frame::RstStream { stream_id: 3, status: 5 }).await;
        let (data, _) = c.until_ended(&[1]).await;
        assert!(data[&1].is_empty());
        // The target sees the connection go.
        assert_eq!(target.closed().await, b"partial");
    }

    #[tokio::test]
    async fn connections_end_with_their_session_even_when_it_is_dropped() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        c.open(1, &pair("error", "80", "0")).await;
        c.open(3, &pair("data", "80", "0")).await;
        c.send(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"x") }).await;
        target.wait_for_connections(1).await;
        // As when the daemon stops: the session's future is dropped mid-way.
        c.session.abort();
        assert_eq!(target.closed().await, b"x");
    }

    #[tokio::test]
    async fn bad_streams_are_refused_and_a_lone_stream_is_given_up() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), Duration::from_millis(200));
        c.open(1, &pair("stdin", "80", "0")).await;
        c.open(3, &pair("data", "0", "1")).await;
        c.open(5, &[("streamtype", "data"), ("port", "http"), ("requestid", "2")]).await;
        c.open(7, &pair("error", "80", "3")).await;
        c.open(9, &pair("error", "80", "3")).await;
        c.open(11, &pair("data", "81", "3")).await;
        let (data, reset) = c.until_ended(&[1, 3, 5, 7, 9, 11]).await;
        assert_eq!(reset, vec![1, 3, 5, 9, 11]);
        let message = String::from_utf8(data[&7].clone()).unwrap();
        assert!(message.contains("timed out waiting for the streams"), "{message}");
    }

    #[tokio::test]
    async fn streams_past_the_connection_cap_are_refused() {
        let target = Target::reply_after_eof().await;
        let mut c = Client::start(forwarder(target.addr), STREAM_CREATION_TIMEOUT);
        for i in 0..MAX_CONNECTIONS as u32 {
            c.open(2 * i + 1, &[("streamtype", "error"), ("port", "80"), ("requestid", &i.to_string())]).await;
        }
        let over = (2 * MAX_CONNECTIONS + 1) as u32;
        c.open(over, &pair("error", "80", "over")).await;
        let (_, reset) = c.until_ended(&[over]).await;
        assert_eq!(reset, vec![over]);
    }
}
