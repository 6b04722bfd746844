//! Throughput through a real prismd: `N` concurrent clients creating sandboxes (with and
//! without a warm pool) and running execs, for each `N` asked for.
//!
//! Creates: each round releases `N` clients at once (a barrier), each makes one
//! `POST /v1/sandboxes`; the round's creates/s is `N` over the time until the last one
//! returned. The sandboxes are then destroyed (untimed) and, with a pool, the next round waits
//! until the pool is full again, so every round measures `N` simultaneous creates against a
//! full pool (whose refill then runs during the round, as on a busy daemon). The pool holds
//! the largest `N`.
//!
//! Execs: `N` sandboxes, one client each, every client runs `/bin/true` (buffered exec)
//! `execs` times back to back; execs/s is all execs over the wall time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prism_types::CreateSandboxRequest;

use crate::api::{pool_full, start_daemon, true_req};
use crate::stats::Row;

/// One line of the throughput table.
pub struct Line {
    pub what: String,
    pub clients: usize,
    pub per_s: f64,
    pub latency: Row,
}

async fn destroy_all(client: &prism_client::Client, ids: Vec<String>) -> Result<()> {
    let mut tasks = Vec::new();
    for id in ids {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.destroy(&id).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One round of `n` simultaneous creates: (latencies, wall time, ids).
async fn create_round(
    client: &prism_client::Client,
    n: usize,
) -> Result<(Vec<Duration>, Duration, Vec<String>)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let c = client.clone();
        let b = barrier.clone();
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            let t = Instant::now();
            let sb = c.create(&CreateSandboxRequest::default()).await;
            (t.elapsed(), sb)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let (mut lat, mut ids, mut err) = (Vec::new(), Vec::new(), None);
    for t in tasks {
        let (d, sb) = t.await?;
        match sb {
            Ok(sb) => {
                lat.push(d);
                ids.push(sb.id);
            }
            Err(e) => err = Some(e),
        }
    }
    let wall = start.elapsed();
    if let Some(e) = err {
        destroy_all(client, ids).await?;
        bail!("a create failed: {e}");
    }
    Ok((lat, wall, ids))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Creates/s and create latency for each `N`, through a daemon with a pool of the largest `N`
/// (`pooled`) or without one.
pub fn creates(
    state: &Path,
    agent: &Path,
    clients: &[usize],
    rounds: usize,
    pooled: bool,
) -> Result<Vec<Line>> {
    let rt = runtime()?;
    let max = clients.iter().copied().max().unwrap_or(1);
    let name = if pooled { "tput-pooled" } else { "tput-cold" };
    let (_daemon, client) = start_daemon(&rt, state, agent, name, if pooled { max } else { 0 })?;
    let what = if pooled {
        "creates (warm pool)"
    } else {
        "creates (cold)"
    };
    rt.block_on(async {
        let mut out = Vec::new();
        for &n in clients {
            let (mut lat, mut wall) = (Vec::new(), Duration::ZERO);
            // One unmeasured round first.
            for round in 0..=rounds {
                if pooled {
                    pool_full(&client, Duration::from_secs(120)).await?;
                }
                let (l, w, ids) = create_round(&client, n).await?;
                destroy_all(&client, ids).await?;
                if round > 0 {
                    lat.extend(l);
                    wall += w;
                }
            }
            if pooled {
                let info = client.info().await?;
                let p = info.pools.first().context("no pool in /v1/info")?;
                if p.misses > 0 {
                    bail!("{} creates missed the pool", p.misses);
                }
            }
            out.push(Line {
                what: what.into(),
                clients: n,
                per_s: (n * rounds) as f64 / wall.as_secs_f64(),
                latency: Row::new(what, lat),
            });
        }
        Ok(out)
    })
}

/// Execs/s and exec latency for each `N` (one sandbox per client).
pub fn execs(state: &Path, agent: &Path, clients: &[usize], execs: usize) -> Result<Vec<Line>> {
    let rt = runtime()?;
    let (_daemon, client) = start_daemon(&rt, state, agent, "tput-exec", 0)?;
    rt.block_on(async {
        let mut out = Vec::new();
        for &n in clients {
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(client.create(&CreateSandboxRequest::default()).await?.id);
            }
            let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
            let mut tasks = Vec::new();
            for id in &ids {
                let (c, b, id) = (client.clone(), barrier.clone(), id.clone());
                tasks.push(tokio::spawn(async move {
                    b.wait().await;
                    let mut lat = Vec::with_capacity(execs);
                    for _ in 0..execs {
                        let t = Instant::now();
                        let r = c.exec(&id, &true_req()).await?;
                        if r.exit_code != 0 {
                            bail!("/bin/true exited {}", r.exit_code);
                        }
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                }));
            }
            barrier.wait().await;
            let start = Instant::now();
            let mut lat = Vec::new();
            let mut err = None;
            for t in tasks {
                match t.await? {
                    Ok(l) => lat.extend(l),
                    Err(e) => err = Some(e),
                }
            }
            let wall = start.elapsed();
            destroy_all(&client, ids).await?;
            if let Some(e) = err {
                return Err(e);
            }
            out.push(Line {
                what: "execs".into(),
                clients: n,
                per_s: lat.len() as f64 / wall.as_secs_f64(),
                latency: Row::new("execs", lat),
            });
        }
        Ok(out)
    })
}

pub fn print(lines: &[Line]) {
    println!(
        "\n{:<22} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "throughput", "clients", "ops/s", "p50 ms", "p95 ms", "p99 ms"
    );
    for l in lines {
        let ms = |p| l.latency.percentile(p).as_secs_f64() * 1e3;
        println!(
            "{:<22} {:>8} {:>10.1} {:>10.2} {:>10.2} {:>10.2}",
            l.what,
            l.clients,
            l.per_s,
            ms(0.5),
            ms(0.95),
            ms(0.99)
        );
    }
}
