//! Prism through its daemon: a real prismd (release build) on a loopback port, driven over HTTP.
//! Measures create → exec `/bin/true` → destroy through the API, and the exec round trip in a
//! running sandbox (buffered exec of `/bin/true`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prism_types::{CreateSandboxRequest, ExecRequest};

/// A running prismd and its cgroup parent. Dropping it stops the daemon with SIGTERM (so it
/// destroys its pool members; SIGKILL after 30 s) and removes the cgroup parent.
pub struct Daemon(Child, String);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(cg) = prism_sys::cgroup::detect(&self.1) {
            let _ = cg.remove_parent();
        }
    }
}

pub fn true_req() -> ExecRequest {
    ExecRequest {
        cmd: Some(vec!["/bin/true".into()]),
        ..Default::default()
    }
}

/// A prismd on a free loopback port, ready, with `pool` idle `base` sandboxes kept warm.
pub fn start_daemon(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    agent: &Path,
    name: &str,
    pool: usize,
) -> Result<(Daemon, prism_client::Client)> {
    let prismd = std::env::current_exe()?.with_file_name("prismd");
    if !prismd.is_file() {
        bail!("{} missing: run scripts/build --release", prismd.display());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = state.join(name);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prismd.toml");
    let parent = format!("prism-bench-{name}-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "agent_path = {:?}\ncgroup_parent = \"{parent}\"\n",
            agent.display().to_string(),
        ),
    )?;
    let daemon = Daemon(
        Command::new(&prismd)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .arg("--pool")
            .arg(format!("base={pool}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prismd")?,
        parent,
    );
    let client = prism_client::Client::new(&format!("http://127.0.0.1:{port}"))?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.ready().await.is_err() {
            if Instant::now() > deadline {
                bail!("prismd did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })?;
    Ok((daemon, client))
}

/// One create → exec `/bin/true` → destroy through the API.
async fn cycle(client: &prism_client::Client) -> Result<Duration> {
    let t = Instant::now();
    let sb = client.create(&CreateSandboxRequest::default()).await?;
    let r = client.exec(&sb.id, &true_req()).await?;
    client.destroy(&sb.id).await?;
    if r.exit_code != 0 {
        bail!("/bin/true exited {}", r.exit_code);
    }
    Ok(t.elapsed())
}

/// `(create+exec+destroy, exec round trip)` samples, without pools.
pub fn run(
    state: &Path,
    agent: &Path,
    warmup: usize,
    iterations: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_daemon, client) = start_daemon(&rt, state, agent, "api", 0)?;
    rt.block_on(async {
        let mut cycles = Vec::new();
        for i in 0..warmup + iterations {
            let t = cycle(&client).await?;
            if i >= warmup {
                cycles.push(t);
            }
        }
        let sb = client.create(&CreateSandboxRequest::default()).await?;
        let mut round_trip = Vec::new();
        for i in 0..warmup + iterations {
            let t = Instant::now();
            let r = client.exec(&sb.id, &true_req()).await?;
            if r.exit_code != 0 {
                bail!("/bin/true exited {}", r.exit_code);
            }
            if i >= warmup {
                round_trip.push(t.elapsed());
            }
        }
        client.destroy(&sb.id).await?;
        Ok((cycles, round_trip))
    })
}

/// `(create+exec+destroy, create → first exec output)` samples with a warm pool of `base`:
/// before each (untimed), wait until the pool is full and idle, so every sample is a claim
/// (the refill it triggers runs during the sample, as it would on a busy daemon).
/// Returns an error if a sample missed the pool.
pub fn run_pooled(
    state: &Path,
    agent: &Path,
    warmup: usize,
    iterations: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_daemon, client) = start_daemon(&rt, state, agent, "pooled", 2)?;
    rt.block_on(async {
        let ready = || async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let info = client.info().await?;
                if info
                    .pools
                    .first()
                    .is_some_and(|p| p.ready == p.size && p.starting == 0)
                {
                    return Ok::<_, anyhow::Error>(info.pools[0].claimed);
                }
                if Instant::now() > deadline {
                    bail!("the pool never refilled: {:?}", info.pools);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (mut cycles, mut first) = (Vec::new(), Vec::new());
        for i in 0..warmup + iterations {
            ready().await?;
            let t = Instant::now();
            let sb = client.create(&CreateSandboxRequest::default()).await?;
            let r = client.exec(&sb.id, &true_req()).await?;
            let to_first = t.elapsed();
            client.destroy(&sb.id).await?;
            if r.exit_code != 0 {
                bail!("/bin/true exited {}", r.exit_code);
            }
            if i >= warmup {
                cycles.push(t.elapsed());
                first.push(to_first);
            }
        }
        let info = client.info().await?;
        let p = info.pools.first().context("no pool in /v1/info")?;
        if p.misses > 0 {
            bail!("{} creates missed the pool", p.misses);
        }
        Ok((cycles, first))
    })
}

/// `(template create → first exec, base create → first exec)` samples through one daemon
/// without pools, interleaved so both see the same load. The template (`base` plus a setup
/// that writes and byte-compiles a few files: one captured layer per mount) is built first,
/// untimed.
pub fn run_template(
    state: &Path,
    agent: &Path,
    warmup: usize,
    iterations: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_daemon, client) = start_daemon(&rt, state, agent, "template", 0)?;
    rt.block_on(async {
        let spec = prism_types::templates::TemplateSpec {
            name: "bench".into(),
            run: vec![
                "mkdir -p /srv/bench && echo 'print(1)' > /srv/bench/app.py".into(),
                "python3 -m compileall -q /srv/bench".into(),
            ],
            ..Default::default()
        };
        let t = client.create_template(&spec).await?;
        let (mut tpl, mut base) = (Vec::new(), Vec::new());
        for i in 0..warmup + iterations {
            for (name, out) in [(t.reference.as_str(), &mut tpl), ("base", &mut base)] {
                let start = Instant::now();
                let sb = client
                    .create(&CreateSandboxRequest {
                        template: Some(name.into()),
                        ..Default::default()
                    })
                    .await?;
                let r = client.exec(&sb.id, &true_req()).await?;
                let first = start.elapsed();
                client.destroy(&sb.id).await?;
                if r.exit_code != 0 {
                    bail!("/bin/true exited {} in {name}", r.exit_code);
                }
                if i >= warmup {
                    out.push(first);
                }
            }
        }
        Ok((tpl, base))
    })
}

/// Wait until the daemon's first pool is full and no member is starting.
pub async fn pool_full(client: &prism_client::Client, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let info = client.info().await?;
        if info
            .pools
            .first()
            .is_some_and(|p| p.ready == p.size && p.starting == 0)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool never refilled: {:?}", info.pools);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
