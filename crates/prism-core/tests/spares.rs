//! Sandbox directories made ahead (`namespace/spare.rs`): first starts take them, the pool
//! refills, a restarted runtime discards the old ones, and a sandbox's own `/etc` is never
//! written by the host after its first start.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use prism_core::{Limits, RootfsSpec, Runtime};
use support::{eventually, harness, root_mount};

/// The spares in the sandboxes directory, by name, with their recorded id range.
fn spares(sandboxes: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(sandboxes)
        .expect("sandboxes dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(".spare-") {
                return None;
            }
            let base = std::fs::read_to_string(e.path().join("uid_base")).ok()?;
            Some((name, base.trim().parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn first_starts_take_a_ready_directory_and_the_pool_refills() {
    let Some(h) = harness("spares_first_start") else {
        return;
    };
    let sandboxes = h.state.path().join("sandboxes");
    eventually("two spares", || h.runtime.spares_ready() == 2);
    let before = spares(&sandboxes);
    assert_eq!(before.len(), 2, "{before:?}");
    let (handle, client) = h.start("taker", Limits::default());
    let taken: Vec<_> = before
        .iter()
        .filter(|(name, _)| !sandboxes.join(name).exists())
        .collect();
    assert_eq!(taken.len(), 1, "exactly one spare was used: {before:?}");
    assert_eq!(
        handle.uid_base, taken[0].1,
        "the sandbox runs in the spare's id range"
    );
    // The spare's socket, bound before the sandbox existed, is the agent's.
    let out = h.sh(
        &client,
        "cat /etc/hostname; grep -c host-taker /etc/hosts; stat -c %u:%g /etc/hostname /etc/hosts /etc /; touch /etc/hosts && echo writable",
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        out.stdout, "host-taker\n2\n0:0\n0:0\n0:0\n0:0\nwritable\n",
        "{out:?}"
    );
    eventually("refilled", || h.runtime.spares_ready() == 2);
    let after = spares(&sandboxes);
    assert_eq!(after.len(), 2, "{after:?}");
    let bases: BTreeSet<u32> = after.iter().map(|(_, b)| *b).collect();
    assert!(
        !bases.contains(&handle.uid_base),
        "a spare shares the running sandbox's id range: {after:?}"
    );
    h.destroy("taker");
    // A second first start under the same id gets a fresh directory (a spare again).
    let (_, client) = h.start("taker", Limits::default());
    assert_eq!(h.sh(&client, "ls /root | wc -l").stdout.trim(), "0");
    h.destroy("taker");
}

#[test]
fn a_restarted_runtime_discards_the_old_spares() {
    let Some(h) = harness("spares_restart") else {
        return;
    };
    // Id ranges claimed in a directory of this test's own, so that "the lowest free ranges"
    // below are not also wanted by other tests' runtimes (claims are host-wide by default).
    let claims = h.state.path().join("id-claims");
    let runtime = || {
        let claims = claims.clone();
        h.runtime_in("restart", move |c| c.id_claims = Some(claims))
    };
    let first = runtime();
    let sandboxes = h.state.path().join("restart");
    eventually("two spares", || first.spares_ready() == 2);
    let old = spares(&sandboxes);
    let reopened = runtime();
    for (name, _) in &old {
        assert!(
            !sandboxes.join(name).exists(),
            "{name} survived the restart"
        );
    }
    eventually("new spares", || reopened.spares_ready() == 2);
    // The old spares' ranges were not taken by the restarted runtime: its first sandboxes
    // start in them (the lowest free ranges) rather than above them.
    let lowest_old = old.iter().map(|(_, b)| *b).min().expect("old spares");
    let new: Vec<u32> = spares(&sandboxes).iter().map(|(_, b)| *b).collect();
    assert!(
        new.iter().any(|b| *b <= lowest_old),
        "old ranges leaked: old {old:?}, new {new:?}"
    );
    drop(reopened);
    drop(first);
}

#[test]
fn a_root_filesystem_of_another_shape_gets_a_directory_of_its_own() {
    let Some(h) = harness("spares_shape") else {
        return;
    };
    eventually("two spares", || h.runtime.spares_ready() == 2);
    // One overlay mount instead of base's two.
    let mut spec = h.spec("oneshape", Limits::default());
    spec.rootfs = RootfsSpec {
        mounts: vec![spec.rootfs.mounts[0].clone()],
    };
    let handle = h.runtime.start(&spec).expect("start");
    let root = h.state.path().join("sandboxes/oneshape");
    assert!(root.join("upper/0").is_dir());
    assert!(
        !root.join("upper/1").exists() && !root.join("lower/1-0").exists(),
        "a directory of the wrong shape was used"
    );
    h.runtime.stop(&handle).expect("stop");
    let layers = h.runtime.writable_layers("oneshape").expect("layers");
    assert_eq!(layers.uppers.len(), 1);
    h.runtime.destroy("oneshape").expect("destroy");
    // The pool follows the last shape started.
    eventually("spares of the new shape", || {
        let s = spares(&h.state.path().join("sandboxes"));
        s.len() == 2
            && s.iter().all(|(name, _)| {
                !h.state
                    .path()
                    .join("sandboxes")
                    .join(name)
                    .join("upper/1")
                    .exists()
            })
    });
    let (_, client) = h.start("backtobase", Limits::default());
    assert_eq!(
        h.sh(&client, "cat /etc/hostname").stdout,
        "host-backtobase\n"
    );
    h.destroy("backtobase");
    assert!(h.runtime.settle(support::SETTLE));
}

#[test]
fn a_restart_does_not_write_through_a_symlinked_etc() {
    let Some(h) = harness("spares_etc_symlink") else {
        return;
    };
    // A host directory the sandbox's /etc will point at (an absolute symlink in the writable
    // layer resolves on the host when the host follows it).
    let bait = tempfile::Builder::new()
        .prefix("prism-bait-")
        .tempdir_in("/var/tmp")
        .expect("bait dir");
    let (handle, client) = h.start("etclink", Limits::default());
    let out = h.sh(
        &client,
        &format!(
            "mv /etc /etc.old && ln -s {} /etc && echo moved",
            bait.path().display()
        ),
    );
    assert_eq!(out.stdout.trim(), "moved", "{out:?}");
    h.runtime.stop(&handle).expect("stop");
    let handle = h
        .runtime
        .start(&h.spec("etclink", Limits::default()))
        .expect("start again");
    let entries: Vec<_> = std::fs::read_dir(bait.path())
        .expect("bait")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries.is_empty(),
        "the host wrote {entries:?} into {}",
        bait.path().display()
    );
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    assert_eq!(
        h.sh(&client, "cat /etc.old/hostname").stdout,
        "host-etclink\n"
    );
    h.destroy("etclink");
}

/// Spares made after a first start bring their overlays mounted ahead (by the host, over that
/// start's lowers), and a sandbox on them behaves as one whose overlays it mounted itself:
/// writes to `/` and `/usr` land in its writable layers on the host, owned by its root; a
/// removed lower file is gone; `/` is `volatile`; a stop and start (which mounts the layers in
/// the sandbox again) keeps the files; destroy leaves nothing.
#[test]
fn a_start_on_overlays_made_ahead_behaves_like_one_that_mounts_them() {
    let Some(h) = harness("spares_premade_overlays") else {
        return;
    };
    // The first start tells the pool which lowers to mount; the spares it makes from then on
    // carry overlays. Its own start mounted them in the sandbox (lowers attached under
    // `lower/`).
    let sandboxes = h.state.path().join("sandboxes");
    eventually("two spares", || h.runtime.spares_ready() == 2);
    let before: BTreeSet<String> = spares(&sandboxes).into_iter().map(|s| s.0).collect();
    let (_, first) = h.start("premade-0", Limits::default());
    assert!(root_mount(&h, &first).contains("/lower/0-0"));
    let made_after: BTreeSet<String> = {
        eventually("a spare made after the first start", || {
            spares(&sandboxes).iter().any(|s| !before.contains(&s.0))
        });
        eventually("two spares", || h.runtime.spares_ready() == 2);
        spares(&sandboxes)
            .into_iter()
            .map(|s| s.0)
            .filter(|n| !before.contains(n))
            .collect()
    };
    assert!(!made_after.is_empty());
    // The newest spare is taken first.
    let (handle, client) = h.start("premade-1", Limits::default());
    let options = root_mount(&h, &client);
    assert!(
        !options.contains("/lower/0-0") && options.contains("volatile"),
        "not the overlay made ahead: {options}"
    );
    let out = h.sh(
        &client,
        "echo root > /root-file && echo usr > /usr/local/usr-file && \
         id -u && stat -c %u /root-file /usr/bin/env && cat /etc/hostname",
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout, "0\n0\n0\nhost-premade-1\n", "{out:?}");
    let dir = sandboxes.join("premade-1");
    let on_host = |p: &str| {
        std::fs::metadata(dir.join(p)).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        })
    };
    assert_eq!(on_host("upper/0/root-file").ok(), Some(handle.uid_base));
    // /usr is the second overlay (its own writable layer).
    assert_eq!(
        on_host("upper/1/local/usr-file").ok(),
        Some(handle.uid_base)
    );
    // A file of the host's /usr removed inside is gone inside, still there on the host.
    let out = h.sh(
        &client,
        "rm /usr/bin/env && test ! -e /usr/bin/env && echo gone",
    );
    assert_eq!(out.stdout, "gone\n", "{out:?}");
    assert!(Path::new("/usr/bin/env").exists());
    // Stop and start: the layers are mounted by the sandbox this time, and hold the files.
    h.runtime.stop(&handle).expect("stop");
    let spec = h.spec("premade-1", Limits::default());
    let again = h.runtime.start(&spec).expect("restart");
    let client = prism_proto::AgentClient::new(&again.agent_socket);
    assert!(root_mount(&h, &client).contains("/lower/0-0"));
    let out = h.sh(
        &client,
        "cat /root-file /usr/local/usr-file && test ! -e /usr/bin/env && echo still-gone \
         && echo again > /root-file && echo new > /usr/bin/env && cat /root-file /usr/bin/env",
    );
    assert_eq!(
        out.stdout, "root\nusr\nstill-gone\nagain\nnew\n",
        "the layers are not writable after the restart: {out:?}"
    );
    h.destroy("premade-1");
    assert!(!dir.exists(), "the directory is left: {}", dir.display());
}

/// A spare's overlays are over the directories its lowers named when it was made. When a
/// path names another directory by the next start (an image pruned and pulled again, a
/// template rebuilt in place of the old one), the start mounts its own overlays over the new
/// one instead of showing the old, deleted tree.
#[test]
fn overlays_made_ahead_are_not_used_over_a_lower_that_was_replaced() {
    let Some(h) = harness("spares_replaced_lower") else {
        return;
    };
    let base = h.spec("x", Limits::default()).rootfs;
    let lower = h.state.path().join("lower-copy");
    let copy = |marker: &str| {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&base.mounts[0].lowers[0])
            .arg(&lower)
            .status()
            .expect("cp");
        assert!(st.success());
        std::fs::write(lower.join(marker), b"").expect("marker");
    };
    copy("old-marker");
    let spec = |id: &str| {
        let mut s = h.spec(id, Limits::default());
        s.rootfs.mounts[0].lowers[0] = lower.clone();
        s
    };
    let sandboxes = h.state.path().join("sandboxes");
    eventually("two spares", || h.runtime.spares_ready() == 2);
    let before: BTreeSet<String> = spares(&sandboxes).into_iter().map(|s| s.0).collect();
    let first = h.runtime.start(&spec("replaced-0")).expect("start");
    drop(first);
    // The refill after it made a spare for this root filesystem (overlays over the copy); the
    // next start takes the newest spare.
    eventually("a spare made after the first start", || {
        spares(&sandboxes).iter().any(|s| !before.contains(&s.0))
    });
    eventually("two spares", || h.runtime.spares_ready() == 2);
    std::fs::rename(&lower, h.state.path().join("lower-old")).expect("move the old copy away");
    copy("new-marker");
    let handle = h.runtime.start(&spec("replaced-1")).expect("start");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let out = h.sh(&client, "ls / | grep marker");
    assert_eq!(
        out.stdout, "new-marker\n",
        "the sandbox sees the old lower: {out:?}"
    );
    h.destroy("replaced-1");
    h.destroy("replaced-0");
}
