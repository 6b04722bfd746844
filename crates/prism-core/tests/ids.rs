//! Host id ranges across runtimes (`namespace/slots.rs`): two runtimes on one host (two
//! daemons, or a test run beside a daemon) never map sandboxes to the same host ids; a range's
//! host-wide claim lasts as long as its sandbox, and a stopped sandbox that another runtime's
//! claim now covers does not start in it.

mod support;

use prism_core::{Limits, Runtime};
use support::{harness, id_claim as claim};

#[test]
fn two_runtimes_on_one_host_never_share_an_id_range() {
    let Some(h) = harness("ids_two_runtimes") else {
        return;
    };
    // Two runtimes over their own directories, as two daemons: with per-runtime ranges both
    // first sandboxes got the lowest range.
    let other = h.runtime_in("other-daemon", |_| {});
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..3 {
        let spec = h.spec(&format!("ids-a{i}"), Limits::default());
        ours.push(h.runtime.start(&spec).expect("start in the first runtime"));
        let spec = h.spec(&format!("ids-b{i}"), Limits::default());
        theirs.push(other.start(&spec).expect("start in the second runtime"));
    }
    for a in &ours {
        for b in &theirs {
            assert_ne!(
                a.uid_base, b.uid_base,
                "{} and {} share host ids",
                a.id, b.id
            );
        }
    }
    // Each range is claimed on the host, by the runtime whose sandbox uses it.
    let sandboxes = h
        .state
        .path()
        .join("sandboxes")
        .canonicalize()
        .expect("dir");
    for a in &ours {
        let owner = std::fs::read_to_string(claim(a.uid_base)).expect("claim of a sandbox");
        assert_eq!(owner.trim_end(), sandboxes.display().to_string());
    }
    // The claim goes with the sandbox.
    let gone = ours.pop().expect("a sandbox");
    h.destroy(&gone.id);
    assert!(
        std::fs::read_to_string(claim(gone.uid_base))
            .map_or(true, |o| o.trim_end() != sandboxes.display().to_string()),
        "the claim of destroyed {} is left",
        gone.id
    );
    for b in &theirs {
        other.destroy(&b.id).expect("destroy");
    }
    assert!(other.settle(support::SETTLE));
}

/// A stopped sandbox keeps its range (recorded in its directory) and its claim, also across a
/// restart of its runtime; when another runtime holds the claim (its own runtime was gone and
/// the claim removed meanwhile), the start refuses to share the range and says why.
#[test]
fn a_stopped_sandbox_does_not_restart_in_a_range_claimed_elsewhere() {
    let Some(h) = harness("ids_claimed_elsewhere") else {
        return;
    };
    let spec = h.spec("ids-stopped", Limits::default());
    let handle = h.runtime.start(&spec).expect("start");
    h.runtime.stop(&handle).expect("stop");
    let path = claim(handle.uid_base);
    assert!(path.exists(), "a stopped sandbox's range is still claimed");
    // The claim is now another runtime's (as if it was lost and taken by another daemon).
    std::fs::write(&path, format!("{}\n", h.state.path().display())).expect("rewrite claim");
    let err = h.runtime.start(&spec).expect_err("a shared range");
    assert!(
        err.to_string().contains("claimed by another Prism runtime"),
        "{err}"
    );
    std::fs::write(
        &path,
        format!(
            "{}\n",
            h.state
                .path()
                .join("sandboxes")
                .canonicalize()
                .unwrap()
                .display()
        ),
    )
    .expect("give the claim back");
    let again = h.runtime.start(&spec).expect("start in its own range");
    assert_eq!(again.uid_base, handle.uid_base);
    h.destroy("ids-stopped");
}
