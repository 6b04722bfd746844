//! `prismctl image …`: pull, list, remove, prune and import OCI images.

use std::io::{IsTerminal, Write};
use std::path::Path;

use prism_client::Client;
use prism_types::images::{Image, PullEvent, PullImageRequest, PullImageResult};

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

/// Pull with one progress bar per layer being downloaded (stderr is a terminal).
async fn pull_with_bars(
    client: &Client,
    req: &PullImageRequest,
) -> anyhow::Result<PullImageResult> {
    use futures_util::StreamExt;
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let spin = bars.add(spinner(false, &format!("pulling {}…", req.reference)));
    let mut layers: std::collections::HashMap<String, indicatif::ProgressBar> =
        std::collections::HashMap::new();
    let mut events = client.pull_image_stream(req).await?;
    let mut result = None;
    while let Some(ev) = events.next().await {
        match ev? {
            PullEvent::Progress {
                layer,
                bytes,
                total,
            } => {
                let pb = layers.entry(layer.clone()).or_insert_with(|| {
                    let pb = bars.add(indicatif::ProgressBar::new(total));
                    pb.set_style(style.clone());
                    pb.set_prefix(short(&layer).to_string());
                    pb
                });
                pb.set_position(bytes);
            }
            PullEvent::Done { result: r } => result = Some(r),
            PullEvent::Error { code, message } => {
                spin.finish_and_clear();
                anyhow::bail!("{message} ({code})");
            }
        }
    }
    spin.finish_and_clear();
    for pb in layers.values() {
        pb.finish();
    }
    result.ok_or_else(|| anyhow::anyhow!("the daemon ended the pull stream without a result"))
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
            let req = PullImageRequest {
                reference,
                username,
                password,
            };
            if json || !std::io::stderr().is_terminal() {
                let r = client.pull_image(&req).await?;
                report(json, "pulled", &r)?;
            } else {
                let r = pull_with_bars(client, &req).await?;
                report(false, "pulled", &r)?;
            }
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
