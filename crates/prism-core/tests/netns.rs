//! Network namespaces made ahead (`namespace/netpool.rs`), for real: a sandbox that starts in
//! one is isolated from the host and from other sandboxes, cannot configure its network (the
//! namespace belongs to the host's user namespace, so the sandbox's root has no capability in
//! it), and still serves on any port and pings over ICMP datagram sockets. Sandboxes that need
//! a namespace of their own (`/sys`, a kept `NET_ADMIN`) still get one.

mod support;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use prism_core::Runtime;
use prism_core::namespace::DEFAULT_NETNS_POOL;
use support::{Harness, harness};

/// Wait (with a deadline) until the runtime's pool is full, so the next start takes from it.
fn pool_full(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.runtime.netns_ready() < DEFAULT_NETNS_POOL {
        assert!(Instant::now() < deadline, "the netns pool never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// `(netns inode, inode of the user namespace owning the netns)` of process `pid`.
fn netns_of(pid: u32) -> (u64, u64) {
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("netns");
    let owner = prism_sys::netns::owner_userns_inode(ns.as_fd()).expect("NS_GET_USERNS");
    (inode(&format!("/proc/{pid}/ns/net")), owner)
}

/// Every line `key=value` of the script's output, as pairs.
fn fields(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the sandbox's root tries: configure links and addresses (ioctl, netlink through `ip`),
/// raw and packet sockets; and what must keep working: loopback is up, a server on port 80,
/// ICMP echo over a datagram socket, and nothing of the host's loopback is reachable.
const PROBE: &str = r#"
import errno, fcntl, socket, struct, subprocess, sys
def attempt(name, f):
    try:
        f()
        print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={errno.errorcode.get(e.errno, e.errno)}")
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR = 0x8913, 0x8914, 0x8916
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
print(f"lo_up={flags & 1}")
attempt("lo_down", lambda: fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags & ~1)))
addr = struct.pack("16sH2s4s8s", b"lo", socket.AF_INET, b"\0\0", socket.inet_aton("10.9.9.9"), b"\0" * 8)
attempt("set_addr", lambda: fcntl.ioctl(s, SIOCSIFADDR, addr))
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
for name, cmd in [
    ("ip_addr_add", ["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"]),
    ("ip_route_add", ["ip", "route", "add", "10.8.0.0/16", "dev", "lo"]),
    ("nft_add_table", ["nft", "add", "table", "ip", "evil"]),
]:
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(f"{name}={r.returncode} {'eperm' if 'Operation not permitted' in r.stderr else r.stderr.strip()}")
def port80():
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 80)); l.listen()
    c = socket.create_connection(("127.0.0.1", 80), timeout=5)
    a, _ = l.accept(); c.sendall(b"hi"); assert a.recv(2) == b"hi"
attempt("port80", port80)
def ping():
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); p.settimeout(5)
    p.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"prism", ("127.0.0.1", 0))
    data, _ = p.recvfrom(64)
    assert data[0] == 0 and data.endswith(b"prism"), data
attempt("ping", ping)
attempt("host_port", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5))
"#;

#[test]
fn a_sandbox_in_a_premade_namespace_cannot_configure_it_but_serves_and_pings() {
    let Some(h) = harness("premade_netns") else {
        return;
    };
    let host_userns = inode("/proc/self/ns/user");
    let host_netns = inode("/proc/self/ns/net");
    // A listener on the host's loopback that no sandbox may reach.
    let host_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let host_port = host_listener.local_addr().expect("addr").port().to_string();

    pool_full(&h);
    let (a, client_a) = h.start("pooled-a", Default::default());
    pool_full(&h);
    let (b, _client_b) = h.start("pooled-b", Default::default());
    let (ns_a, owner_a) = netns_of(a.pid);
    let (ns_b, owner_b) = netns_of(b.pid);
    // Both came from the pool: owned by the host's user namespace, not the sandbox's.
    assert_eq!(owner_a, host_userns);
    assert_eq!(owner_b, host_userns);
    assert_ne!(inode(&format!("/proc/{}/ns/user", a.pid)), host_userns);
    // Two sandboxes, two namespaces, neither the host's.
    assert_ne!(ns_a, ns_b);
    assert_ne!(ns_a, host_netns);
    assert_ne!(ns_b, host_netns);

    let out = h.run(&client_a, &["python3", "-c", PROBE, &host_port]);
    assert_eq!(out.exit_code, 0, "{out:?}");
    let f = fields(&out.stdout);
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("missing");
    assert_eq!(get("lo_up"), "1", "{out:?}");
    for denied in ["lo_down", "set_addr", "raw", "packet"] {
        assert_eq!(get(denied), "EPERM", "{denied}: {out:?}");
    }
    for denied in ["ip_addr_add", "ip_route_add", "nft_add_table"] {
        assert!(get(denied).ends_with(" eperm"), "{denied}: {out:?}");
        assert!(!get(denied).starts_with("0 "), "{denied}: {out:?}");
    }
    assert_eq!(get("port80"), "ok", "{out:?}");
    assert_eq!(get("ping"), "ok", "{out:?}");
    assert_ne!(
        get("host_port"),
        "ok",
        "the host's loopback was reached: {out:?}"
    );
    // Nothing changed either, seen from the host in the sandbox's namespace.
    let show = |args: &'static [&'static str]| {
        let out = prism_sys::netns::in_netns_of(a.pid, move || {
            std::process::Command::new("ip").args(args).output()
        })
        .expect("join")
        .expect("ip");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let links = show(&["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let addrs = show(&["-o", "-4", "addr", "show"]);
    assert!(!addrs.contains("10.9.9.9"), "{addrs}");
    let routes = show(&["-4", "route", "show", "table", "all"]);
    assert!(!routes.contains("10.8.0.0"), "{routes}");
    drop(host_listener);
}

#[test]
fn sandboxes_that_need_their_own_namespace_still_make_it() {
    let Some(h) = harness("own_netns") else {
        return;
    };
    let host_userns = inode("/proc/self/ns/user");
    pool_full(&h);
    // /sys: sysfs can only be mounted by the owner of the network namespace.
    let mut spec = h.spec("withsys", Default::default());
    spec.security.sysfs = true;
    let sys = h.runtime.start(&spec).expect("start with /sys");
    let (_, owner) = netns_of(sys.pid);
    assert_eq!(owner, inode(&format!("/proc/{}/ns/user", sys.pid)));
    assert_ne!(owner, host_userns);
    let client = prism_proto::AgentClient::new(&sys.agent_socket);
    let out = h.sh(
        &client,
        "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags",
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "lo", "only lo: {out:?}");
    // The launch brought lo up itself (IFF_UP in the flags).
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(flags & 1, 1, "{out:?}");
    h.destroy("withsys");

    // A kept NET_ADMIN: the sandbox owns its namespace and may configure it.
    let mut spec = h.spec("netadmin", Default::default());
    spec.security.capabilities.push("NET_ADMIN".into());
    let admin = h.runtime.start(&spec).expect("start with NET_ADMIN");
    let (_, owner) = netns_of(admin.pid);
    assert_ne!(owner, host_userns);
    let client = prism_proto::AgentClient::new(&admin.agent_socket);
    let out = h.sh(
        &client,
        "ip addr add 10.9.9.9/32 dev lo && ip -o addr show lo | grep -c 10.9.9.9",
    );
    assert_eq!(out.stdout.trim(), "1", "{out:?}");
    h.destroy("netadmin");
    // Neither took a namespace from the pool.
    assert_eq!(h.runtime.netns_ready(), DEFAULT_NETNS_POOL);
}

#[test]
fn an_empty_pool_falls_back_to_a_namespace_of_the_sandboxes_own() {
    let Some(h) = harness("no_pool") else {
        return;
    };
    let rt = h.runtime_in("nopool", |c| c.netns_pool = 0);
    let spec = h.spec("nopool", Default::default());
    let handle = rt.start(&spec).expect("start");
    let (_, owner) = netns_of(handle.pid);
    assert_eq!(owner, inode(&format!("/proc/{}/ns/user", handle.pid)));
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let out = h.run(
        &client,
        &[
            "python3",
            "-c",
            "import socket; l=socket.socket(); l.bind(('127.0.0.1', 80)); l.listen(); \
             socket.create_connection(('127.0.0.1', 80)); print('ok')",
        ],
    );
    assert_eq!(out.stdout.trim(), "ok", "{out:?}");
    rt.destroy("nopool").expect("destroy");
    assert!(rt.settle(support::SETTLE));
}
