//! Attacks on the host's disks: a sandbox making the host flush them in a loop. A flush waits
//! for every dirty page of a filesystem (`sync`, `syncfs`) or empties the disk's write cache
//! (`fsync` and friends): one sandbox doing it in a loop slows every other sandbox and the
//! host. Counted from the host in `/sys/block/*/stat` (flush requests completed).

use prism_core::Runtime;

use crate::py;
use crate::support::{Harness, harness};

/// The ways to ask for a flush a sandbox's root has, `ROUNDS` times each: `sync`, `syncfs` and
/// `fsync` of `/` (the writable layer), `/root` and `/dev` (a tree of the host's), `fsync` and
/// `fdatasync` of a file of the layer, `msync(MS_SYNC)` of its mapping (whose pages are the
/// host file's, not the overlay's), an `RWF_SYNC` write, `sync_file_range`. Not here: writes
/// to a file opened `O_DSYNC`/`O_SYNC`, which still flush (docs/security.md).
const FLUSHER: &str = r#"
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
def check(name, r):
    if r < 0:
        raise SystemExit(f"{name}: errno {ctypes.get_errno()}")
f = os.open("/root/flush", os.O_RDWR | os.O_CREAT, 0o600)
os.write(f, b"x" * 4096)
m = mmap.mmap(f, 4096)
dirs = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in ("/", "/dev", "/root")]
for i in range(ROUNDS):
    os.pwrite(f, b"y", i % 4096)
    libc.sync()
    for d in dirs:
        check("syncfs", libc.syncfs(d))
        os.fsync(d)
    os.fsync(f)
    os.fdatasync(f)
    m[i % 4096] = 0x7a
    m.flush()
    os.pwritev(f, [b"w"], 0, os.RWF_SYNC)
    check("sync_file_range", libc.sync_file_range(f, ctypes.c_long(0), ctypes.c_long(0), 7))
print("done")
"#;

/// Rounds of the flusher: each makes 11 flush requests when nothing stops them (without
/// `volatile` and the seccomp answers; 4 with `volatile` alone: `sync`, `syncfs` and `fsync`
/// of `/dev`, `msync`).
const ROUNDS: u64 = 60;

/// Flush requests the host's block devices completed so far (all of them, loop devices of
/// quota images included).
fn host_flushes() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
    {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Field 16: flush requests completed (Documentation/block/stat.rst).
        total += stat
            .split_whitespace()
            .nth(15)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Runs the flusher in a fresh sandbox of `runtime`; the host's flushes meanwhile.
fn flushes_caused_by_a_sandbox(h: &Harness, runtime: &dyn Runtime, id: &str) -> u64 {
    let spec = h.spec(id, crate::small());
    let handle = runtime.start(&spec).expect("start");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let src = FLUSHER.replace("ROUNDS", &ROUNDS.to_string());
    let before = host_flushes();
    let out = py(h, &client, &src);
    let flushes = host_flushes() - before;
    assert_eq!(out.exit_code, 0, "flusher failed: {out:?}");
    assert_eq!(out.stdout.trim(), "done", "{out:?}");
    runtime.destroy(id).expect("destroy");
    assert!(runtime.settle(crate::support::SETTLE), "teardown of {id}");
    flushes
}

/// Attacks: every flush call above, 60 rounds, from the sandbox's root.
/// Expected: by default (writable layers `volatile`) the host's disks see almost none of them
/// (fewer than one per round, whatever else the host flushes meanwhile); with
/// `fsync_sandboxes = true` they are real and the same loop makes at least one flush a round —
/// which also shows the counter sees them.
#[test]
fn a_sandbox_cannot_make_the_host_flush_its_disks() {
    let _serial = crate::serial();
    let Some(h) = harness("adversarial flush") else {
        return;
    };
    let durable = h.runtime_in("durable", |cfg| cfg.fsync_sandboxes = true);
    let honoured = flushes_caused_by_a_sandbox(&h, &durable, "adv-flush-durable");
    assert!(
        honoured >= ROUNDS,
        "with fsync_sandboxes the flusher made only {honoured} flushes in {ROUNDS} rounds"
    );
    let stopped = flushes_caused_by_a_sandbox(&h, &h.runtime, "adv-flush");
    eprintln!(
        "host flushes in {ROUNDS} rounds: {stopped} by default, {honoured} with fsync_sandboxes"
    );
    assert!(
        stopped < ROUNDS / 2,
        "a sandbox made the host flush its disks {stopped} times in {ROUNDS} rounds \
         (with fsync_sandboxes: {honoured})"
    );
}
