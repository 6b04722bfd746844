//! prismctl: the Docker-style CLI of Prism, over prism-client. `--json` everywhere; `PRISM_API`
//! (or `--api`) points it at a daemon other than http://127.0.0.1:8008.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use futures_util::StreamExt;
use prism_client::Client;
use prism_types::{CreateSandboxRequest, Resources, Sandbox, SandboxState, SecurityOptions};

mod attach;
mod cli;
mod code;
mod cp;
mod image;
mod keys;
mod port;
mod template;

use cli::{Cli, Cmd, RunArgs};

/// Exit code of prismctl's own failures in `run` and `exec` (as Docker).
const EXIT_CLI_ERROR: u8 = 125;

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn parse_kv(items: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("invalid {what} {kv:?}: expected KEY=VALUE"),
        })
        .collect()
}

pub(crate) fn spinner(json: bool, msg: &str) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(80));
    pb
}

fn print_table(list: &[Sandbox]) {
    println!(
        "{:<32}  {:<20}  {:<9}  {:<8}  {:<24}  {:<20}  PORTS",
        "ID", "NAME", "STATE", "TEMPLATE", "CREATED", "EXPIRES"
    );
    for s in list {
        let ports: Vec<String> = s
            .publish
            .iter()
            .map(|p| {
                let ip = p.host_ip.as_deref().unwrap_or("127.0.0.1");
                if ip.contains(':') {
                    format!("[{ip}]:{}->{}", p.host_port, p.port)
                } else {
                    format!("{ip}:{}->{}", p.host_port, p.port)
                }
            })
            .chain(s.ports.iter().map(|p| p.to_string()))
            .collect();
        println!(
            "{:<32}  {:<20}  {:<9}  {:<8}  {:<24}  {:<20}  {}",
            s.id,
            s.name.as_deref().unwrap_or("-"),
            s.state,
            s.template,
            s.created_at,
            s.expires_at.as_deref().unwrap_or("never"),
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            }
        );
    }
}

fn create_request(a: &RunArgs, cmd: Option<Vec<String>>) -> anyhow::Result<CreateSandboxRequest> {
    Ok(CreateSandboxRequest {
        name: a.name.clone(),
        template: a.template.clone(),
        image: a.image.clone(),
        cmd,
        cwd: a.workdir.clone(),
        user: a.user.clone(),
        env: parse_kv(&a.env, "environment variable")?,
        labels: parse_kv(&a.labels, "label")?,
        resources: Resources {
            cpus: a.cpus,
            memory_mb: a.memory,
            pids: a.pids,
            disk_mb: a.disk,
        },
        timeout_s: a.timeout,
        idle_timeout_s: a.idle_timeout,
        network: a.network.clone(),
        ports: a
            .ports
            .iter()
            .filter_map(|p| match p {
                cli::PortSpec::Proxy(p) => Some(*p),
                cli::PortSpec::Host(_) => None,
            })
            .collect(),
        publish: a
            .ports
            .iter()
            .filter_map(|p| match p {
                cli::PortSpec::Host(h) => Some(h.clone()),
                cli::PortSpec::Proxy(_) => None,
            })
            .collect(),
        security: (a.allow_ptrace || a.sysfs).then_some(SecurityOptions {
            allow_ptrace: a.allow_ptrace,
            sysfs: a.sysfs,
        }),
    })
}

async fn run(client: &Client, json: bool, a: RunArgs) -> anyhow::Result<u8> {
    let attached = !a.cmd.is_empty() && !a.detach;
    let main_cmd = (!a.cmd.is_empty() && a.detach).then(|| a.cmd.clone());
    let msg = match &a.image {
        Some(i) => format!("creating sandbox from {i} (pulling it if needed)…"),
        None => "creating sandbox…".to_string(),
    };
    let pb = spinner(json, &msg);
    let sb = client.create(&create_request(&a, main_cmd)?).await;
    pb.finish_and_clear();
    let sb = sb?;
    if !json {
        port::announce(client, &sb);
    }
    if !attached {
        if json {
            print_json(&sb)?;
        } else {
            println!("{}", sb.id);
        }
        return Ok(0);
    }
    let env = BTreeMap::new();
    let code = attach::run_attached(
        client,
        &sb.id,
        &a.cmd,
        env,
        None,
        None,
        a.interactive,
        a.tty,
    )
    .await;
    if a.rm {
        if let Err(e) = client.destroy(&sb.id).await {
            eprintln!("prismctl: could not remove sandbox {}: {e}", sb.id);
        }
    } else if !json {
        eprintln!(
            "(sandbox {} keeps running; `prismctl rm -f {}` removes it)",
            sb.id, sb.id
        );
    }
    code
}

async fn lifecycle_many(
    ids: &[String],
    json: bool,
    f: impl AsyncFn(&str) -> Result<Sandbox, prism_client::ClientError>,
) -> anyhow::Result<u8> {
    if ids.is_empty() {
        anyhow::bail!("name at least one sandbox");
    }
    let mut failed = 0;
    let mut out = Vec::new();
    for id in ids {
        match f(id).await {
            Ok(sb) => {
                if !json {
                    println!("{}", sb.id);
                }
                out.push(sb);
            }
            Err(e) => {
                eprintln!("prismctl: {id}: {e}");
                failed += 1;
            }
        }
    }
    if json {
        print_json(&out)?;
    }
    Ok(u8::from(failed > 0))
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let json = cli.json;
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "prismctl",
            &mut std::io::stdout(),
        );
        return Ok(0);
    }
    let client = Client::new(&cli.api)?;
    let key = keys::api_key(&cli, &client);
    let client = client.with_api_key(key);
    match cli.cmd {
        Cmd::ApiKey(c) => keys::api_key_cmd(&client, json, c).await.map(|()| 0),
        Cmd::Secret(c) => keys::secret_cmd(&client, json, c).await.map(|()| 0),
        Cmd::Audit {
            sandbox,
            after,
            limit,
        } => keys::audit(&client, json, sandbox, after, limit)
            .await
            .map(|()| 0),
        Cmd::Run(a) => run(&client, json, a).await,
        Cmd::Code(a) => code::run(&client, json, a).await,
        Cmd::Exec(a) => {
            let env = parse_kv(&a.env, "environment variable")?;
            attach::run_attached(
                &client,
                &a.id,
                &a.cmd,
                env,
                a.workdir,
                a.user,
                a.interactive,
                a.tty,
            )
            .await
        }
        Cmd::Cp { src, dest } => cp::copy(&client, &src, &dest, json).await.map(|()| 0),
        Cmd::Ls {
            state,
            label,
            quiet,
        } => {
            let list = client.list_all(state.as_deref(), label.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else if quiet {
                list.iter().for_each(|s| println!("{}", s.id));
            } else {
                print_table(&list);
            }
            Ok(0)
        }
        Cmd::Inspect { id } => {
            print_json(&client.get(&id).await?)?;
            Ok(0)
        }
        Cmd::Logs { id, follow, tail } => {
            let mut s = client.logs(&id, tail, follow).await?;
            let mut out = std::io::stdout();
            while let Some(chunk) = s.next().await {
                out.write_all(&chunk?)?;
                out.flush()?;
            }
            Ok(0)
        }
        Cmd::Stats { id } => {
            let m = client.metrics(&id).await?;
            if json {
                print_json(&m)?;
            } else {
                println!("CPU       {:.3} s", m.cpu_usage_ns as f64 / 1e9);
                let limit = m
                    .memory_limit_bytes
                    .map(|l| format!(" / {} MiB", l >> 20))
                    .unwrap_or_default();
                println!(
                    "MEMORY    {:.1} MiB{limit}",
                    m.memory_bytes as f64 / 1048576.0
                );
                println!("PIDS      {}", m.pids);
                println!("OOM KILLS {}", m.oom_kills);
                println!("DISK      {:.1} MiB", m.disk_bytes as f64 / 1048576.0);
                println!(
                    "BLOCK IO  {:.1} MiB read / {:.1} MiB written",
                    m.io_read_bytes as f64 / 1048576.0,
                    m.io_write_bytes as f64 / 1048576.0
                );
                if let Some(n) = m.network {
                    println!(
                        "NET RX    {} B ({} packets)\nNET TX    {} B ({} packets)",
                        n.rx_bytes, n.rx_packets, n.tx_bytes, n.tx_packets
                    );
                    if n.dns_dropped > 0 {
                        println!("DNS DROPPED {}", n.dns_dropped);
                    }
                    if n.proxy_refused > 0 {
                        println!("NAME PROXY REFUSED {}", n.proxy_refused);
                    }
                }
            }
            Ok(0)
        }
        Cmd::Network { id, mode } => {
            let sb = client.set_network(&id, &mode).await?;
            if json {
                print_json(&sb)?;
            } else {
                println!("{}\t{}", sb.id, sb.network);
            }
            Ok(0)
        }
        Cmd::Stop { ids } => lifecycle_many(&ids, json, async |id| client.stop(id).await).await,
        Cmd::Start { ids } => lifecycle_many(&ids, json, async |id| client.start(id).await).await,
        Cmd::Restart { ids } => {
            lifecycle_many(&ids, json, async |id| client.restart(id).await).await
        }
        Cmd::Rm { force, ids } => {
            lifecycle_many(&ids, json, async |id| {
                if !force {
                    let sb = client.get(id).await?;
                    if sb.state == SandboxState::Running {
                        return Err(prism_client::ClientError::Protocol(format!(
                            "sandbox {id} is running: stop it first or use `prismctl rm -f`"
                        )));
                    }
                }
                client.destroy(id).await
            })
            .await
        }
        Cmd::Timeout { id, seconds } => {
            let sb = client.set_timeout(&id, seconds).await?;
            if json {
                print_json(&sb)?;
            } else {
                println!(
                    "{} expires {}",
                    sb.id,
                    sb.expires_at.as_deref().unwrap_or("never")
                );
            }
            Ok(0)
        }
        Cmd::Port { id, port } => port::show(&client, json, &id, port).await,
        Cmd::Info => {
            let info = client.info().await?;
            if json {
                print_json(&info)?;
            } else {
                println!("prismd {} at {}", info.version, client.base_url());
                println!("runtime:   {}", info.runtime);
                println!("state dir: {}", info.state_dir);
                for (state, n) in &info.sandboxes {
                    println!("{state:<10} {n}");
                }
                for p in &info.pools {
                    println!(
                        "pool {}: {}/{} ready, {} starting, {} claimed, {} misses, {} failures{}",
                        p.template,
                        p.ready,
                        p.size,
                        p.starting,
                        p.claimed,
                        p.misses,
                        p.failures,
                        if p.memory_pressure {
                            " (paused: host memory low)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(0)
        }
        Cmd::Image(c) => image::run(&client, json, c).await,
        Cmd::Template(c) => template::run(&client, json, c).await,
        Cmd::Completions { .. } => Ok(0),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let attached =
        matches!(&cli.cmd, Cmd::Exec(_)) || matches!(&cli.cmd, Cmd::Run(r) if !r.cmd.is_empty());
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prismctl: cannot start: {e}");
            return ExitCode::from(EXIT_CLI_ERROR);
        }
    };
    let result = rt.block_on(dispatch(cli));
    // Do not wait for a blocked stdin read.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                let body = match e.downcast_ref::<prism_client::ClientError>() {
                    Some(prism_client::ClientError::Api { error, .. }) => error.clone(),
                    _ => prism_types::ApiError::new("cli_error", format!("{e:#}")),
                };
                let _ = print_json(&body);
            }
            eprintln!("prismctl: {e:#}");
            ExitCode::from(if attached { EXIT_CLI_ERROR } else { 1 })
        }
    }
}
