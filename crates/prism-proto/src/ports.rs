//! The port-tunnel wire contract between the host and the agent: `GET /ports/{port}` with
//! `Connection: upgrade` and `Upgrade: prism-tcp`; the agent answers `101` once it has
//! connected to the port on the sandbox's loopback, and the connection then carries raw TCP
//! bytes both ways. A port nothing listens on is a Connect error `unavailable` (HTTP 503).

/// The `Upgrade` protocol token of a port tunnel.
pub const UPGRADE_PROTOCOL: &str = "prism-tcp";

/// Path prefix of tunnel requests.
pub const PATH_PREFIX: &str = "/ports/";

/// A port number that is not a TCP port a server can listen on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port {0:?}: use a number from 1 to 65535")]
pub struct InvalidPort(pub String);

/// Parses a port number (1..=65535).
pub fn parse_port(s: &str) -> Result<u16, InvalidPort> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(InvalidPort(s.to_string())),
    }
}

/// The port of a tunnel request path (`/ports/{port}`).
pub fn parse_port_path(path: &str) -> Result<u16, InvalidPort> {
    parse_port(path.strip_prefix(PATH_PREFIX).unwrap_or(path))
}

/// The tunnel request path of `port`.
pub fn port_path(port: u16) -> String {
    format!("{PATH_PREFIX}{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_only_in_range() {
        assert_eq!(parse_port("8000"), Ok(8000));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port_path("/ports/1"), Ok(1));
        for bad in ["0", "65536", "-1", "+80", "", "80a", "99999999999"] {
            assert!(parse_port(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(port_path(8000), "/ports/8000");
    }
}
