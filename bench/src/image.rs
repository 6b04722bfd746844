//! The `image` row: the same create → first exec → destroy cycle as `prism`, but over the root
//! filesystem of an OCI image already in the store (imported here from an OCI layout of one
//! uncompressed layer holding busybox-static and its applet links), so the two rows compare
//! an image sandbox with a `base` one. The daemon's resolver (a JSON read and a pin write per
//! create) is not in this row; `api` measures the daemon path with `base`.

use std::path::Path;

use anyhow::{Context, Result};
use prism_core::RootfsSpec;
use prism_images::{Digest, ImageStore};

fn put(dir: &Path, data: &[u8]) -> Result<(Digest, usize)> {
    let d = Digest::of(data);
    let p = dir.join("blobs/sha256");
    std::fs::create_dir_all(&p)?;
    std::fs::write(p.join(d.hex()), data)?;
    Ok((d, data.len()))
}

fn busybox_layer() -> Result<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox")
        .context("/bin/busybox (apt-get install busybox-static) is the image's content")?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        h.set_path(path)?;
        h.set_cksum();
        b.append(&h, data)
    };
    add("bin/", tar::EntryType::Directory, b"", None)?;
    add("bin/busybox", tar::EntryType::Regular, &busybox, None)?;
    for applet in ["sh", "true", "cat", "ls", "echo"] {
        add(
            &format!("bin/{applet}"),
            tar::EntryType::Symlink,
            b"",
            Some("busybox"),
        )?;
    }
    Ok(b.into_inner()?)
}

/// Import the bench image into the store under `state` and return its root filesystem.
pub fn rootfs(state: &Path) -> Result<RootfsSpec> {
    let layout = state.join("bench-layout");
    let layer = busybox_layer()?;
    let (layer_d, layer_n) = put(&layout, &layer)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_d.to_string()]},
    }))?;
    let (config_d, config_n) = put(&layout, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_d.to_string(), "size": config_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_d.to_string(), "size": layer_n}],
    }))?;
    let (manifest_d, manifest_n) = put(&layout, &manifest)?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_d.to_string(), "size": manifest_n}],
        }))?,
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let store = ImageStore::open(state)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rec = rt.block_on(prism_images::import_oci_layout(
        &store,
        &layout,
        Some("bench.local/busybox:1"),
    ))?;
    Ok(prism_images::rootfs(&store, &rec)?)
}
