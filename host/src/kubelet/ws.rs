//! The WebSocket front end of exec/attach: channel-framed messages between the client (kubectl,
//! or the apiserver passing WebSockets through) and the relay.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::channel;
use super::relay::{self, ClientInput, ClientOutput, Upstream};

/// How long to wait for the client to answer our close before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Largest message, whole or in fragments, taken from a client. client-go writes stdin in 32 KiB
/// chunks; tungstenite's defaults (64 MiB messages, 16 MiB frames) let one session pin a GiB
/// through the 16-deep input queue.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Puts the client limits on an upgrade; a message beyond them ends the session.
pub fn limits(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_MESSAGE).max_frame_size(MAX_MESSAGE)
}

/// What a client message asks of the relay, if anything. Resize events are passed on only for a
/// terminal session, and only if they are of a resize event's size.
fn client_input(data: &[u8], v5: bool, tty: bool) -> Option<ClientInput> {
    match channel::decode(data, v5)? {
        channel::Frame::Data { channel: channel::STDIN, data } => Some(ClientInput::Stdin(data)),
        channel::Frame::Data { channel: channel::RESIZE, data } if tty && data.len() <= channel::MAX_RESIZE => {
            Some(ClientInput::Resize(data))
        }
        channel::Frame::Close { channel: channel::STDIN } => Some(ClientInput::StdinClosed),
        _ => None,
    }
}

pub async fn serve(socket: WebSocket, v5: bool, tty: bool, upstream: Upstream, sessions: TaskTracker) {
    let (input_tx, input_rx) = mpsc::channel(16);
    let (output_tx, mut output_rx) = mpsc::channel(16);
    sessions.spawn(relay::run(upstream, input_rx, output_tx));
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = output_rx.recv() => {
                let (frame, last) = match out {
                    Some(ClientOutput::Stdout(d)) => (channel::encode(channel::STDOUT, &d), false),
                    Some(ClientOutput::Stderr(d)) => (channel::encode(channel::STDERR, &d), false),
                    Some(ClientOutput::Status(d)) => (channel::encode(channel::ERROR, &d), true),
                    None => break,
                };
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
                if last {
                    break;
                }
            }
            msg = stream.next() => {
                let forwarded = match msg {
                    Some(Ok(Message::Binary(b))) => client_input(&b, v5, tty),
                    Some(Ok(Message::Text(t))) => client_input(t.as_str().as_bytes(), v5, tty),
                    Some(Ok(Message::Close(_))) | None => {
                        // The client is gone; dropping our ends of the channels stops the relay.
                        return;
                    }
                    Some(Err(e)) => {
                        // Includes a message past `MAX_MESSAGE`.
                        tracing::debug!(error = %e, "kubelet API: websocket session ended by a client error");
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                if let Some(forwarded) = forwarded {
                    let _ = input_tx.send(forwarded).await;
                }
            }
        }
    }
    drop(input_tx);
    // A close without a status code reads as an error to client-go; 1000 is its end of stream.
    let normal = axum::extract::ws::CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: "".into() };
    let _ = sink.send(Message::Close(Some(normal))).await;
    // Let the client read everything and answer the close; bounded so a silent peer cannot
    // hold the session open.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
// tungstenite's handshake callback type fixes the large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use bytes::Bytes;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use super::super::backend::{StreamProtocol, StreamTarget};
    use super::*;

    /// A v5 backend recording what reaches it until stdin closes, then reporting success.
    async fn backend() -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let callback = |_: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(channel::V5));
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap();
            let mut got = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                if let WsMessage::Binary(b) = msg {
                    got.push(b.to_vec());
                    if b[..] == [channel::CLOSE, channel::STDIN] {
                        break;
                    }
                }
            }
            let status = channel::encode(channel::ERROR, &channel::success_status());
            let _ = ws.send(WsMessage::Binary(status.into())).await;
            let _ = ws.close(None).await;
            got
        });
        (url, task)
    }

    /// The kubelet side: an axum server upgrading one client into `serve` with the limits.
    async fn front_end(tty: bool) -> (tokio::net::TcpStream, String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let (backend_url, backend) = backend().await;
        let target = StreamTarget { url: backend_url, headers: vec![], protocol: StreamProtocol::WebSocketChannels };
        let upstream = relay::connect(&target, Arc::new(super::super::tls::client_config())).await.unwrap();
        let upstream = Arc::new(Mutex::new(Some(upstream)));
        let app = axum::Router::new().route(
            "/",
            get(move |ws: WebSocketUpgrade| async move {
                let upstream = upstream.lock().unwrap().take().unwrap();
                limits(ws)
                    .protocols([channel::V5])
                    .on_upgrade(move |socket| serve(socket, true, tty, upstream, TaskTracker::new()))
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (tokio::net::TcpStream::connect(addr).await.unwrap(), format!("ws://{addr}/"), backend)
    }

    async fn client(
        tty: bool,
    ) -> (tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let (tcp, url, backend) = front_end(tty).await;
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(channel::V5));
        let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        (ws, backend)
    }

    const RESIZE: &[u8] = br#"{"Width":80,"Height":24}"#;

    #[tokio::test]
    async fn resize_reaches_the_backend_only_for_a_terminal_session() {
        for tty in [false, true] {
            let (mut ws, backend) = client(tty).await;
            ws.send(WsMessage::Binary(channel::encode(channel::RESIZE, RESIZE).into())).await.unwrap();
            let huge = format!(r#"{{"Width":80,"Height":24,"pad":"{}"}}"#, "x".repeat(channel::MAX_RESIZE));
            ws.send(WsMessage::Binary(channel::encode(channel::RESIZE, huge.as_bytes()).into())).await.unwrap();
            ws.send(WsMessage::Binary(channel::encode(channel::STDIN, b"hi").into())).await.unwrap();
            ws.send(WsMessage::Binary(channel::encode_close(channel::STDIN).into())).await.unwrap();
            let mut expected = vec![channel::encode(channel::STDIN, b"hi"), channel::encode_close(channel::STDIN)];
            if tty {
                expected.insert(0, channel::encode(channel::RESIZE, RESIZE));
            }
            assert_eq!(backend.await.unwrap(), expected, "tty={tty}");
        }
    }

    #[tokio::test]
    async fn message_past_the_limit_ends_the_session_unforwarded() {
        let (mut ws, backend) = client(false).await;
        let big = Bytes::from(channel::encode(channel::STDIN, &vec![b'x'; MAX_MESSAGE]));
        // The server may hang up while the message is still going out.
        let _ = ws.send(WsMessage::Binary(big)).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(msg)) = ws.next().await {
                assert!(!matches!(msg, WsMessage::Binary(_)), "the session went on: {msg:?}");
            }
        })
        .await;
        assert!(ended.is_ok(), "the session outlived an oversized message");
        assert_eq!(backend.await.unwrap(), Vec::<Vec<u8>>::new(), "the oversized message reached the backend");
    }

    #[test]
    fn client_messages_map_to_relay_input() {
        assert_eq!(client_input(b"\x00hi", true, false), Some(ClientInput::Stdin(Bytes::from_static(b"hi"))));
        assert_eq!(client_input(&[channel::CLOSE, channel::STDIN], true, false), Some(ClientInput::StdinClosed));
        assert_eq!(client_input(&channel::encode(channel::RESIZE, RESIZE), true, false), None);
        assert_eq!(
            client_input(&channel::encode(channel::RESIZE, RESIZE), false, true),
            Some(ClientInput::Resize(Bytes::from_static(RESIZE)))
        );
        assert_eq!(client_input(b"\x01out", true, true), None);
    }
}
