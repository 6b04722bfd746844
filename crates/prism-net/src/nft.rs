//! The nftables policy, generated as `nft -f -` scripts from typed values.
//!
//! ```text
//! table inet prism
//!   map ifaces    { type ifname : verdict }   "prsb…" : jump sb-<id>     (forward hook)
//!   map ifaces_in { type ifname : verdict }   "prsb…" : jump sbin-<id>   (input hook)
//!   map ifaces_nat { type ifname : verdict }  "prsb…" : jump sbnat-<id>  (nat prerouting)
//!   chain forward  replies to the pool pass, new flows to it drop, then each sandbox's
//!                  traffic goes to its chain; anything else from the pool drops
//!   chain input    each sandbox's traffic to the host goes to its sbin chain; else drop
//!   chain prerouting (nat) each sandbox's new connections go to its sbnat chain
//!   chain sb-<id>    anti-spoofing, replies, then the mode (open: no private/host ranges;
//!                    allow: only the listed ranges and host:port pairs)
//!   chain sbnat-<id> allow: TCP to an address of the DNS sets (not listed as a range or
//!                    host:port, not the host's, not the pool) is redirected to the name
//!                    proxy on the host end ([`crate::proxy`]); nothing else
//!   chain sbin-<id>  anti-spoofing, replies, DNS and the redirected connections to its host
//!                    end, else drop
//!   set sb-<id>-d4   { ipv4_addr, timeout }                 addresses of allowed domains
//!   set sb-<id>-dp4  { ipv4_addr . inet_service, timeout }  addresses of allowed name:port
//! table ip prism_nat
//!   chain postrouting  masquerade of the pool towards anything outside it
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use crate::NetError;
use crate::addr::Pool;

/// Ranges an `open` sandbox never reaches: this-network, private, carrier-grade NAT (which
/// holds the default sandbox pool), loopback, link-local (cloud metadata), IETF protocol
/// assignments, benchmarking, multicast and reserved.
pub const DENIED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Whether a DNS answer for an allowed name may open `ip`. Never the ranges `open` denies
/// (link-local cloud metadata, loopback, private and special ranges, the sandbox pool): a name
/// whose DNS the sandbox's code controls (a wildcard-DNS service, a rebinding domain) must not
/// turn into a way to the metadata service or the internal network. Private addresses are
/// reached by listing their CIDR.
pub fn name_may_open(ip: Ipv4Addr) -> bool {
    let ip = u32::from(ip);
    !DENIED_V4.iter().any(|range| {
        let Some((net, bits)) = range.split_once('/') else {
            return false;
        };
        match (net.parse::<Ipv4Addr>(), bits.parse::<u32>()) {
            (Ok(net), Ok(bits)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                ip & mask == u32::from(net) & mask
            }
            _ => false,
        }
    })
}

/// The same for IPv6 (sandboxes have no IPv6 address today; kept for the day they do).
pub const DENIED_V6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// What one sandbox may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Anything but the denied ranges, the host and other sandboxes.
    Open,
    /// Only these.
    Allow {
        cidrs: Vec<(IpAddr, u8)>,
        host_ports: Vec<(IpAddr, u16)>,
    },
}

/// The listed ranges and host:port pairs of a policy.
type Listed<'a> = (&'a [(IpAddr, u8)], &'a [(IpAddr, u16)]);

impl Policy {
    fn listed(&self) -> Listed<'_> {
        match self {
            Policy::Open => (&[], &[]),
            Policy::Allow { cidrs, host_ports } => (cidrs, host_ports),
        }
    }
}

/// Everything the rules of one sandbox need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRules {
    pub id: String,
    pub ifname: String,
    pub host: Ipv4Addr,
    pub sandbox: Ipv4Addr,
    pub policy: Policy,
    /// Accept DNS queries to the host end (the Prism forwarder listens there).
    pub dns: bool,
    /// `allow` with names: the port of the name proxy on the host end, where TCP to the
    /// addresses of the DNS sets is redirected.
    pub proxy_port: Option<u16>,
}

pub fn chain(id: &str) -> String {
    format!("sb-{id}")
}
pub fn chain_in(id: &str) -> String {
    format!("sbin-{id}")
}
pub fn chain_nat(id: &str) -> String {
    format!("sbnat-{id}")
}
pub fn set_d4(id: &str) -> String {
    format!("sb-{id}-d4")
}
pub fn set_dp4(id: &str) -> String {
    format!("sb-{id}-dp4")
}

/// The base of table `inet {table}` (and `ip {table}_nat`): created if missing, base chains
/// rewritten (sandbox chains, maps and sets are kept, so this is safe while sandboxes run).
/// The base rules only concern addresses of `pool`, so daemons with their own tables and
/// pools do not disturb each other.
pub fn base_script(table: &str, pool: &Pool) -> String {
    let p = pool.cidr();
    let t = format!("inet {table}");
    let n = format!("ip {table}_nat");
    format!(
        "add table {t}
add map {t} ifaces {{ type ifname : verdict; }}
add map {t} ifaces_in {{ type ifname : verdict; }}
add map {t} ifaces_nat {{ type ifname : verdict; }}
add chain {t} forward {{ type filter hook forward priority 0; policy accept; }}
add chain {t} input {{ type filter hook input priority 0; policy accept; }}
add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
flush chain {t} forward
flush chain {t} input
flush chain {t} prerouting
add rule {t} forward ip daddr {p} ct state established,related accept
add rule {t} forward ip daddr {p} drop
add rule {t} forward iifname vmap @ifaces
add rule {t} forward ip saddr {p} drop
add rule {t} input iifname vmap @ifaces_in
add rule {t} input ip saddr {p} drop
add rule {t} prerouting iifname vmap @ifaces_nat
add table {n}
add chain {n} postrouting {{ type nat hook postrouting priority 100; policy accept; }}
flush chain {n} postrouting
add rule {n} postrouting ip saddr {p} ip daddr != {p} masquerade
"
    )
}

/// Create or replace the chains and sets of one sandbox and hook them to its interface.
pub fn sandbox_script(table: &str, r: &SandboxRules, pool: &Pool) -> String {
    let (c, cin, d4, dp4) = (chain(&r.id), chain_in(&r.id), set_d4(&r.id), set_dp4(&r.id));
    let cnat = chain_nat(&r.id);
    let t = format!("inet {table}");
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    for name in [&c, &cin, &cnat] {
        line(format!("add chain {t} {name}"));
        line(format!("flush chain {t} {name}"));
    }
    line(format!(
        "add set {t} {d4} {{ type ipv4_addr; flags timeout; }}"
    ));
    line(format!(
        "add set {t} {dp4} {{ type ipv4_addr . inet_service; flags timeout; }}"
    ));
    line(format!("flush set {t} {d4}"));
    line(format!("flush set {t} {dp4}"));
    line(format!("add rule {t} {c} meta nfproto ipv6 drop"));
    for name in [&c, &cin] {
        line(format!(
            "add rule {t} {name} ip saddr != {} drop",
            r.sandbox
        ));
        line(format!(
            "add rule {t} {name} ct state established,related accept"
        ));
    }
    match &r.policy {
        Policy::Open => {
            let mut v4: Vec<String> = DENIED_V4.iter().map(|x| x.to_string()).collect();
            v4.push(pool.cidr());
            line(format!(
                "add rule {t} {c} ip daddr {{ {} }} drop",
                v4.join(", ")
            ));
            line(format!(
                "add rule {t} {c} ip6 daddr {{ {} }} drop",
                DENIED_V6.join(", ")
            ));
            line(format!("add rule {t} {c} accept"));
        }
        Policy::Allow { cidrs, host_ports } => {
            for (addr, prefix) in cidrs {
                let fam = family(addr);
                line(format!(
                    "add rule {t} {c} {fam} daddr {addr}/{prefix} accept"
                ));
            }
            for (addr, port) in host_ports {
                let fam = family(addr);
                line(format!(
                    "add rule {t} {c} {fam} daddr {addr} meta l4proto {{ tcp, udp }} th dport {port} accept"
                ));
            }
            // Addresses of the DNS sets are not accepted here: their TCP was redirected to
            // the name proxy (prerouting), anything else to them (UDP, ICMP) drops.
            line(format!("add rule {t} {c} drop"));
        }
    }
    if let Some(port) = r.proxy_port {
        // Listed ranges and host:port pairs go their way unproxied; the host's own addresses
        // and the pool are never proxied (the filter chains drop them).
        let (cidrs, host_ports) = r.policy.listed();
        for (addr, prefix) in cidrs {
            let fam = family(addr);
            line(format!(
                "add rule {t} {cnat} {fam} daddr {addr}/{prefix} return"
            ));
        }
        for (addr, p) in host_ports {
            let fam = family(addr);
            line(format!(
                "add rule {t} {cnat} {fam} daddr {addr} tcp dport {p} return"
            ));
        }
        line(format!("add rule {t} {cnat} fib daddr type local return"));
        line(format!(
            "add rule {t} {cnat} ip daddr {} return",
            pool.cidr()
        ));
        line(format!(
            "add rule {t} {cnat} ip daddr @{d4} meta l4proto tcp redirect to :{port}"
        ));
        line(format!(
            "add rule {t} {cnat} ip daddr . tcp dport @{dp4} redirect to :{port}"
        ));
        line(format!(
            "add rule {t} {cin} ip daddr {} tcp dport {port} ct status dnat accept",
            r.host
        ));
    }
    if r.dns {
        line(format!(
            "add rule {t} {cin} ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 accept",
            r.host
        ));
    }
    line(format!("add rule {t} {cin} drop"));
    line(format!(
        "add element {t} ifaces {{ \"{}\" : jump {c} }}",
        r.ifname
    ));
    line(format!(
        "add element {t} ifaces_in {{ \"{}\" : jump {cin} }}",
        r.ifname
    ));
    line(format!(
        "add element {t} ifaces_nat {{ \"{}\" : jump {cnat} }}",
        r.ifname
    ));
    s
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// Add addresses a DNS answer allowed, each for `timeout_s`.
pub fn dns_elements_script(
    table: &str,
    id: &str,
    addrs: &[Ipv4Addr],
    port: Option<u16>,
    timeout_s: u32,
) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| match port {
            Some(p) => format!("{a} . {p} timeout {timeout_s}s"),
            None => format!("{a} timeout {timeout_s}s"),
        })
        .collect();
    let set = if port.is_some() {
        set_dp4(id)
    } else {
        set_d4(id)
    };
    let keys: Vec<String> = addrs
        .iter()
        .map(|a| match port {
            Some(p) => format!("{a} . {p}"),
            None => a.to_string(),
        })
        .collect();
    // add (a no-op when present), delete, add again: the timeout restarts in one transaction.
    format!(
        "add element inet {table} {set} {{ {keys} }}\ndelete element inet {table} {set} {{ {keys} }}\nadd element inet {table} {set} {{ {} }}\n",
        list.join(", "),
        keys = keys.join(", ")
    )
}

/// Run `nft -f -` with `script`.
pub fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::NftSpawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NetError::NftSpawn)?;
    }
    let out = child.wait_with_output().map_err(NetError::NftSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Names of the chains and sets in `table inet {table}` (empty when it does not exist).
pub fn list_objects(table: &str) -> Result<Vec<String>, NetError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", table])
        .output()
        .map_err(NetError::NftSpawn)?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| NetError::Nft(format!("unreadable nft -j output: {e}")))?;
    let mut names = Vec::new();
    if let Some(items) = v.get("nftables").and_then(|x| x.as_array()) {
        for item in items {
            for kind in ["chain", "set", "map"] {
                if let Some(n) = item
                    .get(kind)
                    .and_then(|o| o.get("name"))
                    .and_then(|n| n.as_str())
                {
                    names.push(n.to_string());
                }
            }
        }
    }
    Ok(names)
}

/// The sandbox id an object name belongs to (`sb-<id>`, `sbin-<id>`, `sb-<id>-d4`, …).
pub fn owner_of(name: &str) -> Option<&str> {
    let rest = name
        .strip_prefix("sbin-")
        .or_else(|| name.strip_prefix("sbnat-"))
        .or_else(|| name.strip_prefix("sb-"))?;
    Some(
        rest.strip_suffix("-dp4")
            .or_else(|| rest.strip_suffix("-d4"))
            .unwrap_or(rest),
    )
}

/// Remove everything of sandbox `id` among the listed `objects`: the map elements first (each
/// on its own, as they may be missing), then its chains and sets in one transaction.
pub fn remove(table: &str, id: &str, ifname: &str, objects: &[String]) -> Result<(), NetError> {
    for map in ["ifaces", "ifaces_in", "ifaces_nat"] {
        // Missing elements are fine: the script fails and nothing changes.
        let _ = apply(&format!(
            "delete element inet {table} {map} {{ \"{ifname}\" }}\n"
        ));
    }
    let mine: Vec<&String> = objects.iter().filter(|n| owner_of(n) == Some(id)).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let mut s = String::new();
    for n in &mine {
        if n.as_str() == chain(id) || n.as_str() == chain_in(id) || n.as_str() == chain_nat(id) {
            let _ = writeln!(
                s,
                "flush chain inet {table} {n}\ndelete chain inet {table} {n}"
            );
        }
    }
    for n in &mine {
        if n.as_str() == set_d4(id) || n.as_str() == set_dp4(id) {
            let _ = writeln!(s, "delete set inet {table} {n}");
        }
    }
    apply(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(policy: Policy) -> SandboxRules {
        SandboxRules {
            id: "abc".into(),
            ifname: "prsb00000000001".into(),
            host: Ipv4Addr::new(100, 96, 0, 1),
            sandbox: Ipv4Addr::new(100, 96, 0, 2),
            policy,
            dns: true,
            proxy_port: None,
        }
    }

    fn pool() -> Pool {
        Pool::parse("100.96.0.0/16").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn open_drops_private_ranges_then_accepts() {
        let s = sandbox_script("prism", &rules(Policy::Open), &pool());
        assert!(s.contains("add rule inet prism sb-abc meta nfproto ipv6 drop"));
        assert!(s.contains("add rule inet prism sb-abc ip saddr != 100.96.0.2 drop"));
        let drop = s.find("169.254.0.0/16").unwrap_or(usize::MAX);
        let accept = s.find("add rule inet prism sb-abc accept").unwrap_or(0);
        assert!(drop < accept, "{s}");
        assert!(s.contains("10.0.0.0/8") && s.contains("100.96.0.0/16"));
        assert!(s.contains("ip daddr 100.96.0.1 meta l4proto { tcp, udp } th dport 53 accept"));
        assert!(s.contains("\"prsb00000000001\" : jump sb-abc"));
    }

    #[test]
    fn allow_lists_only_what_was_given_and_ends_with_drop() {
        let s = sandbox_script(
            "prism",
            &rules(Policy::Allow {
                cidrs: vec![("10.99.0.0".parse().unwrap_or(IpAddr::from([0; 4])), 16)],
                host_ports: vec![("198.51.100.2".parse().unwrap_or(IpAddr::from([0; 4])), 8080)],
            }),
            &pool(),
        );
        assert!(s.contains("sb-abc ip daddr 10.99.0.0/16 accept"));
        assert!(s.contains("ip daddr 198.51.100.2 meta l4proto { tcp, udp } th dport 8080 accept"));
        assert!(!s.contains("169.254.0.0/16"));
        assert!(!s.contains("redirect"), "no names, no proxy: {s}");
        let last_sb = s
            .lines()
            .rfind(|l| l.starts_with("add rule inet prism sb-abc "))
            .unwrap_or_default();
        assert_eq!(last_sb, "add rule inet prism sb-abc drop");
    }

    #[test]
    fn names_are_redirected_to_the_proxy_after_the_listed_entries() {
        let mut r = rules(Policy::Allow {
            cidrs: vec![("198.51.100.7".parse().unwrap_or(IpAddr::from([0; 4])), 32)],
            host_ports: vec![("198.51.100.2".parse().unwrap_or(IpAddr::from([0; 4])), 8080)],
        });
        r.proxy_port = Some(3129);
        let s = sandbox_script("prism", &r, &pool());
        let nat: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("add rule inet prism sbnat-abc "))
            .collect();
        assert_eq!(
            nat,
            [
                "ip daddr 198.51.100.7/32 return",
                "ip daddr 198.51.100.2 tcp dport 8080 return",
                "fib daddr type local return",
                "ip daddr 100.96.0.0/16 return",
                "ip daddr @sb-abc-d4 meta l4proto tcp redirect to :3129",
                "ip daddr . tcp dport @sb-abc-dp4 redirect to :3129",
            ]
        );
        assert!(s.contains("sbin-abc ip daddr 100.96.0.1 tcp dport 3129 ct status dnat accept"));
        // The forward chain does not accept the DNS sets' addresses itself.
        assert!(!s.contains("sb-abc ip daddr @sb-abc-d4"), "{s}");
        assert!(s.contains("\"prsb00000000001\" : jump sbnat-abc"));
    }

    #[test]
    fn base_rules_only_concern_the_pool() {
        let s = base_script("prism_t1", &pool());
        assert!(s.contains("add rule inet prism_t1 forward ip daddr 100.96.0.0/16 drop"));
        assert!(s.contains("add rule ip prism_t1_nat postrouting ip saddr 100.96.0.0/16 ip daddr != 100.96.0.0/16 masquerade"));
        assert!(!s.contains("prsb"));
        assert!(s.contains("add rule inet prism_t1 prerouting iifname vmap @ifaces_nat"));
    }

    #[test]
    fn owners_are_found_from_object_names() {
        assert_eq!(owner_of("sb-abc"), Some("abc"));
        assert_eq!(owner_of("sbin-abc"), Some("abc"));
        assert_eq!(owner_of("sbnat-abc"), Some("abc"));
        assert_eq!(owner_of("sb-abc-d4"), Some("abc"));
        assert_eq!(owner_of("sb-abc-dp4"), Some("abc"));
        assert_eq!(owner_of("forward"), None);
        assert_eq!(owner_of("ifaces"), None);
    }

    #[test]
    fn dns_elements_carry_their_timeout() {
        let a = [Ipv4Addr::new(198, 51, 100, 7)];
        let s = dns_elements_script("prism", "x", &a, None, 60);
        assert!(
            s.ends_with("add element inet prism sb-x-d4 { 198.51.100.7 timeout 60s }\n"),
            "{s}"
        );
        assert!(
            s.contains("delete element inet prism sb-x-d4 { 198.51.100.7 }"),
            "{s}"
        );
        let s = dns_elements_script("prism", "x", &a, Some(443), 90);
        assert!(
            s.ends_with("add element inet prism sb-x-dp4 { 198.51.100.7 . 443 timeout 90s }\n"),
            "{s}"
        );
    }

    #[test]
    fn names_never_open_denied_ranges() {
        for ip in [
            "169.254.169.254",
            "10.1.2.3",
            "127.0.0.1",
            "192.168.0.1",
            "172.31.255.255",
            "100.96.0.5",
            "0.0.0.0",
            "239.1.1.1",
        ] {
            assert!(!name_may_open(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "198.51.100.3",
            "203.0.113.2",
            "1.1.1.1",
            "172.32.0.1",
            "11.0.0.1",
        ] {
            assert!(name_may_open(ip.parse().unwrap()), "{ip}");
        }
    }
}
