//! The manager's use of [`SandboxNetwork`] on a recording fake: attach after start, detach on
//! stop and destroy, runtime mode changes, and the leftover cleanup.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, ready};
use prism_store::SqliteStore;
use prism_types::network::NetworkMode;
use prism_types::{CreateSandboxRequest, SandboxState};

use super::fake::{FakeAgents, FakeRuntime};
use super::network::{NetCounters, NetLeftovers, NetworkError, SandboxNetwork};
use super::*;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    attached: Mutex<BTreeSet<String>>,
    extra_ids: Mutex<Vec<String>>,
    links: Mutex<Vec<String>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl SandboxNetwork for Recorder {
    fn attach<'a>(
        &'a self,
        id: &'a str,
        _pid: u32,
        mode: &'a NetworkMode,
    ) -> BoxFuture<'a, Result<Option<Ipv4Addr>, NetworkError>> {
        let kind = match mode {
            NetworkMode::None => "none",
            NetworkMode::Open => "open",
            NetworkMode::Allow(_) => "allow",
        };
        self.calls
            .lock()
            .unwrap()
            .push(format!("attach {id} {kind}"));
        self.attached.lock().unwrap().insert(id.to_string());
        Box::pin(ready(Ok(Some(Ipv4Addr::new(100, 96, 0, 1)))))
    }

    fn detach<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        if self.attached.lock().unwrap().remove(id) {
            self.calls.lock().unwrap().push(format!("detach {id}"));
        }
        self.extra_ids.lock().unwrap().retain(|x| x != id);
        Box::pin(ready(Ok(())))
    }

    fn remove_link<'a>(&'a self, ifname: &'a str) -> BoxFuture<'a, Result<(), NetworkError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("remove_link {ifname}"));
        self.links.lock().unwrap().retain(|x| x != ifname);
        Box::pin(ready(Ok(())))
    }

    fn ifname(&self, id: &str) -> String {
        format!("if-{id}")
    }

    fn leftovers(&self) -> BoxFuture<'_, Result<NetLeftovers, NetworkError>> {
        let mut ids: Vec<String> = self.attached.lock().unwrap().iter().cloned().collect();
        ids.extend(self.extra_ids.lock().unwrap().iter().cloned());
        let links = self.links.lock().unwrap().clone();
        Box::pin(ready(Ok(NetLeftovers { ids, links })))
    }

    fn counters(&self, id: &str) -> Option<NetCounters> {
        self.attached
            .lock()
            .unwrap()
            .contains(id)
            .then(|| NetCounters {
                rx_bytes: 7,
                ..Default::default()
            })
    }
}

struct Env {
    _dir: tempfile::TempDir,
    net: Arc<Recorder>,
    m: SandboxManager,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(dir.path());
    let agents = FakeAgents::for_runtime(&rt);
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let m = SandboxManager::new(
        store,
        rt,
        agents,
        ManagerConfig::new(dir.path().to_path_buf()),
    )
    .unwrap();
    let net = Arc::new(Recorder::default());
    m.set_networking(net.clone());
    Env { _dir: dir, net, m }
}

fn req(json: &str) -> CreateSandboxRequest {
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn networked_sandboxes_are_attached_after_start_and_detached_when_they_go() {
    let e = env();
    let sb = e.m.create(req(r#"{"network":"open"}"#)).await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("attach {} open", sb.id)]);
    let m = e.m.metrics(&sb.id).await.unwrap();
    assert_eq!(m.network.map(|n| n.rx_bytes), Some(7));
    e.m.stop(&sb.id).await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("detach {}", sb.id)]);
    e.m.start(&sb.id).await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("attach {} open", sb.id)]);
    e.m.destroy(&sb.id).await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("detach {}", sb.id)]);
    // `none` attaches nothing.
    let quiet = e.m.create(req("{}")).await.unwrap();
    assert!(e.net.calls().is_empty());
    assert!(e.m.metrics(&quiet.id).await.unwrap().network.is_none());
}

#[tokio::test]
async fn the_mode_changes_at_runtime_and_is_recorded() {
    let e = env();
    let sb = e.m.create(req("{}")).await.unwrap();
    let got = e.m.set_network_mode(&sb.id, "open").await.unwrap();
    assert_eq!(got.network, "open");
    assert_eq!(e.net.calls(), vec![format!("attach {} open", sb.id)]);
    assert_eq!(e.m.get(&sb.id).await.unwrap().network, "open");
    e.m.set_network_mode(&sb.id, "allow=10.0.0.0/8")
        .await
        .unwrap();
    assert_eq!(e.net.calls(), vec![format!("attach {} allow", sb.id)]);
    e.m.set_network_mode(&sb.id, "none").await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("detach {}", sb.id)]);
    // A stopped sandbox only records it; the next start applies it.
    e.m.stop(&sb.id).await.unwrap();
    e.m.set_network_mode(&sb.id, "open").await.unwrap();
    assert!(e.net.calls().is_empty());
    e.m.start(&sb.id).await.unwrap();
    assert_eq!(e.net.calls(), vec![format!("attach {} open", sb.id)]);
    // Bad input.
    assert!(matches!(
        e.m.set_network_mode(&sb.id, "allow=*").await,
        Err(LifecycleError::InvalidRequest(_))
    ));
    assert!(matches!(
        e.m.set_network_mode("nope", "open").await,
        Err(LifecycleError::NotFound(_))
    ));
    e.m.destroy(&sb.id).await.unwrap();
    assert!(matches!(
        e.m.set_network_mode(&sb.id, "open").await,
        Err(LifecycleError::InvalidState(_))
    ));
}

#[tokio::test]
async fn leftovers_of_sandboxes_not_running_with_a_network_are_removed() {
    let e = env();
    let keep = e.m.create(req(r#"{"network":"open"}"#)).await.unwrap();
    let stopped = e.m.create(req(r#"{"network":"open"}"#)).await.unwrap();
    e.m.stop(&stopped.id).await.unwrap();
    e.net.calls();
    // What a crash can leave: rules of a stopped sandbox and of an unknown id, a link of the
    // stopped one, and a link nobody owns.
    e.net
        .extra_ids
        .lock()
        .unwrap()
        .extend([stopped.id.clone(), "gone".to_string()]);
    e.net
        .links
        .lock()
        .unwrap()
        .extend([format!("if-{}", stopped.id), "if-stranger".to_string()]);
    let mut removed = e.m.reconcile_network().await.unwrap();
    removed.sort();
    let mut want = vec![stopped.id.clone(), "gone".into(), "if-stranger".into()];
    want.sort();
    assert_eq!(removed, want);
    let calls = e.net.calls();
    assert!(
        calls.contains(&format!("remove_link if-{}", stopped.id)),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.contains(&keep.id)), "{calls:?}");
    assert_eq!(
        e.m.get(&keep.id).await.unwrap().state,
        SandboxState::Running
    );
    assert!(e.m.reconcile_network().await.unwrap().is_empty());
}
