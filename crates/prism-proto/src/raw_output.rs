//! Raw process output between the agent and prismd: a Prism extension of the `Start`/`Connect`
//! streams that skips JSON and base64 for output bytes.
//!
//! A client that sends [`RAW_OUTPUT_HEADER`]`: raw` may receive, besides the usual JSON
//! envelopes (start, end, keepalive), envelopes flagged [`FLAG_RAW_DATA`] whose payload is one
//! stream byte ([`STDOUT`], [`STDERR`], [`PTY`]) followed by the output bytes as they were read.
//! Clients that do not send the header (the E2B SDKs) get the Connect JSON stream unchanged,
//! and an agent that ignores the header (an older one) still talks to a newer client.

use bytes::{BufMut, Bytes, BytesMut};

use crate::process::DataEvent;

/// The request header asking for raw output envelopes.
pub const RAW_OUTPUT_HEADER: &str = "prism-output";
/// Its value.
pub const RAW_OUTPUT_VALUE: &str = "raw";
/// Envelope flag of a raw output envelope (not used by Connect, which defines 0x01 and 0x02).
pub const FLAG_RAW_DATA: u8 = 0x40;
/// Stream byte of standard output.
pub const STDOUT: u8 = 1;
/// Stream byte of standard error.
pub const STDERR: u8 = 2;
/// Stream byte of terminal output.
pub const PTY: u8 = 3;

/// The envelope header (flag, length, stream byte) that precedes `event`'s bytes on the wire;
/// the bytes themselves follow unchanged, so they are never copied into the envelope.
pub fn raw_header(event: &DataEvent) -> Bytes {
    let (stream, data) = match event {
        DataEvent::Stdout(b) => (STDOUT, b),
        DataEvent::Stderr(b) => (STDERR, b),
        DataEvent::Pty(b) => (PTY, b),
    };
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    let mut h = BytesMut::with_capacity(6);
    h.put_u8(FLAG_RAW_DATA);
    h.put_u32(len);
    h.put_u8(stream);
    h.freeze()
}

/// The data event of a raw envelope's payload; `None` for an empty payload or an unknown
/// stream byte.
pub fn decode_raw(mut payload: Bytes) -> Option<DataEvent> {
    let stream = *payload.first()?;
    let data = payload.split_off(1);
    match stream {
        STDOUT => Some(DataEvent::Stdout(data)),
        STDERR => Some(DataEvent::Stderr(data)),
        PTY => Some(DataEvent::Pty(data)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Decoder;

    #[test]
    fn raw_envelopes_round_trip_through_the_decoder() {
        let mut dec = Decoder::default();
        for ev in [
            DataEvent::Stdout(Bytes::from_static(b"out")),
            DataEvent::Stderr(Bytes::new()),
            DataEvent::Pty(Bytes::from(vec![0u8; 70_000])),
        ] {
            dec.push(&raw_header(&ev));
            dec.push(ev.bytes());
            let env = dec.next_envelope().ok().flatten();
            let env = env.filter(|e| e.flags == FLAG_RAW_DATA && !e.is_end_stream());
            assert_eq!(env.and_then(|e| decode_raw(e.data)), Some(ev));
        }
        assert_eq!(decode_raw(Bytes::from_static(b"\x09x")), None);
        assert_eq!(decode_raw(Bytes::new()), None);
    }
}
