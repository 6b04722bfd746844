//! User namespace id maps.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

/// Map ids `0..count` inside the sandbox to `base..base+count` on the host (uids and gids alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub base: u32,
    pub count: u32,
}

impl IdMap {
    /// The line written to `uid_map` and `gid_map`.
    pub fn line(&self) -> String {
        format!("0 {} {}\n", self.base, self.count)
    }

    /// Host id of sandbox id `inner`, if mapped.
    pub fn to_host(&self, inner: u32) -> Option<u32> {
        (inner < self.count).then(|| self.base + inner)
    }

    /// Write the maps of process `pid` (which must be in a fresh user namespace).
    pub fn write_maps(&self, pid: u32) -> io::Result<()> {
        let line = self.line();
        for file in ["uid_map", "gid_map"] {
            let mut f = File::options()
                .write(true)
                .open(format!("/proc/{pid}/{file}"))?;
            f.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

/// Open the user namespace of `pid`.
pub fn open_userns(pid: u32) -> io::Result<OwnedFd> {
    Ok(File::open(format!("/proc/{pid}/ns/user"))?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_line_and_translation() {
        let m = IdMap {
            base: 1 << 20,
            count: 65536,
        };
        assert_eq!(m.line(), "0 1048576 65536\n");
        assert_eq!(m.to_host(0), Some(1 << 20));
        assert_eq!(m.to_host(1000), Some((1 << 20) + 1000));
        assert_eq!(m.to_host(65536), None);
    }
}
