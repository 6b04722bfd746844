//! Newline-delimited JSON response bodies (code runs, template builds, image pulls) as streams
//! of typed events.

use bytes::BytesMut;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, stream};
use serde::de::DeserializeOwned;

use crate::{ClientError, Result};

/// The events of `resp`'s body, one JSON value a line, as they arrive.
pub(crate) fn events<T: DeserializeOwned + Send + 'static>(
    resp: reqwest::Response,
) -> BoxStream<'static, Result<T>> {
    let bytes = resp.bytes_stream();
    stream::unfold(
        (bytes.boxed(), BytesMut::new(), false),
        |(mut bytes, mut buf, done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(i + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let ev = serde_json::from_slice(&line)
                        .map_err(|e| ClientError::Protocol(format!("bad event line: {e}")));
                    return Some((ev, (bytes, buf, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => {
                        return Some((Err(ClientError::Http(e)), (bytes, buf, true)));
                    }
                    None if buf.iter().all(u8::is_ascii_whitespace) => return None,
                    None => {
                        let err = ClientError::Protocol("the event stream was cut".into());
                        return Some((Err(err), (bytes, BytesMut::new(), true)));
                    }
                }
            }
        },
    )
    .boxed()
}
