//! Network namespaces: run a closure on a short-lived thread that has joined the network
//! namespace of another process (netlink sockets opened there stay bound to that namespace
//! after the thread ends, so the caller can keep using them from anywhere).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

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
}
