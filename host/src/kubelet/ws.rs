//! The WebSocket front end of exec/attach: channel-framed messages between the client (kubectl,
//! or the apiserver passing WebSockets through) and the relay.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::channel;
use super::relay::{self, ClientInput, ClientOutput, Upstream};

/// How long to wait for the client to answer our close before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub async fn serve(socket: WebSocket, v5: bool, upstream: Upstream, sessions: TaskTracker) {
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
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => bytes::Bytes::copy_from_slice(t.as_str().as_bytes()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The client is gone; dropping our ends of the channels stops the relay.
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                let forwarded = match channel::decode(&data, v5) {
                    Some(channel::Frame::Data { channel: channel::STDIN, data }) => ClientInput::Stdin(data),
                    Some(channel::Frame::Data { channel: channel::RESIZE, data }) => ClientInput::Resize(data),
                    Some(channel::Frame::Close { channel: channel::STDIN }) => ClientInput::StdinClosed,
                    _ => continue,
                };
                let _ = input_tx.send(forwarded).await;
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
