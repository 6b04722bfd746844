//! Read buffers for a process's output, recycled once the bytes they carry were sent on.
//!
//! Output is read straight into a pooled buffer, which then travels as [`Bytes`] (no copy) to
//! the connection that writes it out; dropping the last reference hands the buffer back. Fresh
//! large allocations are what made streaming slow: each one is a new mapping from the
//! allocator, and every page of it faults on first write.
//!
//! A pipe is read into a pooled buffer only when one is free: otherwise (a process's first
//! read, typically the only one of a short command, or EOF) it is read into a small buffer on
//! the stack first, and a [`CHUNK`] buffer is mapped only when that one comes back full.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::fdio::read_fd;

/// Bytes read from a pipe at most at once.
pub const CHUNK: usize = 256 * 1024;
/// Free buffers kept per process; more are freed (a stalled reader bounds what is in flight).
const MAX_FREE: usize = 4;
/// Chunks smaller than this are copied out, so a small write never pins a whole buffer.
const COPY_BELOW: usize = 4096;

/// The free buffers of one process.
#[derive(Default, Clone)]
pub struct BufPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufPool {
    /// A buffer of [`CHUNK`] bytes (its contents are whatever a previous read left).
    pub fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_else(|| vec![0; CHUNK])
    }

    /// A free buffer, if there is one.
    fn try_take(&self) -> Option<Vec<u8>> {
        self.free.lock().ok().and_then(|mut f| f.pop())
    }

    /// One read from `fd`: `None` at EOF. A `WouldBlock` error is returned as it is (for
    /// `AsyncPipe::read_with`); nothing read is ever dropped.
    pub fn read(&self, fd: &OwnedFd) -> io::Result<Option<Bytes>> {
        if let Some(mut buf) = self.try_take() {
            let n = read_fd(fd, &mut buf)?;
            return Ok((n > 0).then(|| self.freeze(buf, n)));
        }
        let mut small = [0u8; COPY_BELOW];
        let n = read_fd(fd, &mut small)?;
        if n < COPY_BELOW {
            return Ok((n > 0).then(|| Bytes::copy_from_slice(&small[..n])));
        }
        // A full small read: more is likely waiting, so read the rest into a whole chunk.
        let mut buf = self.take();
        buf[..n].copy_from_slice(&small);
        // The bytes already read are delivered whatever the second read says; an error or
        // EOF shows again at the next read.
        let more = read_fd(fd, &mut buf[n..]).unwrap_or(0);
        Ok(Some(self.freeze(buf, n + more)))
    }

    /// The first `len` bytes of `buf` as `Bytes`; `buf` comes back to the pool when they drop.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        let len = len.min(buf.len());
        if len < COPY_BELOW {
            let b = Bytes::copy_from_slice(&buf[..len]);
            self.put(buf);
            return b;
        }
        Bytes::from_owner(Pooled {
            buf,
            len,
            pool: self.clone(),
        })
    }

    fn put(&self, buf: Vec<u8>) {
        if let Ok(mut f) = self.free.lock()
            && f.len() < MAX_FREE
        {
            f.push(buf);
        }
    }
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_map_no_chunk_for_small_output_and_lose_nothing() {
        let pool = BufPool::default();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).expect("pipe");
        rustix::io::write(&w, b"hi").expect("write");
        let got = pool.read(&r).expect("read");
        assert_eq!(got.as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            pool.free.lock().map(|f| f.len()).unwrap_or(9),
            0,
            "no chunk was made"
        );
        // More than the small buffer: one read returns it all, in a chunk.
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        rustix::io::write(&w, &big).expect("write");
        let got = pool.read(&r).expect("read");
        assert_eq!(got.as_deref(), Some(&big[..]));
        drop(got);
        assert_eq!(pool.free.lock().map(|f| f.len()).unwrap_or(9), 1);
        // With a free chunk, it is used directly.
        rustix::io::write(&w, b"again").expect("write");
        assert_eq!(pool.read(&r).expect("read").as_deref(), Some(&b"again"[..]));
        // Exactly a small buffer's worth: the second read finds nothing and does not fail.
        let _ = pool.try_take();
        rustix::io::write(&w, &big[..COPY_BELOW]).expect("write");
        assert_eq!(
            pool.read(&r).expect("read").as_deref(),
            Some(&big[..COPY_BELOW])
        );
        assert!(matches!(pool.read(&r), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        drop(w);
        assert_eq!(pool.read(&r).expect("eof"), None);
    }

    #[test]
    fn buffers_come_back_when_their_bytes_drop() {
        let pool = BufPool::default();
        let mut buf = pool.take();
        buf[..5].copy_from_slice(b"hello");
        let big = pool.freeze(buf, CHUNK);
        assert_eq!(big.len(), CHUNK);
        assert_eq!(&big[..5], b"hello");
        let ptr = big.as_ptr();
        let slice = big.slice(1..3);
        drop(big);
        assert_eq!(
            pool.free.lock().map(|f| f.len()).unwrap_or(9),
            0,
            "a slice still holds it"
        );
        drop(slice);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same buffer is reused");
        // A small read is copied out and its buffer is free at once.
        let small = pool.freeze(again, 3);
        assert_eq!(small.len(), 3);
        assert_eq!(pool.free.lock().map(|f| f.len()).unwrap_or(9), 1);
        for _ in 0..10 {
            let b = pool.take();
            drop(pool.freeze(b, CHUNK));
        }
        assert!(pool.free.lock().map(|f| f.len()).unwrap_or(99) <= MAX_FREE);
    }
}
