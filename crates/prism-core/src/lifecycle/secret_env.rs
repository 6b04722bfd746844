//! Environment added to a sandbox's processes that is never written to its record: project
//! secrets. The daemon installs a [`SecretEnv`]; the manager asks it at every process start
//! (main process, exec, terminal), so the values live only in the provider and the processes.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use prism_store::SandboxRecord;

use super::SandboxManager;

/// Supplies secret environment variables for a sandbox. Infallible: a provider that cannot
/// decrypt logs it and returns what it has.
pub trait SecretEnv: Send + Sync + 'static {
    fn env<'a>(&'a self, rec: &'a SandboxRecord) -> BoxFuture<'a, BTreeMap<String, String>>;
}

impl SandboxManager {
    /// Install the secret provider (once; later calls are ignored).
    pub fn set_secret_env(&self, provider: Arc<dyn SecretEnv>) {
        let _ = self.inner.secret_env.set(provider);
    }

    /// The environment of a new process of `rec`: secrets, then the sandbox's own env (which
    /// wins on a clash).
    pub(crate) async fn process_env(&self, rec: &SandboxRecord) -> BTreeMap<String, String> {
        let mut env = match self.inner.secret_env.get() {
            Some(p) => p.env(rec).await,
            None => BTreeMap::new(),
        };
        env.extend(rec.spec.env.clone());
        env
    }
}
