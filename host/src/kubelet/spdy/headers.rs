//! SPDY/3 header blocks: name/value pairs with 32-bit lengths, deflated in one zlib stream per
//! direction that lives as long as the connection and starts from the SPDY dictionary.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::HEADER_DICTIONARY;

/// Inflated header blocks larger than this are refused (a compression bomb guard).
pub const MAX_BLOCK: usize = 1 << 20;
/// Header values (after splitting NUL-separated lists) a block may carry. spdystream's streams
/// carry one or two (`streamtype`, `port`, `requestid`); the cap keeps a block of many tiny
/// values from decoding into far more memory than it occupies.
pub const MAX_VALUES: usize = 64;
/// Longest header name accepted. Names are repeated once per value of a NUL-separated list, so an
/// unbounded name times many values was a memory bomb (a 64 KiB name with 64 Ki values).
pub const MAX_NAME: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("SPDY header block: zlib: {0}")]
    Zlib(String),
    #[error("SPDY header block is malformed: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block inflates beyond {MAX_BLOCK} bytes; send smaller headers")]
    TooLarge,
    #[error("SPDY header block is {len} bytes compressed, more than the {MAX_BLOCK} accepted; send smaller headers")]
    CompressedTooLarge { len: usize },
    #[error("SPDY header block declares {count} headers, more than the {MAX_VALUES} accepted")]
    TooManyPairs { count: usize },
    #[error(
        "SPDY header block carries more than {MAX_VALUES} header values (counting each NUL-separated value of {name:?})"
    )]
    TooManyValues { name: String },
    #[error("SPDY header name of {len} bytes starting {prefix:?} is longer than the {MAX_NAME} accepted")]
    NameTooLong { len: usize, prefix: String },
}

pub type Headers = Vec<(String, String)>;

/// Finds a header by name, case-insensitively (SPDY names are lower case on the wire, but
/// Go's canonical forms are what people write).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

pub fn encode_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = BytesMut::new();
    raw.put_u32(headers.len() as u32);
    for (name, value) in headers {
        raw.put_u32(name.len() as u32);
        raw.put_slice(name.to_ascii_lowercase().as_bytes());
        raw.put_u32(value.len() as u32);
        raw.put_slice(value.as_bytes());
    }
    raw.to_vec()
}

/// Decodes an inflated block. What it returns is at most about three times the block (invalid
/// UTF-8 widens to U+FFFD) plus `MAX_VALUES` small entries, whatever the block holds.
pub fn decode_block(mut raw: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(raw: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
        if raw.remaining() < 4 {
            return Err(HeaderError::Malformed("truncated length"));
        }
        let len = raw.get_u32() as usize;
        if raw.remaining() < len {
            return Err(HeaderError::Malformed("truncated string"));
        }
        let (s, rest) = raw.split_at(len);
        *raw = rest;
        Ok(s)
    }
    if raw.remaining() < 4 {
        return Err(HeaderError::Malformed("missing pair count"));
    }
    let count = raw.get_u32() as usize;
    if count > MAX_VALUES {
        return Err(HeaderError::TooManyPairs { count });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut raw)?;
        if name.len() > MAX_NAME {
            let prefix = String::from_utf8_lossy(&name[..32]).into_owned();
            return Err(HeaderError::NameTooLong { len: name.len(), prefix });
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let value = take(&mut raw)?;
        // Several values of one name are NUL-separated.
        for v in value.split(|&b| b == 0) {
            if out.len() == MAX_VALUES {
                return Err(HeaderError::TooManyValues { name });
            }
            out.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(out)
}

/// The deflating half: our header blocks towards the peer.
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Result<Self, HeaderError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(HEADER_DICTIONARY).map_err(|e| HeaderError::Zlib(e.to_string()))?;
        Ok(Self { z })
    }

    pub fn compress(&mut self, headers: &[(&str, &str)]) -> Result<Bytes, HeaderError> {
        self.compress_raw(&encode_block(headers))
    }

    /// Deflates an already encoded block (tests use it to send blocks `encode_block` cannot make).
    pub fn compress_raw(&mut self, raw: &[u8]) -> Result<Bytes, HeaderError> {
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.z
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            let consumed = (self.z.total_in() - start) as usize;
            // A sync flush is complete once all input is in and zlib left room unused.
            if consumed == raw.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(Bytes::from(out))
    }
}

/// The inflating half: the peer's header blocks.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl HeaderDecompressor {
    pub fn new() -> Self {
        Self { z: Decompress::new(true) }
    }

    /// Inflates one block of the connection's zlib stream and decodes it.
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        decode_block(&self.inflate(block)?)
    }

    /// Neither the compressed nor the inflated block may exceed `MAX_BLOCK`, and the buffer never
    /// grows past it (one byte more, to tell "exactly the cap" from "beyond").
    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        if block.len() > MAX_BLOCK {
            return Err(HeaderError::CompressedTooLarge { len: block.len() });
        }
        const LIMIT: usize = MAX_BLOCK + 1;
        let mut out: Vec<u8> = Vec::with_capacity((block.len().saturating_mul(4) + 64).min(LIMIT));
        let start = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start) as usize;
            if out.len() == out.capacity() {
                if out.len() >= LIMIT {
                    return Err(HeaderError::TooLarge);
                }
                let grown = out.capacity().saturating_mul(2).clamp(1024, LIMIT);
                out.reserve_exact(grown - out.len());
            }
            let before_out = out.len();
            match self.z.decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(HEADER_DICTIONARY).map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
            let consumed_now = (self.z.total_in() - start) as usize;
            // Done once all input is in and zlib left room unused or gave nothing more.
            if consumed_now == block.len() && (out.len() < out.capacity() || out.len() == before_out) {
                break;
            }
            if consumed_now == consumed && out.len() == before_out && out.len() < out.capacity() {
                return Err(HeaderError::Malformed("zlib made no progress"));
            }
        }
        if out.len() > MAX_BLOCK {
            return Err(HeaderError::TooLarge);
        }
        Ok(out)
    }
}

/// The reported shape, as an uncompressed block: a name of `name_len` bytes and a value of `nuls`
/// NULs (`nuls + 1` values). 64 KiB and 64 Ki inflate from ~180 bytes and used to decode into
/// 64 Ki copies of the name (4 GiB).
#[cfg(test)]
pub(super) fn bomb(name_len: usize, nuls: usize) -> Vec<u8> {
    let mut raw = BytesMut::new();
    raw.put_u32(1);
    raw.put_u32(name_len as u32);
    raw.put_bytes(b'a', name_len);
    raw.put_u32(nuls as u32);
    raw.put_bytes(0, nuls);
    raw.to_vec()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn dictionary_has_the_spec_length() {
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        assert!(HEADER_DICTIONARY.starts_with(b"\0\0\0\x07options"));
        assert!(HEADER_DICTIONARY.ends_with(b"enq=0."));
    }

    #[test]
    fn blocks_round_trip_through_one_long_lived_zlib_stream() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        for i in 0..3 {
            let id = i.to_string();
            let block = c.compress(&[("streamtype", "stdout"), ("requestid", &id)]).unwrap();
            let headers = d.decompress(&block).unwrap();
            assert_eq!(get(&headers, "StreamType"), Some("stdout"));
            assert_eq!(get(&headers, "requestid"), Some(id.as_str()));
        }
    }

    #[test]
    fn empty_header_block_round_trips() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(&c.compress(&[]).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn multi_valued_headers_split_on_nul() {
        let raw = encode_block(&[("x-stream-protocol-version", "v4.channel.k8s.io\0v3.channel.k8s.io")]);
        let headers = decode_block(&raw).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].1, "v3.channel.k8s.io");
    }

    #[test]
    fn truncated_blocks_are_malformed() {
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
    }

    #[test]
    fn garbage_is_a_zlib_error_not_a_panic() {
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(b"definitely not zlib").is_err());
    }

    /// Heap and inline bytes a decoded block holds.
    fn footprint(headers: &Headers) -> usize {
        headers.capacity() * std::mem::size_of::<(String, String)>()
            + headers.iter().map(|(n, v)| n.capacity() + v.capacity()).sum::<usize>()
    }

    /// What any block may decode to: the strings of the block (widened at most 3x by U+FFFD for
    /// invalid UTF-8) plus at most `MAX_VALUES` entries, each with its own copy of a bounded name.
    fn bound(raw_len: usize) -> usize {
        3 * raw_len + MAX_VALUES * (std::mem::size_of::<(String, String)>() + 3 * MAX_NAME)
    }

    use super::bomb;

    #[test]
    fn header_bomb_is_refused_before_it_is_expanded() {
        let mut c = HeaderCompressor::new().unwrap();
        let block = c.compress_raw(&bomb(64 * 1024, 64 * 1024)).unwrap();
        assert!(block.len() < 1024, "the bomb is small on the wire: {} bytes", block.len());
        let err = HeaderDecompressor::new().decompress(&block).unwrap_err();
        assert!(matches!(err, HeaderError::NameTooLong { len: 65536, .. }), "{err:?}");
        assert!(err.to_string().contains("longer than the 256 accepted"), "{err}");
    }

    #[test]
    fn many_values_of_a_short_name_are_refused_at_the_block_cap() {
        for (name_len, nuls) in [(MAX_NAME, MAX_BLOCK - MAX_NAME - 12), (1, 100), (1, MAX_VALUES - 1)] {
            let raw = bomb(name_len, nuls);
            let got = decode_block(&raw);
            if nuls < MAX_VALUES {
                assert_eq!(got.unwrap().len(), nuls + 1);
            } else {
                assert!(matches!(got, Err(HeaderError::TooManyValues { .. })), "{name_len}/{nuls}: {got:?}");
            }
        }
    }

    #[test]
    fn a_block_declaring_too_many_pairs_is_refused() {
        let mut raw = vec![0, 0, 0, 65];
        raw.extend(std::iter::repeat_n([0u8, 0, 0, 0, 0, 0, 0, 0], 65).flatten());
        assert_eq!(decode_block(&raw), Err(HeaderError::TooManyPairs { count: 65 }));
    }

    #[test]
    fn inflating_past_the_cap_is_refused_without_reserving_more() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut raw = bomb(8, MAX_BLOCK);
        raw[0..4].copy_from_slice(&[0, 0, 0, 1]);
        let block = c.compress_raw(&raw).unwrap();
        assert_eq!(HeaderDecompressor::new().decompress(&block), Err(HeaderError::TooLarge));
        // A block of exactly the cap still inflates (and is then judged on its contents).
        let mut c = HeaderCompressor::new().unwrap();
        let mut exact = bomb(4, MAX_BLOCK - 16);
        assert_eq!(exact.len(), MAX_BLOCK);
        exact[16..].fill(b'v');
        let inflated = HeaderDecompressor::new().inflate(&c.compress_raw(&exact).unwrap()).unwrap();
        assert_eq!(inflated, exact);
        assert!(inflated.capacity() <= MAX_BLOCK + 1, "reserved {} bytes", inflated.capacity());
        // A usual block gets a usual buffer.
        let mut c = HeaderCompressor::new().unwrap();
        let small = HeaderDecompressor::new().inflate(&c.compress(&[("streamtype", "stdout")]).unwrap()).unwrap();
        assert!(small.capacity() <= 4096, "reserved {} bytes", small.capacity());
    }

    #[test]
    fn oversized_compressed_blocks_are_refused_unread() {
        let block = vec![0u8; MAX_BLOCK + 1];
        assert_eq!(
            HeaderDecompressor::new().decompress(&block),
            Err(HeaderError::CompressedTooLarge { len: MAX_BLOCK + 1 })
        );
    }

    /// A block made of pairs with NUL-rich values and names around the cap, the shapes that
    /// multiply.
    fn shaped_block() -> impl Strategy<Value = Vec<u8>> {
        // A value is `len` bytes from a seeded generator, NUL with probability 1/`nul_every`
        // (drawing each byte from proptest is too slow for values this long).
        let pair = (0usize..600, 0usize..4096, 1u64..8, any::<u64>());
        (prop::collection::vec(pair, 0..8), any::<bool>()).prop_map(|(pairs, lie)| {
            let mut raw = BytesMut::new();
            raw.put_u32(if lie { pairs.len() as u32 + 1 } else { pairs.len() as u32 });
            for (name_len, len, nul_every, mut seed) in pairs {
                raw.put_u32(name_len as u32);
                raw.put_bytes(0xff, name_len);
                raw.put_u32(len as u32);
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    raw.put_u8(if seed % nul_every == 0 { 0 } else { seed as u8 | 1 });
                }
            }
            raw.to_vec()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn any_block_decodes_to_bounded_memory_or_an_error(
            raw in prop_oneof![shaped_block(), prop::collection::vec(any::<u8>(), 0..4096)],
        ) {
            if let Ok(headers) = decode_block(&raw) {
                prop_assert!(headers.len() <= MAX_VALUES);
                prop_assert!(footprint(&headers) <= bound(raw.len()), "{} > {}", footprint(&headers), bound(raw.len()));
            }
        }

        #[test]
        fn any_block_through_the_zlib_stream_decodes_bounded(raws in prop::collection::vec(shaped_block(), 1..4)) {
            // One long-lived stream per connection, as on the wire.
            let mut c = HeaderCompressor::new().unwrap();
            let mut d = HeaderDecompressor::new();
            for raw in raws {
                let block = c.compress_raw(&raw).unwrap();
                match d.decompress(&block) {
                    Ok(headers) => prop_assert!(footprint(&headers) <= bound(raw.len())),
                    // The session ends on the first error; the stream is not reused after one.
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn garbage_never_panics_the_decompressor(blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..4)) {
            let mut d = HeaderDecompressor::new();
            for block in blocks {
                if d.decompress(&block).is_err() {
                    break;
                }
            }
        }
    }
}
