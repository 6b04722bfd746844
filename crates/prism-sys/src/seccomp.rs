//! A seccomp deny-list compiled to classic BPF in the parent, so the launch child only has to
//! hand the finished program to the kernel (`install`, a raw syscall, no allocation).
//!
//! The program: kill on a foreign architecture or the x32 ABI, answer `EPERM` for every denied
//! syscall, `EPERM` for `clone`/`unshare` asking for a new user namespace, `ENOSYS` for `clone3`
//! (its flags live in memory a filter cannot read, and libc falls back to `clone` on `ENOSYS`),
//! success without running for the flushes when asked ([`Policy::skip_flushes`]), and allow
//! everything else.

use std::collections::BTreeMap;

use crate::raw::{check, sys};

/// What to filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Syscall names answered with `EPERM` (see [`sysno`] for the names known).
    pub deny: Vec<String>,
    /// `clone`/`unshare` with `CLONE_NEWUSER` get `EPERM`; `clone3` gets `ENOSYS`.
    pub deny_new_user_namespaces: bool,
    /// [`FLUSHES`] and `msync` with `MS_SYNC` return 0 without running. `sync` flushes every
    /// filesystem of the host, and the others reach the host's disk wherever the file is not on
    /// a `volatile` overlay (a tree of the host's, a mapping's pages): for sandboxes whose
    /// writes are not meant to be durable anyway.
    pub skip_flushes: bool,
}

/// The syscalls [`Policy::skip_flushes`] answers with success, besides `msync(MS_SYNC)`.
pub const FLUSHES: [(&str, libc::c_long); 5] = [
    ("sync", libc::SYS_sync),
    ("syncfs", libc::SYS_syncfs),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("sync_file_range", libc::SYS_sync_file_range),
];

/// Failures of [`compile`].
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown syscall {0:?} in the seccomp policy")]
    UnknownSyscall(String),
    #[error("the seccomp program is too long ({0} instructions)")]
    TooLong(usize),
}

/// A compiled BPF program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub(crate) code: Vec<libc::sock_filter>,
}

impl Program {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.code.len()
    }
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;
const OFF_ARG2_LOW: u32 = 32;
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// The kernel's limit (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// What the program answers for a syscall of the deny or skip lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Eperm,
    Success,
}

/// Appends the answered syscalls as one compare pair per run of consecutive numbers with the
/// same answer, in ascending order, followed by the shared returns: `nr < start` of a run
/// means no later run can match (allow), `nr <= end` means this run matches (its answer), else
/// the next run. The kernel compiles a filter at a cost that grows with its length (~1.5-2.5 us
/// per instruction when a sandbox starts on our hosts) and runs it on every syscall, so runs
/// and shared returns keep it short: the default 55 denied calls fall in 25 runs, 29 with the
/// skipped flushes (the whole default program: 84 instructions, 70 without them).
fn answer_ranges(
    code: &mut Vec<libc::sock_filter>,
    nrs: &BTreeMap<u32, Answer>,
) -> Result<(), SeccompError> {
    let mut runs: Vec<(u32, u32, Answer)> = Vec::new();
    for (&nr, &answer) in nrs {
        match runs.last_mut() {
            Some((_, end, a)) if *end + 1 == nr && *a == answer => *end = nr,
            _ => runs.push((nr, nr, answer)),
        }
    }
    // The returns after the compares: allow, then each answer some run gives.
    let mut answers: Vec<Answer> = Vec::new();
    for answer in [Answer::Eperm, Answer::Success] {
        if runs.iter().any(|r| r.2 == answer) {
            answers.push(answer);
        }
    }
    let first = code.len();
    let allow = first + 2 * runs.len();
    let ret = |answer| allow + 1 + answers.iter().position(|a| *a == answer).unwrap_or(0);
    for (i, (start, end, answer)) in runs.iter().enumerate() {
        let at = first + 2 * i;
        let too_long = |_| SeccompError::TooLong(allow + 1 + answers.len());
        let to_allow = u8::try_from(allow - (at + 1)).map_err(too_long)?;
        let to_answer = u8::try_from(ret(*answer) - (at + 2)).map_err(too_long)?;
        code.push(jump(BPF_JGE_K, *start, 0, to_allow));
        code.push(jump(BPF_JGT_K, *end, 0, to_answer));
    }
    code.push(stmt(BPF_RET_K, RET_ALLOW));
    for answer in answers {
        code.push(stmt(
            BPF_RET_K,
            match answer {
                Answer::Eperm => errno(libc::EPERM),
                Answer::Success => errno(0),
            },
        ));
    }
    Ok(())
}

/// Compile `policy` for x86_64.
pub fn compile(policy: &Policy) -> Result<Program, SeccompError> {
    let mut nrs = BTreeMap::new();
    if policy.skip_flushes {
        for (_, nr) in FLUSHES {
            nrs.insert(nr as u32, Answer::Success);
        }
    }
    for name in &policy.deny {
        let nr = sysno(name).ok_or_else(|| SeccompError::UnknownSyscall(name.clone()))?;
        nrs.insert(nr, Answer::Eperm);
    }
    let mut code = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ];
    if policy.deny_new_user_namespaces {
        code.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
        code.push(stmt(BPF_RET_K, errno(libc::ENOSYS)));
        for nr in [libc::SYS_clone, libc::SYS_unshare] {
            // Not this syscall: skip the four instructions of its flag check.
            code.push(jump(BPF_JEQ_K, nr as u32, 0, 4));
            code.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LOW));
            code.push(jump(BPF_JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
            code.push(stmt(BPF_RET_K, errno(libc::EPERM)));
            code.push(stmt(BPF_RET_K, RET_ALLOW));
        }
    }
    if policy.skip_flushes {
        // msync: only MS_SYNC waits for the disk (MS_ASYNC does nothing since Linux 2.6.19).
        code.push(jump(BPF_JEQ_K, libc::SYS_msync as u32, 0, 4));
        code.push(stmt(BPF_LD_W_ABS, OFF_ARG2_LOW));
        code.push(jump(BPF_JSET_K, libc::MS_SYNC as u32, 0, 1));
        code.push(stmt(BPF_RET_K, errno(0)));
        code.push(stmt(BPF_RET_K, RET_ALLOW));
    }
    answer_ranges(&mut code, &nrs)?;
    if code.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(code.len()));
    }
    Ok(Program { code })
}

/// `no_new_privs` then the filter; `Err(errno)` on failure. Raw syscalls only (`crate::raw`):
/// safe to call in the launch child.
///
/// # Safety
/// `prog` must stay alive and unchanged for the call.
pub(crate) unsafe fn install(prog: &Program) -> Result<(), i32> {
    let fprog = libc::sock_fprog {
        len: prog.code.len() as libc::c_ushort,
        filter: prog.code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: raw prctl/seccomp on a program that outlives the call.
    unsafe {
        check(sys!(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(sys!(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog
        ))?;
    }
    Ok(())
}

/// The syscalls a policy may name, with their x86_64 numbers.
pub const KNOWN: [(&str, libc::c_long); 55] = [
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mbind", libc::SYS_mbind),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("move_pages", libc::SYS_move_pages),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("personality", libc::SYS_personality),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
    ("umount2", libc::SYS_umount2),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
    ("vhangup", libc::SYS_vhangup),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
];

/// The x86_64 number of a syscall the policy may name.
pub fn sysno(name: &str) -> Option<u32> {
    KNOWN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn unknown_names_are_refused() {
        let err = compile(&Policy {
            deny: vec!["no_such_call".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, SeccompError::UnknownSyscall(n) if n == "no_such_call"));
    }

    /// The classic BPF subset `compile` emits, run on one `seccomp_data` (`arg0`, `arg2`).
    fn run(p: &Program, nr: u32, arch: u32, arg0: u64, arg2: u64) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p.code[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LOW => arg0 as u32,
                        OFF_ARG2_LOW => arg2 as u32,
                        k => panic!("load of offset {k}"),
                    }
                }
                BPF_JEQ_K => pc += jump(a == i.k),
                BPF_JGE_K => pc += jump(a >= i.k),
                BPF_JGT_K => pc += jump(a > i.k),
                BPF_JSET_K => pc += jump(a & i.k != 0),
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn every_known_name() -> Vec<String> {
        KNOWN.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn the_program_answers_every_syscall_number_as_the_policy_says() {
        let eperm = errno(libc::EPERM);
        // Every known name, every other name, a few, one, none: runs of every length.
        let all = every_known_name();
        assert_eq!(all.len(), KNOWN.len());
        let odd: Vec<String> = all.iter().step_by(2).cloned().collect();
        let few = vec![
            "mount".into(),
            "umount2".into(),
            "pivot_root".into(),
            "bpf".into(),
        ];
        let skipped: BTreeSet<u32> = FLUSHES.iter().map(|(_, nr)| *nr as u32).collect();
        let msync = libc::SYS_msync as u32;
        for deny in [all.clone(), odd, few, vec!["ptrace".into()], vec![]] {
            for (userns, skip_flushes) in
                [(true, true), (true, false), (false, true), (false, false)]
            {
                let p = compile(&Policy {
                    deny: deny.clone(),
                    deny_new_user_namespaces: userns,
                    skip_flushes,
                })
                .unwrap();
                let denied: BTreeSet<u32> = deny.iter().filter_map(|n| sysno(n)).collect();
                for nr in 0..600u32 {
                    let want = if userns && nr == libc::SYS_clone3 as u32 {
                        errno(libc::ENOSYS)
                    } else if denied.contains(&nr) {
                        eperm
                    } else if skip_flushes && skipped.contains(&nr) {
                        errno(0)
                    } else {
                        RET_ALLOW
                    };
                    assert_eq!(
                        run(&p, nr, AUDIT_ARCH_X86_64, 0, 0),
                        want,
                        "nr {nr} deny {deny:?} skip_flushes {skip_flushes}"
                    );
                }
                for nr in [libc::SYS_clone, libc::SYS_unshare] {
                    let newuser = libc::CLONE_NEWUSER as u64;
                    let want = if userns { eperm } else { RET_ALLOW };
                    assert_eq!(run(&p, nr as u32, AUDIT_ARCH_X86_64, newuser, 0), want);
                    let flags = (libc::CLONE_NEWNS | libc::SIGCHLD) as u64;
                    assert_eq!(run(&p, nr as u32, AUDIT_ARCH_X86_64, flags, 0), RET_ALLOW);
                }
                let sync = (libc::MS_SYNC | libc::MS_INVALIDATE) as u64;
                let want = if skip_flushes { errno(0) } else { RET_ALLOW };
                assert_eq!(run(&p, msync, AUDIT_ARCH_X86_64, 0, sync), want);
                let not_sync = (libc::MS_ASYNC | libc::MS_INVALIDATE) as u64;
                assert_eq!(run(&p, msync, AUDIT_ARCH_X86_64, 0, not_sync), RET_ALLOW);
                let x32 = libc::SYS_read as u32 | X32_SYSCALL_BIT;
                assert_eq!(run(&p, x32, AUDIT_ARCH_X86_64, 0, 0), RET_KILL_PROCESS);
                // AUDIT_ARCH_I386: a 32-bit syscall table with other numbers.
                assert_eq!(run(&p, 0, 0x4000_0003, 0, 0), RET_KILL_PROCESS);
            }
        }
    }

    #[test]
    fn consecutive_denied_numbers_share_one_compare_pair() {
        let p = compile(&Policy {
            deny: every_known_name(),
            deny_new_user_namespaces: true,
            skip_flushes: false,
        })
        .unwrap();
        // header 6 + clone3 2 + clone/unshare 2*5, then 2 per run + 3 returns: well under
        // the 2 per call of a plain list.
        let list = 6 + 2 + 10 + 2 * KNOWN.len() + 1;
        assert!(p.len() < list - 40, "{} instructions", p.len());
    }
}
