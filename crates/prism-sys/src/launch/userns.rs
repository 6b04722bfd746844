//! A user namespace with a given id map and no process in it, held by an fd: what an idmapped
//! mount needs before the sandbox it is for exists (an idmap depends on the mapping alone, so
//! trees idmapped through it are the sandbox's own). Made by a child that shares this memory
//! (`CLONE_VM`, like the launch: no page tables copied, no copy-on-write faults afterwards)
//! and the fd table (`CLONE_FILES`: nothing copied), sleeps while its maps are written and its
//! namespace opened, and is then killed.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::clone::{ChildStack, SignalsBlocked, clone_vm_into};
use crate::ids::{IdMap, open_userns};
use crate::raw::sys;

extern "C" fn sleep_until_killed(_: usize) -> ! {
    loop {
        // SAFETY: a raw syscall without arguments (every signal is blocked: only SIGKILL ends
        // this).
        unsafe {
            sys!(libc::SYS_pause);
        }
    }
}

/// A new user namespace with `map`, held only by the returned fd.
pub fn userns_with(map: &IdMap) -> io::Result<OwnedFd> {
    let stack = ChildStack::take()?;
    let mut pidfd: RawFd = -1;
    let pid = {
        let _blocked = SignalsBlocked::new()?;
        // SAFETY: every signal is blocked on this thread while the child is made (it keeps
        // that mask); the stack lives until the child was reaped below; the entry reads nothing.
        unsafe {
            clone_vm_into(
                (libc::CLONE_NEWUSER | libc::CLONE_FILES) as u64,
                &stack,
                0,
                sleep_until_killed,
                &mut pidfd,
            )
        }
    };
    if pid < 0 {
        stack.give_back();
        return Err(io::Error::from_raw_os_error(-pid as i32));
    }
    // SAFETY: clone3 stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let made = map
        .write_maps(pid as u32)
        .and_then(|()| open_userns(pid as u32));
    let killed = crate::proc::pidfd_kill(&pidfd, libc::SIGKILL);
    let reaped = crate::proc::pidfd_wait(&pidfd);
    if reaped.is_ok() {
        // The child is gone from this memory.
        stack.give_back();
    } else {
        // Never reuse a stack a child might still run on.
        std::mem::forget(stack);
    }
    let ns = made?;
    killed?;
    reaped?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_namespace_made_without_a_sandbox_idmaps_with_its_map() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        if crate::not_root("a_user_namespace_made_without_a_sandbox_idmaps_with_its_map") {
            return;
        }
        let map = IdMap {
            base: 3_800_000_000,
            count: 65536,
        };
        let ns = userns_with(&map).expect("userns");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("file");
        let tree = crate::mount::idmapped_tree(dir.path(), &ns, false).expect("idmapped tree");
        // Host id 0 (the file's owner) shows as the range's first id through the tree.
        let md = std::fs::metadata(format!("/proc/self/fd/{}/f", tree.as_raw_fd())).expect("stat");
        assert_eq!((md.uid(), md.gid()), (map.base, map.base));
    }
}
