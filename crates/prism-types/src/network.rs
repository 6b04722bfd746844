//! The network mode of a sandbox, parsed: `none`, `open`, or `allow=ENTRY,ENTRY,...` where an
//! entry is a CIDR (`10.1.0.0/16`, a bare address is a /32 or /128), a host:port pair
//! (`10.1.2.3:443`, `[fd00::1]:443`, `pypi.org:443`) or a domain name (`pypi.org`,
//! `*.github.com`). Wildcards that would open a whole top-level domain (`*`, `*.com`) are refused.

use std::fmt;
use std::net::IpAddr;

/// A parsed network mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Loopback only (the default).
    None,
    /// NATed egress, but never the host, link-local, private ranges or other sandboxes.
    Open,
    /// Only what is listed.
    Allow(Vec<AllowEntry>),
}

/// One entry of an `allow=` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address range (any port).
    Cidr { addr: IpAddr, prefix: u8 },
    /// One address or name, one port.
    HostPort { host: Host, port: u16 },
    /// A domain name (any port); `*.example.com` matches its subdomains.
    Domain(String),
}

/// The host of a host:port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Domain(String),
}

/// Why a network mode was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkSpecError {
    #[error("invalid network {0:?}: use none, open or allow=CIDR|HOST:PORT|DOMAIN,...")]
    Mode(String),
    #[error("allow list entry {0:?} is empty")]
    Empty(String),
    #[error("invalid CIDR {0:?}: use ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")]
    Cidr(String),
    #[error("invalid port in {0:?}: use a number from 1 to 65535")]
    Port(String),
    #[error("invalid domain name {0:?}")]
    Domain(String),
    #[error("wildcard {0:?} would allow a whole top-level domain: list names like *.example.com")]
    Wildcard(String),
}

impl NetworkMode {
    /// Parses a mode as given in `CreateSandboxRequest::network`.
    pub fn parse(s: &str) -> Result<Self, NetworkSpecError> {
        match s {
            "none" => return Ok(Self::None),
            "open" => return Ok(Self::Open),
            _ => {}
        }
        let list = s
            .strip_prefix("allow=")
            .ok_or_else(|| NetworkSpecError::Mode(s.to_string()))?;
        if list.trim().is_empty() {
            return Err(NetworkSpecError::Mode(s.to_string()));
        }
        list.split(',')
            .map(|e| AllowEntry::parse(e.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Allow)
    }
}

impl AllowEntry {
    /// Parses one entry of an allow list.
    pub fn parse(e: &str) -> Result<Self, NetworkSpecError> {
        if e.is_empty() {
            return Err(NetworkSpecError::Empty(e.to_string()));
        }
        if let Some((addr, prefix)) = e.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| NetworkSpecError::Cidr(e.to_string()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = match prefix.parse() {
                Ok(p) if p <= max && prefix.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => return Err(NetworkSpecError::Cidr(e.to_string())),
            };
            return Ok(Self::Cidr { addr, prefix });
        }
        if let Ok(addr) = e.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Cidr { addr, prefix });
        }
        if let Some(rest) = e.strip_prefix('[') {
            let (addr, port) = rest
                .split_once("]:")
                .ok_or_else(|| NetworkSpecError::Cidr(e.to_string()))?;
            let addr = addr
                .parse()
                .map_err(|_| NetworkSpecError::Cidr(e.to_string()))?;
            return Ok(Self::HostPort {
                host: Host::Ip(addr),
                port: port_of(e, port)?,
            });
        }
        if let Some((host, port)) = e.rsplit_once(':') {
            let port = port_of(e, port)?;
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Domain(domain(host)?),
            };
            return Ok(Self::HostPort { host, port });
        }
        Ok(Self::Domain(domain(e)?))
    }
}

fn port_of(entry: &str, p: &str) -> Result<u16, NetworkSpecError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(NetworkSpecError::Port(entry.to_string())),
    }
}

/// A lower-cased domain name; `*.` is allowed only as the first label of a name with at least
/// two more labels.
fn domain(d: &str) -> Result<String, NetworkSpecError> {
    let lower = d.trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.contains('*') || lower == "*" {
        return Err(NetworkSpecError::Wildcard(d.to_string()));
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return Err(NetworkSpecError::Domain(d.to_string()));
    }
    if wild && labels.len() < 2 {
        return Err(NetworkSpecError::Wildcard(d.to_string()));
    }
    Ok(lower)
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Domain(d) => f.write_str(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_entries_parse() {
        assert_eq!(NetworkMode::parse("none"), Ok(NetworkMode::None));
        assert_eq!(NetworkMode::parse("open"), Ok(NetworkMode::Open));
        let m = NetworkMode::parse(
            "allow=10.0.0.0/8, 192.0.2.7,fd00::/8,10.1.2.3:443,[fd00::1]:80,PyPI.org:443,*.github.com",
        )
        .unwrap();
        let NetworkMode::Allow(e) = m else {
            panic!("{m:?}")
        };
        assert_eq!(e.len(), 7);
        assert_eq!(
            e[1],
            AllowEntry::Cidr {
                addr: "192.0.2.7".parse().unwrap(),
                prefix: 32
            }
        );
        assert_eq!(
            e[5],
            AllowEntry::HostPort {
                host: Host::Domain("pypi.org".into()),
                port: 443
            }
        );
        assert_eq!(e[6], AllowEntry::Domain("*.github.com".into()));
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        use NetworkSpecError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("weird", |e| matches!(e, E::Mode(_))),
            ("allow=", |e| matches!(e, E::Mode(_))),
            ("allow=10.0.0.0/33", |e| matches!(e, E::Cidr(_))),
            ("allow=10.0.0/8", |e| matches!(e, E::Cidr(_))),
            ("allow=fd00::/129", |e| matches!(e, E::Cidr(_))),
            ("allow=300.1.1.1/8", |e| matches!(e, E::Cidr(_))),
            ("allow=10.0.0.1:0", |e| matches!(e, E::Port(_))),
            ("allow=example.com:70000", |e| matches!(e, E::Port(_))),
            ("allow=*", |e| matches!(e, E::Wildcard(_))),
            ("allow=*.com", |e| matches!(e, E::Wildcard(_))),
            ("allow=a.*.com", |e| matches!(e, E::Wildcard(_))),
            ("allow=ex ample.com", |e| matches!(e, E::Domain(_))),
            ("allow=-bad.com", |e| matches!(e, E::Domain(_))),
            ("allow=a,,b.com", |e| matches!(e, E::Empty(_))),
        ];
        for (input, ok) in cases {
            let err = NetworkMode::parse(input).unwrap_err();
            assert!(ok(&err), "{input}: {err:?}");
        }
    }
}
