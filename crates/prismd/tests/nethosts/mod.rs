//! Test hosts for the network tests: network namespaces of our own, each behind a veth from the
//! host, with tiny TCP servers in them (they stand for "the internet", "the internal network"
//! and "the metadata service"), and a tiny upstream DNS server on the host's loopback. Only
//! loopback and these namespaces are ever contacted. Everything is removed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prism_net::dns::wire;

/// Accepts connections on every ADDR PORT pair given and closes them.
const SERVER: &str = r#"
import socket, sys, threading
def serve(a, p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, int(p))); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
a = sys.argv[1:]
for i in range(0, len(a), 2):
    threading.Thread(target=serve, args=(a[i], a[i + 1])).start()
"#;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

pub struct TestHosts {
    pub tag: String,
    netns: Vec<String>,
    servers: Vec<Child>,
    links: Vec<String>,
}

impl TestHosts {
    pub fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        TestHosts {
            tag: format!("{:06x}", (t as u32 ^ std::process::id()) & 0xff_ffff),
            netns: Vec::new(),
            servers: Vec::new(),
            links: Vec::new(),
        }
    }

    /// A namespace `prism-test-<kind>-<tag>` reached through a veth whose host end has
    /// `host_cidr` and whose other end has `addrs` (CIDRs).
    pub fn netns(&mut self, kind: &str, host_cidr: &str, addrs: &[&str]) -> String {
        let ns = format!("prism-test-{kind}-{}", self.tag);
        let hl = format!("pt{}{}", &kind[..1], self.tag);
        run(&["ip", "netns", "add", &ns]);
        self.netns.push(ns.clone());
        run(&[
            "ip", "link", "add", &hl, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["ip", "addr", "add", host_cidr, "dev", &hl]);
        run(&["ip", "link", "set", &hl, "up"]);
        for a in addrs {
            run(&["ip", "-n", &ns, "addr", "add", a, "dev", "eth0"]);
        }
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let gw = host_cidr.split('/').next().unwrap();
        run(&["ip", "-n", &ns, "route", "add", "default", "via", gw]);
        ns
    }

    /// TCP servers in `ns` on each address:port; returns once they accept (from the host).
    pub fn serve(&mut self, ns: &str, on: &[SocketAddr]) {
        let args: Vec<String> = on
            .iter()
            .flat_map(|a| [a.ip().to_string(), a.port().to_string()])
            .collect();
        self.spawn_script(ns, SERVER, &args, on);
    }

    /// Run python3 `script` with `args` in `ns` (killed on drop); returns once each of `ready`
    /// accepts connections (from the host).
    pub fn spawn_script(&mut self, ns: &str, script: &str, args: &[String], ready: &[SocketAddr]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3", "-c", script]);
        cmd.args(args);
        self.servers.push(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for a in ready {
            while TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
                assert!(Instant::now() < deadline, "test server {a} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Remember a link to delete on drop.
    pub fn own_link(&mut self, name: &str) {
        self.links.push(name.to_string());
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for l in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", l])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The answer of the test DNS server to `query`.
fn dns_answer(names: &[(&'static str, Ipv4Addr)], query: &[u8]) -> Option<Vec<u8>> {
    let q = wire::parse_query(query)?;
    let found: Vec<Ipv4Addr> = names
        .iter()
        .filter(|(name, _)| *name == q.name)
        .map(|(_, a)| *a)
        .collect();
    let mut answer = wire::answer(query, &q, &found, 5);
    if found.is_empty() {
        answer[3] |= 3; // NXDOMAIN
    }
    Some(answer)
}

/// The host's own IPv4 addresses (`hostname -I`).
pub fn host_ipv4s() -> Vec<String> {
    let out = Command::new("hostname").arg("-I").output().unwrap().stdout;
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .filter(|ip| !ip.contains(':'))
        .map(String::from)
        .collect()
}

/// Runs `python3 -c script args…` in sandbox `sb`; it must exit 0. Returns its stdout lines.
pub async fn run_python(
    c: &prism_client::Client,
    sb: &str,
    script: &str,
    args: &[&str],
) -> Vec<String> {
    let mut cmd = vec!["python3".to_string(), "-c".into(), script.into()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    let req = prism_types::ExecRequest {
        cmd: Some(cmd),
        ..Default::default()
    };
    let r = c.exec(sb, &req).await.unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    r.stdout.lines().map(str::to_string).collect()
}

/// The nameserver a sandbox's /etc/resolv.conf names (its Prism DNS forwarder).
pub async fn nameserver(c: &prism_client::Client, sandbox: &str) -> String {
    let req = prism_types::ExecRequest {
        command: Some("cat /etc/resolv.conf".into()),
        ..Default::default()
    };
    let resolv = c.exec(sandbox, &req).await.unwrap().stdout;
    resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .unwrap_or_else(|| panic!("no nameserver in {sandbox}'s resolv.conf: {resolv:?}"))
        .trim()
        .to_string()
}

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port) answering `names` with their
/// addresses (TTL 5 s) and NXDOMAIN to anything else. Returns its address.
pub async fn upstream_dns(names: Vec<(&'static str, Ipv4Addr)>) -> SocketAddr {
    let (sock, tcp) = loop {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(sock.local_addr().unwrap()).await {
            break (sock, tcp);
        }
    };
    let addr = sock.local_addr().unwrap();
    let tcp_names = names.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut c, _)) = tcp.accept().await else {
                continue;
            };
            let names = tcp_names.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if c.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if c.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(a) = dns_answer(&names, &q) else {
                        return;
                    };
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if c.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, src)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Some(answer) = dns_answer(&names, &buf[..n]) else {
                continue;
            };
            let _ = sock.send_to(&answer, src).await;
        }
    });
    addr
}

/// In a sandbox: for each argument, `host:port` → connect (2 s) and print `ok` or the error's
/// class; `dns:NAME` → resolve and print the address or the error's class. All in parallel.
pub const PROBE: &str = r#"
import socket, sys, threading
res = {}
def probe(t):
    try:
        if t.startswith('dns:'):
            res[t] = socket.gethostbyname(t[4:])
        else:
            h, p = t.rsplit(':', 1)
            socket.create_connection((h, int(p)), 2).close()
            res[t] = 'ok'
    except Exception as e:
        res[t] = type(e).__name__
ts = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
[t.start() for t in ts]
[t.join() for t in ts]
for t in sys.argv[1:]:
    print(t, res[t])
"#;

/// In a sandbox: asks the sandbox's nameserver over TCP, all on one connection, for each
/// NAME argument; prints `NAME RCODE ADDRESS` (`-` without an answer) or `NAME ERRORCLASS`.
pub const TCP_DNS: &str = r#"
import socket, struct, sys
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
s = socket.create_connection((ns, 53), 3)
def rd(n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError()
        b += c
    return b
for i, name in enumerate(sys.argv[1:]):
    try:
        q = struct.pack('!HHHHHH', 0x1200 + i, 0x0100, 1, 0, 0, 0)
        q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\x00\x00\x01\x00\x01'
        s.sendall(struct.pack('!H', len(q)) + q)
        a = rd(struct.unpack('!H', rd(2))[0])
        ancount = struct.unpack('!H', a[6:8])[0]
        print(name, a[3] & 15, socket.inet_ntoa(a[-4:]) if ancount else '-', flush=True)
    except Exception as e:
        print(name, type(e).__name__, flush=True)
"#;

/// Sends `n` DNS queries to the sandbox's nameserver as fast as it can.
pub const FLOOD: &str = r#"
import socket, sys
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
q = bytes.fromhex('abcd01000001000000000000') + b'\x07allowed\x04test\x00\x00\x01\x00\x01'
for _ in range(int(sys.argv[1])):
    s.sendto(q, (ns, 53))
print('sent')
"#;
