//! End-to-end tests of the port proxy: the real prismd, a real sandbox in the default network
//! mode `none` (loopback only), a server started inside it, reached through
//! `/v1/sandboxes/{id}/ports/{port}/...` over the agent's control channel.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use prism_types::CreateSandboxRequest;
use support::{Daemon, prismctl};
use tokio_tungstenite::tungstenite::Message;

/// A tiny HTTP/1.1 + WebSocket echo server for the sandbox's python3 (host's /usr through the
/// `base` template): `GET /big` answers 4 MiB, an `Upgrade: websocket` request gets a real
/// handshake and echoes text frames, anything else is echoed as JSON (method, target, body,
/// Host).
const SERVER: &str = r#"
import base64, hashlib, json, socket, socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode()
        method, target, _ = line.split(' ', 2)
        headers = {}
        while True:
            h = self.rfile.readline().decode().strip()
            if not h: break
            k, v = h.split(':', 1)
            headers[k.strip().lower()] = v.strip()
        if headers.get('upgrade', '').lower() == 'websocket':
            key = headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
            acc = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            self.wfile.write(('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n'
                'Connection: Upgrade\r\nSec-WebSocket-Accept: ' + acc + '\r\n\r\n').encode())
            while True:
                hd = self.rfile.read(2)
                if len(hd) < 2 or hd[0] & 0x0f == 8: return
                n = hd[1] & 0x7f
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                out = b'echo:' + data
                self.wfile.write(bytes([0x81, len(out)]) + out)
        body = self.rfile.read(int(headers.get('content-length', '0')))
        if target == '/big':
            out = b'x' * (4 << 20)
        else:
            out = json.dumps({'method': method, 'target': target, 'body': body.decode(),
                              'host': headers.get('host')}).encode()
        self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n'
            + b'Content-Length: ' + str(len(out)).encode() + b'\r\n\r\n' + out)
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_proxy_reaches_http_and_websocket_servers_in_a_sandbox_without_network() {
    if !support::root_or_skip(
        "port_proxy_reaches_http_and_websocket_servers_in_a_sandbox_without_network",
    ) {
        return;
    }
    let _ = prism_images::registry::RegistryClient::new(Default::default());
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    let req = CreateSandboxRequest {
        name: Some("web".into()),
        cmd: Some(vec![
            "python3".into(),
            "-c".into(),
            SERVER.into(),
            "8000".into(),
        ]),
        ports: vec![8000],
        ..Default::default()
    };
    let sb = c.create(&req).await.unwrap();
    assert_eq!(
        sb.network, "none",
        "the proxy must work without any network"
    );
    assert_eq!(sb.ports, vec![8000]);

    let http = reqwest::Client::new();
    let base = format!("{}/v1/sandboxes/web/ports", d.url());
    // The server needs a moment to bind: poll until the proxy stops answering 502.
    let echoed: serde_json::Value = support::eventually(30, "the sandbox server", || {
        let http = http.clone();
        let url = format!("{base}/8000/echo/a%20b?x=1&y=2");
        async move {
            let r = http.post(&url).body("hello").send().await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json().await.ok()
        }
    })
    .await;
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["target"], "/echo/a%20b?x=1&y=2");
    assert_eq!(echoed["body"], "hello");
    assert_eq!(echoed["host"], "localhost:8000");

    // Any method, and the bare port path maps to `/`.
    let r = http
        .put(format!("{base}/8000"))
        .body("x")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["method"].as_str(), v["target"].as_str()),
        (Some("PUT"), Some("/"))
    );

    // A large body streams through whole.
    let big = http.get(format!("{base}/8000/big")).send().await.unwrap();
    assert_eq!(big.status(), 200);
    assert_eq!(big.bytes().await.unwrap().len(), 4 << 20);

    // WebSocket through the same path.
    let ws_url = format!("ws://127.0.0.1:{}/v1/sandboxes/web/ports/8000/ws", d.port);
    let (mut ws, resp) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    assert_eq!(resp.status(), 101);
    for msg in ["ping", "second"] {
        ws.send(Message::text(msg)).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("echo:{msg}"));
    }
    drop(ws);

    // A port nobody listens on: 502 with a clear body.
    let r = http.get(format!("{base}/8001/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "port_not_listening", "{e}");
    assert!(e["message"].as_str().unwrap().contains("8001"), "{e}");

    // Ports out of range and unknown sandboxes.
    for bad in ["0", "65536", "http"] {
        let r = http.get(format!("{base}/{bad}/")).send().await.unwrap();
        assert_eq!(r.status(), 400, "port {bad}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_request");
    }
    let r = http
        .get(format!("{}/v1/sandboxes/nope/ports/8000/", d.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{}/v1/sandboxes", d.url()))
        .json(&serde_json::json!({"ports": [8000, 8000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = http
        .post(format!("{}/v1/sandboxes", d.url()))
        .json(&serde_json::json!({"ports": [70000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a port above 65535 is refused");

    // prismctl shows the URL.
    let out = Command::new(prismctl())
        .args(["--api", &d.url(), "port", "web"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!(
            "8000\t{}/v1/sandboxes/{}/ports/8000/",
            d.url(),
            sb.id
        )),
        "{stdout}"
    );
    let out = Command::new(prismctl())
        .args(["--api", &d.url(), "port", "web", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "port 0 was accepted");

    // A stopped sandbox's ports answer 409, not a hang.
    c.stop("web").await.unwrap();
    let r = http.get(format!("{base}/8000/")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    c.destroy("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_proxy_works_in_open_and_allow_modes_too() {
    if !support::root_or_skip("port_proxy_works_in_open_and_allow_modes_too") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    let http = reqwest::Client::new();
    for (name, mode) in [("webopen", "open"), ("weballow", "allow=198.51.100.0/24")] {
        let sb = c
            .create(&CreateSandboxRequest {
                name: Some(name.into()),
                cmd: Some(vec![
                    "python3".into(),
                    "-c".into(),
                    SERVER.into(),
                    "8000".into(),
                ]),
                network: Some(mode.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(sb.network, mode);
        let url = format!("{}/v1/sandboxes/{name}/ports/8000/hi", d.url());
        let echoed: serde_json::Value = support::eventually(30, "the sandbox server", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())?;
                r.json().await.ok()
            }
        })
        .await;
        assert_eq!(echoed["target"], "/hi", "{mode}");
        let ws_url = format!(
            "ws://127.0.0.1:{}/v1/sandboxes/{name}/ports/8000/ws",
            d.port
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        ws.send(Message::text("x")).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), "echo:x", "{mode}");
        c.destroy(name).await.unwrap();
    }
}
