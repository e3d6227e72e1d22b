//! SPDY/3 header blocks: name/value pairs with 32-bit lengths, deflated in one zlib stream per
//! direction that lives as long as the connection and starts from the SPDY dictionary.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::HEADER_DICTIONARY;

/// Inflated header blocks larger than this are refused (a compression bomb guard).
const MAX_BLOCK: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("SPDY header block: zlib: {0}")]
    Zlib(String),
    #[error("SPDY header block is malformed: {0}")]
    Malformed(&'static str),
    #[error("SPDY header block inflates beyond {MAX_BLOCK} bytes")]
    TooLarge,
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

pub fn decode_block(mut raw: &[u8]) -> Result<Headers, HeaderError> {
    let take = |raw: &mut &[u8]| -> Result<String, HeaderError> {
        if raw.remaining() < 4 {
            return Err(HeaderError::Malformed("truncated length"));
        }
        let len = raw.get_u32() as usize;
        if raw.remaining() < len {
            return Err(HeaderError::Malformed("truncated string"));
        }
        let s = String::from_utf8_lossy(&raw[..len]).into_owned();
        raw.advance(len);
        Ok(s)
    };
    if raw.remaining() < 4 {
        return Err(HeaderError::Malformed("missing pair count"));
    }
    let count = raw.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
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
        let raw = encode_block(headers);
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

    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.z.total_in();
        loop {
            let consumed = (self.z.total_in() - start) as usize;
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve(out.capacity().max(1024));
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
            if consumed_now == block.len() && out.len() < out.capacity() {
                break;
            }
            if consumed_now == consumed && out.len() == before_out && out.len() < out.capacity() {
                return Err(HeaderError::Malformed("zlib made no progress"));
            }
        }
        decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
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
}
