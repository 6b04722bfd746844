//! End-to-end test of name enforcement in `allow` mode: connections that only a listed name
//! opened go through the daemon's name proxy, which checks the TLS server name and every HTTP
//! request's host against the listed names and the addresses they resolved to. The test's
//! "internet" is a network namespace of its own (203.0.113.0/29) with an HTTP server and a
//! TLS-ish listener (records the bytes it got, no handshake) on each address, and its own
//! upstream DNS server on loopback.
#![allow(clippy::unwrap_used)]

mod nethosts;
mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use nethosts::{PROBE, TCP_DNS, TestHosts};
use prism_types::CreateSandboxRequest;
use support::Daemon;

/// argv: LOG then ADDR PORT KIND triples. KIND `http`: answers every request of a connection
/// with `hello <host>` and logs `http ADDR:PORT HOST`; `tls`: logs `tls ADDR:PORT HEX` of the
/// first bytes it got (within 2 s), then closes. Every accepted connection logs a line.
const SERVER: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], 'a', buffering=1)
lock = threading.Lock()
def note(s):
    with lock:
        log.write(s + '\n'); log.flush()
def http_conn(c, where):
    f = c.makefile('rb')
    seen = False
    while True:
        line = f.readline()
        if not line:
            break
        host = ''
        while True:
            l = f.readline()
            if l in (b'\r\n', b''):
                break
            k, _, v = l.decode().partition(':')
            if k.lower() == 'host':
                host = v.strip()
        seen = True
        note('http %s %s' % (where, host))
        body = ('hello %s\n' % host).encode()
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
    if not seen:
        note('http %s -' % where)
    c.close()
def tls_conn(c, where):
    c.settimeout(2)
    data = b''
    try:
        data = c.recv(16384)
    except Exception:
        pass
    note('tls %s %s' % (where, data.hex() or '-'))
    c.close()
def serve(a, p, kind):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, int(p))); s.listen(64)
    while True:
        c, _ = s.accept()
        t = http_conn if kind == 'http' else tls_conn
        threading.Thread(target=t, args=(c, '%s:%s' % (a, p)), daemon=True).start()
a = sys.argv[2:]
for i in range(0, len(a), 3):
    threading.Thread(target=serve, args=tuple(a[i:i + 3])).start()
"#;

/// In a sandbox, for each argument `KIND,IP,PORT,NAME[,NAME…]` in order: `http` sends one GET
/// per name on one connection and prints `STATUS first-line-of-body` per request (`EOF` when
/// the connection ended); `tls` sends a ClientHello with that server name and prints how it
/// ended. Errors print their class.
const CLIENT: &str = r#"
import socket, ssl, sys
def http(ip, port, hosts):
    s = socket.create_connection((ip, int(port)), 3)
    f = s.makefile('rb')
    out = []
    for h in hosts:
        s.sendall(('GET /x HTTP/1.1\r\nHost: %s\r\n\r\n' % h).encode())
        line = f.readline()
        if not line:
            out.append('EOF')
            break
        status = line.split()[1].decode()
        n = 0
        while True:
            l = f.readline()
            if l in (b'\r\n', b''):
                break
            k, _, v = l.decode().partition(':')
            if k.lower() == 'content-length':
                n = int(v)
        body = f.read(n).decode().strip().split('\n')[0]
        out.append(status + ' ' + body)
    s.close()
    return ' | '.join(out)
def tls(ip, port, name):
    s = socket.create_connection((ip, int(port)), 3)
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    try:
        c.wrap_socket(s, server_hostname=name).close()
        return 'handshake'
    except Exception as e:
        return type(e).__name__
for step in sys.argv[1:]:
    kind, ip, port, *names = step.split(',')
    try:
        r = http(ip, port, names) if kind == 'http' else tls(ip, port, names[0])
    except Exception as e:
        r = type(e).__name__
    print(step, '=>', r, flush=True)
"#;

async fn run(c: &prism_client::Client, sb: &str, script: &str, args: &[&str]) -> Vec<String> {
    nethosts::run_python(c, sb, script, args).await
}

/// `step => result` lines as a map.
fn results(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(" => "))
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect()
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Log lines written since `from` lines.
/// What the server logged for `peer` (`"http 203.0.113.2:80"`): the rest of each of its lines.
fn seen_by<'a>(seen: &'a [String], peer: &str) -> Vec<&'a str> {
    let prefix = format!("{peer} ");
    seen.iter()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn log_since(path: &std::path::Path, from: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(from)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_enforced_by_sni_and_host_towards_what_they_resolved_to() {
    if !support::root_or_skip("names_are_enforced_by_sni_and_host_towards_what_they_resolved_to") {
        return;
    }
    let mut hosts = TestHosts::new();
    let web = hosts.netns(
        "web",
        "203.0.113.1/29",
        &["203.0.113.2/29", "203.0.113.3/29", "203.0.113.4/29"],
    );
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("server.log");
    let mut args = vec![log.display().to_string()];
    let mut ready = Vec::new();
    for ip in ["203.0.113.2", "203.0.113.3", "203.0.113.4"] {
        for (port, kind) in [(80u16, "http"), (443, "tls")] {
            args.extend([ip.to_string(), port.to_string(), kind.to_string()]);
            ready.push(format!("{ip}:{port}").parse::<SocketAddr>().unwrap());
        }
    }
    hosts.spawn_script(&web, SERVER, &args, &ready);
    // The readiness checks were connections too: only what comes after them counts.
    let ready_lines = support::eventually(10, "the readiness connections logged", || {
        let log = log.clone();
        let want = ready.len();
        async move {
            let n = log_since(&log, 0).len();
            (n >= want).then_some(n)
        }
    })
    .await;
    let ip2 = Ipv4Addr::new(203, 0, 113, 2);
    let dns = nethosts::upstream_dns(vec![
        ("allowed.test", ip2),
        ("other.test", ip2),
        ("port.test", ip2),
        ("second.test", Ipv4Addr::new(203, 0, 113, 3)),
        ("cidr.test", Ipv4Addr::new(203, 0, 113, 4)),
        // A listed name that resolves to an address of the host itself.
        ("host.test", Ipv4Addr::new(203, 0, 113, 1)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), &format!("dns_upstream = \"{dns}\"")).await;
    let c = d.client.clone();
    let mode = "allow=allowed.test,second.test,port.test:80,cidr.test,host.test,203.0.113.4/32";
    let sb = c
        .create(&CreateSandboxRequest {
            name: Some("names".into()),
            network: Some(mode.into()),
            ..Default::default()
        })
        .await
        .unwrap();

    // Before resolving, nothing of the names is reachable; the CIDR is, with any host.
    let got = results(
        &run(
            &c,
            "names",
            CLIENT,
            &[
                "http,203.0.113.2,80,allowed.test",
                "http,203.0.113.4,80,other.test",
            ],
        )
        .await,
    );
    assert_ne!(
        got["http,203.0.113.2,80,allowed.test"], "200 hello allowed.test",
        "{got:?}"
    );
    assert_eq!(
        got["http,203.0.113.4,80,other.test"], "200 hello other.test",
        "{got:?}"
    );
    let resolved = run(
        &c,
        "names",
        PROBE,
        &[
            "dns:host.test",
            "dns:allowed.test",
            "dns:port.test",
            "dns:cidr.test",
            "dns:other.test",
        ],
    )
    .await;
    let resolved: BTreeMap<_, _> = resolved.iter().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(resolved["dns:allowed.test"], "203.0.113.2", "{resolved:?}");
    assert!(
        resolved["dns:other.test"].ends_with("error"),
        "{resolved:?}"
    );
    // DNS over TCP (one connection, two queries): same policy, and its answers open the
    // address for the proxy just as UDP ones do (second.test is resolved only here).
    let tcp = run(&c, "names", TCP_DNS, &["second.test", "other.test"]).await;
    assert_eq!(
        tcp,
        ["second.test 0 203.0.113.3", "other.test 5 -"],
        "{tcp:?}"
    );
    let from = log_since(&log, 0).len().max(ready_lines);

    let steps = [
        "http,203.0.113.2,80,allowed.test",
        "http,203.0.113.2,80,other.test",
        // A kept-alive connection cannot switch to another virtual host.
        "http,203.0.113.2,80,allowed.test,other.test,allowed.test",
        "http,203.0.113.2,80,port.test",
        "tls,203.0.113.2,443,other.test",
        // port.test is listed for port 80 only.
        "tls,203.0.113.2,443,port.test",
        // allowed.test never resolved to .3 (second.test did).
        "tls,203.0.113.3,443,allowed.test",
        "tls,203.0.113.2,443,allowed.test",
        "tls,203.0.113.3,443,second.test",
        // Listed as a CIDR too: not proxied, any host passes.
        "http,203.0.113.4,80,other.test",
    ];
    let got = results(&run(&c, "names", CLIENT, &steps).await);
    let r = |s: &str| got.get(s).map(String::as_str).unwrap_or("missing");
    assert_eq!(r(steps[0]), "200 hello allowed.test", "{got:?}");
    assert!(
        r(steps[1]).starts_with("403 prism: host \"other.test\" is not allowed"),
        "{got:?}"
    );
    let keep: Vec<&str> = r(steps[2]).split(" | ").collect();
    assert_eq!(keep[0], "200 hello allowed.test", "{got:?}");
    assert!(keep[1].starts_with("403 "), "{got:?}");
    assert_eq!(
        keep.get(2).copied(),
        Some("200 hello allowed.test"),
        "{got:?}"
    );
    assert_eq!(r(steps[3]), "200 hello port.test", "{got:?}");
    assert_eq!(r(steps[9]), "200 hello other.test", "{got:?}");

    // What the servers saw: the allowed requests and ClientHellos, nothing of the refused.
    let seen = log_since(&log, from);
    let http2 = seen_by(&seen, "http 203.0.113.2:80");
    assert_eq!(
        http2,
        ["allowed.test", "allowed.test", "allowed.test", "port.test"],
        "{seen:?}"
    );
    let tls2 = seen_by(&seen, "tls 203.0.113.2:443");
    assert_eq!(
        tls2.len(),
        1,
        "only the allowed ClientHello reaches .2: {seen:?}"
    );
    assert!(tls2[0].contains(&hex("allowed.test")), "{seen:?}");
    let tls3 = seen_by(&seen, "tls 203.0.113.3:443");
    assert_eq!(
        tls3.len(),
        1,
        "only second.test's ClientHello reaches .3: {seen:?}"
    );
    assert!(tls3[0].contains(&hex("second.test")), "{seen:?}");
    assert!(
        !seen.iter().any(|l| l.contains(&hex("other.test"))),
        "{seen:?}"
    );
    // Refusals are counted: two 403s and three closed ClientHellos.
    let n = c.metrics("names").await.unwrap().network.unwrap();
    assert_eq!(n.dns_dropped, 0, "{n:?}");
    assert_eq!(n.proxy_refused, 5, "{n:?}");
    let table = std::process::Command::new("nft")
        .args(["list", "table", "inet", &d.nft_table])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.contains(&format!("chain sbnat-{}", sb.id)), "{table}");

    // Neither the host's own address (even though a listed name resolved to it) nor the
    // proxy's port on the host end without a redirect is reachable; the proxy never sees them.
    let host_srv = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    host_srv.set_nonblocking(true).unwrap();
    let hp = host_srv.local_addr().unwrap().port();
    let ns = nethosts::nameserver(&c, "names").await;
    let to_host = format!("http,203.0.113.1,{hp},host.test");
    let to_proxy = format!("http,{ns},{},allowed.test", prism_net::PROXY_PORT);
    let got = results(&run(&c, "names", CLIENT, &[&to_host, &to_proxy]).await);
    for step in [&to_host, &to_proxy] {
        assert!(
            !got[step].starts_with("200") && !got[step].starts_with("403"),
            "{got:?}"
        );
    }
    assert!(
        host_srv.accept().is_err(),
        "the host's listener was reached"
    );
    let n = c.metrics("names").await.unwrap().network.unwrap();
    assert_eq!(n.proxy_refused, 5, "{n:?}");

    // A runtime change applies to the proxy's rules: now other.test, not allowed.test.
    c.set_network("names", "allow=other.test").await.unwrap();
    let again = run(&c, "names", PROBE, &["dns:other.test", "dns:allowed.test"]).await;
    assert!(
        again.contains(&"dns:other.test 203.0.113.2".to_string()),
        "{again:?}"
    );
    let got = results(
        &run(
            &c,
            "names",
            CLIENT,
            &[
                "http,203.0.113.2,80,other.test",
                "http,203.0.113.2,80,allowed.test",
            ],
        )
        .await,
    );
    assert_eq!(
        got["http,203.0.113.2,80,other.test"], "200 hello other.test",
        "{got:?}"
    );
    assert!(
        got["http,203.0.113.2,80,allowed.test"].starts_with("403 "),
        "{got:?}"
    );
    // `open` needs no proxy.
    c.set_network("names", "open").await.unwrap();
    let got = results(&run(&c, "names", CLIENT, &["http,203.0.113.2,80,allowed.test"]).await);
    assert_eq!(
        got["http,203.0.113.2,80,allowed.test"], "200 hello allowed.test",
        "{got:?}"
    );

    // E2B's PUT /sandboxes/{id}/network: allowOut + deny everything = allow mode, proxy included.
    let r = reqwest::Client::new()
        .put(format!("{}/sandboxes/{}/network", d.url(), sb.id))
        .json(&serde_json::json!({"allowOut": ["allowed.test"], "denyOut": ["0.0.0.0/0"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(c.get("names").await.unwrap().network, "allow=allowed.test");
    run(&c, "names", PROBE, &["dns:allowed.test"]).await;
    let got = results(
        &run(
            &c,
            "names",
            CLIENT,
            &[
                "http,203.0.113.2,80,allowed.test",
                "http,203.0.113.2,80,other.test",
            ],
        )
        .await,
    );
    assert_eq!(
        got["http,203.0.113.2,80,allowed.test"], "200 hello allowed.test",
        "{got:?}"
    );
    assert!(
        got["http,203.0.113.2,80,other.test"].starts_with("403 "),
        "{got:?}"
    );

    c.destroy("names").await.unwrap();
    let table = std::process::Command::new("nft")
        .args(["list", "table", "inet", &d.nft_table])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(!table.contains(&sb.id), "{table}");
    drop(hosts);
}
