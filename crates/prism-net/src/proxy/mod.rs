//! The name-checking transparent proxy of `allow` sandboxes.
//!
//! TCP from an `allow` sandbox to an address that only a listed *name* opened (the DNS sets,
//! see [`crate::nft`]) is redirected by nftables to this proxy, which listens on the sandbox's
//! host end. For each connection it reads the original destination (`SO_ORIGINAL_DST`), then
//! the first bytes:
//! - a TLS ClientHello: its SNI must be allowed (below), else the connection is closed before
//!   anything reaches the destination; then the bytes are spliced both ways;
//! - an HTTP/1.x request: every request's `Host` (and the authority of an absolute-form
//!   target) must be allowed, else the answer is `403`; allowed requests go to the original
//!   destination over one upstream connection (upgrades such as WebSocket are spliced);
//! - anything else is closed.
//!
//! A name is allowed for destination `ip:port` when a rule of the sandbox matches it (exactly,
//! or `*.x` for the subdomains of `x`, as the DNS side matches), the rule's port (if it has
//! one) is `port`, and the sandbox's DNS answered `ip` for a name the same rule matches (while
//! that answer lives). So a sandbox cannot name an allowed host in SNI/Host to reach another
//! address, nor reach a virtual host that shares an address with an allowed name.

mod http;
mod prefixed;
pub mod sniff;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::NetError;
use crate::dns::DomainRule;
use prefixed::Prefixed;
use sniff::Sniffed;

/// How long a client may take to send its ClientHello or request head.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read before a name must be known (a ClientHello or a request head).
pub const SNIFF_MAX: usize = 16 * 1024;
/// How long connecting to the original destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Proxied connections of one sandbox at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// (address, name) pairs remembered per sandbox; beyond that the soonest to expire goes.
const MAX_RESOLVED: usize = 8192;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The addresses a sandbox's DNS answered, by address: which names, until when.
#[derive(Debug, Default)]
pub struct Resolved {
    map: Mutex<HashMap<Ipv4Addr, HashMap<String, Instant>>>,
}

impl Resolved {
    /// `name` resolved to `addrs`, valid for `ttl`.
    pub fn record(&self, name: &str, addrs: &[Ipv4Addr], ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut m = lock(&self.map);
        for a in addrs {
            m.entry(*a).or_default().insert(name.to_string(), until);
        }
        let total: usize = m.values().map(HashMap::len).sum();
        if total > MAX_RESOLVED {
            let now = Instant::now();
            m.retain(|_, names| {
                names.retain(|_, t| *t > now);
                !names.is_empty()
            });
            let mut total: usize = m.values().map(HashMap::len).sum();
            while total > MAX_RESOLVED {
                let oldest = m
                    .iter()
                    .flat_map(|(ip, n)| n.iter().map(move |(name, t)| (*t, *ip, name.clone())))
                    .min();
                let Some((_, ip, name)) = oldest else { break };
                if let Some(n) = m.get_mut(&ip) {
                    n.remove(&name);
                    if n.is_empty() {
                        m.remove(&ip);
                    }
                }
                total -= 1;
            }
        }
    }

    /// The names that resolved to `ip` and have not expired.
    pub fn names_of(&self, ip: Ipv4Addr) -> Vec<String> {
        let now = Instant::now();
        lock(&self.map)
            .get(&ip)
            .map(|n| {
                n.iter()
                    .filter(|(_, t)| **t > now)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forget everything (the mode changed: the DNS sets were flushed too).
    pub fn clear(&self) {
        lock(&self.map).clear();
    }
}

/// Whether `name` may be used towards `dst` (see the module's documentation).
pub fn allows(rules: &[DomainRule], resolved: &Resolved, name: &str, dst: SocketAddrV4) -> bool {
    let answered = resolved.names_of(*dst.ip());
    rules.iter().any(|r| {
        r.matches(name)
            && r.port.is_none_or(|p| p == dst.port())
            && answered.iter().any(|m| r.matches(m))
    })
}

/// Counters of one sandbox's proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections (TLS) and requests (HTTP) let through.
    pub passed: AtomicU64,
    /// Connections and requests refused (unknown protocol, name not allowed, too many).
    pub refused: AtomicU64,
}

struct Ctx {
    id: String,
    sandbox: Ipv4Addr,
    host: Ipv4Addr,
    rules: Arc<RwLock<Vec<DomainRule>>>,
    resolved: Arc<Resolved>,
    stats: Arc<ProxyStats>,
}

impl Ctx {
    fn allows(&self, name: &str, dst: SocketAddrV4) -> bool {
        let rules = self
            .rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        allows(&rules, &self.resolved, name, dst)
    }

    fn refused(&self, why: &str, name: Option<&str>, dst: SocketAddrV4) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(message = "proxied connection refused", sandbox_id = %self.id, why, name = name.unwrap_or(""), %dst);
    }
}

struct Entry {
    listen: SocketAddr,
    rules: Arc<RwLock<Vec<DomainRule>>>,
    stats: Arc<ProxyStats>,
    task: tokio::task::AbortHandle,
}

/// Every sandbox's proxy, all on one port (each on its own host end).
pub struct Proxies {
    port: u16,
    map: Mutex<HashMap<String, Entry>>,
}

impl Proxies {
    pub fn new(port: u16) -> Self {
        Proxies {
            port,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The port the proxies listen on (where nftables redirects to).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve sandbox `id` (address `sandbox`) on `host:port` with `rules` (replacing the rules
    /// if it is served).
    pub async fn ensure(
        &self,
        id: &str,
        host: Ipv4Addr,
        sandbox: Ipv4Addr,
        rules: Vec<DomainRule>,
        resolved: Arc<Resolved>,
    ) -> Result<(), NetError> {
        let listen = SocketAddr::new(IpAddr::V4(host), self.port);
        if let Some(e) = lock(&self.map).get(id)
            && e.listen == listen
            && !e.task.is_finished()
        {
            *e.rules
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = rules;
            return Ok(());
        }
        self.stop(id);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| NetError::ProxyBind {
                addr: listen,
                source,
            })?;
        let rules = Arc::new(RwLock::new(rules));
        let stats = Arc::new(ProxyStats::default());
        let ctx = Arc::new(Ctx {
            id: id.to_string(),
            sandbox,
            host,
            rules: rules.clone(),
            resolved,
            stats: stats.clone(),
        });
        let task = tokio::spawn(serve(ctx, listener)).abort_handle();
        lock(&self.map).insert(
            id.to_string(),
            Entry {
                listen,
                rules,
                stats,
                task,
            },
        );
        Ok(())
    }

    /// Stop sandbox `id`'s proxy and every connection it carries.
    pub fn stop(&self, id: &str) {
        if let Some(e) = lock(&self.map).remove(id) {
            e.task.abort();
        }
    }

    /// (passed, refused) of sandbox `id`.
    pub fn stats(&self, id: &str) -> Option<(u64, u64)> {
        lock(&self.map).get(id).map(|e| {
            (
                e.stats.passed.load(Ordering::Relaxed),
                e.stats.refused.load(Ordering::Relaxed),
            )
        })
    }

    pub fn ids(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }
}

/// Accept until aborted; the connections live in a JoinSet, so aborting this task ends them.
async fn serve(ctx: Arc<Ctx>, listener: TcpListener) {
    let bounded = crate::accept::Bounded {
        what: "name proxy",
        sandbox_id: &ctx.id,
        sandbox: ctx.sandbox,
        max: MAX_CONNECTIONS,
    };
    let on_full = || {
        ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
    };
    crate::accept::serve(bounded, listener, on_full, |sock| {
        let ctx = ctx.clone();
        async move { handle(&ctx, sock).await }
    })
    .await;
}

async fn handle(ctx: &Arc<Ctx>, mut client: TcpStream) {
    let dst = match prism_sys::netns::original_dst(client.as_fd()) {
        Ok(d) if *d.ip() != ctx.host && !d.ip().is_loopback() && !d.ip().is_unspecified() => d,
        _ => return,
    };
    let mut buf = Vec::with_capacity(2048);
    let sniffed = tokio::time::timeout(SNIFF_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match sniff::sniff(&buf) {
                Sniffed::More if buf.len() < SNIFF_MAX => {}
                Sniffed::More => return Sniffed::Unknown,
                s => return s,
            }
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return Sniffed::Unknown,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or(Sniffed::Unknown);
    match sniffed {
        Sniffed::Tls(name) => {
            let Some(name) = name.filter(|n| ctx.allows(n, dst)) else {
                ctx.refused("tls server name", None, dst);
                return;
            };
            let Some(mut upstream) = connect(dst).await else {
                return;
            };
            ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(message = "proxied tls", sandbox_id = %ctx.id, %name, %dst);
            let mut client = Prefixed::new(buf, client);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Sniffed::Http => http::serve(ctx.clone(), Prefixed::new(buf, client), dst).await,
        Sniffed::More | Sniffed::Unknown => ctx.refused("unknown protocol", None, dst),
    }
}

async fn connect(dst: SocketAddrV4) -> Option<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, port: Option<u16>) -> DomainRule {
        DomainRule {
            pattern: p.into(),
            port,
        }
    }

    #[test]
    fn a_name_passes_only_towards_what_a_matching_name_resolved_to() {
        let r = Resolved::default();
        let ip = Ipv4Addr::new(198, 51, 100, 5);
        let other = Ipv4Addr::new(198, 51, 100, 6);
        r.record("allowed.test", &[ip], Duration::from_secs(60));
        r.record("api.gh.test", &[other], Duration::from_secs(60));
        let rules = vec![rule("allowed.test", None), rule("*.gh.test", Some(443))];
        let at = |a: Ipv4Addr, p| SocketAddrV4::new(a, p);
        assert!(allows(&rules, &r, "allowed.test", at(ip, 80)));
        assert!(allows(&rules, &r, "allowed.test", at(ip, 443)));
        // Not listed, or listed but never resolved to that address.
        assert!(!allows(&rules, &r, "other.test", at(ip, 80)));
        assert!(!allows(&rules, &r, "allowed.test", at(other, 443)));
        // A wildcard: any subdomain towards what a subdomain resolved to, on its port only.
        assert!(allows(&rules, &r, "api.gh.test", at(other, 443)));
        assert!(allows(&rules, &r, "raw.gh.test", at(other, 443)));
        assert!(!allows(&rules, &r, "api.gh.test", at(other, 80)));
        assert!(!allows(&rules, &r, "gh.test", at(other, 443)));
        // Expired answers open nothing; clear forgets.
        r.record("allowed.test", &[other], Duration::ZERO);
        assert!(!allows(&rules, &r, "allowed.test", at(other, 80)));
        r.clear();
        assert!(!allows(&rules, &r, "allowed.test", at(ip, 80)));
    }

    #[test]
    fn the_resolved_table_is_bounded() {
        let r = Resolved::default();
        for i in 0..(MAX_RESOLVED as u32 + 100) {
            r.record(
                &format!("n{i}.test"),
                &[Ipv4Addr::from(0x0a00_0000 + i)],
                Duration::from_secs(60 + u64::from(i)),
            );
        }
        let total: usize = lock(&r.map).values().map(HashMap::len).sum();
        assert_eq!(total, MAX_RESOLVED);
        // The soonest to expire went first.
        assert!(r.names_of(Ipv4Addr::from(0x0a00_0000)).is_empty());
        assert_eq!(
            r.names_of(Ipv4Addr::from(0x0a00_0000 + MAX_RESOLVED as u32 + 99)),
            vec![format!("n{}.test", MAX_RESOLVED + 99)]
        );
    }
}
