//! Attacks on the kernel's surface: dangerous syscalls, capabilities, /proc and /sys, ptrace of
//! the agent, new namespaces.

use prism_core::Runtime;
use prism_core::security::SecurityProfile;

use crate::support::harness;
use crate::{field, py, small};

/// Calls each dangerous syscall with harmless arguments and prints `name=errno`.
const SYSCALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(f"{name}={0 if r >= 0 else ctypes.get_errno()}")
call("bpf", 321, 0, 0, 0)
call("init_module", 175, 0, 0, 0)
call("finit_module", 313, 0, 0, 0)
call("delete_module", 176, 0, 0)
call("kexec_load", 246, 0, 0, 0, 0)
call("perf_event_open", 298, 0, 0, -1, -1, 0)
call("keyctl", 250, 0, 0, 0, 0, 0)
call("add_key", 248, 0, 0, 0, 0, 0)
call("userfaultfd", 323, 0)
call("mount", 165, 0, 0, 0, 0, 0)
call("umount2", 166, 0, 0)
call("pivot_root", 155, 0, 0)
call("setns", 308, 0, 0)
call("unshare_user", 272, 0x10000000)
call("unshare_mnt", 272, 0x00020000)
call("clone_user", 56, 0x10000000 | 17, 0, 0, 0, 0)
call("clone3", 435, 0, 0)
call("ptrace_attach_1", 101, 16, 1, 0, 0)
call("open_by_handle_at", 304, 0, 0, 0)
call("iopl", 172, 3)
call("swapon", 167, 0, 0)
call("reboot", 169, 0, 0, 0, 0)
call("settimeofday", 164, 0, 0)
call("personality", 135, 0xffffffff)
call("acct", 163, 0)
call("io_uring_setup", 425, 1, 0)
call("io_uring_enter", 426, 0, 0, 0, 0, 0, 0)
call("io_uring_register", 427, 0, 0, 0, 0)
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("CapEff", "CapBnd", "CapPrm", "NoNewPrivs", "Seccomp"):
        print(f"{k}={v.strip()}")
"#;

/// Attacks: loading kernel code (modules, kexec, bpf), perf, keyrings, userfaultfd, mounts,
/// pivot_root, setns, new user/mount namespaces (unshare, clone, clone3), ptrace of PID 1, file
/// handles, raw I/O, swap, reboot, clocks, personality, accounting, io_uring (whose operations
/// seccomp does not see).
/// Expected: every one fails with EPERM (clone3: ENOSYS, so libc falls back to clone), the
/// sandbox's root holds Docker's default capabilities only, no_new_privs and a seccomp filter are
/// on; the host's module list is unchanged.
#[test]
fn dangerous_syscalls_fail_with_eperm() {
    let _serial = crate::serial();
    let Some(h) = harness("adversarial dangerous_syscalls") else {
        return;
    };
    let modules_before = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let (_handle, client) = h.start("adv-sys", small());
    let out = py(&h, &client, SYSCALLS);
    assert_eq!(out.exit_code, 0, "{out:?}");
    for name in [
        "bpf",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "perf_event_open",
        "keyctl",
        "add_key",
        "userfaultfd",
        "mount",
        "umount2",
        "pivot_root",
        "setns",
        "unshare_user",
        "clone_user",
        "ptrace_attach_1",
        "open_by_handle_at",
        "iopl",
        "swapon",
        "reboot",
        "settimeofday",
        "personality",
        "acct",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        assert_eq!(field(&out, name), Some("1"), "{name} not EPERM: {out:?}");
    }
    // Without CAP_SYS_ADMIN a new mount namespace is refused by the kernel itself.
    assert_eq!(field(&out, "unshare_mnt"), Some("1"), "{out:?}");
    assert_eq!(
        field(&out, "clone3"),
        Some("38"),
        "clone3 not ENOSYS: {out:?}"
    );
    let want = prism_sys::caps::mask(prism_core::security::DEFAULT_CAPS).expect("caps");
    let hex = |k| u64::from_str_radix(field(&out, k).unwrap_or("x"), 16).ok();
    assert_eq!(hex("CapEff"), Some(want), "{out:?}");
    assert_eq!(hex("CapBnd"), Some(want), "{out:?}");
    assert_eq!(field(&out, "NoNewPrivs"), Some("1"), "{out:?}");
    assert_eq!(field(&out, "Seccomp"), Some("2"), "{out:?}");
    let modules_after = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    assert_eq!(modules_before, modules_after);
}

/// Attacks: kernel memory and state through /proc and /sys (kcore, keys, timer_list,
/// sched_debug, sysrq-trigger, /proc/sys, /sys/firmware), the agent's root and memory through
/// /proc/1, and the agent's control socket.
/// Expected: masked files read empty, read-only ones fail with EROFS, /proc/1/root and
/// /proc/1/mem and /proc/1/fd/* are EACCES (the agent is not dumpable), and no unix socket of the agent exists in
/// the sandbox's filesystem (the agent listens on an fd passed by the host).
#[test]
fn proc_sys_and_the_agent_are_out_of_reach() {
    let _serial = crate::serial();
    let Some(h) = harness("adversarial proc_sys") else {
        return;
    };
    let (_handle, client) = h.start("adv-proc", small());
    let out = py(
        &h,
        &client,
        r#"
import os, errno
def attempt(name, f):
    try:
        r = f()
        print(f"{name}=ok:{r}")
    except OSError as e:
        print(f"{name}={e.errno}")
attempt("kcore", lambda: len(open("/proc/kcore", "rb").read(4096)))
attempt("keys", lambda: len(open("/proc/keys").read()))
attempt("timer_list", lambda: len(open("/proc/timer_list").read()))
attempt("sysrq", lambda: open("/proc/sysrq-trigger", "w").write("c"))
attempt("sysctl", lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/evil"))
attempt("firmware", lambda: len(os.listdir("/sys/firmware")))
attempt("agent_root", lambda: os.listdir("/proc/1/root"))
attempt("agent_mem", lambda: open("/proc/1/mem", "rb").read(1))
attempt("agent_fd", lambda: os.readlink("/proc/1/fd/3"))
socks = []
for d, _, files in os.walk("/", topdown=True):
    if d.startswith(("/proc", "/sys")):
        continue
    for f in files:
        try:
            if os.stat(os.path.join(d, f)).st_mode & 0o170000 == 0o140000:
                socks.append(os.path.join(d, f))
        except OSError:
            pass
print(f"sockets={len(socks)}")
"#,
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    // Absent on kernels built without them (ENOENT), empty when present.
    assert!(
        matches!(field(&out, "kcore"), Some("ok:0") | Some("2")),
        "{out:?}"
    );
    assert_eq!(field(&out, "keys"), Some("ok:0"), "{out:?}");
    assert_eq!(field(&out, "timer_list"), Some("ok:0"), "{out:?}");
    assert!(
        matches!(field(&out, "sysrq"), Some("30") | Some("2")),
        "sysrq not EROFS: {out:?}"
    );
    assert_eq!(
        field(&out, "sysctl"),
        Some("30"),
        "sysctl not EROFS: {out:?}"
    );
    assert!(
        matches!(field(&out, "firmware"), Some("ok:0") | Some("2")),
        "{out:?}"
    );
    for k in ["agent_root", "agent_mem", "agent_fd"] {
        assert_eq!(field(&out, k), Some("13"), "{k} not EACCES: {out:?}");
    }
    assert_eq!(field(&out, "sockets"), Some("0"), "{out:?}");
    let host_core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    assert!(!host_core.contains("evil"));
}

/// Attacks: a debugger profile must not turn into a way to control the agent.
/// Expected: with `allow_ptrace`, a process can trace its own child (PTRACE_ATTACH = 0), and
/// attaching to PID 1 still fails with EPERM.
#[test]
fn allow_ptrace_traces_children_but_never_the_agent() {
    let _serial = crate::serial();
    let Some(h) = harness("adversarial allow_ptrace") else {
        return;
    };
    let mut spec = h.spec("adv-ptrace", small());
    spec.security = SecurityProfile::default().allow_ptrace();
    let handle = h.runtime.start(&spec).expect("start");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let out = py(
        &h,
        &client,
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pid = os.fork()
if pid == 0:
    time.sleep(30); os._exit(0)
r = libc.ptrace(16, pid, None, None)
print(f"child={0 if r == 0 else ctypes.get_errno()}")
r = libc.ptrace(16, 1, None, None)
print(f"agent={0 if r == 0 else ctypes.get_errno()}")
os.kill(pid, 9)
"#,
    );
    let _ = h.runtime.destroy("adv-ptrace");
    assert_eq!(field(&out, "child"), Some("0"), "{out:?}");
    assert_eq!(field(&out, "agent"), Some("1"), "{out:?}");
}
