//! Read buffers for a process's output, recycled once the bytes they carry were sent on.
//!
//! Output is read straight into a pooled buffer, which then travels as [`Bytes`] (no copy) to
//! the connection that writes it out; dropping the last reference hands the buffer back. Fresh
//! large allocations are what made streaming slow: each one is a new mapping from the
//! allocator, and every page of it faults on first write.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

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
