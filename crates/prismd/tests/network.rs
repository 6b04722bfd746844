//! End-to-end tests of the network boundary as it stands: a sandbox in the default mode `none`
//! reaches its own loopback and nothing else (not the host's loopback, not the host's other
//! addresses), and malformed network modes are refused at create.
#![allow(clippy::unwrap_used)]

mod support;

use prism_types::{CreateSandboxRequest, ExecRequest};
use support::Daemon;

/// A python3 one-liner that prints `ok` if it can connect to argv[1]:argv[2] within 2 s, else
/// the error's class name.
const CONNECT: &str = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2); print('ok')\nexcept Exception as e:\n print(type(e).__name__)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_reaches_only_the_sandbox_loopback_and_bad_modes_are_refused() {
    if !support::root_or_skip(
        "none_mode_reaches_only_the_sandbox_loopback_and_bad_modes_are_refused",
    ) {
        return;
    }
    let _ = prism_images::registry::RegistryClient::new(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    // Host listeners: on loopback, and on every address (reachable through any host interface).
    let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_ips: Vec<String> = String::from_utf8(
        std::process::Command::new("hostname")
            .arg("-I")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .split_whitespace()
    .filter(|ip| !ip.contains(':'))
    .map(String::from)
    .collect();

    let sb = c
        .create(&CreateSandboxRequest {
            name: Some("netnone".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.network, "none");
    let connect = |host: String, port: u16| {
        let req = ExecRequest {
            cmd: Some(vec![
                "python3".into(),
                "-c".into(),
                CONNECT.into(),
                host,
                port.to_string(),
            ]),
            ..Default::default()
        };
        async move {
            c.exec("netnone", &req)
                .await
                .unwrap()
                .stdout
                .trim()
                .to_string()
        }
    };
    // The sandbox's own loopback works (a listener inside, reached from inside).
    let inside = c
        .exec(
            "netnone",
            &ExecRequest {
                cmd: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    "import socket\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\nc=socket.create_connection(s.getsockname()); print('ok')".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(inside.stdout.trim(), "ok", "{inside:?}");
    // The host's loopback is another namespace's: refused.
    let got = connect("127.0.0.1".into(), lo.local_addr().unwrap().port()).await;
    assert!(
        got.ends_with("Error"),
        "a none sandbox reached the host's loopback: {got}"
    );
    for ip in host_ips {
        let got = connect(ip.clone(), any.local_addr().unwrap().port()).await;
        assert!(
            got.ends_with("Error"),
            "a none sandbox reached the host at {ip}: {got}"
        );
    }
    let got = connect("169.254.169.254".into(), 80).await;
    assert!(
        got.ends_with("Error"),
        "a none sandbox reached the metadata address: {got}"
    );
    c.destroy("netnone").await.unwrap();

    // Malformed modes: 422 with the reason.
    let http = reqwest::Client::new();
    for (mode, says) in [
        ("allow=10.0.0.0/33", "CIDR"),
        ("allow=*", "wildcard"),
        ("allow=*.com", "wildcard"),
        ("allow=example.com:0", "port"),
        ("bogus", "use none, open or allow"),
    ] {
        let r = http
            .post(format!("{}/v1/sandboxes", d.url()))
            .json(&serde_json::json!({ "network": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{mode}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_request", "{mode}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{mode}: {e}");
    }
}
