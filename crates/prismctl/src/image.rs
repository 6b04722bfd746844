//! `prismctl image …`: pull, list, remove, prune and import OCI images.

use std::io::Write;
use std::path::Path;

use prism_client::Client;
use prism_types::images::{Image, PullImageRequest, PullImageResult};

use crate::cli::ImageCmd;
use crate::{print_json, spinner};

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn print_table(images: &[Image]) {
    println!(
        "{:<60}  {:<12}  {:>6}  SIZE",
        "REFERENCE", "DIGEST", "LAYERS"
    );
    for i in images {
        println!(
            "{:<60}  {:<12}  {:>6}  {}",
            i.reference,
            short(&i.digest),
            i.layers,
            size(i.size_bytes)
        );
    }
}

fn report(json: bool, what: &str, r: &PullImageResult) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "{what} {} ({}, {} layers, {}; {} blobs downloaded)",
        r.image.reference,
        r.image.digest,
        r.image.layers,
        size(r.image.size_bytes),
        r.blobs_downloaded
    );
    Ok(())
}

/// A tar of `dir` (an OCI image layout) in memory.
fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    Ok(b.into_inner()?)
}

pub async fn run(client: &Client, json: bool, cmd: ImageCmd) -> anyhow::Result<u8> {
    match cmd {
        ImageCmd::Pull {
            reference,
            username,
            password,
        } => {
            if password.is_some() && username.is_none() {
                anyhow::bail!("--password needs --username");
            }
            let pb = spinner(json, &format!("pulling {reference}…"));
            let r = client
                .pull_image(&PullImageRequest {
                    reference,
                    username,
                    password,
                })
                .await;
            pb.finish_and_clear();
            report(json, "pulled", &r?)?;
        }
        ImageCmd::Ls { quiet } => {
            let list = client.list_images().await?;
            if json {
                print_json(&list)?;
            } else if quiet {
                list.images.iter().for_each(|i| println!("{}", i.reference));
            } else {
                print_table(&list.images);
            }
        }
        ImageCmd::Rm { references } => {
            if references.is_empty() {
                anyhow::bail!("name at least one image (see `prismctl image ls`)");
            }
            let mut failed = false;
            for r in &references {
                match client.remove_image(r).await {
                    Ok(()) if !json => println!("{r}"),
                    Ok(()) => {}
                    Err(e) => {
                        eprintln!("prismctl: {r}: {e}");
                        failed = true;
                    }
                }
            }
            return Ok(u8::from(failed));
        }
        ImageCmd::Prune => {
            let r = client.prune_images().await?;
            if json {
                print_json(&r)?;
            } else {
                println!("removed {} layers and {} blobs", r.layers, r.blobs);
            }
        }
        ImageCmd::Import { path, reference } => {
            let data = if path.is_dir() {
                if !path.join("oci-layout").is_file() {
                    anyhow::bail!(
                        "{} is a directory but not an OCI image layout (no oci-layout file)",
                        path.display()
                    );
                }
                tar_dir(&path)?
            } else {
                std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
            };
            let pb = spinner(json, &format!("importing {}…", path.display()));
            let r = client.import_image(data, reference.as_deref()).await;
            pb.finish_and_clear();
            report(json, "imported", &r?)?;
        }
    }
    std::io::stdout().flush()?;
    Ok(0)
}
