//! `prismctl api-key create|ls|revoke`, `prismctl audit`, and where the API key comes from.

use std::path::PathBuf;

use clap::Subcommand;
use prism_client::Client;
use prism_types::auth::CreateApiKeyRequest;

use crate::cli::Cli;
use crate::print_json;

#[derive(Debug, Subcommand)]
pub enum ApiKeyCmd {
    /// Make a key and print it (shown once).
    Create {
        /// A label for humans.
        name: String,
        /// Limit the key to this project (default: an admin key).
        #[arg(long)]
        project: Option<String>,
    },
    /// List keys (never their secret).
    Ls,
    /// Revoke keys; they are refused from the next request on.
    Revoke { ids: Vec<String> },
}

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Set a secret; without VALUE, it is read from stdin (keeps it out of shell history).
    Set {
        name: String,
        value: Option<String>,
        /// Project (admin keys; a project key always sets its own).
        #[arg(long)]
        project: Option<String>,
    },
    /// List secret names (values are never shown).
    Ls {
        #[arg(long)]
        project: Option<String>,
    },
    /// Remove secrets.
    Rm {
        names: Vec<String>,
        #[arg(long)]
        project: Option<String>,
    },
}

pub async fn secret_cmd(client: &Client, json: bool, cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set {
            name,
            value,
            project,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)?;
                    v.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            client.set_secret(&name, &value, project.as_deref()).await?;
        }
        SecretCmd::Ls { project } => {
            let list = client.list_secrets(project.as_deref()).await?;
            if json {
                print_json(&list)?;
            } else {
                println!("{:<16}  {:<32}  UPDATED", "PROJECT", "NAME");
                for s in list {
                    println!("{:<16}  {:<32}  {}", s.project, s.name, s.updated_at);
                }
            }
        }
        SecretCmd::Rm { names, project } => {
            if names.is_empty() {
                anyhow::bail!("name the secrets to remove (see `prismctl secret ls`)");
            }
            for n in names {
                client.remove_secret(&n, project.as_deref()).await?;
            }
        }
    }
    Ok(())
}

/// Where prismd keeps its state on this host by default, most specific first.
fn state_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PRISM_STATE_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/var/lib/prism"));
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(x).join("prism"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".local/state/prism"));
    }
    dirs
}

/// `--api-key` / `$PRISM_API_KEY`, else — only for a daemon on this host's loopback — the
/// bootstrap admin key prismd wrote to its state directory.
pub fn api_key(cli: &Cli, client: &Client) -> Option<String> {
    if let Some(k) = cli.api_key.clone().filter(|k| !k.is_empty()) {
        return Some(k);
    }
    let host = client.base_url().host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if !local {
        return None;
    }
    state_dirs().into_iter().find_map(|d| {
        let text = std::fs::read_to_string(d.join("admin.key")).ok()?;
        Some(text.trim().to_string()).filter(|k| !k.is_empty())
    })
}

pub async fn api_key_cmd(client: &Client, json: bool, cmd: ApiKeyCmd) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCmd::Create { name, project } => {
            let k = client
                .create_api_key(&CreateApiKeyRequest { name, project })
                .await?;
            if json {
                print_json(&k)?;
            } else {
                eprintln!(
                    "created API key {} ({}); it is shown only now:",
                    k.info.id,
                    k.info
                        .project
                        .as_deref()
                        .map_or("admin".to_string(), |p| format!("project {p}"))
                );
                println!("{}", k.key);
                if !k.e2b_key.is_empty() {
                    eprintln!(
                        "the same key for E2B SDKs that want e2b_… keys: {}",
                        k.e2b_key
                    );
                }
            }
        }
        ApiKeyCmd::Ls => {
            let keys = client.list_api_keys().await?;
            if json {
                print_json(&keys)?;
            } else {
                println!(
                    "{:<12}  {:<20}  {:<16}  {:<24}  REVOKED",
                    "ID", "NAME", "PROJECT", "CREATED"
                );
                for k in keys {
                    println!(
                        "{:<12}  {:<20}  {:<16}  {:<24}  {}",
                        k.id,
                        k.name,
                        k.project.as_deref().unwrap_or("(admin)"),
                        k.created_at,
                        k.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        ApiKeyCmd::Revoke { ids } => {
            if ids.is_empty() {
                anyhow::bail!("name the key ids to revoke (see `prismctl api-key ls`)");
            }
            for id in ids {
                client.revoke_api_key(&id).await?;
                if !json {
                    println!("{id}");
                }
            }
        }
    }
    Ok(())
}

pub async fn audit(
    client: &Client,
    json: bool,
    sandbox: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let recs = client.audit(sandbox.as_deref(), after, limit).await?;
    if json {
        return print_json(&recs);
    }
    println!(
        "{:<6}  {:<24}  {:<12}  {:<12}  {:<6}  {:<32}  ACTION",
        "SEQ", "AT", "KEY", "PROJECT", "STATUS", "SANDBOX"
    );
    for r in recs {
        println!(
            "{:<6}  {:<24}  {:<12}  {:<12}  {:<6}  {:<32}  {}",
            r.seq,
            r.at,
            r.key_id.as_deref().unwrap_or("-"),
            r.project.as_deref().unwrap_or("-"),
            r.status,
            r.sandbox_id.as_deref().unwrap_or("-"),
            r.action
        );
    }
    Ok(())
}
