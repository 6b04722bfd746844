//! Destroy returns once the sandbox is killed and finishes in the background: what must hold
//! anyway (nothing left once it settled, no collision with a new sandbox of the same id, a
//! teardown interrupted by a daemon crash is finished after the restart).

mod support;

use std::path::Path;

use prism_core::{Limits, Runtime};
use support::{SETTLE, harness};

/// Whether anything of sandbox `id` is left on the host: its cgroup in any hierarchy, a mount,
/// its directory.
fn traces(h: &support::Harness, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten()
    {
        let dir = hierarchy.path().join(&h.cgroup_parent).join(id);
        if dir.exists() {
            found.push(dir.display().to_string());
        }
    }
    let needle = format!("sandboxes/{id}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&needle))
            .map(String::from),
    );
    let dir = h.state.path().join("sandboxes").join(id);
    if dir.exists() {
        found.push(dir.display().to_string());
    }
    found
}

#[test]
fn a_new_sandbox_with_the_same_id_never_meets_the_old_ones_leftovers() {
    let Some(h) = harness("same_id_after_destroy") else {
        return;
    };
    let (first, client) = h.start("again", Limits::default());
    assert_eq!(h.sh(&client, "echo one > /root/mark").exit_code, 0);
    h.runtime.destroy("again").expect("destroy");
    // Right away, while the first one may still be torn down.
    let (second, client) = h.start("again", Limits::default());
    assert!(h.runtime.settle(SETTLE), "teardown did not finish");
    assert_ne!(first.pid, second.pid);
    assert!(!Path::new(&format!("/proc/{}", first.pid)).exists());
    // The second sandbox is whole: fresh writable layer, alive, with its cgroup and directory.
    let out = h.sh(&client, "cat /root/mark 2>/dev/null || echo fresh");
    assert_eq!(out.stdout.trim(), "fresh", "{out:?}");
    assert!(h.runtime.adopt(&second).expect("adopt"));
    assert!(h.runtime.stats(&second).expect("stats").pids >= 1);
    assert!(h.state.path().join("sandboxes/again/uid_base").is_file());
    h.destroy("again");
    assert_eq!(traces(&h, "again"), Vec::<String>::new());
}

#[test]
fn uid_ranges_are_reused_only_after_the_teardown() {
    let Some(h) = harness("uid_reuse") else {
        return;
    };
    let (a, _) = h.start("uid-a", Limits::default());
    h.runtime.destroy("uid-a").expect("destroy");
    let (b, _) = h.start("uid-b", Limits::default());
    // Either the teardown of `uid-a` had finished (its range is free again) or `uid-b` got
    // another one; never the range of a sandbox whose processes may still exist.
    let a_gone = !Path::new(&format!("/proc/{}", a.pid)).exists();
    assert!(
        b.uid_base != a.uid_base || a_gone,
        "range {} reused too early",
        a.uid_base
    );
    assert!(h.runtime.settle(SETTLE), "teardown did not finish");
    assert!(
        !h.runtime
            .leftovers()
            .expect("leftovers")
            .contains(&"uid-a".to_string())
    );
    h.destroy("uid-b");
}

#[test]
fn a_restarted_runtime_finishes_an_interrupted_teardown() {
    let Some(h) = harness("interrupted_teardown") else {
        return;
    };
    let (handle, _client) = h.start("half", Limits::default());
    // A daemon killed half-way through a teardown: the init is dead, part of the cgroup is gone,
    // the directory and the rest of the cgroup are still there.
    let pidfd = prism_sys::proc::pidfd_open(handle.pid).expect("pidfd");
    prism_sys::proc::pidfd_kill(&pidfd, prism_sys::proc::SIGKILL).expect("kill");
    assert!(prism_sys::proc::pidfd_wait_exit(&pidfd, SETTLE).expect("wait"));
    // `pids` is a hierarchy of every v1 layout (the unified one has no sandbox directory there).
    let pids = Path::new("/sys/fs/cgroup/pids")
        .join(&h.cgroup_parent)
        .join("half");
    if pids.exists() {
        let deadline = std::time::Instant::now() + SETTLE;
        while std::fs::remove_dir(&pids).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pids cgroup stays busy"
            );
            std::thread::yield_now();
        }
    }
    assert!(!traces(&h, "half").is_empty());
    // The restarted daemon's janitor: the id is a leftover, and destroying it cleans it all.
    let restarted = h.reopen();
    assert!(
        restarted
            .leftovers()
            .expect("leftovers")
            .contains(&"half".to_string())
    );
    restarted.destroy("half").expect("destroy");
    assert!(restarted.settle(SETTLE), "teardown did not finish");
    assert_eq!(traces(&h, "half"), Vec::<String>::new());
    assert!(
        !restarted
            .leftovers()
            .expect("leftovers")
            .contains(&"half".to_string())
    );
}
