//! The command line of prismctl.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "prismctl", version, about = "Run and manage Prism sandboxes")]
pub struct Cli {
    /// prismd's URL.
    #[arg(long, global = true, env = "PRISM_API", default_value = prism_client::DEFAULT_API)]
    pub api: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// API key [default: $PRISM_API_KEY, else, for a daemon on loopback, the state
    /// directory's admin.key]
    #[arg(long, global = true, env = "PRISM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// Parsed once per invocation: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a sandbox; with a command, run it attached and exit with its code.
    Run(RunArgs),
    /// Run a command in a running sandbox; its exit code is prismctl's.
    Exec(ExecArgs),
    /// Run code in a stateful context (Python, JavaScript, bash); exits 1 if it raised.
    Code(CodeArgs),
    /// Copy files or directories: `cp ID:PATH LOCAL` or `cp LOCAL ID:PATH`.
    Cp { src: String, dest: String },
    /// List sandboxes.
    #[command(alias = "ps")]
    Ls {
        /// Include destroyed sandboxes... of this state only.
        #[arg(long)]
        state: Option<String>,
        /// Only sandboxes with this label (k=v).
        #[arg(long)]
        label: Option<String>,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a sandbox's full record.
    Inspect { id: String },
    /// Print a sandbox's output log (its main process's stdout and stderr).
    Logs {
        id: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Show a sandbox's resource usage.
    Stats { id: String },
    /// Change a sandbox's network mode at once (none, open, allow=CIDR|HOST:PORT|DOMAIN,...).
    Network { id: String, mode: String },
    /// Stop sandboxes (their writable layer is kept).
    Stop { ids: Vec<String> },
    /// Start stopped sandboxes.
    Start { ids: Vec<String> },
    /// Restart sandboxes.
    Restart { ids: Vec<String> },
    /// Destroy sandboxes.
    Rm {
        /// Destroy running sandboxes too.
        #[arg(short, long)]
        force: bool,
        ids: Vec<String>,
    },
    /// Set a sandbox's TTL: it now expires in SECONDS (0 = never).
    Timeout { id: String, seconds: u64 },
    /// Show the proxy URLs of a sandbox's exposed ports (or of PORT).
    Port {
        id: String,
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Show the daemon's information.
    Info,
    /// Manage API keys (admin key needed).
    #[command(subcommand, name = "api-key")]
    ApiKey(crate::keys::ApiKeyCmd),
    /// Manage project secrets (injected as environment variables into new processes).
    #[command(subcommand)]
    Secret(crate::keys::SecretCmd),
    /// Show the audit trail: who did what to which sandbox, when.
    Audit {
        /// Only this sandbox (id).
        #[arg(long)]
        sandbox: Option<String>,
        /// Only records after this sequence number.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many records (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Manage OCI images: pull, ls, rm, prune, import.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage versioned templates: create (build), ls, inspect, rm.
    #[command(subcommand)]
    Template(crate::template::TemplateCmd),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Destroy the sandbox when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Run the command as the sandbox's main process and return at once (see `logs`).
    #[arg(short, long)]
    pub detach: bool,
    /// Start from this template: `base` (default), `NAME` (its newest ready version) or
    /// `NAME:VERSION`.
    #[arg(long, conflicts_with = "image", value_name = "NAME[:VERSION]")]
    pub template: Option<String>,
    /// Start from this OCI image (pulled if the daemon lacks it), e.g. `python:3.12-slim`.
    #[arg(long)]
    pub image: Option<String>,
    /// Default working directory of the sandbox's processes (default: the image's).
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Default user of the sandbox's processes (default: the image's, else root).
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// CPU cores (0.5 = half a core).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Process limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Size limit of the sandbox's writable layer in MiB (writes past it fail with ENOSPC).
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u64>,
    /// Allow ptrace between the sandbox's processes (debuggers, strace).
    #[arg(long)]
    pub allow_ptrace: bool,
    /// Mount a read-only /sys in the sandbox (none by default).
    #[arg(long)]
    pub sysfs: bool,
    /// TTL in seconds (0 = none; default 300).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Stop after this many idle seconds.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Environment variable K=V (repeatable).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Label K=V (repeatable).
    #[arg(short, long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// none | open | allow=CIDR|DOMAIN,...
    #[arg(long)]
    pub network: Option<String>,
    /// Expose a TCP port of the sandbox (repeatable): `PORT` through the daemon's proxy
    /// (prints its URL), `HOST_PORT:PORT` or `IP:HOST_PORT:PORT` also on a host port.
    #[arg(short = 'p', long = "publish", value_name = "[[IP:]HOST_PORT:]PORT",
          value_parser = parse_port_spec)]
    pub ports: Vec<PortSpec>,
    /// The command.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable K=V (repeatable).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User inside the sandbox.
    #[arg(short, long)]
    pub user: Option<String>,
    pub id: String,
    /// The command.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CodeArgs {
    pub id: String,
    /// python | javascript | bash (default: python, unless --context is given).
    #[arg(short, long = "lang")]
    pub lang: Option<String>,
    /// Run in this context (default: the language's default context).
    #[arg(long)]
    pub context: Option<String>,
    /// The code.
    #[arg(
        short = 'c',
        long = "code",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub code: Option<String>,
    /// Read the code from this local file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: Option<String>,
    /// Seconds before the run is interrupted.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Environment variable for this run only (restored afterwards); repeatable.
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry (anonymous unless --username is given).
    Pull {
        reference: String,
        #[arg(long)]
        username: Option<String>,
        /// Password or token (or PRISM_REGISTRY_PASSWORD).
        #[arg(long, env = "PRISM_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// List images.
    Ls {
        /// Only print references.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (their layers stay while a sandbox uses them; `prune` frees the rest).
    Rm { references: Vec<String> },
    /// Remove layers and blobs no image and no live sandbox uses.
    Prune,
    /// Import a `docker save` tarball or an OCI image layout directory (air-gapped hosts).
    Import {
        path: std::path::PathBuf,
        /// Store it under this reference (default: the archive's own tag).
        #[arg(long = "as", value_name = "REFERENCE")]
        reference: Option<String>,
    },
}

/// One `-p` of `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// Through the daemon's proxy only.
    Proxy(u16),
    /// On a host port too.
    Host(prism_types::PublishedPort),
}

fn port_number(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1 to 65535)")),
    }
}

/// `PORT`, `HOST_PORT:PORT`, `IP:HOST_PORT:PORT` (`[IPV6]:HOST_PORT:PORT`).
pub fn parse_port_spec(s: &str) -> Result<PortSpec, String> {
    let Some((rest, port)) = s.rsplit_once(':') else {
        return port_number(s).map(PortSpec::Proxy);
    };
    let port = port_number(port)?;
    let (host_ip, host_port) = match rest.rsplit_once(':') {
        Some((ip, hp)) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| format!("{ip:?} is not an IP address"))?;
            (Some(ip.to_string()), hp)
        }
        None => (None, rest),
    };
    Ok(PortSpec::Host(prism_types::PublishedPort {
        host_port: port_number(host_port)?,
        port,
        host_ip,
    }))
}

#[cfg(test)]
mod port_spec_tests {
    use super::*;

    #[test]
    fn port_specs_parse_like_docker() {
        assert_eq!(parse_port_spec("8000"), Ok(PortSpec::Proxy(8000)));
        let host = |hp, p, ip: Option<&str>| {
            Ok(PortSpec::Host(prism_types::PublishedPort {
                host_port: hp,
                port: p,
                host_ip: ip.map(String::from),
            }))
        };
        assert_eq!(parse_port_spec("18000:8000"), host(18000, 8000, None));
        assert_eq!(
            parse_port_spec("0.0.0.0:18000:8000"),
            host(18000, 8000, Some("0.0.0.0"))
        );
        assert_eq!(
            parse_port_spec("[::1]:18000:8000"),
            host(18000, 8000, Some("::1"))
        );
        assert!(parse_port_spec("0").is_err());
        assert!(parse_port_spec("18000:70000").is_err());
        assert!(parse_port_spec("x:1:2").is_err());
    }
}
