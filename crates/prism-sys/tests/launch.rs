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
