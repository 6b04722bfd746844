//! The one place that picks the isolation backend: `prismd --runtime NAME` (or `runtime = ` in
//! the config file, or `PRISM_RUNTIME`).

use std::sync::Arc;

use prism_core::Runtime;

use crate::config::Config;

/// The backend used when the configuration names none.
pub const DEFAULT: &str = "namespace";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("unknown runtime {0:?} (available: {1})")]
    Unknown(String, &'static str),
    #[error(
        "no static prism-agent found: build it with `scripts/build` (or set agent_path / PRISM_AGENT)"
    )]
    NoAgent,
    #[error("cgroups are not usable")]
    Cgroups(#[from] prism_sys::cgroup::CgroupError),
    #[error("the runtime could not start")]
    Runtime(#[from] prism_core::RuntimeError),
}

const AVAILABLE: &str = "namespace";

/// Build the runtime named by the configuration.
pub fn build(cfg: &Config) -> Result<Arc<dyn Runtime>, BuildError> {
    match cfg.runtime.as_str() {
        "namespace" => {
            let agent_path = prism_core::namespace::locate_agent(cfg.agent_path.as_deref())
                .ok_or(BuildError::NoAgent)?;
            let cgroups = prism_sys::cgroup::detect(&cfg.cgroup_parent)?;
            tracing::info!(agent = %agent_path.display(), cgroups = ?cgroups.version(), "namespace runtime");
            Ok(Arc::new(prism_core::namespace::NamespaceRuntime::new(
                prism_core::namespace::NamespaceConfig {
                    netns_pool: cfg.netns_pool,
                    spare_dirs: cfg.spare_dirs,
                    fsync_sandboxes: cfg.fsync_sandboxes,
                    ..prism_core::namespace::NamespaceConfig::new(
                        cfg.state_dir.join("sandboxes"),
                        agent_path,
                    )
                },
                cgroups,
            )?))
        }
        other => Err(BuildError::Unknown(other.to_string(), AVAILABLE)),
    }
}
