//! The Kubernetes channel protocol (`v4`/`v5.channel.k8s.io`): one channel byte before each
//! message, and the `metav1.Status` documents that carry an exec session's outcome.

use bytes::Bytes;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5 only: `[255, channel]` says the sender will write no more on that channel.
pub const CLOSE: u8 = 255;

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

/// Longest resize event passed on, from either front end. A resize is `{"Width":80,"Height":24}`;
/// anything near this size is not one.
pub const MAX_RESIZE: usize = 4096;

/// One decoded channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data { channel: u8, data: Bytes },
    Close { channel: u8 },
}

/// Reads a message; `None` for an empty one (carries no channel) or a malformed close.
pub fn decode(msg: &[u8], v5: bool) -> Option<Frame> {
    let (&channel, rest) = msg.split_first()?;
    if channel == CLOSE && v5 {
        return rest.first().map(|&channel| Frame::Close { channel });
    }
    Some(Frame::Data { channel, data: Bytes::copy_from_slice(rest) })
}

pub fn encode(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

pub fn encode_close(channel: u8) -> Vec<u8> {
    vec![CLOSE, channel]
}

/// The status a session that ended well reports.
pub fn success_status() -> Bytes {
    Bytes::from_static(br#"{"metadata":{},"status":"Success"}"#)
}

/// The status of a session the host had to end itself (the backend vanished, say).
pub fn failure_status(message: &str) -> Bytes {
    serde_json::to_vec(&serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
    }))
    .map(Bytes::from)
    .unwrap_or_else(|_| success_status())
}

/// The status of a command that exited with a non-zero code, as kubectl reads it back into its
/// own exit code (the shape backends send; the host passes theirs through).
#[cfg(test)]
pub fn exit_code_status(code: i32) -> Bytes {
    serde_json::to_vec(&serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    }))
    .map(Bytes::from)
    .unwrap_or_else(|_| success_status())
}

/// How a status document reads for the older SPDY protocols (v2/v3), which carry only the error
/// text and nothing on success.
pub fn status_as_error_text(status: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(status).ok()?;
    if v.get("status").and_then(|s| s.as_str()) == Some("Success") {
        return None;
    }
    Some(v.get("message").and_then(|m| m.as_str()).unwrap_or("command failed").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_round_trip_through_the_channel_byte() {
        let msg = encode(STDOUT, b"hello");
        assert_eq!(msg, b"\x01hello");
        assert_eq!(decode(&msg, true), Some(Frame::Data { channel: STDOUT, data: Bytes::from_static(b"hello") }));
    }

    #[test]
    fn v5_close_message_names_the_closed_channel() {
        assert_eq!(encode_close(STDIN), vec![255, 0]);
        assert_eq!(decode(&[255, 0], true), Some(Frame::Close { channel: STDIN }));
    }

    #[test]
    fn v4_has_no_close_message_so_255_is_plain_data() {
        assert!(matches!(decode(&[255, 0], false), Some(Frame::Data { channel: 255, .. })));
    }

    #[test]
    fn empty_messages_carry_nothing() {
        assert_eq!(decode(&[], true), None);
        assert_eq!(decode(&[255], true), None);
    }

    #[test]
    fn exit_code_status_has_the_cause_kubectl_reads() {
        let v: serde_json::Value = serde_json::from_slice(&exit_code_status(3)).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn old_protocols_see_error_text_only_for_failures() {
        assert_eq!(status_as_error_text(&success_status()), None);
        assert_eq!(
            status_as_error_text(&exit_code_status(2)).as_deref(),
            Some("command terminated with non-zero exit code: 2")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        #[test]
        fn any_message_decodes_without_panic_to_at_most_its_own_bytes(
            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            v5 in proptest::prelude::any::<bool>(),
        ) {
            match decode(&msg, v5) {
                None => proptest::prop_assert!(msg.is_empty() || (v5 && msg == [CLOSE])),
                Some(Frame::Data { channel, data }) => {
                    proptest::prop_assert_eq!(channel, msg[0]);
                    proptest::prop_assert_eq!(&data[..], &msg[1..]);
                }
                Some(Frame::Close { channel }) => {
                    proptest::prop_assert!(v5);
                    proptest::prop_assert_eq!(channel, msg[1]);
                }
            }
        }
    }
}
