//! The Prism DNS forwarder: one UDP socket per networked sandbox, on its host end, port 53
//! (the sandbox's `/etc/resolv.conf` points there). For an `allow` sandbox it answers only the
//! listed names (others get REFUSED) and, before returning an answer, puts the answered IPv4
//! addresses into the sandbox's nftables sets with a timeout of the record's TTL (at least
//! [`MIN_TIMEOUT_S`]). An `open` sandbox's queries are forwarded as they are. Queries beyond a
//! per-sandbox rate are dropped and counted. The same forwarder answers DNS over TCP on the
//! same address (length-prefixed messages, RFC 1035 §4.2.2; asked upstream over TCP), with
//! the same policy, rate and sets.

mod tcp;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::proxy::Resolved;
use crate::{NetError, nft};

/// Shortest life of an address a DNS answer allowed (seconds).
pub const MIN_TIMEOUT_S: u32 = 60;
/// Longest (seconds).
pub const MAX_TIMEOUT_S: u32 = 86_400;
/// How long the upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries of one sandbox in flight to the upstream at once.
const MAX_IN_FLIGHT: usize = 64;

/// One allowed name: `pypi.org` (exactly) or `*.github.com` (its subdomains), any port or one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    pub pattern: String,
    pub port: Option<u16>,
}

impl DomainRule {
    pub fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => name == self.pattern,
        }
    }
}

/// What a sandbox's resolver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPolicy {
    /// Everything, nothing added to the sets (`open`).
    Open,
    /// Only these names (`allow`).
    Allow(Vec<DomainRule>),
}

impl DnsPolicy {
    /// `None`: refuse. `Some(ports)`: forward, then allow the answers on these ports
    /// (`None` in the list = any port).
    pub fn decide(&self, name: &str) -> Option<Vec<Option<u16>>> {
        match self {
            DnsPolicy::Open => Some(Vec::new()),
            DnsPolicy::Allow(rules) => {
                let ports: Vec<Option<u16>> = rules
                    .iter()
                    .filter(|r| r.matches(name))
                    .map(|r| r.port)
                    .collect();
                (!ports.is_empty()).then_some(ports)
            }
        }
    }
}

/// Counters of one sandbox's forwarder.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub refused: AtomicU64,
    /// Over the rate, malformed, or too many in flight.
    pub dropped: AtomicU64,
}

/// Token bucket: `rate` per second, bursts of `2 * rate`.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Bucket {
            tokens: rate * 2.0,
            rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Forwarder {
    listen: SocketAddr,
    policy: Arc<RwLock<DnsPolicy>>,
    stats: Arc<DnsStats>,
    task: tokio::task::AbortHandle,
}

/// Every sandbox's forwarder.
pub struct Forwarders {
    table: String,
    upstream: SocketAddr,
    rate: u32,
    map: Mutex<HashMap<String, Forwarder>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything one forwarder task works with.
struct Ctx {
    table: String,
    id: String,
    sock: UdpSocket,
    sandbox: Ipv4Addr,
    upstream: SocketAddr,
    policy: Arc<RwLock<DnsPolicy>>,
    stats: Arc<DnsStats>,
    in_flight: Arc<Semaphore>,
    /// Where allowed answers are recorded for the name proxy.
    resolved: Arc<Resolved>,
    /// The sandbox's query rate, shared by UDP and TCP.
    bucket: Mutex<Bucket>,
}

impl Ctx {
    fn take_token(&self) -> bool {
        lock(&self.bucket).take()
    }
}

impl Forwarders {
    /// Forwarders (for the sets of table `inet {table}`) to `upstream`, each taking at most `rate` queries a second.
    pub fn new(table: &str, upstream: SocketAddr, rate: u32) -> Self {
        Forwarders {
            table: table.to_string(),
            upstream,
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Serve sandbox `id` on `listen` with `policy` (replacing the policy if it is served),
    /// recording the answers it allows into `resolved` (kept when it is served already: the
    /// caller keeps one per sandbox).
    pub async fn ensure(
        &self,
        id: &str,
        listen: SocketAddr,
        sandbox: Ipv4Addr,
        policy: DnsPolicy,
        resolved: Arc<Resolved>,
    ) -> Result<(), NetError> {
        if let Some(f) = lock(&self.map).get(id)
            && f.listen == listen
            && !f.task.is_finished()
        {
            *f.policy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
            return Ok(());
        }
        self.stop(id);
        let sock = UdpSocket::bind(listen)
            .await
            .map_err(|source| NetError::DnsBind {
                addr: listen,
                source,
            })?;
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| NetError::DnsBind {
                addr: listen,
                source,
            })?;
        let policy = Arc::new(RwLock::new(policy));
        let stats = Arc::new(DnsStats::default());
        let ctx = Arc::new(Ctx {
            table: self.table.clone(),
            id: id.to_string(),
            sock,
            sandbox,
            upstream: self.upstream,
            policy: policy.clone(),
            stats: stats.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            resolved,
            bucket: Mutex::new(Bucket::new(self.rate)),
        });
        let task = tokio::spawn(async move {
            tokio::join!(serve(ctx.clone()), tcp::serve(ctx, tcp));
        })
        .abort_handle();
        lock(&self.map).insert(
            id.to_string(),
            Forwarder {
                listen,
                policy,
                stats,
                task,
            },
        );
        Ok(())
    }

    pub fn stop(&self, id: &str) {
        if let Some(f) = lock(&self.map).remove(id) {
            f.task.abort();
        }
    }

    /// (queries, refused, dropped) of sandbox `id`.
    pub fn stats(&self, id: &str) -> Option<(u64, u64, u64)> {
        lock(&self.map).get(id).map(|f| {
            (
                f.stats.queries.load(Ordering::Relaxed),
                f.stats.refused.load(Ordering::Relaxed),
                f.stats.dropped.load(Ordering::Relaxed),
            )
        })
    }

    pub fn ids(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }
}

async fn serve(ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match ctx.sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(message = "dns receive failed", sandbox_id = %ctx.id, %error);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if src.ip() != IpAddr::V4(ctx.sandbox) {
            continue;
        }
        ctx.stats.queries.fetch_add(1, Ordering::Relaxed);
        let query = &buf[..n];
        let parsed = wire::parse_query(query);
        let permit = ctx.in_flight.clone().try_acquire_owned();
        let (Some(q), true, Ok(permit)) = (parsed, ctx.take_token(), permit) else {
            ctx.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let decision = ctx
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .decide(&q.name);
        let Some(ports) = decision else {
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(message = "dns name refused", sandbox_id = %ctx.id, name = %q.name);
            let _ = ctx.sock.send_to(&wire::refused(query, &q), src).await;
            continue;
        };
        let ctx = ctx.clone();
        let query = query.to_vec();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = forward(&ctx, &query, &q, &ports).await {
                let _ = ctx.sock.send_to(&answer, src).await;
            }
        });
    }
}

/// Ask the upstream; for an `allow` sandbox, open the answered addresses before returning.
async fn forward(
    ctx: &Ctx,
    query: &[u8],
    q: &wire::Question,
    ports: &[Option<u16>],
) -> Option<Vec<u8>> {
    let bind: SocketAddr = if ctx.upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let up = UdpSocket::bind(bind).await.ok()?;
    up.connect(ctx.upstream).await.ok()?;
    up.send(query).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, up.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n >= 2 && buf[..2] == query[..2] {
            break buf[..n].to_vec();
        }
    };
    admit(ctx, q, ports, answer).await
}

/// For an `allow` sandbox, open the answered addresses (sets, the proxy's memory) before the
/// answer is returned; `None` when that failed (the answer must not be given).
async fn admit(
    ctx: &Ctx,
    q: &wire::Question,
    ports: &[Option<u16>],
    answer: Vec<u8>,
) -> Option<Vec<u8>> {
    if ports.is_empty() {
        return Some(answer);
    }
    let records = wire::answer_a_records(&answer).unwrap_or_default();
    if records.is_empty() {
        return Some(answer);
    }
    let ttl = records.iter().map(|r| r.1).min().unwrap_or(0);
    let timeout = ttl.clamp(MIN_TIMEOUT_S, MAX_TIMEOUT_S);
    // The answer is given as it is, but a name never opens a denied range.
    let addrs: Vec<Ipv4Addr> = records
        .iter()
        .map(|r| r.0)
        .filter(|a| nft::name_may_open(*a))
        .collect();
    if addrs.is_empty() {
        return Some(answer);
    }
    let mut script = String::new();
    for port in ports {
        script.push_str(&nft::dns_elements_script(
            &ctx.table, &ctx.id, &addrs, *port, timeout,
        ));
    }
    // The proxy may see a connection as soon as the set has the address: record first.
    ctx.resolved
        .record(&q.name, &addrs, Duration::from_secs(u64::from(timeout)));
    match tokio::task::spawn_blocking(move || nft::apply(&script)).await {
        Ok(Ok(())) => Some(answer),
        Ok(Err(error)) => {
            tracing::warn!(message = "dns answer not allowed in nftables", sandbox_id = %ctx.id, name = %q.name, %error);
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_names_and_wildcards_only_subdomains() {
        let exact = DomainRule {
            pattern: "pypi.org".into(),
            port: None,
        };
        assert!(exact.matches("pypi.org"));
        assert!(!exact.matches("files.pypi.org"));
        assert!(!exact.matches("evilpypi.org"));
        let wild = DomainRule {
            pattern: "*.github.com".into(),
            port: Some(443),
        };
        assert!(wild.matches("api.github.com"));
        assert!(wild.matches("a.b.github.com"));
        assert!(!wild.matches("github.com"));
        assert!(!wild.matches("evilgithub.com"));
        let p = DnsPolicy::Allow(vec![exact, wild]);
        assert_eq!(p.decide("pypi.org"), Some(vec![None]));
        assert_eq!(p.decide("api.github.com"), Some(vec![Some(443)]));
        assert_eq!(p.decide("example.com"), None);
        assert_eq!(DnsPolicy::Open.decide("example.com"), Some(vec![]));
    }

    #[test]
    fn the_bucket_refuses_beyond_its_burst() {
        let mut b = Bucket::new(10);
        let granted = (0..100).filter(|_| b.take()).count();
        assert!((20..=22).contains(&granted), "{granted}");
    }
}
