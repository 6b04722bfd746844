//! Network namespaces: run a closure on a short-lived thread that has joined the network
//! namespace of another process (netlink sockets opened there stay bound to that namespace
//! after the thread ends, so the caller can keep using them from anywhere).

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Run `f` on a new thread inside the network namespace of `pid` and return its result.
///
/// Only the network namespace of that one thread changes; the rest of the process is
/// untouched. Fails when `pid` is gone or the namespace cannot be joined.
pub fn in_netns_of<T, F>(pid: u32, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("prism-netns".into())
        .spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// The inode of the network namespace of `pid` (tells two namespaces apart).
pub fn netns_inode(pid: u32) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// The destination a connection had before nftables redirected it to this socket
/// (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`), for a transparent proxy. Fails when the
/// connection was not NATed (then the kernel has no original tuple) or is not IPv4.
pub fn original_dst(fd: BorrowedFd<'_>) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `fd` is a live socket for the duration of the call; `sa` and `len` point to
    // writable memory of the sizes the kernel is told.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            std::ptr::from_mut(&mut sa).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if sa.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(io::Error::other("the original destination is not IPv4"));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_can_be_joined() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP own_namespace_can_be_joined: needs root");
            return;
        }
        let me = std::process::id();
        let inode = in_netns_of(me, move || netns_inode(me)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inode.ok(), netns_inode(me).ok());
        assert!(in_netns_of(u32::MAX - 1, || ()).is_err());
    }

    #[test]
    fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let c = std::net::TcpStream::connect(l.local_addr().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        // Without conntrack NAT the kernel has nothing to report (or reports the address as
        // it is); it must not succeed with garbage.
        match original_dst(c.as_fd()) {
            Ok(a) => assert_eq!(
                std::net::SocketAddr::V4(a),
                c.peer_addr().unwrap_or_else(|e| panic!("{e}"))
            ),
            Err(e) => assert!(
                e.raw_os_error().is_some() || e.kind() == io::ErrorKind::Other,
                "{e}"
            ),
        }
    }
}
