//! Warm pools end to end: the real prismd with `[[pools]]`, the namespace runtime (root).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use prism_types::{CreateSandboxRequest, ExecRequest, PoolInfo, SandboxState};
use support::{Daemon, eventually};

const POOL: &str = "pool_min_available_mb = 64\n[[pools]]\ntemplate = \"base\"\nsize = 2\n";

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

async fn pool_until(d: &Daemon, what: &str, cond: fn(&PoolInfo) -> bool) -> PoolInfo {
    let c = d.client.clone();
    eventually(30, what, || {
        let c = c.clone();
        async move {
            let p = c.info().await.ok()?.pools.into_iter().next()?;
            cond(&p).then_some(p)
        }
    })
    .await
}

/// Sandbox ids with a cgroup under the daemon's parent.
fn cgroup_ids(d: &Daemon) -> BTreeSet<String> {
    let cgroups = prism_sys::cgroup::detect(&d.cgroup_parent).unwrap();
    cgroups.list().unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_creates_are_fresh_sandboxes_and_members_never_leak() {
    if !support::root_or_skip("pooled_creates_are_fresh_sandboxes_and_members_never_leak") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(dir.path(), POOL).await;
    let c = d.client.clone();
    pool_until(&d, "2 ready members", |p| p.ready == 2).await;
    let members = cgroup_ids(&d);
    assert_eq!(members.len(), 2, "two idle sandboxes exist: {members:?}");
    assert!(
        c.list_all(None, None).await.unwrap().is_empty(),
        "members are not sandboxes yet"
    );

    // A create is served by a member: its id is one of them, and it is fully usable.
    let a = c.create(&CreateSandboxRequest::default()).await.unwrap();
    assert!(members.contains(&a.id), "{} not from the pool", a.id);
    assert_eq!(a.state, SandboxState::Running);
    let out = c
        .exec(&a.id, &sh("hostname; echo hi > /tmp/mark; ls /tmp"))
        .await
        .unwrap();
    assert_eq!(out.stdout, format!("{}\nmark\n", &a.id[..12]), "{out:?}");
    let p = pool_until(&d, "refill to 2", |p| p.ready == 2).await;
    assert_eq!(p.claimed, 1);
    // The same state is in /metrics.
    let text = reqwest::get(format!("{}/metrics", d.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "prism_pool_size{template=\"base\"} 2",
        "prism_pool_claimed{template=\"base\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }

    // A used sandbox never goes back: after destroy, the next create is another, clean one.
    c.destroy(&a.id).await.unwrap();
    let b = c.create(&CreateSandboxRequest::default()).await.unwrap();
    assert_ne!(b.id, a.id);
    let out = c.exec(&b.id, &sh("ls -A /tmp | wc -l")).await.unwrap();
    assert_eq!(out.stdout.trim(), "0", "a pooled sandbox starts clean");

    // A named create does not fit the pool (its hostname is its name): cold path.
    let named = c
        .create(&serde_json::from_str(r#"{"name":"cold"}"#).unwrap())
        .await
        .unwrap();
    assert!(!members.contains(&named.id));
    assert_eq!(
        c.exec("cold", &sh("hostname")).await.unwrap().stdout,
        "cold\n"
    );

    // kill -9: the members of the dead daemon have no record; the next daemon destroys them
    // as orphans and keeps the real sandboxes.
    pool_until(&d, "refill to 2", |p| p.ready == 2).await;
    // The destroyed sandbox's cgroup goes with its background teardown.
    let before = eventually(30, "two sandboxes and two members", || {
        let d = &d;
        async move {
            let ids = cgroup_ids(d);
            (ids.len() == 4).then_some(ids)
        }
    })
    .await;
    d.kill9();
    let mut d2 = Daemon::start_with(dir.path(), POOL).await;
    let keep: BTreeSet<String> = [b.id.clone(), named.id.clone()].into();
    let old_members: BTreeSet<String> = before.difference(&keep).cloned().collect();
    eventually(30, "orphaned members reaped", || {
        let d2 = &d2;
        let old = old_members.clone();
        async move { cgroup_ids(d2).is_disjoint(&old).then_some(()) }
    })
    .await;
    assert_eq!(
        d2.client
            .exec(&b.id, &sh("echo still"))
            .await
            .unwrap()
            .stdout,
        "still\n"
    );

    // SIGTERM: the daemon leaves running sandboxes for re-adoption but destroys its idle
    // members.
    pool_until(&d2, "2 ready members", |p| p.ready == 2).await;
    assert_eq!(cgroup_ids(&d2).len(), 4);
    assert!(d2.term().success());
    assert_eq!(cgroup_ids(&d2), keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_memory_keeps_pools_empty_and_creates_cold() {
    if !support::root_or_skip("low_memory_keeps_pools_empty_and_creates_cold") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A floor above any host's memory: the pool must report pressure and stay empty.
    let cfg = "pool_min_available_mb = 100000000\n[[pools]]\ntemplate = \"base\"\nsize = 2\n";
    let d = Daemon::start_with(dir.path(), cfg).await;
    let p = pool_until(&d, "memory pressure", |p| p.memory_pressure).await;
    assert_eq!((p.ready, p.starting), (0, 0));
    assert!(cgroup_ids(&d).is_empty());
    let s = d
        .client
        .create(&CreateSandboxRequest::default())
        .await
        .unwrap();
    assert_eq!(s.state, SandboxState::Running);
    let p = d.client.info().await.unwrap().pools.remove(0);
    assert_eq!((p.claimed, p.misses), (0, 1));
    let out = std::process::Command::new(support::prismctl())
        .args(["--api", &d.url(), "info"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pool base: 0/2 ready"), "{text}");
    assert!(text.contains("host memory low"), "{text}");
}
