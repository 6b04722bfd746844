//! Layered configuration: command-line flags > environment (`PRISM_*`) > TOML file (`--config`)
//! > defaults.
//!
//! ```toml
//! listen = "127.0.0.1:8008"
//! state_dir = "/var/lib/prism"
//! runtime = "namespace"
//! default_timeout_s = 300       # TTL of sandboxes whose request names none (0 = none)
//! max_lifetime_s = 86400        # no sandbox lives longer (0 = unlimited)
//! log_max_bytes = 8388608       # per-sandbox output log budget
//! exec_output_limit = 1048576   # cap of stdout and of stderr of a buffered exec
//! janitor_interval_s = 5
//! pool_min_available_mb = 512   # pools empty themselves while MemAvailable is below this
//! fsync_state = false           # true: fsync every state commit (survives power loss; slower)
//! netns_pool = 2                # network namespaces made ahead for starts (0 = none)
//! spare_dirs = 2                # sandbox directories (and cgroups) made ahead for starts (0 = none)
//! fsync_sandboxes = false       # true: fsync inside sandboxes reaches the disk (slower teardowns)
//!
//! [[pools]]                     # warm pools: idle started sandboxes that create claims
//! template = "base"
//! size = 4
//! resources = { memory_mb = 512 }   # optional resource shape; requests must match it
//! auth = true                   # API keys (default: on unless listening on loopback)
//! [limits]                      # per key / per project, with auth on (docs/auth.md)
//! requests_per_s = 50
//! max_sandboxes = 10
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use prism_core::lifecycle::PoolConfig;
use serde::Deserialize;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8008";

/// prismd command line. Flags also read the environment variables named.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "prismd", version, about = "The Prism sandbox daemon")]
pub struct Flags {
    /// Address to serve the API on [default: 127.0.0.1:8008]
    #[arg(long, env = "PRISM_LISTEN")]
    pub listen: Option<String>,
    /// State directory (database, logs, sandboxes) [default: /var/lib/prism as root, else
    /// $XDG_STATE_HOME/prism]
    #[arg(long, env = "PRISM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long, env = "PRISM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Isolation backend.
    #[arg(long, env = "PRISM_RUNTIME")]
    pub runtime: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PRISM_LOG_JSON")]
    pub log_json: bool,
    /// Require API keys even on a loopback address.
    #[arg(long, env = "PRISM_AUTH")]
    pub auth: bool,
    /// Allow serving WITHOUT authentication on a non-loopback address (anyone who reaches the
    /// port controls every sandbox).
    #[arg(long)]
    pub insecure: bool,
    /// Warm pool TEMPLATE=SIZE (repeatable; replaces the file's pools), e.g. `--pool base=4`.
    #[arg(long = "pool", env = "PRISM_POOLS", value_delimiter = ',')]
    pub pools: Vec<String>,
    /// Resolver the sandboxes' DNS forwarder asks, ADDR[:PORT] [default: the first nameserver
    /// of /etc/resolv.conf]
    #[arg(long, env = "PRISM_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,
}

/// One `[[pools]]` entry of the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub template: String,
    pub size: usize,
    #[serde(default)]
    pub resources: prism_types::Resources,
}

/// The file layer. Unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub runtime: Option<String>,
    pub default_timeout_s: Option<u64>,
    pub max_lifetime_s: Option<u64>,
    pub log_max_bytes: Option<u64>,
    pub exec_output_limit: Option<usize>,
    pub janitor_interval_s: Option<u64>,
    pub agent_path: Option<PathBuf>,
    pub cgroup_parent: Option<String>,
    pub stop_sandboxes_on_shutdown: Option<bool>,
    #[serde(default)]
    pub pools: Vec<FilePool>,
    pub pool_min_available_mb: Option<u64>,
    pub fsync_state: Option<bool>,
    pub netns_pool: Option<usize>,
    pub spare_dirs: Option<usize>,
    pub fsync_sandboxes: Option<bool>,
    pub auth: Option<bool>,
    pub limits: Option<crate::auth::Limits>,
    /// Host networking for `open`/`allow` sandboxes (default true; needs root and nft).
    pub networking: Option<bool>,
    /// IPv4 range of the sandboxes' /30 links (default 100.96.0.0/16).
    pub network_pool: Option<String>,
    /// Name of Prism's nftables tables (default `prism`: `inet prism`, `ip prism_nat`).
    pub nft_table: Option<String>,
    pub dns_upstream: Option<String>,
    /// DNS queries per second per sandbox (default 100, bursts of twice that).
    pub dns_rate: Option<u32>,
    /// Port of the name proxy on each `allow` sandbox's host end (default 3129).
    pub proxy_port: Option<u16>,
    /// Host address published ports listen on when a publish does not name one (default
    /// 127.0.0.1).
    pub publish_address: Option<String>,
}

/// Host networking settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSettings {
    pub enabled: bool,
    pub pool: String,
    pub table: String,
    pub dns_upstream: Option<std::net::SocketAddr>,
    pub dns_rate: u32,
    pub proxy_port: u16,
    pub publish_address: std::net::IpAddr,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub runtime: String,
    pub default_timeout_s: u64,
    pub max_lifetime_s: u64,
    pub log_max_bytes: u64,
    pub exec_output_limit: usize,
    pub janitor_interval_s: u64,
    /// prism-agent binary (default: next to prismd, then `PATH`).
    pub agent_path: Option<PathBuf>,
    /// Parent cgroup of every sandbox's cgroup (default `prism`).
    pub cgroup_parent: String,
    /// On SIGTERM, stop every running sandbox (default: leave them running for re-adoption).
    pub stop_sandboxes_on_shutdown: bool,
    pub log_json: bool,
    /// Warm pools.
    pub pools: Vec<PoolConfig>,
    /// Pools shrink while the host's MemAvailable is below this many bytes (0 = never).
    pub pool_min_available_bytes: u64,
    /// fsync every commit of the state database (`synchronous=FULL`); default: commits reach
    /// the OS (survive a daemon crash, not a power loss).
    pub fsync_state: bool,
    /// Network namespaces the namespace runtime keeps made ahead (0: each start makes its own).
    pub netns_pool: usize,
    /// Sandbox directories the namespace runtime keeps made ahead (0: each first start makes
    /// its own).
    pub spare_dirs: usize,
    /// Sandboxes' writable layers honour `fsync` (and each teardown syncs the state
    /// directory's filesystem); default: they are mounted `volatile` (see
    /// `NamespaceConfig::fsync_sandboxes`).
    pub fsync_sandboxes: bool,
    /// Require API keys.
    pub auth: bool,
    /// Rate limits and quotas (with auth on).
    pub limits: crate::auth::Limits,
    pub network: NetSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid listen address {0:?} (expected ADDR:PORT, e.g. 127.0.0.1:8008)")]
    Listen(String),
    #[error("no state directory: set --state-dir, PRISM_STATE_DIR, XDG_STATE_HOME or HOME")]
    NoStateDir,
    #[error("invalid network setting: {0}")]
    Network(String),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "invalid pool {0:?}: expected TEMPLATE=SIZE with SIZE from 0 to {MAX_POOL_SIZE}, e.g. base=4"
    )]
    Pool(String),
    #[error(
        "refusing to serve without authentication on the non-loopback address {0}: remove \
         `auth = false`, or pass --insecure if every client that reaches it may control every \
         sandbox"
    )]
    Unauthenticated(String),
}

fn net_settings(flags: &Flags, file: &FileConfig) -> Result<NetSettings, ConfigError> {
    let pool = file
        .network_pool
        .clone()
        .unwrap_or_else(|| prism_net::addr::DEFAULT_POOL.to_string());
    prism_net::Pool::parse(&pool).map_err(|e| ConfigError::Network(e.to_string()))?;
    let dns_upstream = match flags
        .dns_upstream
        .clone()
        .or_else(|| file.dns_upstream.clone())
    {
        None => None,
        Some(s) => Some(
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    ConfigError::Network(format!("dns_upstream {s:?} is not ADDR or ADDR:PORT"))
                })?,
        ),
    };
    let dns_rate = file.dns_rate.unwrap_or(100);
    if dns_rate == 0 {
        return Err(ConfigError::Zero("dns_rate"));
    }
    let proxy_port = file.proxy_port.unwrap_or(prism_net::PROXY_PORT);
    if proxy_port == 0 {
        return Err(ConfigError::Zero("proxy_port"));
    }
    let publish_address = match &file.publish_address {
        None => std::net::IpAddr::from([127, 0, 0, 1]),
        Some(a) => a.parse().map_err(|_| {
            ConfigError::Network(format!("publish_address {a:?} is not an IP address"))
        })?,
    };
    Ok(NetSettings {
        proxy_port,
        publish_address,
        enabled: file.networking.unwrap_or(true),
        pool,
        table: file.nft_table.clone().unwrap_or_else(|| "prism".into()),
        dns_upstream,
        dns_rate,
    })
}

/// Largest warm pool.
pub const MAX_POOL_SIZE: usize = 1000;

/// `TEMPLATE=SIZE` of `--pool`.
fn parse_pool(s: &str) -> Result<PoolConfig, ConfigError> {
    let bad = || ConfigError::Pool(s.to_string());
    let (template, size) = s.split_once('=').ok_or_else(bad)?;
    let size: usize = size.trim().parse().map_err(|_| bad())?;
    let template = template.trim();
    if template.is_empty() || size > MAX_POOL_SIZE {
        return Err(bad());
    }
    Ok(PoolConfig {
        template: template.to_string(),
        resources: prism_types::Resources::default(),
        size,
    })
}

/// The default state directory: `/var/lib/prism` for root, else `$XDG_STATE_HOME/prism`
/// (`~/.local/state/prism`).
pub fn default_state_dir(is_root: bool, xdg: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    if is_root {
        return Some(PathBuf::from("/var/lib/prism"));
    }
    match (
        xdg.filter(|s| !s.is_empty()),
        home.filter(|s| !s.is_empty()),
    ) {
        (Some(x), _) => Some(Path::new(x).join("prism")),
        (None, Some(h)) => Some(Path::new(h).join(".local/state/prism")),
        (None, None) => None,
    }
}

impl Config {
    /// Combine the layers.
    pub fn resolve(flags: &Flags, file: &FileConfig, is_root: bool) -> Result<Config, ConfigError> {
        let listen = flags
            .listen
            .clone()
            .or_else(|| file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen
            .parse()
            .map_err(|_| ConfigError::Listen(listen.clone()))?;
        let state_dir = match flags.state_dir.clone().or_else(|| file.state_dir.clone()) {
            Some(d) => d,
            None => default_state_dir(
                is_root,
                std::env::var("XDG_STATE_HOME").ok().as_deref(),
                std::env::var("HOME").ok().as_deref(),
            )
            .ok_or(ConfigError::NoStateDir)?,
        };
        let loopback = std::net::SocketAddr::ip(&listen).is_loopback();
        let auth = flags.auth || file.auth.unwrap_or(!loopback && !flags.insecure);
        if !auth && !loopback && !flags.insecure {
            return Err(ConfigError::Unauthenticated(listen.to_string()));
        }
        let janitor_interval_s = file.janitor_interval_s.unwrap_or(5);
        let pools = if flags.pools.is_empty() {
            let mut pools = Vec::new();
            for p in &file.pools {
                if p.template.is_empty() || p.size > MAX_POOL_SIZE {
                    return Err(ConfigError::Pool(format!("{}={}", p.template, p.size)));
                }
                pools.push(PoolConfig {
                    template: p.template.clone(),
                    resources: p.resources,
                    size: p.size,
                });
            }
            pools
        } else {
            flags
                .pools
                .iter()
                .map(|p| parse_pool(p))
                .collect::<Result<_, _>>()?
        };
        if janitor_interval_s == 0 {
            return Err(ConfigError::Zero("janitor_interval_s"));
        }
        let network = net_settings(flags, file)?;
        Ok(Config {
            listen,
            state_dir,
            runtime: flags
                .runtime
                .clone()
                .or_else(|| file.runtime.clone())
                .unwrap_or_else(|| crate::runtime::DEFAULT.to_string()),
            default_timeout_s: file
                .default_timeout_s
                .unwrap_or(prism_types::DEFAULT_TIMEOUT_S),
            max_lifetime_s: file.max_lifetime_s.unwrap_or(24 * 3600),
            log_max_bytes: file.log_max_bytes.unwrap_or(8 << 20),
            exec_output_limit: file.exec_output_limit.unwrap_or(1 << 20),
            janitor_interval_s,
            agent_path: file.agent_path.clone(),
            cgroup_parent: file
                .cgroup_parent
                .clone()
                .unwrap_or_else(|| prism_sys::cgroup::DEFAULT_PARENT.to_string()),
            stop_sandboxes_on_shutdown: file.stop_sandboxes_on_shutdown.unwrap_or(false),
            log_json: flags.log_json,
            pools,
            pool_min_available_bytes: file.pool_min_available_mb.unwrap_or(512) << 20,
            fsync_state: file.fsync_state.unwrap_or(false),
            netns_pool: file
                .netns_pool
                .unwrap_or(prism_core::namespace::DEFAULT_NETNS_POOL),
            spare_dirs: file
                .spare_dirs
                .unwrap_or(prism_core::namespace::DEFAULT_SPARE_DIRS),
            fsync_sandboxes: file.fsync_sandboxes.unwrap_or(false),
            auth,
            limits: file.limits.unwrap_or_default(),
            network,
        })
    }

    /// Read the file named by `--config`, if any, and combine.
    pub fn load(flags: &Flags, is_root: bool) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.display().to_string(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        Self::resolve(flags, &file, is_root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nstate_dir = \"/tmp/f\"\ndefault_timeout_s = 7",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let flags = Flags {
            listen: Some("127.0.0.1:9100".into()),
            ..Flags::default()
        };
        let c = Config::resolve(&flags, &file, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/f"));
        assert_eq!(c.default_timeout_s, 7);
        let c = Config::resolve(&Flags::default(), &FileConfig::default(), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/prism"));
    }

    #[test]
    fn state_commits_and_sandbox_writes_reach_the_os_unless_fsync_is_asked_for() {
        let c = Config::resolve(&Flags::default(), &FileConfig::default(), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.fsync_state);
        let file: FileConfig =
            toml::from_str("fsync_state = true").unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(&Flags::default(), &file, true).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.fsync_state);
        assert!(!c.fsync_sandboxes);
        let file: FileConfig =
            toml::from_str("fsync_sandboxes = true").unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(&Flags::default(), &file, true).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.fsync_sandboxes);
    }

    #[test]
    fn what_is_made_ahead_has_a_default_and_can_be_turned_off() {
        let c = Config::resolve(&Flags::default(), &FileConfig::default(), true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.netns_pool, prism_core::namespace::DEFAULT_NETNS_POOL);
        assert_eq!(c.spare_dirs, prism_core::namespace::DEFAULT_SPARE_DIRS);
        let file: FileConfig =
            toml::from_str("netns_pool = 0\nspare_dirs = 0").unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(&Flags::default(), &file, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.netns_pool, c.spare_dirs), (0, 0));
        for bad in ["netns_pool = -1", "spare_dirs = \"two\""] {
            assert!(toml::from_str::<FileConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let flags = Flags {
            listen: Some("localhost".into()),
            ..Flags::default()
        };
        let e = Config::resolve(&flags, &FileConfig::default(), true);
        assert!(matches!(e, Err(ConfigError::Listen(_))));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }

    #[test]
    fn pools_from_flags_replace_the_file_s() {
        let file: FileConfig = toml::from_str(
            "[[pools]]\ntemplate = \"base\"\nsize = 3\nresources = { memory_mb = 256 }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(&Flags::default(), &file, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.pools[0].size, 3);
        assert_eq!(c.pools[0].resources.memory_mb, Some(256));
        assert_eq!(c.pool_min_available_bytes, 512 << 20);
        let flags = Flags::try_parse_from(["prismd", "--pool", "base=2,py=1"])
            .unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(&flags, &file, true).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<_> = c
            .pools
            .iter()
            .map(|p| (p.template.as_str(), p.size))
            .collect();
        assert_eq!(got, [("base", 2), ("py", 1)]);
        for bad in ["base", "base=x", "=3", "base=100000"] {
            let flags = Flags {
                pools: vec![bad.into()],
                ..Flags::default()
            };
            let e = Config::resolve(&flags, &FileConfig::default(), true);
            assert!(matches!(e, Err(ConfigError::Pool(_))), "{bad}");
        }
    }

    #[test]
    fn auth_is_on_off_loopback_unless_insecure() {
        let at = |listen: &str, insecure: bool, file: &str| {
            let flags = Flags {
                listen: Some(listen.into()),
                insecure,
                ..Flags::default()
            };
            let file: FileConfig = toml::from_str(file).unwrap_or_else(|e| panic!("{e}"));
            Config::resolve(&flags, &file, true).map(|c| c.auth)
        };
        assert!(matches!(at("127.0.0.1:1", false, ""), Ok(false)));
        assert!(matches!(at("127.0.0.1:1", false, "auth = true"), Ok(true)));
        assert!(matches!(at("0.0.0.0:1", false, ""), Ok(true)));
        assert!(matches!(at("0.0.0.0:1", true, ""), Ok(false)));
        assert!(matches!(
            at("0.0.0.0:1", false, "auth = false"),
            Err(ConfigError::Unauthenticated(_))
        ));
        let c: FileConfig =
            toml::from_str("[limits]\nmax_sandboxes = 2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.limits.map(|l| l.max_sandboxes), Some(2));
    }

    #[test]
    fn state_dir_defaults() {
        assert_eq!(
            default_state_dir(false, Some("/x"), Some("/h")),
            Some(PathBuf::from("/x/prism"))
        );
        assert_eq!(
            default_state_dir(false, None, Some("/h")),
            Some(PathBuf::from("/h/.local/state/prism"))
        );
        assert_eq!(default_state_dir(false, None, None), None);
    }

    #[test]
    fn env_layer_is_read_by_the_flag_parser() {
        // clap reads PRISM_LISTEN when the flag is absent; the flag wins when both are given.
        let f = Flags::try_parse_from(["prismd", "--listen", "127.0.0.1:1"]);
        assert_eq!(
            f.ok().and_then(|f| f.listen).as_deref(),
            Some("127.0.0.1:1")
        );
    }
}
