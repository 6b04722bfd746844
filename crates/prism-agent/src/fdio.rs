//! Non-blocking async reads and writes on pipes and PTY masters, over tokio's `AsyncFd`.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::OFlags;
use tokio::io::unix::AsyncFd;

/// An owned pipe end or PTY master in non-blocking mode.
pub struct AsyncPipe {
    fd: AsyncFd<OwnedFd>,
}

/// Outcome of a non-blocking read.
pub enum TryRead {
    Data(usize),
    Eof,
    WouldBlock,
}

impl AsyncPipe {
    /// Switches `fd` to non-blocking mode and registers it with the runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        // `AsyncFd::new` is deprecated because it cannot prove I/O safety for borrowed fds; we
        // hand it an `OwnedFd` that it owns until it drops, which is the sound case.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Self { fd })
    }

    /// The underlying fd.
    pub fn fd(&self) -> &OwnedFd {
        self.fd.get_ref()
    }

    /// Reads some bytes; `Ok(0)` at EOF (a PTY whose slave side is gone reads as EOF).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_fd(fd.get_ref(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the fd is readable and runs `f` on it, again after each `WouldBlock` it
    /// returns (which also clears the readiness). `f` runs synchronously, so buffers it keeps
    /// on its stack never live across an await.
    pub async fn read_with<R>(
        &self,
        mut f: impl FnMut(&OwnedFd) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| f(fd.get_ref())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads without waiting.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<TryRead> {
        match read_fd(self.fd.get_ref(), buf) {
            Ok(0) => Ok(TryRead::Eof),
            Ok(n) => Ok(TryRead::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(TryRead::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Writes all of `data`, waiting for room as needed (this is where backpressure bites).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// `read(2)`, with a PTY master's `EIO` (no slave left) read as EOF.
pub fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    match rustix::io::read(fd, buf) {
        Ok(n) => Ok(n),
        // A PTY master reads EIO once every slave fd is closed.
        Err(rustix::io::Errno::IO) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
