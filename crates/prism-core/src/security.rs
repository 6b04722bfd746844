//! What a sandbox's processes may do beyond the namespaces: capabilities, syscalls, visible
//! kernel interfaces and resource limits. The rules are data: [`SecurityProfile::default`] is the
//! default of every sandbox, and a template or request may relax it (e.g.
//! [`SecurityProfile::allow_ptrace`] for debuggers).

use std::path::PathBuf;

use prism_sys::launch::{Hardening, Rlimit};
use serde::{Deserialize, Serialize};

use crate::runtime::RuntimeError;

/// Capabilities kept by the sandbox's root (in its own user namespace), in the spirit of
/// Docker's default list. The agent needs SETUID/SETGID to start processes as other users, KILL
/// to signal them, CHOWN/DAC_OVERRIDE/FOWNER/FSETID for its file API.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Syscalls answered with `EPERM` by default (Docker's default profile blocks the same
/// families): kernel code and modules, bpf and perf, keyrings, userfaultfd, ptrace, mounts and
/// namespaces, clocks, swap, reboot, accounting, raw I/O ports, file handles, NUMA tricks, and
/// io_uring (its operations, `fsync` among them, are not seen by seccomp; libuv, Node's I/O
/// layer, falls back to threads when it is refused, as under Docker's profile since 25.0).
pub const DEFAULT_DENY: [&str; 55] = [
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount2",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// Paths inside the sandbox hidden from it (Docker's masked paths).
pub const DEFAULT_MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths inside the sandbox made read-only.
pub const DEFAULT_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything the namespace runtime enforces on a sandbox beyond its namespaces and cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityProfile {
    /// Capability names (without `CAP_`) the sandbox's root keeps.
    pub capabilities: Vec<String>,
    /// Syscall names answered with `EPERM`.
    pub deny_syscalls: Vec<String>,
    /// `clone`/`unshare` of a new user namespace fail with `EPERM` (`clone3` with `ENOSYS`).
    pub deny_new_user_namespaces: bool,
    /// Absolute paths inside the sandbox hidden (empty tmpfs or `/dev/null` on top).
    pub masked_paths: Vec<PathBuf>,
    /// Absolute paths inside the sandbox mounted read-only.
    pub readonly_paths: Vec<PathBuf>,
    /// `RLIMIT_NOFILE` of every process (soft = hard); capped at the daemon's own hard limit.
    pub max_open_files: Option<u64>,
    /// `RLIMIT_NPROC` of every user of the sandbox (soft = hard).
    pub max_processes: Option<u64>,
    /// Mount a read-only `/sys` (sysfs of the sandbox's network namespace). Off by default: few
    /// programs need it (`nproc`, Python's `os.cpu_count()` fall back to `/proc` and
    /// `sched_getaffinity`), and each one costs a superblock and exposes host hardware details.
    pub sysfs: bool,
}

impl Default for SecurityProfile {
    fn default() -> Self {
        let mut deny: Vec<String> = DEFAULT_DENY.iter().map(|s| s.to_string()).collect();
        deny.sort();
        deny.dedup();
        Self {
            capabilities: DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
            deny_syscalls: deny,
            deny_new_user_namespaces: true,
            masked_paths: DEFAULT_MASKED.iter().map(PathBuf::from).collect(),
            readonly_paths: DEFAULT_READONLY.iter().map(PathBuf::from).collect(),
            max_open_files: Some(4096),
            max_processes: Some(4096),
            sysfs: false,
        }
    }
}

impl SecurityProfile {
    /// Let processes trace each other inside the sandbox (debuggers, strace): `ptrace` and
    /// `process_vm_*` are allowed. `CAP_SYS_PTRACE` is deliberately *not* added: tracing a
    /// process of the same user needs no capability, and with it the sandbox's root could attach
    /// to the non-dumpable agent (the adversarial suite found exactly that: the agent ended up
    /// stopped).
    pub fn allow_ptrace(mut self) -> Self {
        self.deny_syscalls.retain(|s| {
            !matches!(
                s.as_str(),
                "ptrace" | "process_vm_readv" | "process_vm_writev"
            )
        });
        self
    }

    /// Whether the sandbox needs a network namespace owned by its own user namespace (made at
    /// its clone) rather than one made ahead by the host: mounting sysfs needs it, and so does
    /// any use of a kept `NET_ADMIN` (in a namespace the host owns, the sandbox's capabilities
    /// count for nothing, `NET_RAW` included).
    pub fn needs_own_netns(&self) -> bool {
        let net_admin = prism_sys::caps::number("NET_ADMIN");
        self.sysfs
            || self
                .capabilities
                .iter()
                .any(|c| prism_sys::caps::number(c) == net_admin)
    }

    /// Whether `ptrace` is allowed by this profile.
    pub fn allows_ptrace(&self) -> bool {
        !self.deny_syscalls.iter().any(|s| s == "ptrace")
    }

    /// Compile the profile for the launch (the BPF program is built here, in the parent).
    /// `skip_flushes`: the sandbox's `sync`, `syncfs`, `fsync`, `fdatasync`, `sync_file_range`
    /// and `msync(MS_SYNC)` succeed without running (its writable layers are `volatile`, so
    /// its writes are not durable anyway, and these would flush the host's disks).
    pub fn hardening(&self, skip_flushes: bool) -> Result<Hardening, RuntimeError> {
        let keep = prism_sys::caps::mask(self.capabilities.iter().map(String::as_str))
            .map_err(|n| RuntimeError::InvalidSpec(format!("unknown capability {n:?}")))?;
        let seccomp = prism_sys::seccomp::compile(&prism_sys::seccomp::Policy {
            deny: self.deny_syscalls.clone(),
            deny_new_user_namespaces: self.deny_new_user_namespaces,
            skip_flushes,
        })
        .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        let mut rlimits = Vec::new();
        if let Some(n) = self.max_open_files {
            rlimits.push((Rlimit::Nofile, n, n));
        }
        if let Some(n) = self.max_processes {
            rlimits.push((Rlimit::Nproc, n, n));
        }
        Ok(Hardening {
            keep_caps: Some(keep),
            rlimits,
            seccomp: Some(seccomp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sysfs_or_a_kept_net_admin_needs_a_network_namespace_of_its_own() {
        let p = SecurityProfile::default();
        assert!(!p.needs_own_netns(), "the default takes one made ahead");
        assert!(!p.clone().allow_ptrace().needs_own_netns());
        let sys = SecurityProfile {
            sysfs: true,
            ..Default::default()
        };
        assert!(sys.needs_own_netns());
        for name in ["NET_ADMIN", "cap_net_admin"] {
            let mut admin = SecurityProfile::default();
            admin.capabilities.push(name.into());
            assert!(admin.needs_own_netns(), "{name}");
        }
    }

    #[test]
    fn the_default_compiles_and_denies_ptrace() {
        let p = SecurityProfile::default();
        assert!(!p.allows_ptrace());
        let h = p.hardening(true).unwrap();
        let keep = h.keep_caps.unwrap();
        assert_eq!(keep & (1 << 21), 0, "no CAP_SYS_ADMIN");
        assert_eq!(keep & (1 << 19), 0, "no CAP_SYS_PTRACE");
        assert_ne!(keep & (1 << 7), 0, "CAP_SETUID kept for the agent");
        // The lengths prism-sys's seccomp.rs quotes (the kernel's cost grows with them).
        assert_eq!(h.seccomp.map(|s| s.len()), Some(84));
        let durable = p.hardening(false).unwrap();
        assert_eq!(durable.seccomp.map(|s| s.len()), Some(70));
    }

    #[test]
    fn allow_ptrace_relaxes_only_tracing() {
        let d = SecurityProfile::default();
        let p = d.clone().allow_ptrace();
        assert!(p.allows_ptrace());
        assert!(p.deny_syscalls.iter().any(|s| s == "bpf"));
        assert_eq!(p.deny_syscalls.len(), d.deny_syscalls.len() - 3);
        assert_eq!(p.hardening(true).unwrap().keep_caps.unwrap() & (1 << 19), 0);
    }

    #[test]
    fn bad_names_are_invalid_specs() {
        let p = SecurityProfile {
            capabilities: vec!["NOPE".into()],
            ..Default::default()
        };
        assert!(matches!(
            p.hardening(true),
            Err(RuntimeError::InvalidSpec(_))
        ));
        let p = SecurityProfile {
            deny_syscalls: vec!["nope".into()],
            ..Default::default()
        };
        assert!(matches!(
            p.hardening(true),
            Err(RuntimeError::InvalidSpec(_))
        ));
    }
}
