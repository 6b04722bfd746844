//! Network namespaces made ahead, through the daemon: an `open` sandbox (normally started in a
//! namespace the host made and owns) gets its link configured by the host, but its root can
//! neither reconfigure that link nor open raw or packet sockets to spoof or sniff; it still
//! serves on port 80. A sandbox with `/sys` owns its namespace and is networked the same way.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use prism_types::{CreateSandboxRequest, ExecRequest, SecurityOptions};
use support::Daemon;

const PROBE: &str = r#"
import errno, socket, subprocess
def attempt(name, f):
    try:
        f()
        print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP))
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
for name, cmd in [
    ("link_down", ["ip", "link", "set", "eth0", "down"]),
    ("addr_add", ["ip", "addr", "add", "100.127.255.254/32", "dev", "eth0"]),
    ("route_del", ["ip", "route", "del", "default"]),
]:
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(f"{name}={r.returncode}:{'eperm' if 'Operation not permitted' in r.stderr else r.stderr.strip()}")
r = subprocess.run(["ip", "-o", "-4", "addr", "show", "eth0"], capture_output=True, text=True)
print("eth0=" + " ".join(w for w in r.stdout.split() if "/" in w))
r = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True)
print("default=" + r.stdout.strip())
def port80():
    l = socket.socket(); l.bind(("0.0.0.0", 80)); l.listen()
    socket.create_connection(("127.0.0.1", 80), timeout=5)
attempt("port80", port80)
"#;

async fn probe(c: &prism_client::Client, sb: &str) -> HashMap<String, String> {
    let req = ExecRequest {
        cmd: Some(vec!["python3".into(), "-c".into(), PROBE.into()]),
        ..Default::default()
    };
    let out = c.exec(sb, &req).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_sandbox_cannot_reconfigure_or_spoof_its_link_but_serves() {
    if !support::root_or_skip("a_networked_sandbox_cannot_reconfigure_or_spoof_its_link") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    let pool_prefix = d.network_pool.rsplitn(3, '.').last().unwrap().to_string();
    c.create(&CreateSandboxRequest {
        name: Some("pooled".into()),
        network: Some("open".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = probe(c, "pooled").await;
    let get = |k: &str| got.get(k).cloned().unwrap_or_else(|| "missing".into());
    // The host configured the link in the sandbox's namespace...
    assert!(get("eth0").starts_with(&pool_prefix), "{got:?}");
    assert!(get("default").starts_with("default via "), "{got:?}");
    // ...which the sandbox's root cannot touch, nor go around with raw or packet sockets.
    assert_eq!(get("raw"), "EPERM", "{got:?}");
    assert_eq!(get("packet"), "EPERM", "{got:?}");
    for denied in ["link_down", "addr_add", "route_del"] {
        let v = get(denied);
        assert!(
            v.ends_with(":eperm") && !v.starts_with("0:"),
            "{denied}: {got:?}"
        );
    }
    assert_eq!(get("port80"), "ok", "{got:?}");
    // Unchanged afterwards.
    let again = probe(c, "pooled").await;
    assert_eq!(again.get("eth0"), got.get("eth0"));
    assert_eq!(again.get("default"), got.get("default"));

    // A sandbox with /sys makes its own namespace; the host networks it just the same, and
    // there its root keeps the default NET_RAW.
    c.create(&CreateSandboxRequest {
        name: Some("ownsys".into()),
        network: Some("open".into()),
        security: Some(SecurityOptions {
            sysfs: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let own = probe(c, "ownsys").await;
    let get = |k: &str| own.get(k).cloned().unwrap_or_else(|| "missing".into());
    assert!(get("eth0").starts_with(&pool_prefix), "{own:?}");
    assert_ne!(
        own.get("eth0"),
        got.get("eth0"),
        "two sandboxes, two addresses"
    );
    assert!(get("default").starts_with("default via "), "{own:?}");
    assert_eq!(get("raw"), "ok", "{own:?}");
    assert_eq!(get("port80"), "ok", "{own:?}");
    // Still no NET_ADMIN there.
    assert!(get("link_down").ends_with(":eperm"), "{own:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_netns_pool_0_every_sandbox_owns_its_namespace() {
    if !support::root_or_skip("with_netns_pool_0_every_sandbox_owns_its_namespace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), "netns_pool = 0").await;
    let c = &d.client;
    let pool_prefix = d.network_pool.rsplitn(3, '.').last().unwrap().to_string();
    c.create(&CreateSandboxRequest {
        name: Some("own".into()),
        network: Some("open".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let got = probe(c, "own").await;
    let get = |k: &str| got.get(k).cloned().unwrap_or_else(|| "missing".into());
    assert!(get("eth0").starts_with(&pool_prefix), "{got:?}");
    // Its own namespace: the default NET_RAW counts there (not NET_ADMIN, never kept).
    assert_eq!(get("raw"), "ok", "{got:?}");
    assert!(get("link_down").ends_with(":eperm"), "{got:?}");
    assert_eq!(get("port80"), "ok", "{got:?}");
}
