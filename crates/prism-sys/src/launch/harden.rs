//! The last things the launch child does before `execveat`: resource limits, the capability
//! sets, and (`no_new_privs` plus) the seccomp filter. Everything is prepared in the parent.

use super::child::{Errno, ok};
use crate::raw::sys;
use crate::seccomp::Program;

/// A resource limit to set on the sandbox's first process (inherited by all of its children).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rlimit {
    /// `RLIMIT_NOFILE`: open files per process.
    Nofile,
    /// `RLIMIT_NPROC`: processes of one user (counted per user namespace).
    Nproc,
}

impl Rlimit {
    fn resource(self) -> libc::c_int {
        match self {
            Rlimit::Nofile => libc::RLIMIT_NOFILE as libc::c_int,
            Rlimit::Nproc => libc::RLIMIT_NPROC as libc::c_int,
        }
    }
}

/// Defence in depth applied to the sandbox's first process. The default changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardening {
    /// Capabilities to keep (bit `n` = capability `n`, see [`crate::caps`]); every other one
    /// leaves the bounding, effective, permitted, inheritable and ambient sets. `None`: keep all.
    pub keep_caps: Option<u64>,
    /// `(limit, soft, hard)`; only lowering is possible without `CAP_SYS_RESOURCE` on the host.
    pub rlimits: Vec<(Rlimit, u64, u64)>,
    /// Installed with `no_new_privs` right before the exec.
    pub seccomp: Option<Program>,
}

const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Limits and capabilities. Raw syscalls only (see `child.rs`).
///
/// # Safety
/// Called in the launch child.
pub(super) unsafe fn limits_and_caps(h: &Hardening) -> Result<(), Errno> {
    // SAFETY: raw syscalls on local memory.
    unsafe {
        for (res, soft, hard) in &h.rlimits {
            let new = libc::rlimit64 {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            ok(sys!(
                libc::SYS_prlimit64,
                0,
                res.resource(),
                &new as *const libc::rlimit64,
                0
            ))?;
        }
        let Some(keep) = h.keep_caps else {
            return Ok(());
        };
        for cap in 0..64u64 {
            if keep & (1 << cap) == 0 {
                match ok(sys!(libc::SYS_prctl, libc::PR_CAPBSET_DROP, cap, 0, 0, 0)) {
                    Ok(()) | Err(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        ok(sys!(
            libc::SYS_prctl,
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0
        ))?;
        let header = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let lo = keep as u32;
        let hi = (keep >> 32) as u32;
        let data = [
            CapData {
                effective: lo,
                permitted: lo,
                inheritable: lo,
            },
            CapData {
                effective: hi,
                permitted: hi,
                inheritable: hi,
            },
        ];
        ok(sys!(
            libc::SYS_capset,
            &header as *const CapHeader,
            data.as_ptr()
        ))
    }
}
