//! Connect streaming framing: each message is an envelope of one flag byte, a 4-byte big-endian
//! length and the JSON payload. The last envelope of a response carries [`FLAG_END_STREAM`] and
//! an [`EndStream`] message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::ConnectError;

/// The payload is compressed (we never compress and refuse compressed input).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The envelope ends the stream.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Default limit on one message's size.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// Content type of Connect streaming bodies with JSON messages.
pub const CONTENT_TYPE_STREAM: &str = "application/connect+json";
/// Content type of Connect unary JSON bodies.
pub const CONTENT_TYPE_UNARY: &str = "application/json";

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// An envelope declared a message larger than allowed.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// A compressed envelope arrived; no compression was negotiated.
    #[error("compressed messages are not supported")]
    Compressed,
    /// The body ended inside an envelope.
    #[error("stream ended inside a message")]
    Incomplete,
    /// A raw output envelope arrived where none was asked for, or with an unknown stream.
    #[error("unexpected raw output envelope")]
    UnexpectedRaw,
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub flags: u8,
    pub data: Bytes,
}

impl Envelope {
    /// Whether this envelope ends the stream.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Frames `data` into an envelope with `flags`.
pub fn encode(flags: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.put_u8(flags);
    b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    b.put_slice(data);
    b.freeze()
}

/// Serialises `msg` as JSON and frames it as a message envelope.
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Bytes, serde_json::Error> {
    Ok(encode(0, &serde_json::to_vec(msg)?))
}

/// Frames the end-of-stream envelope, with an error or without.
pub fn encode_end(error: Option<&ConnectError>) -> Bytes {
    let end = EndStream {
        error: error.cloned(),
        metadata: None,
    };
    let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
    encode(FLAG_END_STREAM, &json)
}

/// The end-of-stream message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Incremental envelope decoder: push body chunks of any size, pop complete envelopes.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE)
    }
}

impl Decoder {
    /// A decoder refusing messages larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends a chunk of body bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Pops the next complete envelope, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, EnvelopeError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let size = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let size = size as usize;
        if size > self.max {
            return Err(EnvelopeError::TooLarge {
                size,
                limit: self.max,
            });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(EnvelopeError::Compressed);
        }
        if self.buf.len() < 5 + size {
            self.buf.reserve(5 + size - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let data = self.buf.split_to(size).freeze();
        Ok(Some(Envelope { flags, data }))
    }

    /// Checks that the body ended on an envelope boundary.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(EnvelopeError::Incomplete)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn round_trip_split_at_every_byte() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode(0, br#"{"a":1}"#));
        wire.extend_from_slice(&encode(0, b""));
        wire.extend_from_slice(&encode_end(None));
        for split in 0..wire.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.push(part);
                while let Some(e) = d.next_envelope().ok().flatten() {
                    out.push(e);
                }
            }
            assert_eq!(out.len(), 3, "split at {split}");
            assert_eq!(&out[0].data[..], br#"{"a":1}"#);
            assert!(out[1].data.is_empty());
            assert!(out[2].is_end_stream());
            assert_eq!(&out[2].data[..], b"{}");
            assert!(d.finish().is_ok());
        }
    }

    #[test]
    fn header_layout_and_end_error() {
        let e = encode(0, b"xyz");
        assert_eq!(&e[..], &[0, 0, 0, 0, 3, b'x', b'y', b'z']);
        let end = encode_end(Some(&ConnectError::new(Code::NotFound, "gone")));
        assert_eq!(end[0], FLAG_END_STREAM);
        assert_eq!(
            &end[5..],
            br#"{"error":{"code":"not_found","message":"gone"}}"#
        );
    }

    #[test]
    fn refuses_oversize_compressed_and_truncated() {
        let mut d = Decoder::new(4);
        d.push(&encode(0, b"12345"));
        assert!(matches!(
            d.next_envelope(),
            Err(EnvelopeError::TooLarge { size: 5, .. })
        ));
        let mut d = Decoder::default();
        d.push(&encode(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_envelope(), Err(EnvelopeError::Compressed));
        let mut d = Decoder::default();
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_envelope(), Ok(None));
        assert_eq!(d.finish(), Err(EnvelopeError::Incomplete));
    }
}
