//! Prism's namespace runtime, driven directly (no daemon): start, first exec through the agent,
//! destroy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use prism_core::namespace::{NamespaceConfig, NamespaceRuntime};
use prism_core::{Limits, RootfsSpec, Runtime, SandboxSpec};
use prism_proto::AgentClient;
use prism_proto::process::{ProcessConfig, ProcessEvent, StartRequest};

/// A namespace runtime keeping its sandboxes in `dir`, under the cgroup parent `parent`.
pub fn runtime_in(dir: PathBuf, agent: &Path, parent: &str) -> Result<NamespaceRuntime> {
    Ok(NamespaceRuntime::new(
        NamespaceConfig {
            sandboxes_dir: dir,
            agent_path: agent.to_path_buf(),
        },
        prism_sys::cgroup::detect(parent)?,
    )?)
}

pub fn agent_path(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-musl");
    for profile in ["release", "debug"] {
        let p = root.join(profile).join("prism-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no prism-agent built: run scripts/build --release (or pass --agent)")
}

type Parts = Vec<(&'static str, Vec<Duration>)>;

/// How long the bench waits for the runtime's background teardowns.
const SETTLE: Duration = Duration::from_secs(120);

/// `settled`: each sample also waits until the destroyed sandbox is completely gone (destroy
/// returns once it is killed; the rest of the teardown runs in the background). Without it, that
/// background work overlaps the next sample, as it does in a daemon.
pub fn create_exec_destroy(
    state: &Path,
    agent: &Path,
    rootfs: &RootfsSpec,
    warmup: usize,
    iterations: usize,
    settled: bool,
    mut between: Option<&mut dyn FnMut(bool) -> Result<()>>,
) -> Result<(Vec<Duration>, Parts)> {
    let parent = format!("prism-bench-{}", std::process::id());
    let runtime = runtime_in(state.join("sandboxes"), agent, &parent)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let req = StartRequest {
        process: Some(ProcessConfig {
            cmd: "/bin/true".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (mut total, mut start, mut exec, mut destroy) = (vec![], vec![], vec![], vec![]);
    for i in 0..warmup + iterations {
        let id = format!("bench-{i}");
        let spec = SandboxSpec {
            id: id.clone(),
            hostname: id.clone(),
            rootfs: rootfs.clone(),
            limits: Limits::default(),
            security: Default::default(),
        };
        let t0 = Instant::now();
        let handle = runtime.start(&spec)?;
        let t1 = Instant::now();
        let client = AgentClient::new(&handle.agent_socket);
        let code = rt
            .block_on(async {
                let mut events = client.start(&req).await?;
                let mut code = None;
                while let Some(ev) = events.next().await {
                    if let ProcessEvent::End(e) = ev? {
                        code = Some(e.exit_code);
                    }
                }
                Ok::<_, prism_proto::ProtoError>(code)
            })
            .context("exec through the agent")?;
        if code != Some(0) {
            bail!("/bin/true in the sandbox ended with {code:?}");
        }
        let t2 = Instant::now();
        runtime.destroy(&id)?;
        if settled && !runtime.settle(SETTLE) {
            bail!("the teardown of {id} did not finish in {SETTLE:?}");
        }
        let t3 = Instant::now();
        if let Some(f) = between.as_mut() {
            f(i >= warmup)?;
        }
        if i >= warmup {
            total.push(t3 - t0);
            start.push(t1 - t0);
            exec.push(t2 - t1);
            destroy.push(t3 - t2);
        }
    }
    if !runtime.settle(SETTLE) {
        bail!("teardowns did not finish in {SETTLE:?}");
    }
    drop(runtime);
    prism_sys::cgroup::detect(&parent)?.remove_parent()?;
    let last = if settled {
        "destroy + teardown"
    } else {
        "destroy"
    };
    Ok((
        total,
        vec![("start", start), ("first exec", exec), (last, destroy)],
    ))
}
