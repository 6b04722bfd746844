//! The writable layers are mounted with overlay's `volatile` option (see `plan.rs`): overlay
//! never syncs the upper filesystem, so a sandbox's teardown no longer runs `syncfs` on the
//! host filesystem holding every sandbox's layers (~9 ms per overlay on this machine, and the
//! next start's directory work stalled behind it). In exchange, overlay leaves
//! `<workdir>/work/incompat/volatile` behind and refuses to mount that layer again while it is
//! there: writes since that mount were never synced, so after a crash the layer may be
//! inconsistent.
//!
//! Within one boot nothing is lost (the page cache is what the next mount reads), so:
//! - `stop` syncs the layers' filesystem and clears the markers: a stopped sandbox survives a
//!   host crash as it did before;
//! - a start of an existing sandbox clears them when the host has not rebooted since that
//!   sandbox's last start (the boot id is recorded next to its id range). A marker from an
//!   earlier boot means the host went down while the sandbox ran (a stop would have cleared
//!   it): that start is refused, the layer may be inconsistent (destroy it).
//!
//! Destroy needs neither: the layers go to the trash.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::plan::SandboxDirs;
use crate::runtime::RuntimeError;

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unreadable.
pub(super) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The markers overlay left in the sandbox's work directories.
fn markers(dirs: &SandboxDirs) -> Vec<PathBuf> {
    (0..)
        .map(|i| dirs.work(i))
        .take_while(|w| w.is_dir())
        .map(|w| w.join("work").join("incompat"))
        .filter(|m| m.symlink_metadata().is_ok())
        .collect()
}

fn clear(markers: &[PathBuf]) -> io::Result<()> {
    for m in markers {
        match fs::remove_dir_all(m) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// After the sandbox's processes are gone (stop): make its writes durable, then clear the
/// markers so the next start mounts the layers again.
pub(super) fn settle(dirs: &SandboxDirs) -> Result<(), RuntimeError> {
    let found = markers(dirs);
    if found.is_empty() {
        return Ok(());
    }
    prism_sys::fs::syncfs(&dirs.layers()).map_err(|source| RuntimeError::Sys {
        op: "syncing the writable layers",
        source,
    })?;
    clear(&found).map_err(|source| RuntimeError::Sys {
        op: "clearing the overlay's volatile marker",
        source,
    })
}

/// Before a start of an existing sandbox whose last start was in boot `recorded`: clear the
/// markers if that was this boot (`current`), refuse the start if it was not.
pub(super) fn reuse(
    id: &str,
    dirs: &SandboxDirs,
    recorded: Option<&str>,
    current: &str,
) -> Result<(), RuntimeError> {
    let found = markers(dirs);
    if found.is_empty() {
        return Ok(());
    }
    if recorded != Some(current) || current.is_empty() {
        return Err(RuntimeError::StartFailed(format!(
            "the host went down while sandbox {id} was running; its writable layer may be \
             inconsistent (destroy the sandbox)"
        )));
    }
    clear(&found).map_err(|source| RuntimeError::Sys {
        op: "clearing the overlay's volatile marker",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(root: &std::path::Path) -> SandboxDirs {
        let dirs = SandboxDirs::new(root, "sb");
        for i in 0..2 {
            fs::create_dir_all(dirs.work(i).join("work/incompat/volatile")).expect("mkdir");
            fs::write(dirs.work(i).join("work/incompat/volatile/dirty"), "").expect("write");
        }
        dirs
    }

    #[test]
    fn a_marker_of_this_boot_is_cleared_and_one_of_another_boot_refuses_the_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = marked(tmp.path());
        let err = reuse("sb", &dirs, Some("old-boot"), "this-boot").expect_err("other boot");
        assert!(err.to_string().contains("host went down"), "{err}");
        assert_eq!(markers(&dirs).len(), 2, "refusing leaves the markers");
        let err = reuse("sb", &dirs, None, "this-boot").expect_err("no recorded boot");
        assert!(err.to_string().contains("host went down"), "{err}");
        reuse("sb", &dirs, Some("this-boot"), "this-boot").expect("same boot");
        assert!(markers(&dirs).is_empty());
        assert!(dirs.work(1).join("work").is_dir(), "only the marker goes");
        reuse("sb", &dirs, Some("old-boot"), "this-boot").expect("no marker: nothing to refuse");
    }

    #[test]
    fn settle_clears_the_markers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = marked(tmp.path());
        settle(&dirs).expect("settle");
        assert!(markers(&dirs).is_empty());
        settle(&dirs).expect("nothing left to settle");
    }

    #[test]
    fn the_boot_id_is_read() {
        assert_eq!(boot_id().len(), 36, "a uuid: {:?}", boot_id());
    }
}
