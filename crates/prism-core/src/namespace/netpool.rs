//! Network namespaces made ahead. Making one is most of the cost of a sandbox's clone (its
//! `CLONE_NEWNET` alone took ~0.8 ms of ~1.0 ms here), so a background thread at a low
//! priority keeps a few ready (`prism_sys::netns::create_isolated`: `lo` up, unprivileged
//! ports and ICMP echo sockets allowed, owned by the host's user namespace) and a start takes
//! one. [`NetnsPool::take`] never waits: an empty pool means the sandbox makes its own
//! namespace, as without a pool.
//!
//! Only fds are kept: nothing outlives the process (a namespace nobody holds is freed by the
//! kernel), so there is nothing to clean up after a crash.

use std::io;
use std::os::fd::OwnedFd;

use super::ahead::{Ahead, Make};

/// Namespaces kept ready by default.
pub const DEFAULT_NETNS_POOL: usize = 2;

/// Makes one ready network namespace.
pub type MakeNetns = Make<OwnedFd>;

/// A pool of ready network namespaces, refilled in the background. Dropping it stops the
/// thread and closes the namespaces nobody took.
#[derive(Debug)]
pub struct NetnsPool(Ahead<OwnedFd>);

impl NetnsPool {
    /// A pool of `size` namespaces made by `make` (none and no thread when `size` is 0).
    pub fn new(size: usize, make: MakeNetns) -> io::Result<Self> {
        Ok(Self(Ahead::new(
            "prism-netns-pool",
            "network namespace",
            size,
            make,
        )?))
    }

    /// The real pool: namespaces from `prism_sys::netns::create_isolated`.
    pub fn isolated(size: usize) -> io::Result<Self> {
        Self::new(size, Box::new(prism_sys::netns::create_isolated))
    }

    /// A ready namespace, or `None` right away when there is none.
    pub fn take(&self) -> Option<OwnedFd> {
        self.0.take()
    }

    /// Namespaces ready now.
    pub fn ready(&self) -> usize {
        self.0.ready()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::*;

    /// Stand-in namespaces: fds of `/dev/null`, counted.
    fn fake(made: Arc<AtomicUsize>, fail: bool) -> MakeNetns {
        Box::new(move || {
            made.fetch_add(1, Ordering::SeqCst);
            if fail {
                return Err(io::Error::other("no namespaces today"));
            }
            Ok(OwnedFd::from(std::fs::File::open("/dev/null")?))
        })
    }

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_pool_fills_up_to_its_size_and_refills_after_a_take() {
        let made = Arc::new(AtomicUsize::new(0));
        let pool = NetnsPool::new(2, fake(made.clone(), false)).unwrap();
        eventually("two ready", || pool.ready() == 2);
        assert_eq!(made.load(Ordering::SeqCst), 2, "no more than its size");
        assert!(pool.take().is_some());
        assert!(pool.take().is_some());
        eventually("refilled", || pool.ready() == 2);
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn an_empty_pool_answers_none_at_once() {
        let made = Arc::new(AtomicUsize::new(0));
        let pool = NetnsPool::new(0, fake(made.clone(), false)).unwrap();
        assert!(pool.take().is_none());
        assert_eq!(made.load(Ordering::SeqCst), 0);
        let failing = NetnsPool::new(2, fake(made.clone(), true)).unwrap();
        eventually("a first attempt", || made.load(Ordering::SeqCst) >= 1);
        assert!(failing.take().is_none());
        // A failure rests instead of spinning.
        assert_eq!(made.load(Ordering::SeqCst), 1);
        drop(failing);
    }

    #[test]
    fn dropping_the_pool_stops_its_thread_and_closes_the_fds() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        // Each stand-in is one end of a socket pair; the test keeps the other end and sees
        // end-of-file once the pool closed its end.
        let kept = Arc::new(Mutex::new(Vec::new()));
        let k = kept.clone();
        let pool = NetnsPool::new(
            2,
            Box::new(move || {
                let (mine, theirs) = UnixStream::pair()?;
                k.lock().unwrap().push(theirs);
                Ok(OwnedFd::from(mine))
            }),
        )
        .unwrap();
        eventually("two ready", || pool.ready() == 2);
        let taken = pool.take().unwrap();
        eventually("refilled", || pool.ready() == 2);
        drop(pool);
        let mut ends = std::mem::take(&mut *kept.lock().unwrap());
        assert_eq!(ends.len(), 3);
        for (i, end) in ends.iter_mut().enumerate() {
            end.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 1];
            let r = end.read(&mut buf);
            if i == 1 {
                // The taken one (the last made before the take) belongs to its taker.
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            } else {
                assert_eq!(r.unwrap(), 0, "namespace {i} still held after the drop");
            }
        }
        drop(taken);
        // A pool whose thread rests after a failure stops as well.
        let made = Arc::new(AtomicUsize::new(0));
        let failing = NetnsPool::new(1, fake(made.clone(), true)).unwrap();
        eventually("a failed attempt", || made.load(Ordering::SeqCst) > 0);
        drop(failing);
    }
}
