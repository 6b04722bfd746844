//! Streaming: bytes/s of a sandbox's stdout delivered to a WebSocket client
//! (`GET /v1/sandboxes/{id}/exec/ws` of a real prismd running `head -c N /dev/zero`), against
//! the same bytes through a pipe on the host (`head -c N /dev/zero | cat > /dev/null`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use prism_client::WsEvent;
use prism_types::CreateSandboxRequest;
use prism_types::ws::{ExecStart, ServerEvent};

use crate::api::start_daemon;

/// `(host samples, WebSocket samples)`: the time to move `bytes` each way, `runs` times.
pub fn run(
    state: &Path,
    agent: &Path,
    bytes: u64,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut host = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {bytes} /dev/zero | cat > /dev/null"))
            .status()?;
        if !st.success() {
            bail!("the host pipe failed: {st}");
        }
        host.push(t.elapsed());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_daemon, client) = start_daemon(&rt, state, agent, "stream", 0)?;
    let ws = rt.block_on(async {
        let sb = client.create(&CreateSandboxRequest::default()).await?;
        let mut out = Vec::new();
        for _ in 0..runs {
            let start = ExecStart {
                cmd: Some(vec![
                    "head".into(),
                    "-c".into(),
                    bytes.to_string(),
                    "/dev/zero".into(),
                ]),
                ..Default::default()
            };
            let t = Instant::now();
            let (_tx, mut rx) = client.exec_ws(&sb.id, &start).await?.split();
            let (mut got, mut code) = (0u64, None);
            while let Some(ev) = rx.next().await {
                match ev? {
                    WsEvent::Stdout(b) => got += b.len() as u64,
                    WsEvent::Event(ServerEvent::Exit { exit_code, .. }) => code = Some(exit_code),
                    _ => {}
                }
            }
            let d = t.elapsed();
            if code != Some(0) || got != bytes {
                bail!("the stream ended with {code:?} after {got} of {bytes} bytes");
            }
            out.push(d);
        }
        client.destroy(&sb.id).await?;
        Ok::<_, anyhow::Error>(out)
    })?;
    Ok((host, ws))
}

pub fn print(bytes: u64, host: &[Duration], ws: &[Duration]) {
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let mib_s = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9);
    let (h, w) = (median(host), median(ws));
    println!(
        "\n{:<34} {:>12} {:>10} {:>10}",
        "streaming stdout (median)", "MiB/s", "seconds", "vs host"
    );
    println!(
        "{:<34} {:>12.0} {:>10.3} {:>10}",
        "host: head | cat > /dev/null",
        mib_s(h),
        h.as_secs_f64(),
        "1.00x"
    );
    println!(
        "{:<34} {:>12.0} {:>10.3} {:>9.2}x",
        "sandbox → WebSocket client",
        mib_s(w),
        w.as_secs_f64(),
        mib_s(w) / mib_s(h)
    );
}
