//! Moves an exec/attach session between the client-facing protocol (WebSocket or SPDY) and the
//! backend's channel-protocol WebSocket, so both front ends share one relay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::backend::{StreamProtocol, StreamTarget};
use super::channel;

/// What the client sends towards the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    Stdin(Bytes),
    /// The client will send no more stdin.
    StdinClosed,
    /// A `{"Width":w,"Height":h}` document.
    Resize(Bytes),
}

/// What the command sends towards the client; the channel closes after `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    Stdout(Bytes),
    Stderr(Bytes),
    /// A `metav1.Status` JSON document: the session's outcome.
    Status(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("stream target {url} is {protocol:?}, but exec and attach need a websocket-channels target")]
    WrongProtocol { url: String, protocol: StreamProtocol },
    #[error("stream target {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("stream target {url}: header {name}: {why}")]
    Header { url: String, name: String, why: String },
    #[error("stream target {url}: no WebSocket handshake within {after:?}")]
    Timeout { url: String, after: Duration },
}

/// How long the backend has to complete the handshake: a backend that accepts the connection and
/// never answers must not hold the client's session (and its task) forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest message the backend may send. Channel frames are small (the apiserver sends at
/// most 32 KiB); tungstenite's default of 64 MiB would let one backend make the host buffer that
/// much per session.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// A connected backend session.
pub struct Upstream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    v5: bool,
}

/// Connects to the backend's channel WebSocket, offering v5 then v4; the backend must pick one
/// (a handshake without a subprotocol is refused, as the framing would be ambiguous).
pub async fn connect(target: &StreamTarget, tls: Arc<rustls::ClientConfig>) -> Result<Upstream, RelayError> {
    connect_within(target, tls, HANDSHAKE_TIMEOUT).await
}

/// [`connect`] with its handshake bounded by `timeout`.
pub async fn connect_within(
    target: &StreamTarget,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Upstream, RelayError> {
    if target.protocol != StreamProtocol::WebSocketChannels {
        return Err(RelayError::WrongProtocol { url: target.shown_url(), protocol: target.protocol });
    }
    let connect_err = |e| RelayError::Connect { url: target.shown_url(), source: Box::new(e) };
    let mut req = target.url.as_str().into_client_request().map_err(connect_err)?;
    for (name, value) in &target.headers {
        let header_err = |why: String| RelayError::Header { url: target.shown_url(), name: name.clone(), why };
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| header_err(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| header_err(e.to_string()))?;
        req.headers_mut().append(name, value);
    }
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"));
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let handshake = tokio_tungstenite::connect_async_tls_with_config(req, Some(config), false, Some(connector));
    let (ws, resp) = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| RelayError::Timeout { url: target.shown_url(), after: timeout })?
        .map_err(connect_err)?;
    let v5 = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim() == channel::V5);
    Ok(Upstream { ws, v5 })
}

/// Runs the session until the backend ends it or the client goes away. Always ends by sending
/// one `Status` unless the client is gone.
pub async fn run(upstream: Upstream, mut input: mpsc::Receiver<ClientInput>, output: mpsc::Sender<ClientOutput>) {
    let Upstream { mut ws, v5 } = upstream;
    let mut input_open = true;
    let status = loop {
        tokio::select! {
            msg = ws.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(Message::Close(_))) | None => {
                        break channel::failure_status("the backend ended the session without reporting an exit status");
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break channel::failure_status(&format!("backend session failed: {e}")),
                };
                let out = match channel::decode(&data, v5) {
                    Some(channel::Frame::Data { channel: channel::STDOUT, data }) => ClientOutput::Stdout(data),
                    Some(channel::Frame::Data { channel: channel::STDERR, data }) => ClientOutput::Stderr(data),
                    Some(channel::Frame::Data { channel: channel::ERROR, data }) => break data,
                    _ => continue,
                };
                if output.send(out).await.is_err() {
                    let _ = ws.close(None).await;
                    return;
                }
            }
            _ = output.closed() => {
                // The client front end is gone: nothing will read our output any more.
                let _ = ws.close(None).await;
                return;
            }
            inp = input.recv(), if input_open => {
                let msg = match inp {
                    Some(ClientInput::Stdin(data)) => channel::encode(channel::STDIN, &data),
                    Some(ClientInput::Resize(doc)) => channel::encode(channel::RESIZE, &doc),
                    Some(ClientInput::StdinClosed) if v5 => channel::encode_close(channel::STDIN),
                    // v4 cannot say "end of stdin"; the backend sees it when the session ends.
                    Some(ClientInput::StdinClosed) => continue,
                    None => {
                        input_open = false;
                        continue;
                    }
                };
                if let Err(e) = ws.send(Message::Binary(msg.into())).await {
                    break channel::failure_status(&format!("backend session failed: {e}"));
                }
            }
        }
    };
    let _ = output.send(ClientOutput::Status(status)).await;
    let _ = ws.close(None).await;
}

#[cfg(test)]
// tungstenite's handshake callback type fixes the large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    use super::*;

    /// A backend on a free port that accepts one session and chooses v5: its URL, and the
    /// accepted WebSocket once a client connects.
    async fn v5_backend() -> (String, tokio::task::JoinHandle<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>)
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let callback = |_: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(channel::V5));
                Ok(resp)
            };
            tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap()
        });
        (url, accepted)
    }

    /// A backend that speaks v5 when `v5`, records what it receives until stdin closes (or the
    /// third message on v4), then answers `ok` on stdout and a success status.
    async fn backend(v5: bool) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/session", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                assert_eq!(req.headers()["x-backend-key"], "k1");
                let offered = req.headers()["Sec-WebSocket-Protocol"].to_str().unwrap().to_string();
                assert!(offered.starts_with(channel::V5), "{offered}");
                let chosen = if v5 { channel::V5 } else { channel::V4 };
                resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(b) = msg {
                    got.push(b.to_vec());
                    if b[..] == [channel::CLOSE, channel::STDIN] || (!v5 && got.len() == 2) {
                        break;
                    }
                }
            }
            ws.send(Message::Binary(channel::encode(channel::STDOUT, b"ok").into())).await.unwrap();
            ws.send(Message::Binary(channel::encode(channel::ERROR, &channel::success_status()).into())).await.unwrap();
            let _ = ws.close(None).await;
            got
        });
        (url, task)
    }

    fn target(url: String) -> StreamTarget {
        StreamTarget {
            url,
            headers: vec![("x-backend-key".into(), "k1".into())],
            protocol: StreamProtocol::WebSocketChannels,
        }
    }

    #[tokio::test]
    async fn relay_carries_stdin_resize_and_the_v5_close_and_passes_the_status_through() {
        let (url, backend) = backend(true).await;
        let upstream = connect(&target(url), Arc::new(super::super::tls::client_config())).await.unwrap();
        assert!(upstream.v5);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let relay = tokio::spawn(run(upstream, in_rx, out_tx));
        in_tx.send(ClientInput::Stdin(Bytes::from_static(b"hi"))).await.unwrap();
        in_tx.send(ClientInput::Resize(Bytes::from_static(br#"{"Width":80,"Height":24}"#))).await.unwrap();
        in_tx.send(ClientInput::StdinClosed).await.unwrap();
        assert_eq!(out_rx.recv().await, Some(ClientOutput::Stdout(Bytes::from_static(b"ok"))));
        assert_eq!(out_rx.recv().await, Some(ClientOutput::Status(channel::success_status())));
        assert_eq!(out_rx.recv().await, None);
        assert_eq!(
            backend.await.unwrap(),
            vec![b"\x00hi".to_vec(), b"\x04{\"Width\":80,\"Height\":24}".to_vec(), vec![255, 0]]
        );
        relay.await.unwrap();
    }

    #[tokio::test]
    async fn v4_backends_get_no_close_message() {
        let (url, backend) = backend(false).await;
        let upstream = connect(&target(url), Arc::new(super::super::tls::client_config())).await.unwrap();
        assert!(!upstream.v5);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let relay = tokio::spawn(run(upstream, in_rx, out_tx));
        in_tx.send(ClientInput::Stdin(Bytes::from_static(b"a"))).await.unwrap();
        in_tx.send(ClientInput::StdinClosed).await.unwrap();
        in_tx.send(ClientInput::Stdin(Bytes::from_static(b"b"))).await.unwrap();
        assert_eq!(out_rx.recv().await, Some(ClientOutput::Stdout(Bytes::from_static(b"ok"))));
        assert_eq!(backend.await.unwrap(), vec![b"\x00a".to_vec(), b"\x00b".to_vec()]);
        relay.await.unwrap();
    }

    #[tokio::test]
    async fn backend_that_ends_without_a_status_reports_a_failure() {
        let (url, accepted) = v5_backend().await;
        tokio::spawn(async move {
            let mut ws = accepted.await.unwrap();
            let _ = ws.close(None).await;
        });
        let upstream = connect(&target(url), Arc::new(super::super::tls::client_config())).await.unwrap();
        let (_in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        tokio::spawn(run(upstream, in_rx, out_tx));
        let got = out_rx.recv().await;
        let Some(ClientOutput::Status(status)) = got else { panic!("expected a status, got {got:?}") };
        let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(v["status"], "Failure");
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_the_handshake_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tcp);
        });
        let tls = Arc::new(super::super::tls::client_config());
        let started = std::time::Instant::now();
        let result = connect_within(&target(url), tls, Duration::from_millis(300)).await;
        assert!(matches!(result, Err(RelayError::Timeout { .. })), "{:?}", result.err());
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }

    #[tokio::test]
    async fn connect_errors_never_show_the_stream_token() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let tls = Arc::new(super::super::tls::client_config());
        let Err(err) = connect(&target(format!("ws://{closed}/exec?token=SECRET-TOKEN")), tls).await else {
            panic!("connected to a closed port")
        };
        assert!(!format!("{err} {err:?}").contains("SECRET-TOKEN"), "{err:?}");
    }

    #[tokio::test]
    async fn a_message_over_the_limit_ends_the_session_instead_of_being_buffered() {
        let (url, accepted) = v5_backend().await;
        tokio::spawn(async move {
            let mut ws = accepted.await.unwrap();
            let huge = channel::encode(channel::STDOUT, &vec![b'x'; MAX_MESSAGE_BYTES + 1]);
            let _ = ws.send(Message::Binary(huge.into())).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let upstream = connect(&target(url), Arc::new(super::super::tls::client_config())).await.unwrap();
        let (_in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        tokio::spawn(run(upstream, in_rx, out_tx));
        let got = out_rx.recv().await;
        let Some(ClientOutput::Status(status)) = got else { panic!("expected a failure status, got {got:?}") };
        let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(v["status"], "Failure", "{v}");
    }

    #[tokio::test]
    async fn http_body_targets_are_refused_for_exec() {
        let target =
            StreamTarget { url: "http://127.0.0.1:1/logs".into(), headers: vec![], protocol: StreamProtocol::HttpBody };
        let tls = Arc::new(super::super::tls::client_config());
        assert!(matches!(connect(&target, tls).await, Err(RelayError::WrongProtocol { .. })));
    }
}
