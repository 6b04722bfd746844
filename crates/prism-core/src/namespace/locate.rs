//! Where the static agent binary is.

use std::path::{Path, PathBuf};

/// Find the static agent: `explicit`, then `$PRISM_AGENT`, then the musl build beside this
/// executable's target directory (`target/x86_64-unknown-linux-musl/<profile>/`), then
/// `prism-agent` next to this executable, then `/usr/lib/prism/prism-agent`.
pub fn locate_agent(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PRISM_AGENT") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        if let (Some(profile), Some(target)) = (dir.file_name(), dir.parent()) {
            candidates.push(
                target
                    .join("x86_64-unknown-linux-musl")
                    .join(profile)
                    .join("prism-agent"),
            );
        }
        candidates.push(dir.join("prism-agent"));
    }
    candidates.push(PathBuf::from("/usr/lib/prism/prism-agent"));
    candidates.into_iter().find(|p| p.is_file())
}
