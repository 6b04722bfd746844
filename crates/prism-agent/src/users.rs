//! Users and groups of the sandbox, read from its own `/etc/passwd` and `/etc/group`.
//!
//! Every request resolves its user, so the files' contents are cached, each keyed by what its
//! `stat` says (device, inode, size, modification and change times): a request costs one
//! `stat` per file instead of reading it, and any change to the file (edited in place,
//! replaced by a rename, copied up by the overlay) changes the key and is read at once. A
//! file modified less than [`SETTLE`] before it was read is not cached, since a second write
//! within the same timestamp tick would not change its modification time.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prism_proto::{Code, ConnectError};

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (including the primary one); just the primary one for the agent's
    /// own uid/gid, which never changes identity.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// How old a file's modification time must be for its contents to be cached.
const SETTLE: Duration = Duration::from_secs(2);

/// Where the account databases live (tests point this elsewhere), and their cached contents.
/// Clones share the cache.
#[derive(Debug, Clone)]
pub struct Accounts {
    passwd: CachedFile,
    group: CachedFile,
}

impl Default for Accounts {
    fn default() -> Self {
        Self::at("/etc/passwd", "/etc/group")
    }
}

/// A file's contents, kept while its `stat` key stays the same.
#[derive(Debug, Clone)]
struct CachedFile {
    path: PathBuf,
    /// [`SETTLE`] (tests shorten it).
    settle: Duration,
    cache: Arc<Mutex<Option<Cached>>>,
}

/// A file's key and the contents read under it.
type Cached = (FileKey, Arc<str>);

/// What changes when a file does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl CachedFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            settle: SETTLE,
            cache: Arc::default(),
        }
    }

    /// The file's contents (empty when it cannot be read, as a missing file is).
    fn read(&self) -> Arc<str> {
        let Ok(md) = std::fs::metadata(&self.path) else {
            return Arc::from("");
        };
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, text)) = cache.as_ref()
            && *k == key
        {
            return text.clone();
        }
        let text: Arc<str> = Arc::from(std::fs::read_to_string(&self.path).unwrap_or_default());
        // Both times: the change time moves even when the modification time is set back.
        let newest = key.mtime.max(key.ctime);
        let newest = u64::try_from(newest.0).ok().map(|s| {
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(s)
                + Duration::from_nanos(u64::try_from(newest.1).unwrap_or_default())
        });
        let settled = newest
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= self.settle);
        *cache = settled.then(|| (key, text.clone()));
        text
    }
}

impl Accounts {
    /// The databases at these paths.
    pub fn at(passwd: impl AsRef<Path>, group: impl AsRef<Path>) -> Self {
        Self {
            passwd: CachedFile::new(passwd.as_ref().to_path_buf()),
            group: CachedFile::new(group.as_ref().to_path_buf()),
        }
    }

    /// Resolves a user by name; `root` works even without a passwd entry.
    pub fn lookup(&self, name: &str) -> Result<User, ConnectError> {
        let passwd = self.passwd.read();
        let found = passwd
            .lines()
            .filter_map(parse_passwd)
            .find(|(n, ..)| *n == name);
        let (uid, gid, home) = match found {
            Some((_, uid, gid, home)) => (uid, gid, PathBuf::from(home)),
            None if name == "root" => (0, 0, PathBuf::from("/root")),
            None => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    format!("unknown user {name:?}: not in the sandbox's /etc/passwd"),
                ));
            }
        };
        // Supplementary groups only matter when a process changes identity to this user; the
        // agent's own user (root, the default of every request) never does, so its requests
        // do not read /etc/group.
        let own = rustix::process::geteuid().as_raw() == uid
            && rustix::process::getegid().as_raw() == gid;
        let groups = if own {
            vec![gid]
        } else {
            self.groups_of(name, gid)
        };
        let home = if home.as_os_str().is_empty() {
            PathBuf::from("/")
        } else {
            home
        };
        Ok(User {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home,
        })
    }

    /// `gid` and the groups of /etc/group that list `name` as a member.
    fn groups_of(&self, name: &str, gid: u32) -> Vec<u32> {
        let mut groups = vec![gid];
        let group = self.group.read();
        for line in group.lines() {
            let mut f = line.split(':');
            let (_, _, id, members) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
            if let Some(id) = id.and_then(|s| s.parse::<u32>().ok())
                && members.split(',').any(|m| m == name)
                && !groups.contains(&id)
            {
                groups.push(id);
            }
        }
        groups
    }

    /// Id → name tables, for reporting file owners.
    pub fn names(&self) -> Names {
        let passwd = self.passwd.read();
        let users = passwd
            .lines()
            .filter_map(parse_passwd)
            .map(|(n, u, ..)| (u, n.to_string()));
        let group = self.group.read();
        let groups = group.lines().filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        });
        Names {
            users: users.collect(),
            groups: groups.collect(),
        }
    }
}

fn parse_passwd(line: &str) -> Option<(&str, u32, u32, &str)> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5]))
}

/// Id → name lookups; unknown ids print as numbers, as envd does.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users_and_groups() {
        let dir = std::env::temp_dir().join(format!("prism-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let acc = Accounts::at(dir.join("passwd"), dir.join("group"));
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .ok();
        std::fs::write(
            dir.join("group"),
            "root:x:0:\nuser:x:1000:\nsudo:x:27:user,other\n",
        )
        .ok();
        let u = acc.lookup("user").ok();
        assert_eq!(
            u.as_ref().map(|u| (u.uid, u.gid, u.groups.clone())),
            Some((1000, 1000, vec![1000, 27]))
        );
        assert_eq!(u.map(|u| u.home), Some(PathBuf::from("/home/user")));
        let err = acc.lookup("nobody-here").err();
        assert_eq!(err.map(|e| e.code), Some(Code::InvalidArgument));
        let names = acc.names();
        assert_eq!(
            (names.user(1000), names.group(27), names.user(4242)),
            ("user".into(), "sudo".into(), "4242".into())
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    fn cached(f: &CachedFile) -> bool {
        f.cache.lock().map(|c| c.is_some()).unwrap_or(false)
    }

    #[test]
    fn cached_accounts_see_every_change() {
        let dir = std::env::temp_dir().join(format!("prism-users-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let (passwd, group) = (dir.join("passwd"), dir.join("group"));
        std::fs::write(
            &passwd,
            "u:x:1000:1000::/home/u:/bin/sh
",
        )
        .ok();
        std::fs::write(&group, "").ok();
        let uid = |acc: &Accounts| acc.lookup("u").ok().map(|u| u.uid);
        // A file written just now is read but not cached.
        let fresh = Accounts::at(&passwd, &group);
        assert_eq!(uid(&fresh), Some(1000));
        assert!(!cached(&fresh.passwd));

        let mut acc = Accounts::at(&passwd, &group);
        acc.passwd.settle = Duration::ZERO;
        assert_eq!(uid(&acc), Some(1000));
        assert!(cached(&acc.passwd));
        assert_eq!(uid(&acc), Some(1000));
        // Edited in place (another size), replaced by a rename, removed: each seen at once.
        std::fs::write(
            &passwd,
            "u:x:1001:1000::/home/u:/bin/sh
v:x:7:7::/:/bin/sh
",
        )
        .ok();
        assert_eq!(uid(&acc), Some(1001));
        let tmp = dir.join("passwd.new");
        std::fs::write(
            &tmp,
            "u:x:1002:1000::/home/u:/bin/sh
v:x:7:7::/:/bin/sh
",
        )
        .ok();
        std::fs::rename(&tmp, &passwd).ok();
        assert_eq!(uid(&acc), Some(1002));
        std::fs::remove_file(&passwd).ok();
        assert_eq!(uid(&acc), None);
        assert!(
            acc.lookup("root").is_ok(),
            "root works without a passwd file"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
