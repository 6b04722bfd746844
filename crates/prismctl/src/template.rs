//! `prismctl template …`: build (create), list, inspect and remove versioned templates.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use prism_client::Client;
use prism_types::templates::{BuildEvent, Template, TemplateSpec};
use prism_types::{DEFAULT_TEMPLATE, Resources};

use crate::{parse_kv, print_json};

// Parsed once per invocation: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Build a template (a new version when NAME exists): start from --from, run each --run
    /// once, keep the result as a read-only layer.
    Create(CreateArgs),
    /// List templates and their versions.
    Ls {
        /// Only print NAME:VERSION.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a version (`NAME` = its newest) as JSON.
    Inspect { reference: String },
    /// Remove versions (`NAME:VERSION`, or `NAME` for all); refused while a sandbox uses one.
    Rm { references: Vec<String> },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Template name (or `name` in the --file).
    pub name: Option<String>,
    /// Read the definition from a TOML file (the fields of POST /v1/templates); flags win.
    #[arg(short, long, value_name = "template.toml")]
    pub file: Option<PathBuf>,
    /// Source: `base` (default) or an OCI image reference.
    #[arg(long, value_name = "IMAGE|base")]
    pub from: Option<String>,
    /// A setup command (shell line), run once at build time (repeatable, in order).
    #[arg(long = "run", value_name = "CMD")]
    pub run: Vec<String>,
    /// Default environment variable K=V (repeatable).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Default CPU cores.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Default memory limit in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Default size limit of the writable layer in MiB.
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u64>,
    /// Default process limit.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Default exposed port (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Default main process (shell line).
    #[arg(long, value_name = "CMD")]
    pub start: Option<String>,
    /// Default working directory of the template's sandboxes.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Default user of the template's sandboxes.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Network of the build: none (default) | open | allow=…
    #[arg(long)]
    pub network: Option<String>,
    /// Limit of each setup command in seconds (default 600).
    #[arg(long, value_name = "SECONDS")]
    pub build_timeout: Option<u64>,
}

fn spec_of(a: CreateArgs) -> anyhow::Result<TemplateSpec> {
    let mut spec = match &a.file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => TemplateSpec::default(),
    };
    if let Some(n) = a.name {
        spec.name = n;
    }
    if spec.name.is_empty() {
        anyhow::bail!("give the template a NAME (or `name` in --file)");
    }
    spec.from = a.from.or(spec.from);
    spec.run.extend(a.run);
    spec.env.extend(parse_kv(&a.env, "environment variable")?);
    let r = spec.resources;
    spec.resources = Resources {
        cpus: a.cpus.or(r.cpus),
        memory_mb: a.memory.or(r.memory_mb),
        disk_mb: a.disk.or(r.disk_mb),
        pids: a.pids.or(r.pids),
    };
    if !a.ports.is_empty() {
        spec.ports = a.ports;
    }
    if let Some(s) = a.start {
        spec.start = Some(vec!["/bin/sh".into(), "-c".into(), s]);
    }
    spec.cwd = a.workdir.or(spec.cwd);
    spec.user = a.user.or(spec.user);
    spec.build_network = a.network.or(spec.build_network);
    spec.build_timeout_s = a.build_timeout.or(spec.build_timeout_s);
    Ok(spec)
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn built(t: &Template) {
    println!(
        "built {} from {} ({} layers, {})",
        t.reference,
        t.source.as_deref().unwrap_or(DEFAULT_TEMPLATE),
        t.layers.len(),
        size(t.size_bytes)
    );
}

/// Build with progress: a bar over the setup commands on a terminal, plain step lines on a
/// non-terminal stderr.
async fn create_with_progress(client: &Client, spec: &TemplateSpec) -> anyhow::Result<u8> {
    use futures_util::StreamExt;
    let tty = std::io::stderr().is_terminal();
    let pb = if tty {
        let pb = indicatif::ProgressBar::new(spec.run.len() as u64);
        let style =
            indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.enable_steady_tick(std::time::Duration::from_millis(100));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut events = client.create_template_stream(spec).await?;
    while let Some(ev) = events.next().await {
        match ev? {
            BuildEvent::Started { reference } => {
                pb.set_message(format!("building {reference}"));
                if !tty {
                    eprintln!("building {reference}");
                }
            }
            BuildEvent::Step {
                index,
                total,
                command,
            } => {
                pb.set_position(index as u64);
                pb.set_message(command.clone());
                if !tty {
                    eprintln!("step {}/{total}: {command}", index + 1);
                }
            }
            BuildEvent::Output { data } => {
                if tty {
                    pb.suspend(|| eprint!("{data}"));
                }
            }
            BuildEvent::Capturing => {
                pb.set_position(spec.run.len() as u64);
                pb.set_message("capturing the layer");
            }
            BuildEvent::Done { template } => {
                pb.finish_and_clear();
                built(&template);
                return Ok(0);
            }
            BuildEvent::Error { code, message } => {
                pb.finish_and_clear();
                anyhow::bail!("{message} ({code})");
            }
        }
    }
    pb.finish_and_clear();
    anyhow::bail!("the daemon ended the build stream without a result")
}

fn print_table(list: &[Template]) {
    println!(
        "{:<32}  {:<8}  {:<40}  {:>10}  CREATED",
        "TEMPLATE", "STATUS", "SOURCE", "SIZE"
    );
    for t in list {
        println!(
            "{:<32}  {:<8}  {:<40}  {:>10}  {}",
            t.reference,
            t.status.as_str(),
            t.source
                .as_deref()
                .or(t.spec.from.as_deref())
                .unwrap_or(DEFAULT_TEMPLATE),
            size(t.size_bytes),
            t.created_at
        );
    }
}

pub async fn run(client: &Client, json: bool, cmd: TemplateCmd) -> anyhow::Result<u8> {
    match cmd {
        TemplateCmd::Create(a) => {
            let spec = spec_of(a)?;
            if json {
                print_json(&client.create_template(&spec).await?)?;
                return Ok(0);
            }
            create_with_progress(client, &spec).await
        }
        TemplateCmd::Ls { quiet } => {
            let list = client.list_templates().await?;
            if json {
                print_json(&list)?;
            } else if quiet {
                for t in &list.templates {
                    println!("{}", t.reference);
                }
            } else {
                print_table(&list.templates);
            }
            Ok(0)
        }
        TemplateCmd::Inspect { reference } => {
            print_json(&client.get_template(&reference).await?)?;
            Ok(0)
        }
        TemplateCmd::Rm { references } => {
            if references.is_empty() {
                anyhow::bail!("name the templates to remove (NAME:VERSION or NAME)");
            }
            let mut removed = Vec::new();
            for r in &references {
                removed.extend(client.remove_template(r).await?.templates);
            }
            if json {
                print_json(&removed)?;
            } else {
                for t in &removed {
                    println!("removed {}", t.reference);
                }
            }
            Ok(0)
        }
    }
}
