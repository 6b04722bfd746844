//! Network namespaces: run a closure on a short-lived thread that has joined the network
//! namespace of another process (netlink sockets opened there stay bound to that namespace
//! after the thread ends, so the caller can keep using them from anywhere); make a network
//! namespace ahead of time ([`create_isolated`]) and let one thread stand in it for a moment
//! ([`ThreadNetns`]) so that a process cloned then starts in it.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Per-namespace sysctls [`create_isolated`] writes (paths under `/proc/sys`). The sandbox's
/// root has no capability in a namespace owned by the host's user namespace, so: every port is
/// unprivileged (a server may bind port 80), and every group may open ICMP echo ("ping")
/// datagram sockets (raw sockets stay refused).
pub const ISOLATED_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_unprivileged_port_start", "0"),
    ("net/ipv4/ping_group_range", "0 2147483647"),
];

/// A new network namespace holding only `lo` (up) with [`ISOLATED_SYSCTLS`] applied, owned by
/// this process's user namespace; the returned fd (close-on-exec) keeps it alive.
///
/// Made on a short-lived thread (the network namespace belongs to a thread), so the caller's
/// own namespace never changes. The new thread inherits the caller's nice value.
pub fn create_isolated() -> io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("prism-netns-new".into())
        .spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            // SAFETY: raw socket and ioctl calls on a local ifreq.
            unsafe { loopback_up() }.map_err(io::Error::from_raw_os_error)?;
            for (path, value) in ISOLATED_SYSCTLS {
                // /proc/sys/net shows the namespace of the thread that opens it.
                std::fs::write(format!("/proc/sys/{path}"), value)?;
            }
            Ok(OwnedFd::from(File::open("/proc/thread-self/ns/net")?))
        })?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// Bring `lo` of the calling thread's network namespace up; `Err(errno)` on failure. Raw
/// syscalls only, so the launch child may call it too.
///
/// # Safety
/// Raw ioctls on a local socket.
pub(crate) unsafe fn loopback_up() -> Result<(), i32> {
    use crate::raw::{check, sys};
    let ok = |ret: isize| check(ret).map(|_| ());
    // SAFETY: a new socket of our own.
    let fd = check(unsafe {
        sys!(
            libc::SYS_socket,
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0
        )
    })?;
    // SAFETY: a zeroed ifreq is valid; the name fits in IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    let r = &mut req as *mut libc::ifreq;
    // SAFETY: the ioctls read and write the local ifreq; the socket is ours to close.
    unsafe {
        let rc = ok(sys!(libc::SYS_ioctl, fd, libc::SIOCGIFFLAGS, r)).and_then(|()| {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ok(sys!(libc::SYS_ioctl, fd, libc::SIOCSIFFLAGS, r))
        });
        sys!(libc::SYS_close, fd);
        rc
    }
}

/// The calling thread, moved into another network namespace until this is dropped (then it
/// goes back to the namespace it had). Processes the thread clones meanwhile start in the
/// other namespace.
///
/// If going back fails the process aborts: a thread left in a sandbox's namespace would open
/// the daemon's later sockets (and start its `nft` runs) there.
#[derive(Debug)]
pub struct ThreadNetns {
    home: OwnedFd,
}

impl ThreadNetns {
    /// Move the calling thread into the network namespace `ns` (an fd of `/proc/…/ns/net`).
    pub fn enter(ns: BorrowedFd<'_>) -> io::Result<Self> {
        let home = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(Self { home })
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        let mut last = None;
        for _ in 0..3 {
            match nix::sched::setns(self.home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
        }
        tracing::error!(
            message = "cannot return a thread to its network namespace; aborting",
            error = ?last
        );
        std::process::abort();
    }
}

/// The inode of the network namespace behind the fd `ns`.
pub fn fd_inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(File::from(ns.try_clone_to_owned()?).metadata()?.ino())
}

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

/// The inode of the user namespace owning the network namespace behind `ns`
/// (`ioctl(NS_GET_USERNS)`), to compare with `/proc/<pid>/ns/user`.
pub fn owner_userns_inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd (or -1).
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let owner = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(owner.metadata()?.ino())
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
        if crate::not_root("own_namespace_can_be_joined") {
            return;
        }
        let me = std::process::id();
        let inode = in_netns_of(me, move || netns_inode(me)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inode.ok(), netns_inode(me).ok());
        assert!(in_netns_of(u32::MAX - 1, || ()).is_err());
    }

    fn thread_netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net")
            .unwrap_or_else(|e| panic!("{e}"))
            .ino()
    }

    #[test]
    fn an_isolated_namespace_has_loopback_and_the_sysctls_and_the_thread_goes_home() {
        if crate::not_root(
            "an_isolated_namespace_has_loopback_and_the_sysctls_and_the_thread_goes_home",
        ) {
            return;
        }
        let ns = create_isolated().unwrap_or_else(|e| panic!("{e}"));
        let host = thread_netns_inode();
        let inode = fd_inode(ns.as_fd()).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(inode, host);
        // Owned by our own (here: the host's) user namespace.
        let own_userns = std::fs::metadata("/proc/self/ns/user")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            owner_userns_inode(ns.as_fd()).unwrap_or_else(|e| panic!("{e}")),
            own_userns
        );
        let another = create_isolated().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(fd_inode(another.as_fd()).ok(), Some(inode));

        // A listener of the host's loopback, unreachable from inside.
        let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let outside_port = outside
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (seen, sysctls, echo, host_reached) = std::thread::spawn(move || {
            let joined = ThreadNetns::enter(ns.as_fd()).unwrap_or_else(|e| panic!("{e}"));
            let seen = thread_netns_inode();
            let sysctls: Vec<String> = ISOLATED_SYSCTLS
                .iter()
                .map(|(p, _)| {
                    let v = std::fs::read_to_string(format!("/proc/sys/{p}"))
                        .unwrap_or_else(|e| panic!("{e}"));
                    v.split_whitespace().collect::<Vec<_>>().join(" ")
                })
                .collect();
            // lo is up: a loopback connection works in there.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            let echo =
                std::net::TcpStream::connect(l.local_addr().unwrap_or_else(|e| panic!("{e}")))
                    .is_ok();
            let host_reached = std::net::TcpStream::connect(("127.0.0.1", outside_port)).is_ok();
            drop(joined);
            assert_eq!(thread_netns_inode(), host, "the thread went home");
            (seen, sysctls, echo, host_reached)
        })
        .join()
        .unwrap_or_else(|_| panic!("the test thread panicked"));
        assert_eq!(seen, inode);
        let want: Vec<String> = ISOLATED_SYSCTLS
            .iter()
            .map(|(_, v)| v.to_string())
            .collect();
        assert_eq!(sysctls, want);
        assert!(echo, "loopback inside the namespace");
        assert!(
            !host_reached,
            "the host's loopback was reachable from inside"
        );
        assert_eq!(thread_netns_inode(), host);
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
