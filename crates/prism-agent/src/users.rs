//! Users and groups of the sandbox, read from its own `/etc/passwd` and `/etc/group`.

use std::collections::HashMap;
use std::path::PathBuf;

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

/// Where the account databases live (tests point this elsewhere).
#[derive(Debug, Clone)]
pub struct Accounts {
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Default for Accounts {
    fn default() -> Self {
        Self {
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
        }
    }
}

impl Accounts {
    /// Resolves a user by name; `root` works even without a passwd entry.
    pub fn lookup(&self, name: &str) -> Result<User, ConnectError> {
        let passwd = std::fs::read_to_string(&self.passwd).unwrap_or_default();
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
        let group = std::fs::read_to_string(&self.group).unwrap_or_default();
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
        let passwd = std::fs::read_to_string(&self.passwd).unwrap_or_default();
        let users = passwd
            .lines()
            .filter_map(parse_passwd)
            .map(|(n, u, ..)| (u, n.to_string()));
        let group = std::fs::read_to_string(&self.group).unwrap_or_default();
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
        let acc = Accounts {
            passwd: dir.join("passwd"),
            group: dir.join("group"),
        };
        std::fs::write(
            &acc.passwd,
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .ok();
        std::fs::write(
            &acc.group,
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
}
