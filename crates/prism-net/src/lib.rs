//! prism-net: the host side of sandbox networking.
//!
//! A sandbox in `none` mode has only its loopback. For `open` and `allow=…`, [`Network`]
//! gives it a veth pair (host end `prsb…`, sandbox end `eth0` with a /30 of the pool and a
//! default route via the host end), IPv4 forwarding and masquerade, a per-sandbox nftables
//! chain that decides what it may reach ([`nft`]), and a DNS forwarder on its host end that
//! answers only allowed names and opens their addresses ([`dns`]). Everything is keyed by the
//! sandbox id, so [`Network::leftovers`] finds what belongs to sandboxes that are gone — also
//! after a crash of the daemon — and [`Network::detach`] removes it.
//!
//! ```no_run
//! # async fn f() -> Result<(), prism_net::NetError> {
//! use prism_net::{NetConfig, Network};
//! use prism_types::network::NetworkMode;
//! let net = Network::new(NetConfig::default()).await?;
//! let pid = 1234; // PID 1 of a running sandbox
//! let link = net.attach("sandbox-id", pid, &NetworkMode::Open).await?;
//! println!("nameserver {:?}", link.map(|l| l.nameserver));
//! net.detach("sandbox-id").await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod accept;
pub mod addr;
pub mod dns;
pub mod link;
pub mod nft;
pub mod proxy;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use prism_types::network::{AllowEntry, Host, NetworkMode};
use tokio::sync::Mutex;

pub use addr::{Pool, Slot, host_ifname};
pub use link::Counters;

/// Failures of host networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid address pool {0:?}: use A.B.C.D/N with N from 8 to 29, e.g. 100.96.0.0/16")]
    Pool(String),
    #[error("the address pool is exhausted")]
    PoolExhausted,
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot enter the sandbox's network namespace")]
    Netns(#[source] std::io::Error),
    #[error("netlink: cannot {op}: {message}")]
    Netlink { op: &'static str, message: String },
    #[error("link {0} disappeared while it was being set up")]
    Gone(String),
    #[error("cannot run nft (is the nftables package installed?)")]
    NftSpawn(#[source] std::io::Error),
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
    #[error("cannot listen for the name proxy on {addr}")]
    ProxyBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for DNS on {addr}")]
    DnsBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid nftables table name {0:?}: use 1-32 letters, digits or '_'")]
    Table(String),
    #[error("cannot enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("no upstream DNS server: set one or list a nameserver in /etc/resolv.conf")]
    NoUpstream,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Name of the nftables tables (`inet NAME`, `ip NAME_nat`).
    pub table: String,
    /// Where sandbox links get their /30s.
    pub pool: Pool,
    /// The resolver the forwarder asks (default: the first nameserver of /etc/resolv.conf).
    pub upstream_dns: Option<SocketAddr>,
    /// DNS queries per second each sandbox may send (bursts of twice that).
    pub dns_rate: u32,
    /// Port of the name proxy on each sandbox's host end (`allow` sandboxes with names).
    pub proxy_port: u16,
}

/// Default [`NetConfig::proxy_port`].
pub const PROXY_PORT: u16 = 3129;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            table: "prism".into(),
            pool: Pool::DEFAULT,
            upstream_dns: None,
            dns_rate: 100,
            proxy_port: PROXY_PORT,
        }
    }
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn nameserver_of(resolv_conf: &str) -> Option<SocketAddr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse::<IpAddr>().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// What a networked sandbox got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub host: Ipv4Addr,
    pub sandbox: Ipv4Addr,
    /// Where the sandbox's `/etc/resolv.conf` must point.
    pub nameserver: Ipv4Addr,
}

/// Traffic and DNS counters of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub link: Counters,
    pub dns_queries: u64,
    pub dns_refused: u64,
    pub dns_dropped: u64,
    /// Connections and requests the name proxy let through / refused.
    pub proxy_passed: u64,
    pub proxy_refused: u64,
}

/// Host networking of every sandbox.
pub struct Network {
    cfg: NetConfig,
    host: rtnetlink::Handle,
    dns: dns::Forwarders,
    proxies: proxy::Proxies,
    /// What each sandbox's DNS answered (shared by its forwarder and its proxy).
    resolved: std::sync::Mutex<HashMap<String, Arc<proxy::Resolved>>>,
    /// Serialises slot allocation and rule changes.
    lock: Mutex<()>,
    /// Ids that may have something here (attached by us, or found by `leftovers`): detaching
    /// any other id is free (no nft run), which keeps `none` sandboxes' stops cheap.
    known: std::sync::Mutex<HashSet<String>>,
}

fn known<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The firewall policy and the DNS policy of a mode (`None` for `none`).
pub fn policies(mode: &NetworkMode) -> Option<(nft::Policy, dns::DnsPolicy)> {
    match mode {
        NetworkMode::None => None,
        NetworkMode::Open => Some((nft::Policy::Open, dns::DnsPolicy::Open)),
        NetworkMode::Allow(entries) => {
            let (mut cidrs, mut host_ports, mut rules) = (Vec::new(), Vec::new(), Vec::new());
            for e in entries {
                match e {
                    AllowEntry::Cidr { addr, prefix } => cidrs.push((*addr, *prefix)),
                    AllowEntry::HostPort {
                        host: Host::Ip(ip),
                        port,
                    } => host_ports.push((*ip, *port)),
                    AllowEntry::HostPort {
                        host: Host::Domain(d),
                        port,
                    } => rules.push(dns::DomainRule {
                        pattern: d.clone(),
                        port: Some(*port),
                    }),
                    AllowEntry::Domain(d) => rules.push(dns::DomainRule {
                        pattern: d.clone(),
                        port: None,
                    }),
                }
            }
            Some((
                nft::Policy::Allow { cidrs, host_ports },
                dns::DnsPolicy::Allow(rules),
            ))
        }
    }
}

impl Network {
    /// Check nft, write the base of the table, enable IPv4 forwarding. Must run inside a
    /// tokio runtime.
    pub async fn new(cfg: NetConfig) -> Result<Self, NetError> {
        let upstream = match cfg.upstream_dns {
            Some(u) => u,
            None => std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| nameserver_of(&t))
                .ok_or(NetError::NoUpstream)?,
        };
        if cfg.table.is_empty()
            || cfg.table.len() > 32
            || !cfg
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(NetError::Table(cfg.table.clone()));
        }
        let base = nft::base_script(&cfg.table, &cfg.pool);
        blocking_nft(move || nft::apply(&base)).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetError::Forwarding)?;
        let host = link::host_handle()?;
        Ok(Network {
            dns: dns::Forwarders::new(&cfg.table, upstream, cfg.dns_rate),
            proxies: proxy::Proxies::new(cfg.proxy_port),
            resolved: std::sync::Mutex::new(HashMap::new()),
            cfg,
            host,
            lock: Mutex::new(()),
            known: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Give running sandbox `id` (PID 1 = `pid`) the network of `mode`, replacing what it had.
    /// `none` removes it. Returns what the sandbox got.
    pub async fn attach(
        &self,
        id: &str,
        pid: u32,
        mode: &NetworkMode,
    ) -> Result<Option<Attachment>, NetError> {
        let Some((policy, dns_policy)) = policies(mode) else {
            self.detach(id).await?;
            return Ok(None);
        };
        let _g = self.lock.lock().await;
        known(&self.known).insert(id.to_string());
        let ifname = host_ifname(id);
        let ours = self.links().await?;
        let existing = ours.iter().find(|(n, _)| *n == ifname).and_then(|(_, a)| {
            a.iter()
                .find_map(|ip| self.cfg.pool.slot_of_host(*ip))
                .and_then(|i| self.cfg.pool.slot(i))
        });
        let fresh = existing.is_none();
        let names = match &dns_policy {
            dns::DnsPolicy::Allow(rules) if !rules.is_empty() => Some(rules.clone()),
            _ => None,
        };
        let slot = match existing {
            Some(s) => s,
            None => {
                let taken: BTreeSet<u32> = ours
                    .iter()
                    .flat_map(|(_, a)| a.iter())
                    .filter_map(|ip| self.cfg.pool.slot_of_host(*ip))
                    .collect();
                addr::first_free(&self.cfg.pool, &taken).ok_or(NetError::PoolExhausted)?
            }
        };
        let rules = nft::SandboxRules {
            id: id.to_string(),
            ifname: ifname.clone(),
            host: slot.host,
            sandbox: slot.sandbox,
            policy,
            dns: true,
            proxy_port: names.as_ref().map(|_| self.proxies.port()),
        };
        let resolved = known(&self.resolved)
            .entry(id.to_string())
            .or_default()
            .clone();
        // The rules flush the DNS sets: forget what they held.
        resolved.clear();
        // The rules go in before the link exists: no packet of the sandbox is ever unfiltered.
        let script = nft::sandbox_script(&self.cfg.table, &rules, &self.cfg.pool);
        blocking_nft(move || nft::apply(&script)).await?;
        if fresh {
            // A link without its address is a half-made one: start over.
            let made = match link::delete(&self.host, &ifname).await {
                Ok(()) => link::create(&self.host, pid, &ifname, &slot).await,
                Err(e) => Err(e),
            };
            if let Err(e) = made {
                let _ = self.remove_locked(id).await;
                return Err(e);
            }
        }
        self.dns
            .ensure(
                id,
                SocketAddr::new(IpAddr::V4(slot.host), 53),
                slot.sandbox,
                dns_policy,
                resolved.clone(),
            )
            .await?;
        match names {
            Some(rules) => {
                self.proxies
                    .ensure(id, slot.host, slot.sandbox, rules, resolved)
                    .await?
            }
            None => self.proxies.stop(id),
        }
        tracing::info!(message = "sandbox network attached", sandbox_id = %id, %ifname, address = %slot.sandbox);
        Ok(Some(Attachment {
            ifname,
            host: slot.host,
            sandbox: slot.sandbox,
            nameserver: slot.host,
        }))
    }

    /// Remove the network of sandbox `id` (its link, chains, sets and DNS forwarder).
    /// Removing what is not there succeeds.
    pub async fn detach(&self, id: &str) -> Result<(), NetError> {
        if !known(&self.known).contains(id) {
            return Ok(());
        }
        let _g = self.lock.lock().await;
        self.remove_locked(id).await?;
        known(&self.known).remove(id);
        Ok(())
    }

    async fn remove_locked(&self, id: &str) -> Result<(), NetError> {
        self.dns.stop(id);
        self.proxies.stop(id);
        known(&self.resolved).remove(id);
        let ifname = host_ifname(id);
        link::delete(&self.host, &ifname).await?;
        let id = id.to_string();
        let table = self.cfg.table.clone();
        blocking_nft(move || {
            let objects = nft::list_objects(&table)?;
            nft::remove(&table, &id, &ifname, &objects)
        })
        .await
    }

    /// Our links: `prsb*` links with an address of our pool.
    async fn links(&self) -> Result<Vec<(String, Vec<Ipv4Addr>)>, NetError> {
        let mut all = link::list_ours(&self.host).await?;
        all.retain(|(_, a)| a.iter().any(|ip| self.cfg.pool.slot_of_host(*ip).is_some()));
        Ok(all)
    }

    /// Sandbox ids with rules or a DNS forwarder here, and every link of ours (by name).
    pub async fn leftovers(&self) -> Result<(Vec<String>, Vec<String>), NetError> {
        let _g = self.lock.lock().await;
        let table = self.cfg.table.clone();
        let objects = blocking_nft(move || nft::list_objects(&table)).await?;
        let mut ids: Vec<String> = objects
            .iter()
            .filter_map(|n| nft::owner_of(n))
            .map(str::to_string)
            .chain(self.dns.ids())
            .chain(self.proxies.ids())
            .collect();
        ids.sort();
        ids.dedup();
        known(&self.known).extend(ids.iter().cloned());
        let links = self.links().await?.into_iter().map(|(n, _)| n).collect();
        Ok((ids, links))
    }

    /// Delete one link by name (a missing one is fine).
    pub async fn remove_link(&self, ifname: &str) -> Result<(), NetError> {
        let _g = self.lock.lock().await;
        link::delete(&self.host, ifname).await
    }

    /// Counters of sandbox `id`, when it has a link.
    pub fn stats(&self, id: &str) -> Option<NetStats> {
        let link = link::counters(&host_ifname(id))?;
        let (dns_queries, dns_refused, dns_dropped) = self.dns.stats(id).unwrap_or_default();
        let (proxy_passed, proxy_refused) = self.proxies.stats(id).unwrap_or_default();
        Some(NetStats {
            link,
            dns_queries,
            dns_refused,
            dns_dropped,
            proxy_passed,
            proxy_refused,
        })
    }
}

/// Run blocking nft work off the async threads.
async fn blocking_nft<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Nft(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        assert_eq!(
            nameserver_of("# x\nsearch a\nnameserver 10.255.255.53\nnameserver 1.1.1.1\n"),
            Some("10.255.255.53:53".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(nameserver_of("search a\n"), None);
    }

    #[test]
    fn modes_become_firewall_and_dns_policies() {
        assert!(policies(&NetworkMode::None).is_none());
        let m = NetworkMode::parse("allow=10.99.0.0/16,198.51.100.2:8080,pub.test,*.corp.test:443")
            .unwrap_or_else(|e| panic!("{e}"));
        let Some((nft::Policy::Allow { cidrs, host_ports }, dns::DnsPolicy::Allow(rules))) =
            policies(&m)
        else {
            panic!("allow");
        };
        assert_eq!(cidrs.len(), 1);
        assert_eq!(
            host_ports,
            vec![("198.51.100.2".parse().unwrap_or(IpAddr::from([0; 4])), 8080)]
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].port, Some(443));
    }
}
