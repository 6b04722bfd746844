//! Upload bodies, always read to their end before the answer goes out.
//!
//! An HTTP/1 server that answers before it has read the whole request body closes the
//! connection; a client still sending then gets `EPIPE`, and hyper's client (prismd's envd
//! pass-through) reports that write error instead of the answer. It happened with envd's own
//! multipart upload: `multer` stops at the closing boundary and leaves the epilogue (`\r\n`),
//! so when it arrived in a later read the upload succeeded but the caller got a 502. Early
//! refusals (unknown user, a parent that is a file) lost their message the same way.
//!
//! So an upload's body is moved into a task that forwards its bytes to the handler and, once
//! the handler stops listening, keeps reading (and dropping) them to the end; the handler's
//! answer is sent only after that task is done ([`Reader::finish`]).

use std::convert::Infallible;
use std::io::{self, Read};

use bytes::Bytes;
use futures_util::Stream;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prism_proto::{Code, ConnectError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks buffered between the body and the handler.
const DEPTH: usize = 8;

/// The task reading a request's body to its end.
pub struct Reader(JoinHandle<bool>);

/// Splits `req` into its head, its body's bytes (in order, until its end or its failure) and
/// the [`Reader`] that reads them, which starts at once.
pub fn split(req: Request<Incoming>) -> (Request<()>, mpsc::Receiver<Bytes>, Reader) {
    let (parts, mut body) = req.into_parts();
    let (tx, rx) = mpsc::channel::<Bytes>(DEPTH);
    let reader = tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let (Ok(data), Some(t)) = (frame.into_data(), tx.as_ref())
                && t.send(data).await.is_err()
            {
                // The handler is done with the body: read the rest and drop it.
                tx = None;
            }
        }
        true
    });
    (Request::from_parts(parts, ()), rx, Reader(reader))
}

impl Reader {
    /// Waits until the body was read to its end (the handler must have dropped its receiver
    /// or read it to the end by then), then gives the handler's `result`; a body that broke
    /// off turns a success into a `Canceled` error (what was written from it stays).
    pub async fn finish<T>(self, result: Result<T, ConnectError>) -> Result<T, ConnectError> {
        let complete = self.0.await.unwrap_or(false);
        match result {
            Ok(_) if !complete => Err(ConnectError::new(
                Code::Canceled,
                "the upload ended before its body was complete",
            )),
            r => r,
        }
    }
}

/// The bytes as a stream (for `multer`).
pub fn stream(rx: mpsc::Receiver<Bytes>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}

/// The bytes as a blocking reader (for `tar`, on a blocking thread).
pub struct BlockingReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl BlockingReader {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}
