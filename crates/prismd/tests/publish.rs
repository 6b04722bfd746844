//! End-to-end test of published host ports (`prismctl run -p HOST_PORT:PORT`): the real prismd
//! listens on 127.0.0.1:HOST_PORT while the sandbox runs and forwards each connection to the
//! port inside it through its agent (the sandbox is in `none` mode: loopback only); a taken
//! host port is a 409; stop closes the port, start and a daemon restart open it again,
//! destroy frees it.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::Daemon;

/// In the sandbox: on each connection to 127.0.0.1:8000, answer `echo:` + what came.
const ECHO: &str = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 8000)); s.listen()\nwhile True:\n c,_=s.accept(); d=c.recv(100); c.sendall(b'echo:'+d); c.close()";

/// What a connection to 127.0.0.1:`port` answers to `ping` (None: refused or closed early).
fn ping(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"ping").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// Asserts a `409 port_in_use` answer; returns its body.
async fn port_in_use(r: reqwest::Response) -> serde_json::Value {
    assert_eq!(r.status(), 409);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "port_in_use", "{e}");
    e
}

async fn reachable(port: u16, what: &str) {
    let got = support::eventually(30, what, || async move {
        tokio::task::spawn_blocking(move || ping(port))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(got, "echo:ping");
}

async fn closed(port: u16, what: &str) {
    support::eventually(30, what, || async move {
        tokio::task::spawn_blocking(move || TcpStream::connect(("127.0.0.1", port)).is_err())
            .await
            .unwrap()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_host_ports_forward_to_the_sandbox_and_follow_its_life() {
    if !support::root_or_skip("published_host_ports_forward_to_the_sandbox_and_follow_its_life") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path()).await;
    let host_port = support::free_port();
    let spec = format!("{host_port}:8000");
    let (code, out, err) = d.ctl(&[
        "run", "-d", "-p", &spec, "-p", "9000", "--name", "pubsb", "--", "python3", "-c", ECHO,
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{host_port}")),
        "run announces the host port: {err}"
    );
    reachable(host_port, "the published port answers").await;

    // Shown by inspect and ls.
    let sb = d.client.get("pubsb").await.unwrap();
    assert_eq!(sb.publish.len(), 1, "{sb:?}");
    assert_eq!(sb.publish[0].host_port, host_port);
    assert_eq!(sb.publish[0].port, 8000);
    assert_eq!(sb.publish[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(sb.ports, vec![9000]);
    let (_, ls, _) = d.ctl(&["ls"]);
    assert!(
        ls.contains(&format!("127.0.0.1:{host_port}->8000,9000")),
        "{ls}"
    );
    let (_, inspect, _) = d.ctl(&["inspect", "pubsb"]);
    assert!(inspect.contains("\"host_port\""), "{inspect}");

    // A taken host port: 409, and no sandbox is made.
    let http = reqwest::Client::new();
    let before = d.client.list_all(None, None).await.unwrap().len();
    let r = http
        .post(format!("{}/v1/sandboxes", d.url()))
        .json(&serde_json::json!({"name": "clash", "publish": [{"host_port": host_port, "port": 80}]}))
        .send()
        .await
        .unwrap();
    let e = port_in_use(r).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&host_port.to_string()),
        "{e}"
    );
    assert_eq!(d.client.list_all(None, None).await.unwrap().len(), before);
    let (code, _, err) = d.ctl(&["run", "-d", "-p", &format!("{host_port}:80")]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("port_in_use") || err.contains("cannot publish"),
        "{err}"
    );
    // Bad input: 422.
    let free = support::free_port();
    for bad in [
        serde_json::json!([{"host_port": 0, "port": 80}]),
        serde_json::json!([{"host_port": free, "port": 0}]),
        serde_json::json!([{"host_port": free, "port": 80}, {"host_port": free, "port": 81}]),
        serde_json::json!([{"host_port": free, "port": 80, "host_ip": "nope"}]),
        serde_json::json!([{"host_port": 70000, "port": 80}]),
    ] {
        let r = http
            .post(format!("{}/v1/sandboxes", d.url()))
            .json(&serde_json::json!({ "publish": bad }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(status == 422 || status == 400, "{bad}: {status} {e}");
        assert!(e["code"].is_string() && e["message"].is_string(), "{e}");
    }
    let (code, _, err) = d.ctl(&["run", "-d", "-p", "0:80"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("not a port"), "{err}");
    assert_eq!(d.client.list_all(None, None).await.unwrap().len(), before);

    // Stop closes the host port; start opens it again.
    d.client.stop("pubsb").await.unwrap();
    closed(host_port, "the host port closes on stop").await;
    // Taken meanwhile: start is a 409 and the sandbox stays stopped.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", host_port)).unwrap();
    let r = http
        .post(format!("{}/v1/sandboxes/pubsb/start", d.url()))
        .send()
        .await
        .unwrap();
    port_in_use(r).await;
    assert_eq!(
        d.client.get("pubsb").await.unwrap().state,
        prism_types::SandboxState::Stopped
    );
    drop(squatter);
    d.client.start("pubsb").await.unwrap();
    reachable(host_port, "the host port opens again on start").await;

    // A daemon crash: the restarted daemon opens it for the adopted sandbox.
    d.kill9();
    closed(host_port, "the host port dies with the daemon").await;
    let d2 = Daemon::start(dir.path()).await;
    reachable(host_port, "the host port after a daemon restart").await;

    // Destroy frees it: it can be bound again.
    d2.client.destroy("pubsb").await.unwrap();
    support::eventually(30, "the host port is free after destroy", || async move {
        std::net::TcpListener::bind(("127.0.0.1", host_port))
            .ok()
            .map(|_| ())
    })
    .await;
}
