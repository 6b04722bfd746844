//! Shared harness for the namespace runtime's integration tests: a runtime on a private state
//! directory and cgroup parent, a tokio runtime, and helpers to run commands through the agent.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use prism_core::namespace::{NamespaceConfig, NamespaceRuntime};
use prism_core::{Limits, Runtime, SandboxHandle, SandboxSpec};
use prism_proto::AgentClient;
use prism_proto::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};

/// The static agent built by `scripts/build` (or `$PRISM_AGENT`).
pub fn agent_path() -> PathBuf {
    if let Ok(p) = std::env::var("PRISM_AGENT") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/x86_64-unknown-linux-musl/debug/prism-agent")
}

/// `None` (after a loud SKIP line) when not root.
pub fn harness(test: &str) -> Option<Harness> {
    // SAFETY-free check: /proc/self/status Uid line.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        eprintln!("SKIP: {test}: NOT run: the namespace runtime needs root");
        return None;
    }
    let agent = agent_path();
    assert!(
        agent.is_file(),
        "{} missing: run scripts/build first (or set PRISM_AGENT)",
        agent.display()
    );
    Some(Harness::new(agent))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Fields drop in this order: the runtime (and its threads making spares) before the state
/// directory it works in.
pub struct Harness {
    pub runtime: NamespaceRuntime,
    pub rt: tokio::runtime::Runtime,
    pub cgroup_parent: String,
    ids: std::sync::Mutex<Vec<String>>,
    pub state: tempfile::TempDir,
}

/// Output of a finished command.
#[derive(Debug, Default)]
pub struct Output {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Harness {
    fn new(agent: PathBuf) -> Self {
        let state = tempfile::Builder::new()
            .prefix("prism-it-")
            .tempdir_in("/var/tmp")
            .expect("state dir");
        let cgroup_parent = format!(
            "prism-it-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let cgroups = prism_sys::cgroup::detect(&cgroup_parent).expect("cgroups");
        let runtime = NamespaceRuntime::new(
            NamespaceConfig::new(state.path().join("sandboxes"), agent),
            cgroups,
        )
        .expect("runtime");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        Self {
            state,
            runtime,
            rt,
            cgroup_parent,
            ids: Default::default(),
        }
    }

    pub fn spec(&self, id: &str, limits: Limits) -> SandboxSpec {
        let rootfs =
            prism_core::template::base::ensure(&self.state.path().join("templates")).expect("base");
        SandboxSpec {
            id: id.into(),
            hostname: format!("host-{id}"),
            rootfs,
            limits,
            security: Default::default(),
        }
    }

    pub fn start(&self, id: &str, limits: Limits) -> (SandboxHandle, AgentClient) {
        let spec = self.spec(id, limits);
        let handle = self.runtime.start(&spec).expect("start sandbox");
        self.ids.lock().expect("ids").push(id.to_string());
        let client = AgentClient::new(&handle.agent_socket);
        (handle, client)
    }

    /// Start `id` with its writable layers' overlays mounted by the way `overlays` names, and
    /// check from inside that they were: the adversarial cases run on both kinds.
    pub fn start_on(
        &self,
        overlays: Overlays,
        id: &str,
        limits: Limits,
    ) -> (SandboxHandle, AgentClient) {
        if overlays == Overlays::Ahead {
            // A spare carries overlays once a start has told the pool its lowers: prime it
            // with a start of the same root filesystem, then wait for the refill (the newest
            // spare, the one the next start takes).
            let primer = format!("{id}-primer");
            self.start(&primer, Limits::default());
            self.destroy(&primer);
            eventually("the spare pool to refill", || {
                self.runtime.spares_ready() == prism_core::namespace::DEFAULT_SPARE_DIRS
            });
        }
        let (handle, client) = self.start(id, limits);
        let root = root_mount(self, &client);
        // A sandbox's own overlay has its lowers attached under its directory's `lower/`; one
        // made ahead names the host paths and is always `volatile` here.
        let in_sandbox = root.contains("/lower/0-0");
        assert_eq!(
            in_sandbox,
            overlays == Overlays::InSandbox,
            "{id} did not start on overlays mounted {overlays:?}: {root}"
        );
        (handle, client)
    }

    /// Run `argv` to completion and collect its output.
    pub fn run(&self, client: &AgentClient, argv: &[&str]) -> Output {
        self.rt.block_on(run_async(client, argv))
    }

    pub fn sh(&self, client: &AgentClient, script: &str) -> Output {
        self.run(client, &["/bin/sh", "-c", script])
    }

    /// A second runtime over the same state directory and cgroup parent: what a restarted
    /// daemon builds.
    pub fn reopen(&self) -> NamespaceRuntime {
        self.runtime_in("sandboxes", |_| {})
    }

    /// Another runtime on this harness's cgroup parent, over `<state>/<dir>`, with the default
    /// config changed by `tweak`.
    pub fn runtime_in(
        &self,
        dir: &str,
        tweak: impl FnOnce(&mut NamespaceConfig),
    ) -> NamespaceRuntime {
        let mut cfg = NamespaceConfig::new(self.state.path().join(dir), agent_path());
        tweak(&mut cfg);
        NamespaceRuntime::new(
            cfg,
            prism_sys::cgroup::detect(&self.cgroup_parent).expect("cgroups"),
        )
        .expect("runtime")
    }

    /// Destroy `id` and wait (with a deadline) until its background teardown has finished.
    pub fn destroy(&self, id: &str) {
        self.runtime.destroy(id).expect("destroy");
        assert!(
            self.runtime.settle(SETTLE),
            "the teardown of {id} did not finish within {SETTLE:?}"
        );
    }
}

/// Who mounted a sandbox's writable layers' overlays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlays {
    /// The sandbox's own start, in its user namespace (a runtime's first start, a restart).
    InSandbox,
    /// The host, ahead of the start, with a spare directory (`namespace/spare.rs`): what most
    /// first starts get.
    Ahead,
}

/// The sandbox's root mount, as its `/proc/self/mountinfo` line shows it.
pub fn root_mount(h: &Harness, client: &AgentClient) -> String {
    let out = h.sh(client, "grep ' / / ' /proc/self/mountinfo");
    assert_eq!(out.exit_code, 0, "{out:?}");
    out.stdout
}

/// Poll `f` until it holds (20 s at most): for state a background thread reaches.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The host-wide claim file of the id range at `base` (`namespace/slots.rs`).
pub fn id_claim(base: u32) -> PathBuf {
    PathBuf::from(prism_core::namespace::DEFAULT_ID_CLAIMS)
        .join((base / prism_core::namespace::IDS_PER_SANDBOX).to_string())
}

/// How long a test waits for background teardowns.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

pub fn start_request(argv: &[&str]) -> StartRequest {
    StartRequest {
        process: Some(ProcessConfig {
            cmd: argv[0].into(),
            args: argv[1..].iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn run_async(client: &AgentClient, argv: &[&str]) -> Output {
    let mut events = client.start(&start_request(argv)).await.expect("start");
    let mut out = Output::default();
    while let Some(ev) = events.next().await {
        match ev.expect("event") {
            ProcessEvent::Data(DataEvent::Stdout(b)) => {
                out.stdout.push_str(&String::from_utf8_lossy(&b))
            }
            ProcessEvent::Data(DataEvent::Stderr(b)) => {
                out.stderr.push_str(&String::from_utf8_lossy(&b))
            }
            ProcessEvent::End(end) => {
                out.exit_code = end.exit_code;
                out.exited = end.exited;
                out.status = end.status;
            }
            _ => {}
        }
    }
    out
}

impl Drop for Harness {
    fn drop(&mut self) {
        for id in self.ids.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = self.runtime.destroy(&id);
        }
        self.runtime.settle(SETTLE);
        if let Ok(cgroups) = prism_sys::cgroup::detect(&self.cgroup_parent) {
            let _ = cgroups.remove_parent();
        }
    }
}
