//! Host id ranges for sandboxes: slot `n` owns host ids `n * 65536 .. (n + 1) * 65536`.
//!
//! A runtime keeps the slots it uses in memory, and, unless configured off, claims each one
//! host-wide as a file `<claims>/<n>` holding the claimer's sandboxes directory: two daemons
//! (or a test run beside a daemon) on one host never map sandboxes to the same host ids. A
//! claim is made with `O_CREAT | O_EXCL` (one winner), lives as long as the range is in use —
//! across a crash of its daemon, like the sandbox directories that record the range — and is
//! removed when the range is released. A runtime starting over a sandboxes directory keeps the
//! claims of the sandboxes it finds there and removes its other ones (spares of a daemon that
//! died), and those of claimers whose sandboxes directory is gone (a test's state dir, a daemon
//! uninstalled). `/run` is a tmpfs: claims end with the boot, as every sandbox does. Runtimes
//! over the same sandboxes directory count as one claimer (a restarted daemon takes over the
//! old one's claims); two of them running at once is not supported.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::IDS_PER_SANDBOX;

/// First slot handed out (host ids below 1 Mi stay for the host's own users).
const FIRST_SLOT: u32 = 16;
/// Slots up to 2^32 / 65536.
const LAST_SLOT: u32 = 65535;

/// How old an empty claim file (its claimer died before writing it) is before a sweep removes it.
const HALF_MADE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where runtimes claim their ranges by default.
pub const DEFAULT_ID_CLAIMS: &str = "/run/prism/id-ranges";

#[derive(Debug, Default)]
pub(super) struct Slots {
    taken: Mutex<BTreeSet<u32>>,
    claims: Option<Claims>,
}

/// A slot held by another claimer on this host.
#[derive(Debug, thiserror::Error)]
#[error("host ids {base}.. are claimed by another Prism runtime on this host ({owner}, in {})", .dir.display())]
pub struct ClaimedElsewhere {
    pub base: u32,
    pub owner: String,
    pub dir: PathBuf,
}

impl Slots {
    /// Slots claimed host-wide in `claims` for the runtime over `owner` (its sandboxes
    /// directory). `None`: in this runtime's memory only.
    pub(super) fn new(claims: Option<(&Path, &Path)>) -> io::Result<Self> {
        let claims = match claims {
            Some((dir, owner)) => Some(Claims::open(dir, owner)?),
            None => None,
        };
        Ok(Self {
            taken: Mutex::default(),
            claims,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lowest range free here and on the host; its base id (`None`: every range is in
    /// use). A claim that fails for another reason than a claim already there is an error.
    pub(super) fn allocate(&self) -> io::Result<Option<u32>> {
        let mut taken = self.lock();
        for slot in FIRST_SLOT..LAST_SLOT {
            if taken.contains(&slot) {
                continue;
            }
            if let Some(c) = &self.claims
                && !c.claim(slot)?
            {
                continue;
            }
            taken.insert(slot);
            return Ok(Some(slot * IDS_PER_SANDBOX));
        }
        Ok(None)
    }

    /// Take the range of an existing sandbox (recorded in its directory). Taken here even when
    /// another runtime claims it (the sandbox runs in it either way): the error says so.
    pub(super) fn take(&self, base: u32) -> Result<(), ClaimedElsewhere> {
        let slot = base / IDS_PER_SANDBOX;
        self.lock().insert(slot);
        match &self.claims {
            Some(c) => c.claim_existing(slot, base),
            None => Ok(()),
        }
    }

    pub(super) fn release(&self, base: u32) {
        let slot = base / IDS_PER_SANDBOX;
        if self.lock().remove(&slot)
            && let Some(c) = &self.claims
        {
            c.unclaim(slot);
        }
    }

    /// After the runtime took the ranges of the sandboxes it found: drop its other claims and
    /// those of claimers that are gone.
    pub(super) fn sweep(&self) {
        let Some(c) = &self.claims else { return };
        let taken = self.lock().clone();
        c.sweep(&taken);
    }
}

#[derive(Debug)]
struct Claims {
    dir: PathBuf,
    /// What a claim file of ours holds: our sandboxes directory, newline-terminated.
    owner: String,
}

impl Claims {
    fn open(dir: &Path, owner: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let owner = std::fs::canonicalize(owner).unwrap_or_else(|_| owner.to_path_buf());
        Ok(Self {
            dir: dir.to_path_buf(),
            owner: format!("{}\n", owner.display()),
        })
    }

    fn path(&self, slot: u32) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Whether `slot` is ours now (newly claimed, or claimed by us before).
    fn claim(&self, slot: u32) -> io::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(slot);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => match f.write_all(self.owner.as_bytes()) {
                Ok(()) => Ok(true),
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    Err(e)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Ok(self.holder(slot) == self.owner)
            }
            Err(e) => Err(e),
        }
    }

    fn claim_existing(&self, slot: u32, base: u32) -> Result<(), ClaimedElsewhere> {
        match self.claim(slot) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ClaimedElsewhere {
                base,
                owner: self.holder(slot).trim_end().to_string(),
                dir: self.dir.clone(),
            }),
            Err(error) => {
                tracing::warn!(message = "cannot claim an id range", slot, %error);
                Ok(())
            }
        }
    }

    /// The claim file's content (empty while its claimer is still writing it, or when gone).
    fn holder(&self, slot: u32) -> String {
        std::fs::read_to_string(self.path(slot)).unwrap_or_default()
    }

    fn unclaim(&self, slot: u32) {
        if self.holder(slot) == self.owner {
            let _ = std::fs::remove_file(self.path(slot));
        }
    }

    fn sweep(&self, keep: &BTreeSet<u32>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let Some(slot) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let holder = self.holder(slot);
            let ours = holder == self.owner;
            let gone = if holder.is_empty() {
                // A claimer that died between the claim's create and its write.
                e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > HALF_MADE))
            } else {
                !Path::new(holder.trim_end()).is_dir()
            };
            if (ours && !keep.contains(&slot)) || (!ours && gone) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_runtimes() -> (tempfile::TempDir, Slots, Slots) {
        let t = tempfile::tempdir().expect("tempdir");
        for d in ["a", "b"] {
            std::fs::create_dir(t.path().join(d)).expect("owner dir");
        }
        let claims = t.path().join("claims");
        let a = Slots::new(Some((&claims, &t.path().join("a")))).expect("a");
        let b = Slots::new(Some((&claims, &t.path().join("b")))).expect("b");
        (t, a, b)
    }

    #[test]
    fn two_runtimes_on_one_host_get_different_ranges() {
        let (_t, a, b) = two_runtimes();
        let first = a.allocate().unwrap().expect("a's range");
        assert_eq!(first, FIRST_SLOT * IDS_PER_SANDBOX);
        let second = b.allocate().unwrap().expect("b's range");
        assert_ne!(first, second);
        // Released by a, the range is free for b.
        a.release(first);
        assert_eq!(b.allocate().unwrap(), Some(first));
        // b cannot release what a holds.
        let held = a.allocate().unwrap().expect("a again");
        b.release(held);
        assert!(
            a.claims
                .as_ref()
                .unwrap()
                .path(held / IDS_PER_SANDBOX)
                .exists()
        );
    }

    #[test]
    fn taking_a_range_another_runtime_claims_says_who() {
        let (t, a, b) = two_runtimes();
        let base = a.allocate().unwrap().expect("a's range");
        let err = b.take(base).expect_err("claimed by a");
        assert_eq!(err.base, base);
        assert!(err.owner.ends_with("/a"), "{err}");
        assert!(err.to_string().contains("another Prism runtime"), "{err}");
        // Its own ranges a takes again (a restarted daemon).
        let again = Slots::new(Some((&t.path().join("claims"), &t.path().join("a")))).unwrap();
        again.take(base).expect("ours");
    }

    #[test]
    fn a_restarted_runtime_keeps_its_sandboxes_claims_and_drops_the_rest() {
        let (t, a, b) = two_runtimes();
        let kept = a.allocate().unwrap().unwrap();
        let spare = a.allocate().unwrap().unwrap();
        let others = b.allocate().unwrap().unwrap();
        drop(a);
        let claims = t.path().join("claims");
        let a = Slots::new(Some((&claims, &t.path().join("a")))).unwrap();
        a.take(kept).unwrap();
        a.sweep();
        let c = a.claims.as_ref().unwrap();
        let exists = |base: u32| c.path(base / IDS_PER_SANDBOX).exists();
        assert!(exists(kept) && !exists(spare) && exists(others));
        // b's directory goes away (a test's state dir): its claims go at the next sweep.
        std::fs::remove_dir(t.path().join("b")).unwrap();
        a.sweep();
        assert!(!exists(others));
        assert_eq!(a.allocate().unwrap(), Some(spare.min(others)));
    }

    #[test]
    fn a_claim_that_cannot_be_written_is_an_error_not_a_shared_range() {
        let (t, a, _b) = two_runtimes();
        std::fs::remove_dir_all(t.path().join("claims")).unwrap();
        assert!(a.allocate().is_err());
        assert!(a.lock().is_empty(), "nothing taken");
    }

    #[test]
    fn without_claims_ranges_are_per_runtime() {
        let a = Slots::new(None).unwrap();
        let b = Slots::new(None).unwrap();
        assert_eq!(a.allocate().unwrap(), b.allocate().unwrap());
    }
}
