//! Warm pools on the fake runtime and agents, with a real SQLite store on a temp file.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_store::{SqliteStore, Store};
use prism_types::{CreateSandboxRequest, ExecRequest, PoolInfo, Resources, SandboxState};

use super::fake::{FakeAgents, FakeRuntime};
use super::*;
use crate::Runtime;

struct Env {
    _dir: tempfile::TempDir,
    rt: Arc<FakeRuntime>,
    store: Arc<SqliteStore>,
    m: SandboxManager,
}

fn env(size: usize, min_available: u64) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(dir.path());
    let agents = FakeAgents::for_runtime(&rt);
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let mut cfg = ManagerConfig::new(dir.path().to_path_buf());
    cfg.pools = vec![PoolConfig {
        template: "base".into(),
        resources: Resources::default(),
        size,
    }];
    cfg.pool_min_available_bytes = min_available;
    let m = SandboxManager::new(store.clone(), rt.clone(), agents, cfg).unwrap();
    m.start_pools();
    Env {
        _dir: dir,
        rt,
        store,
        m,
    }
}

fn req(json: &str) -> CreateSandboxRequest {
    serde_json::from_str(json).unwrap()
}

/// Poll the pool state until `cond` holds (the refill task runs on its own).
async fn until(m: &SandboxManager, what: &str, cond: impl Fn(&PoolInfo) -> bool) -> PoolInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = m.pools().remove(0);
        if cond(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "pool never got {what}: {p:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn present(rt: &FakeRuntime) -> HashSet<String> {
    rt.leftovers().unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_claims_a_ready_member_and_the_pool_refills() {
    let e = env(2, 0);
    until(&e.m, "2 ready", |p| p.ready == 2).await;
    let members = present(&e.rt);
    assert_eq!(members.len(), 2);

    let sb = e.m.create(req(r#"{"cmd":["sleep"]}"#)).await.unwrap();
    assert!(members.contains(&sb.id), "claimed a member: {}", sb.id);
    assert_eq!(sb.state, SandboxState::Running);
    let stored = e.store.get(&sb.id).unwrap().unwrap();
    assert_eq!(stored.state, SandboxState::Running);
    assert!(stored.handle.is_some());
    let out =
        e.m.exec(
            &sb.id,
            serde_json::from_str::<ExecRequest>(r#"{"cmd":["echo","pooled"]}"#).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "pooled\n");

    let p = until(&e.m, "refilled", |p| p.ready == 2).await;
    assert_eq!((p.claimed, p.misses), (1, 0));
    // The claimed one left the pool: a second create gets another member.
    let sb2 = e.m.create(req("{}")).await.unwrap();
    assert_ne!(sb2.id, sb.id);
    assert!(present(&e.rt).contains(&sb2.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_fit_take_the_cold_path() {
    let e = env(1, 0);
    until(&e.m, "1 ready", |p| p.ready == 1).await;
    let members = present(&e.rt);
    for body in [
        r#"{"name":"web"}"#,
        r#"{"resources":{"memory_mb":128}}"#,
        r#"{"network":"open"}"#,
    ] {
        let sb = e.m.create(req(body)).await.unwrap();
        assert!(!members.contains(&sb.id), "{body} must not claim");
        assert_eq!(sb.state, SandboxState::Running);
    }
    let p = e.m.pools().remove(0);
    assert_eq!((p.ready, p.claimed, p.misses), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_init_died_is_never_handed_out() {
    let e = env(1, 0);
    until(&e.m, "1 ready", |p| p.ready == 1).await;
    let dead = present(&e.rt).into_iter().next().unwrap();
    e.rt.kill(&dead);
    let sb = e.m.create(req("{}")).await.unwrap();
    assert_ne!(sb.id, dead);
    assert!(!e.rt.is_present(&dead), "the dead member was cleaned up");
    assert!(e.rt.is_running(&sb.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_sweep_spares_members_but_reaps_a_previous_run_s() {
    let e = env(2, 0);
    until(&e.m, "2 ready", |p| p.ready == 2).await;
    let members = present(&e.rt);
    let report = e.m.sweep().await.unwrap();
    assert!(report.orphans.is_empty(), "{report:?}");
    assert_eq!(present(&e.rt), members);

    // A daemon that did not make them (a restart after a crash) destroys them as orphans.
    let dir = tempfile::tempdir().unwrap();
    let cfg = ManagerConfig::new(dir.path().to_path_buf());
    let other = SandboxManager::new(
        e.store.clone(),
        e.rt.clone(),
        FakeAgents::for_runtime(&e.rt),
        cfg,
    )
    .unwrap();
    let report = other.sweep().await.unwrap();
    let reaped: HashSet<String> = report.orphans.into_iter().collect();
    assert_eq!(reaped, members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_empties_the_pool_and_creates_go_cold() {
    // A floor no host reaches: the pool must stay empty and say why.
    let e = env(2, u64::MAX);
    let p = until(&e.m, "memory pressure", |p| p.memory_pressure).await;
    assert_eq!((p.ready, p.starting), (0, 0));
    assert!(present(&e.rt).is_empty());
    let sb = e.m.create(req("{}")).await.unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    let p = e.m.pools().remove(0);
    assert_eq!((p.ready, p.claimed, p.misses), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_destroys_idle_members_and_stops_refills() {
    let e = env(3, 0);
    until(&e.m, "3 ready", |p| p.ready == 3).await;
    let sb = e.m.create(req("{}")).await.unwrap();
    e.m.close_pools().await;
    let p = until(&e.m, "drained", |p| p.ready == 0 && p.starting == 0).await;
    assert_eq!(p.claimed, 1);
    assert_eq!(present(&e.rt), HashSet::from([sb.id.clone()]));
}
