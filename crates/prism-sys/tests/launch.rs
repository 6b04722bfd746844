//! The launch clone for real (root only): a child that shares the caller's memory until its exec
//! leaves the caller as it found it (dumpable flag, signal mask), reports a failing step with its
//! errno, and works from several threads at once. No namespace setup beyond the clone's own: the
//! child execs a host binary opened before the clone.

mod common;

use std::thread;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use prism_sys::launch::{LaunchError, Step, launch};

use common::{config, require_root, run_true};

#[test]
fn a_launch_leaves_the_callers_dumpable_flag_and_signal_mask_as_they_were() {
    require_root!();
    let _serial = common::serial();
    assert!(
        prism_sys::proc::dumpable(),
        "a test process starts dumpable"
    );
    // A mask of our own on this thread, so "unchanged" is not just "empty".
    let mut ours = SigSet::empty();
    ours.add(Signal::SIGUSR2);
    ours.add(Signal::SIGWINCH);
    let mut before = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ours), Some(&mut before)).expect("block");
    let mut blocked = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut blocked)).expect("read mask");
    for _ in 0..3 {
        run_true();
    }
    let mut after = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut after)).expect("read mask");
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None).expect("restore");
    assert_eq!(after, blocked, "the calling thread's signal mask changed");
    assert!(after.contains(Signal::SIGUSR2) && !after.contains(Signal::SIGUSR1));
    // The child's setresuid to the sandbox's root on the shared memory cleared the flag; the
    // launch put it back.
    assert!(
        prism_sys::proc::dumpable(),
        "the process is no longer dumpable"
    );
}

#[test]
fn a_failing_step_in_the_child_reports_its_step_and_errno() {
    require_root!();
    let _serial = common::serial();
    let mut cfg = config();
    cfg.steps = vec![
        Step::MakeRootPrivate,
        Step::Mount {
            source: "tmpfs".into(),
            target: "/nonexistent-prism-launch-target".into(),
            fstype: Some("tmpfs".into()),
            flags: 0,
            data: None,
        },
    ];
    let err = launch(&cfg, &mut |_| Ok(())).expect_err("mount on a missing target");
    match &err {
        LaunchError::Child { step, source, what } => {
            assert_eq!(*step, 1, "{err}");
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{err}");
            assert!(what.contains("nonexistent-prism-launch-target"), "{what}");
        }
        other => panic!("not a child failure: {other}"),
    }
    // A failure after the exec-less child's credentials changed: still dumpable, and the next
    // launch works.
    assert!(prism_sys::proc::dumpable());
    run_true();
}

#[test]
fn a_failure_on_the_parent_side_kills_the_child_and_reports_it() {
    require_root!();
    let _serial = common::serial();
    let cfg = config();
    let err = launch(&cfg, &mut |_| Err(std::io::Error::other("no cgroup today")))
        .expect_err("on_spawn failed");
    assert!(
        matches!(&err, LaunchError::Parent { op, .. } if op.contains("placing")),
        "{err}"
    );
    assert!(prism_sys::proc::dumpable());
    run_true();
}

#[test]
fn launches_from_several_threads_at_once_all_start() {
    require_root!();
    let _serial = common::serial();
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..15 {
                    run_true();
                }
            });
        }
    });
    assert!(prism_sys::proc::dumpable());
}

/// The files process `pid` has open (the targets of its `/proc/<pid>/fd` links).
fn open_files(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The clone copies the caller's fd table; the child drops those copies first thing, not at
/// its exec: a file the caller closes meanwhile must not have its last reference (and the
/// work of freeing it) in the sandbox's start.
#[test]
fn the_child_lets_go_of_the_callers_other_fds_before_it_is_placed() {
    require_root!();
    let _serial = common::serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("held-by-the-caller");
    let held = std::fs::File::create(&marker).expect("marker");
    let cfg = config();
    let mut seen = Vec::new();
    let launched = launch(&cfg, &mut |pid| {
        // The child waits for this callback to return before it may exec, so whatever it
        // holds now it holds until then. Poll (bounded) until the copy is gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            seen = open_files(pid);
            if !seen.contains(&marker) || std::time::Instant::now() > deadline {
                return Ok(());
            }
            thread::yield_now();
        }
    })
    .expect("launch");
    let status = prism_sys::proc::pidfd_wait(&launched.pidfd).expect("wait");
    drop(held);
    assert!(
        matches!(status, prism_sys::proc::ExitStatus::Exited(0)),
        "{status:?}"
    );
    assert!(!seen.is_empty(), "the child's fds were not readable");
    assert!(
        !seen.contains(&marker),
        "the child still held the caller's fd of {} while being placed: {seen:?}",
        marker.display()
    );
}

/// The mount points of process `pid` (as it sees them), from its mountinfo.
fn mount_points(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

#[test]
fn the_old_root_is_detached_when_launch_returns() {
    require_root!();
    let _serial = common::serial();
    let root = tempfile::tempdir().expect("tempdir");
    let new_root = root.path().to_path_buf();
    let mut cfg = config();
    // A tmpfs root with the host's /usr and /dev/null bound in, so that a dynamic /bin/sleep
    // runs there.
    cfg.steps = vec![
        Step::MakeRootPrivate,
        Step::Mount {
            source: "tmpfs".into(),
            target: new_root.clone(),
            fstype: Some("tmpfs".into()),
            flags: 0,
            data: Some("mode=755".into()),
        },
        Step::Mkdir {
            path: new_root.join("usr"),
            mode: 0o755,
        },
        Step::Mount {
            source: "/usr".into(),
            target: new_root.join("usr"),
            fstype: None,
            flags: prism_sys::launch::flags::BIND | prism_sys::launch::flags::REC,
            data: None,
        },
        // The child opens /dev/null in its new root for the exec's stdin and stdout.
        Step::Mkdir {
            path: new_root.join("dev"),
            mode: 0o755,
        },
        Step::Touch {
            path: new_root.join("dev/null"),
            mode: 0o666,
        },
        Step::Mount {
            source: "/dev/null".into(),
            target: new_root.join("dev/null"),
            fstype: None,
            flags: prism_sys::launch::flags::BIND,
            data: None,
        },
        Step::Symlink {
            target: "usr/lib".into(),
            link: new_root.join("lib"),
        },
        Step::Symlink {
            target: "usr/lib64".into(),
            link: new_root.join("lib64"),
        },
        Step::PivotRoot {
            new_root: new_root.clone(),
        },
    ];
    cfg.exe = "/bin/sleep".into();
    cfg.argv = vec!["sleep".into(), "30".into()];
    for _ in 0..20 {
        let launched = launch(&cfg, &mut |_| Ok(())).expect("launch");
        // Right away: only the new root and what was mounted into it, none of the host's
        // mounts (the detach of the old root is done when `launch` returns).
        let points = mount_points(launched.pid);
        let _ = prism_sys::proc::pidfd_kill(&launched.pidfd, libc::SIGKILL);
        let _ = prism_sys::proc::pidfd_wait(&launched.pidfd);
        assert_eq!(points.first().map(String::as_str), Some("/"), "{points:?}");
        assert!(
            points
                .iter()
                .skip(1)
                .all(|p| p == "/usr" || p.starts_with("/usr/") || p == "/dev/null"),
            "host mounts left in the sandbox: {points:?}"
        );
        assert!(points.len() < 10, "{points:?}");
    }
    assert!(prism_sys::proc::dumpable());
    run_true();
}
