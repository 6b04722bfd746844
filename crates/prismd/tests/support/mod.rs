//! E2E support: the real prismd on a free loopback port with a temp state dir and the real
//! namespace runtime (root needed; tests print a loud SKIP line without it).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PRISMD: &str = env!("CARGO_BIN_EXE_prismd");

/// target/debug (where prismd, prismctl and prism-agent land).
pub fn bin_dir() -> PathBuf {
    Path::new(PRISMD).parent().unwrap().to_path_buf()
}

/// True when running as root; otherwise prints a loud SKIP line for `test`.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIP: {test}: NOT run: the namespace runtime needs root");
    }
    root
}

/// The static agent built by `scripts/build` (or `$PRISM_AGENT`); builds prismctl once.
pub fn agent() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "prismctl"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo build");
            assert!(status.success(), "building prismctl failed");
            let a = std::env::var_os("PRISM_AGENT")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../../target/x86_64-unknown-linux-musl/debug/prism-agent")
                });
            assert!(
                a.is_file(),
                "{} missing: run scripts/build first",
                a.display()
            );
            a
        })
        .clone()
}

pub fn prismctl() -> PathBuf {
    agent();
    bin_dir().join("prismctl")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns Some, or panic after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One cgroup parent per state directory, so a restarted daemon finds its sandboxes again.
fn cgroup_parent(state: &Path) -> String {
    let name = state
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let safe: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("prism-e2e-{safe}")
}

/// The nftables table and address pool of a test daemon: its own per state directory, so
/// daemons of tests running at once never touch each other's sandbox networks.
pub fn net_of(state: &Path) -> (String, String) {
    let mut h: u32 = 0x811c_9dc5;
    for b in state.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    let idx = h % 4096;
    let pool = std::net::Ipv4Addr::from(0x6440_0000u32 + idx * 1024);
    (format!("pe2e_{h:08x}"), format!("{pool}/22"))
}

pub struct Daemon {
    pub state: PathBuf,
    pub cgroup_parent: String,
    /// `inet NAME` is this daemon's nftables table.
    pub nft_table: String,
    pub network_pool: String,
    pub port: u16,
    pub child: Option<Child>,
    pub client: prism_client::Client,
}

impl Daemon {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Start prismd on `state` (a fresh port each time) and wait until it is ready.
    pub async fn start(state: &Path) -> Daemon {
        Self::start_with(state, "").await
    }

    /// Like [`Daemon::start`], with extra lines in the config file.
    pub async fn start_with(state: &Path, extra_config: &str) -> Daemon {
        let agent = agent();
        let port = free_port();
        let config = state.join("prismd.toml");
        std::fs::create_dir_all(state).unwrap();
        let (nft_table, network_pool) = net_of(state);
        std::fs::write(
            &config,
            format!(
                "janitor_interval_s = 1\nagent_path = {:?}\ncgroup_parent = {:?}\nnft_table = {nft_table:?}\nnetwork_pool = {network_pool:?}\n{extra_config}\n",
                agent.display().to_string(),
                cgroup_parent(state),
            ),
        )
        .unwrap();
        let child = Command::new(PRISMD)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--runtime",
                "namespace",
            ])
            .arg("--state-dir")
            .arg(state)
            .arg("--config")
            .arg(&config)
            .env("PRISM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(state.join(format!("prismd-{port}.log"))).unwrap())
            .spawn()
            .unwrap();
        let client = prism_client::Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let d = Daemon {
            state: state.to_path_buf(),
            cgroup_parent: cgroup_parent(state),
            nft_table,
            network_pool,
            port,
            child: Some(child),
            client,
        };
        let c = d.client.clone();
        eventually(30, "prismd readiness", || {
            let c = c.clone();
            async move { c.ready().await.ok() }
        })
        .await;
        d
    }

    /// Runs prismctl against this daemon: `(exit code, stdout, stderr)`.
    pub fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let o = Command::new(prismctl())
            .arg("--api")
            .arg(self.url())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// The bootstrap admin key prismd wrote on its first start with auth on.
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.state.join("admin.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "prismd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the sandboxes this daemon left (they outlive the daemon by design) and remove its
    /// cgroup parent.
    pub fn kill_agents(&self) {
        for family in ["inet", "ip"] {
            let name = if family == "ip" {
                format!("{}_nat", self.nft_table)
            } else {
                self.nft_table.clone()
            };
            let _ = Command::new("nft")
                .args(["delete", "table", family, &name])
                .stderr(Stdio::null())
                .status();
        }
        let Ok(cgroups) = prism_sys::cgroup::detect(&self.cgroup_parent) else {
            return;
        };
        let _ = cgroups.remove_parent();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        self.kill_agents();
    }
}
