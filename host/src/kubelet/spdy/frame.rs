//! SPDY/3.1 framing: the frames a server meets, encoded and decoded byte for byte. Header blocks
//! stay compressed here; `headers` inflates and deflates them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u16 = 3;

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Settings ids we act on.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
/// GOAWAY status for a peer that broke the protocol (or our limits).
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// Longest DATA payload accepted. SPDY allows 16 MiB, but spdystream peers (kubectl, the
/// apiserver) write stdin in 32 KiB chunks, and every accepted frame is buffered whole, up to a
/// queue of them per session.
pub const MAX_DATA_LEN: usize = 1 << 20;
/// Longest control frame payload accepted: the largest header block `headers` inflates, plus the
/// SYN_STREAM fields before it.
pub const MAX_CONTROL_LEN: usize = (1 << 20) + 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        header_block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        header_block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type we do not know; SPDY says to ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("SPDY {kind} frame of {len} bytes is malformed")]
    Malformed { kind: &'static str, len: usize },
    #[error("SPDY {kind} frame of {len} bytes is larger than the {max} accepted; send smaller frames")]
    TooLarge { kind: &'static str, len: usize, max: usize },
}

fn kind_name(kind: u16) -> &'static str {
    match kind {
        SYN_STREAM => "SYN_STREAM",
        SYN_REPLY => "SYN_REPLY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PING => "PING",
        GOAWAY => "GOAWAY",
        HEADERS => "HEADERS",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "control",
    }
}

fn stream_id(v: u32) -> u32 {
    v & 0x7fff_ffff
}

/// Takes one complete frame from the front of `buf`, or `None` if more bytes are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    // Judged on the frame header alone, so an oversized frame is never buffered.
    let (kind, max) = if buf[0] & 0x80 == 0 {
        ("DATA", MAX_DATA_LEN)
    } else {
        (kind_name(u16::from_be_bytes([buf[2], buf[3]])), MAX_CONTROL_LEN)
    };
    if len > max {
        return Err(FrameError::TooLarge { kind, len, max });
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let mut body = buf.split_to(len).freeze();
    let flags = head[4];
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if first & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data { stream_id: stream_id(first), flags, data: body }));
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = (first & 0xffff) as u16;
    let need = |kind_name: &'static str, min: usize| {
        if len < min { Err(FrameError::Malformed { kind: kind_name, len }) } else { Ok(()) }
    };
    let frame = match kind {
        SYN_STREAM => {
            need("SYN_STREAM", 10)?;
            let id = stream_id(body.get_u32());
            let associated_to = stream_id(body.get_u32());
            let priority = body.get_u8() >> 5;
            let _slot = body.get_u8();
            Frame::SynStream { stream_id: id, associated_to, priority, flags, header_block: body }
        }
        SYN_REPLY => {
            need("SYN_REPLY", 4)?;
            Frame::SynReply { stream_id: stream_id(body.get_u32()), flags, header_block: body }
        }
        RST_STREAM => {
            need("RST_STREAM", 8)?;
            Frame::RstStream { stream_id: stream_id(body.get_u32()), status: body.get_u32() }
        }
        SETTINGS => {
            need("SETTINGS", 4)?;
            let count = body.get_u32() as usize;
            if body.len() != count.saturating_mul(8) {
                return Err(FrameError::Malformed { kind: "SETTINGS", len });
            }
            let entries = (0..count)
                .map(|_| {
                    let word = body.get_u32();
                    ((word >> 24) as u8, word & 0xff_ffff, body.get_u32())
                })
                .collect();
            Frame::Settings { entries }
        }
        PING => {
            need("PING", 4)?;
            Frame::Ping { id: body.get_u32() }
        }
        GOAWAY => {
            need("GOAWAY", 4)?;
            let last = stream_id(body.get_u32());
            // SPDY/2 peers omit the status.
            let status = if body.remaining() >= 4 { body.get_u32() } else { 0 };
            Frame::GoAway { last_good_stream_id: last, status }
        }
        HEADERS => {
            need("HEADERS", 4)?;
            Frame::Headers { stream_id: stream_id(body.get_u32()), flags, header_block: body }
        }
        WINDOW_UPDATE => {
            need("WINDOW_UPDATE", 8)?;
            Frame::WindowUpdate { stream_id: stream_id(body.get_u32()), delta: body.get_u32() & 0x7fff_ffff }
        }
        other => Frame::Unknown { kind: other },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload_len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | (payload_len as u32 & 0xff_ffff));
}

/// Appends the wire form of a frame. Payloads must fit the 24-bit length (callers chunk data).
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::SynStream { stream_id, associated_to, priority, flags, header_block } => {
            control(out, SYN_STREAM, *flags, 10 + header_block.len());
            out.put_u32(*stream_id);
            out.put_u32(*associated_to);
            out.put_u8(priority << 5);
            out.put_u8(0);
            out.put_slice(header_block);
        }
        Frame::SynReply { stream_id, flags, header_block } => {
            control(out, SYN_REPLY, *flags, 4 + header_block.len());
            out.put_u32(*stream_id);
            out.put_slice(header_block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, RST_STREAM, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*status);
        }
        Frame::Settings { entries } => {
            control(out, SETTINGS, 0, 4 + 8 * entries.len());
            out.put_u32(entries.len() as u32);
            for (flags, id, value) in entries {
                out.put_u32(((*flags as u32) << 24) | (id & 0xff_ffff));
                out.put_u32(*value);
            }
        }
        Frame::Ping { id } => {
            control(out, PING, 0, 4);
            out.put_u32(*id);
        }
        Frame::GoAway { last_good_stream_id, status } => {
            control(out, GOAWAY, 0, 8);
            out.put_u32(*last_good_stream_id);
            out.put_u32(*status);
        }
        Frame::Headers { stream_id, flags, header_block } => {
            control(out, HEADERS, *flags, 4 + header_block.len());
            out.put_u32(*stream_id);
            out.put_slice(header_block);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control(out, WINDOW_UPDATE, 0, 8);
            out.put_u32(*stream_id);
            out.put_u32(*delta);
        }
        Frame::Data { stream_id, flags, data } => {
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(((*flags as u32) << 24) | (data.len() as u32 & 0xff_ffff));
            out.put_slice(data);
        }
        Frame::Unknown { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&frame, &mut buf);
        let decoded = decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_frame_kind_round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            flags: FLAG_FIN,
            header_block: Bytes::from_static(b"hdr"),
        });
        round_trip(Frame::SynReply { stream_id: 3, flags: 0, header_block: Bytes::from_static(b"x") });
        round_trip(Frame::RstStream { stream_id: 5, status: RST_REFUSED_STREAM });
        round_trip(Frame::Settings { entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 65536)] });
        round_trip(Frame::Ping { id: 7 });
        round_trip(Frame::GoAway { last_good_stream_id: 9, status: 0 });
        round_trip(Frame::Headers { stream_id: 11, flags: 0, header_block: Bytes::new() });
        round_trip(Frame::WindowUpdate { stream_id: 1, delta: 1024 });
        round_trip(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"payload") });
    }

    #[test]
    fn control_frame_header_matches_the_spec_layout() {
        let mut buf = BytesMut::new();
        encode(&Frame::Ping { id: 1 }, &mut buf);
        assert_eq!(&buf[..], &[0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1]);
        let mut buf = BytesMut::new();
        encode(&Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"ab") }, &mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 3, 0x01, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode(&Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"hello") }, &mut whole);
        let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(decode(&mut partial).unwrap(), None);
        assert_eq!(partial.len(), whole.len() - 1);
    }

    #[test]
    fn other_spdy_versions_are_rejected() {
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::Version(2)));
    }

    #[test]
    fn unknown_control_frames_are_skipped_whole() {
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 2, 9, 9][..]);
        assert_eq!(decode(&mut buf).unwrap(), Some(Frame::Unknown { kind: 10 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header_alone() {
        // A DATA frame announcing 16 MiB - 1: refused before any of its payload arrives.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert_eq!(decode(&mut buf), Err(FrameError::TooLarge { kind: "DATA", len: 0xff_ffff, max: MAX_DATA_LEN }));
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0, 0x10, 0, 0x11][..]);
        let err = decode(&mut buf).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { kind: "SYN_STREAM", len: MAX_CONTROL_LEN + 1, max: MAX_CONTROL_LEN });
        assert!(err.to_string().contains("SYN_STREAM frame of 1048593 bytes is larger than the 1048592 accepted"));
        // At the limit a frame is still read.
        let mut whole = BytesMut::new();
        encode(&Frame::Data { stream_id: 1, flags: 0, data: Bytes::from(vec![7; MAX_DATA_LEN]) }, &mut whole);
        assert!(matches!(decode(&mut whole), Ok(Some(Frame::Data { data, .. })) if data.len() == MAX_DATA_LEN));
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let id = 0u32..0x8000_0000;
        let block = prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (id.clone(), id.clone(), 0u8..8, any::<u8>(), block.clone()).prop_map(
                |(stream_id, associated_to, priority, flags, header_block)| Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    header_block
                }
            ),
            (id.clone(), any::<u8>(), block.clone()).prop_map(|(stream_id, flags, header_block)| Frame::SynReply {
                stream_id,
                flags,
                header_block
            }),
            (id.clone(), any::<u32>()).prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
            prop::collection::vec((any::<u8>(), 0u32..0x100_0000, any::<u32>()), 0..8)
                .prop_map(|entries| Frame::Settings { entries }),
            any::<u32>().prop_map(|id| Frame::Ping { id }),
            (id.clone(), any::<u32>())
                .prop_map(|(last_good_stream_id, status)| Frame::GoAway { last_good_stream_id, status }),
            (id.clone(), any::<u8>(), block.clone()).prop_map(|(stream_id, flags, header_block)| Frame::Headers {
                stream_id,
                flags,
                header_block
            }),
            (id.clone(), 0u32..0x8000_0000).prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
            (id, any::<u8>(), block).prop_map(|(stream_id, flags, data)| Frame::Data { stream_id, flags, data }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_frame_round_trips(frame in any_frame()) {
            let mut buf = BytesMut::new();
            encode(&frame, &mut buf);
            prop_assert_eq!(decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        /// Valid frames with a few bytes corrupted, or plain noise, fed in arbitrary pieces as a
        /// socket delivers them: the parser never panics, always consumes a frame it returns,
        /// and never returns more than it was given.
        #[test]
        fn any_byte_stream_parses_without_panic_or_oversized_frames(
            frames in prop::collection::vec(any_frame(), 0..8),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            noise in prop::collection::vec(any::<u8>(), 0..64),
            cuts in prop::collection::vec(1usize..64, 1..64),
        ) {
            let mut bytes = BytesMut::new();
            for frame in &frames {
                encode(frame, &mut bytes);
            }
            if !bytes.is_empty() {
                for (at, value) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
            }
            bytes.extend_from_slice(&noise);
            let mut buf = BytesMut::new();
            let mut rest = &bytes[..];
            let mut cuts = cuts.into_iter().cycle();
            'feed: while !rest.is_empty() {
                let n = cuts.next().unwrap().min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                loop {
                    let before = buf.len();
                    match decode(&mut buf) {
                        Ok(Some(frame)) => {
                            prop_assert!(buf.len() < before);
                            let payload = match &frame {
                                Frame::Data { data, .. } => data.len(),
                                Frame::SynStream { header_block, .. }
                                | Frame::SynReply { header_block, .. }
                                | Frame::Headers { header_block, .. } => header_block.len(),
                                Frame::Settings { entries } => entries.len() * 8,
                                _ => 0,
                            };
                            prop_assert!(payload <= before - 8);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
