//! The sandbox-wide base environment of every process and code context: the agent's own
//! environment, plus what `POST /init` sets (envd's endpoint for the sandbox's env vars).

use std::collections::BTreeMap;
use std::sync::RwLock;

/// The base environment, shared by the process table and the code contexts.
#[derive(Debug, Default)]
pub struct BaseEnv {
    vars: RwLock<Vec<(String, String)>>,
}

impl BaseEnv {
    pub fn new(vars: Vec<(String, String)>) -> Self {
        Self {
            vars: RwLock::new(vars),
        }
    }

    /// The current variables (a copy: spawning must not hold the lock).
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.vars
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets (or replaces) `vars` for processes started from now on.
    pub fn set(&self, vars: &BTreeMap<String, String>) {
        let mut cur = self
            .vars
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, v) in vars {
            match cur.iter_mut().find(|(ck, _)| ck == k) {
                Some(slot) => slot.1 = v.clone(),
                None => cur.push((k.clone(), v.clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_appends() {
        let env = BaseEnv::new(vec![
            ("PATH".into(), "/bin".into()),
            ("A".into(), "1".into()),
        ]);
        let mut vars = BTreeMap::new();
        vars.insert("A".to_string(), "2".to_string());
        vars.insert("B".to_string(), "3".to_string());
        env.set(&vars);
        assert_eq!(
            env.snapshot(),
            vec![
                ("PATH".into(), "/bin".into()),
                ("A".into(), "2".into()),
                ("B".into(), "3".into())
            ]
        );
    }
}
