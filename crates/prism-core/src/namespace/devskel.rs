//! The prepared `/dev` every sandbox shares: a host directory, made once per state directory,
//! holding the safe device nodes ([`DEVICES`], copies of the host's numbers), the mount points
//! of `pts` and `shm`, and the usual links ([`DEV_LINKS`]). Each sandbox gets it as one
//! idmapped read-only tree (the only tree whose device nodes work) with its own `devpts` and
//! `/dev/shm` mounted on top: one mount where a tmpfs and six bind mounts were, and one
//! superblock less per sandbox.
//!
//! A state directory on a `nodev` filesystem cannot hold usable device nodes: then there is no
//! skeleton and each sandbox gets the tmpfs `/dev` (see [`super::plan::PlanOptions`]).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::plan::{DEV_LINKS, DEVICES};

/// Bump when the skeleton's content changes.
const NAME: &str = ".dev-v1";

/// The skeleton under `sandboxes_dir`, built if missing; `None` (and a warning) if this
/// filesystem cannot have one.
pub(super) fn ensure(sandboxes_dir: &Path) -> Option<PathBuf> {
    match build(sandboxes_dir) {
        Ok(dir) => Some(dir),
        Err(error) => {
            tracing::warn!(message = "no prepared /dev: every sandbox gets a tmpfs /dev with bind-mounted devices", dir = %sandboxes_dir.display(), %error);
            None
        }
    }
}

fn build(sandboxes_dir: &Path) -> io::Result<PathBuf> {
    if prism_sys::fs::is_nodev(sandboxes_dir)? {
        return Err(io::Error::other(
            "the state directory is on a nodev filesystem",
        ));
    }
    let dir = sandboxes_dir.join(NAME);
    let done = sandboxes_dir.join(format!("{NAME}.complete"));
    if done.exists() {
        return Ok(dir);
    }
    let tmp = sandboxes_dir.join(format!("{NAME}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    for name in DEVICES {
        let host = fs::metadata(Path::new("/dev").join(name))?;
        let node = tmp.join(name);
        prism_sys::fs::mknod_char(&node, 0o666, host.rdev())?;
        fs::set_permissions(&node, fs::Permissions::from_mode(0o666))?;
    }
    for (name, mode) in [("pts", 0o755), ("shm", 0o1777)] {
        let d = tmp.join(name);
        fs::create_dir(&d)?;
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
    }
    for (name, target) in DEV_LINKS {
        symlink(target, tmp.join(name))?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir)?;
    fs::write(&done, "")?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skeleton_holds_the_safe_devices_and_links_only() {
        if !nix_is_root() {
            eprintln!(
                "SKIP: the_skeleton_holds_the_safe_devices_and_links_only: NOT run: mknod needs root"
            );
            return;
        }
        let root = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let Some(dir) = ensure(root.path()) else {
            eprintln!("SKIP: /var/tmp is nodev here");
            return;
        };
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = DEVICES
            .iter()
            .chain(DEV_LINKS.iter().map(|(n, _)| n))
            .chain(["pts", "shm"].iter())
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names, want);
        for name in DEVICES {
            let md = fs::symlink_metadata(dir.join(name)).expect("node");
            let host = fs::metadata(Path::new("/dev").join(name)).expect("host node");
            assert_eq!(md.rdev(), host.rdev(), "{name}");
            assert_eq!(md.mode() & 0o7777, 0o666, "{name}");
        }
        assert_eq!(
            fs::read_link(dir.join("ptmx")).expect("ptmx"),
            PathBuf::from("pts/ptmx")
        );
        // A second call reuses it.
        assert_eq!(ensure(root.path()), Some(dir));
    }

    fn nix_is_root() -> bool {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }
}
