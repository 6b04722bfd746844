//! Checks and normalisation of API requests before they reach the runtime: bad input is a typed
//! error with a sentence the user can act on, never a panic or an absurd cgroup value.

use std::collections::BTreeMap;

use prism_types::{
    CreateSandboxRequest, DEFAULT_NETWORK, DEFAULT_TEMPLATE, ExecRequest, Resources,
};

use super::LifecycleError;

/// Longest exec timeout a request may ask for (seconds).
pub const MAX_EXEC_TIMEOUT_S: u64 = 3600;
/// Exec timeout when the request names none (seconds).
pub const DEFAULT_EXEC_TIMEOUT_S: u64 = 60;
/// Largest TTL accepted when the daemon has no maximum lifetime (ten years).
const MAX_TTL_S: u64 = 10 * 365 * 24 * 3600;

fn invalid(msg: impl Into<String>) -> LifecycleError {
    LifecycleError::InvalidRequest(msg.into())
}

/// Whether `s` looks like a sandbox id (32 lowercase hex digits).
pub fn looks_like_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn name(name: &str) -> Result<(), LifecycleError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(invalid(format!(
            "invalid name {name:?}: use 1-63 letters, digits, '_', '.' or '-', starting with a \
             letter or digit"
        )));
    }
    if looks_like_id(name) {
        return Err(invalid(format!(
            "invalid name {name:?}: it looks like a sandbox id"
        )));
    }
    Ok(())
}

pub fn argv(what: &str, argv: &[String]) -> Result<(), LifecycleError> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(invalid(format!("{what} must name a program")));
    }
    if argv.len() > 4096 || argv.iter().map(String::len).sum::<usize>() > 256 * 1024 {
        return Err(invalid(format!("{what} is too long")));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

pub fn env(env: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    if env.len() > 1024 {
        return Err(invalid("too many environment variables (at most 1024)"));
    }
    for (k, v) in env {
        let mut b = k.bytes();
        let ok = b
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
            && k.len() <= 256;
        if !ok {
            return Err(invalid(format!("invalid environment variable name {k:?}")));
        }
        if v.contains('\0') || v.len() > 128 * 1024 {
            return Err(invalid(format!(
                "invalid value for environment variable {k}"
            )));
        }
    }
    Ok(())
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    if labels.len() > 64 {
        return Err(invalid("too many labels (at most 64)"));
    }
    for (k, v) in labels {
        let ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-/".contains(&c));
        if !ok {
            return Err(invalid(format!(
                "invalid label key {k:?}: use 1-63 letters, digits, '_', '.', '-' or '/'"
            )));
        }
        if v.len() > 255 || v.contains('\0') {
            return Err(invalid(format!(
                "label {k} has an invalid value (at most 255 bytes)"
            )));
        }
    }
    Ok(())
}

pub fn resources(r: &Resources) -> Result<(), LifecycleError> {
    if let Some(c) = r.cpus
        && (!c.is_finite() || !(0.01..=1024.0).contains(&c))
    {
        return Err(invalid(format!(
            "resources.cpus must be between 0.01 and 1024, not {c}"
        )));
    }
    let range = |what: &str, v: Option<u64>, lo: u64, hi: u64| match v {
        Some(v) if v < lo || v > hi => Err(invalid(format!(
            "resources.{what} must be between {lo} and {hi}, not {v}"
        ))),
        _ => Ok(()),
    };
    range("memory_mb", r.memory_mb, 16, 1 << 20)?;
    range("pids", r.pids, 1, 1 << 22)?;
    range("disk_mb", r.disk_mb, 1, 1 << 24)?;
    Ok(())
}

/// A TCP port a server in the sandbox can listen on (1..=65535).
pub fn port(p: u16) -> Result<(), LifecycleError> {
    if p == 0 {
        return Err(invalid("port 0 is not a port: use 1 to 65535".to_string()));
    }
    Ok(())
}

/// The exposed ports of a create request: each in range, no duplicates.
pub fn ports(ports: &[u16]) -> Result<(), LifecycleError> {
    let mut seen = std::collections::BTreeSet::new();
    for &p in ports {
        port(p)?;
        if !seen.insert(p) {
            return Err(invalid(format!("port {p} is listed twice")));
        }
    }
    Ok(())
}

/// The published ports of a create request: ports in range, a valid host address, no host
/// address and port twice.
pub fn publish(list: &[prism_types::PublishedPort]) -> Result<(), LifecycleError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in list {
        port(p.port)?;
        if p.host_port == 0 {
            return Err(invalid("host port 0 is not a port: use 1 to 65535"));
        }
        let ip = match &p.host_ip {
            Some(ip) => Some(ip.parse::<std::net::IpAddr>().map_err(|_| {
                invalid(format!(
                    "host address {ip:?} of a published port is not an IP address"
                ))
            })?),
            None => None,
        };
        if !seen.insert((ip, p.host_port)) {
            return Err(invalid(format!(
                "host port {} is published twice",
                p.host_port
            )));
        }
    }
    Ok(())
}

pub fn network(n: &str) -> Result<(), LifecycleError> {
    prism_types::network::NetworkMode::parse(n)
        .map(|_| ())
        .map_err(|e| invalid(e.to_string()))
}

/// A TTL in seconds, checked against the daemon's maximum lifetime (0 = unlimited).
pub fn ttl(what: &str, secs: u64, max_lifetime_s: u64) -> Result<(), LifecycleError> {
    let max = if max_lifetime_s == 0 {
        MAX_TTL_S
    } else {
        max_lifetime_s
    };
    if secs > max {
        return Err(invalid(format!(
            "{what} {secs} exceeds the maximum sandbox lifetime of {max} seconds"
        )));
    }
    Ok(())
}

/// Check a create request and fill in its defaults.
pub fn create(
    mut req: CreateSandboxRequest,
    default_timeout_s: u64,
    max_lifetime_s: u64,
) -> Result<CreateSandboxRequest, LifecycleError> {
    if let Some(n) = &req.name {
        name(n)?;
    }
    if let Some(cmd) = &req.cmd {
        argv("cmd", cmd)?;
    }
    env(&req.env)?;
    labels(&req.labels)?;
    resources(&req.resources)?;
    ports(&req.ports)?;
    publish(&req.publish)?;
    let timeout = req.timeout_s.unwrap_or(default_timeout_s);
    ttl("timeout_s", timeout, max_lifetime_s)?;
    if let Some(idle) = req.idle_timeout_s {
        if idle == 0 {
            return Err(invalid(
                "idle_timeout_s must be at least 1 (omit it for none)",
            ));
        }
        ttl("idle_timeout_s", idle, max_lifetime_s)?;
    }
    let network = req
        .network
        .take()
        .unwrap_or_else(|| DEFAULT_NETWORK.to_string());
    self::network(&network)?;
    req.network = Some(network);
    req.timeout_s = Some(timeout);
    if let Some(image) = &req.image {
        if req.template.is_some() {
            return Err(invalid(
                "give either `template` or `image`, not both (a template names its own image)",
            ));
        }
        if image.trim().is_empty() || image.len() > 512 {
            return Err(invalid(
                "image must be a reference like `registry/repo:tag` (at most 512 bytes)",
            ));
        }
    } else {
        req.template = Some(
            req.template
                .take()
                .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
        );
    }
    if let Some(cwd) = &req.cwd
        && !cwd.starts_with('/')
    {
        return Err(invalid(format!("cwd {cwd:?} must be an absolute path")));
    }
    if let Some(user) = &req.user
        && (user.is_empty() || user.len() > 64 || user.contains(char::is_whitespace))
    {
        return Err(invalid(format!(
            "user {user:?} must be a name, a uid or uid:gid"
        )));
    }
    Ok(req)
}

/// The argv an exec request runs.
pub fn exec_argv(
    cmd: Option<&[String]>,
    command: Option<&str>,
) -> Result<Vec<String>, LifecycleError> {
    match (cmd, command) {
        (Some(cmd), None) => {
            argv("cmd", cmd)?;
            Ok(cmd.to_vec())
        }
        (None, Some(c)) => {
            if c.contains('\0') || c.len() > 256 * 1024 {
                return Err(invalid("command contains a NUL byte or is too long"));
            }
            Ok(vec!["/bin/sh".into(), "-c".into(), c.to_string()])
        }
        (Some(_), Some(_)) => Err(invalid("give either cmd or command, not both")),
        (None, None) => Err(invalid("give cmd (argv) or command (a shell command line)")),
    }
}

/// Check a buffered exec request; returns its argv and timeout.
pub fn exec(req: &ExecRequest) -> Result<(Vec<String>, u64), LifecycleError> {
    let argv = exec_argv(req.cmd.as_deref(), req.command.as_deref())?;
    env(&req.env)?;
    let timeout = req.timeout_s.unwrap_or(DEFAULT_EXEC_TIMEOUT_S);
    if timeout == 0 || timeout > MAX_EXEC_TIMEOUT_S {
        return Err(invalid(format!(
            "timeout_s must be between 1 and {MAX_EXEC_TIMEOUT_S}, not {timeout}"
        )));
    }
    if let Some(cwd) = &req.cwd {
        path(cwd)?;
    }
    Ok((argv, timeout))
}

/// A path inside the sandbox.
pub fn path(p: &str) -> Result<(), LifecycleError> {
    if p.is_empty() || p.contains('\0') || p.len() > 4096 {
        return Err(invalid(format!("invalid path {p:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> CreateSandboxRequest {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn defaults_are_filled_in() {
        let r = create(req("{}"), 300, 86400).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.template.as_deref(), Some("base"));
        assert_eq!(r.timeout_s, Some(300));
        assert_eq!(r.network.as_deref(), Some("none"));
    }

    #[test]
    fn absurd_values_are_refused() {
        for bad in [
            r#"{"name":"-x"}"#,
            r#"{"name":"a b"}"#,
            r#"{"name":"0123456789abcdef0123456789abcdef"}"#,
            r#"{"cmd":[]}"#,
            r#"{"env":{"1X":"y"}}"#,
            r#"{"resources":{"cpus":0}}"#,
            r#"{"resources":{"cpus":100000}}"#,
            r#"{"resources":{"memory_mb":1}}"#,
            r#"{"resources":{"memory_mb":99999999999}}"#,
            r#"{"resources":{"pids":0}}"#,
            r#"{"timeout_s":999999999}"#,
            r#"{"idle_timeout_s":0}"#,
            r#"{"network":"weird"}"#,
            r#"{"labels":{"a=b":"c"}}"#,
        ] {
            let e = create(req(bad), 300, 86400);
            assert!(
                matches!(e, Err(LifecycleError::InvalidRequest(_))),
                "{bad} gave {e:?}"
            );
        }
    }

    #[test]
    fn reasonable_values_pass() {
        let r = create(
            req(
                r#"{"name":"web-1.a_b","cmd":["sleep","1"],"env":{"A_1":"x"},
                   "labels":{"team/x":"y"},"resources":{"cpus":0.5,"memory_mb":256,"pids":64},
                   "timeout_s":0,"idle_timeout_s":60,"network":"allow=10.0.0.0/8,example.com"}"#,
            ),
            300,
            86400,
        );
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn exec_needs_exactly_one_command_form() {
        let ok = |j: &str| exec(&serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(
            ok(r#"{"command":"echo hi"}"#).map(|x| x.0.len()).ok(),
            Some(3)
        );
        assert!(ok(r#"{"cmd":["true"]}"#).is_ok());
        assert!(ok(r#"{}"#).is_err());
        assert!(ok(r#"{"cmd":["a"],"command":"b"}"#).is_err());
        assert!(ok(r#"{"cmd":["a"],"timeout_s":0}"#).is_err());
        assert!(ok(r#"{"cmd":["a"],"timeout_s":100000}"#).is_err());
    }
}
