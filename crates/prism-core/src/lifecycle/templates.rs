//! Built-in templates by name → root filesystem (only `base`, see [`crate::template::base`]),
//! and the checks of a stored template's definition. Stored, versioned templates are built and
//! resolved by the daemon (they need the image store); sandboxes pin `name:version`.

use std::path::{Path, PathBuf};

use prism_types::templates::TemplateSpec;

use crate::RootfsSpec;

use super::{LifecycleError, validate};

/// Default limit of one setup command (seconds).
pub const DEFAULT_BUILD_TIMEOUT_S: u64 = 600;
/// At most this many setup commands.
pub const MAX_SETUP_COMMANDS: usize = 256;

/// Names of the templates this node has.
pub const TEMPLATES: &[&str] = &["base"];

/// Where templates live under the state directory.
pub fn templates_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("templates")
}

/// The root filesystem of a sandbox made from `template` (building the base skeleton once).
pub fn rootfs(template: &str, state_dir: &Path) -> Result<RootfsSpec, LifecycleError> {
    match template {
        "base" => crate::template::base::ensure(&templates_dir(state_dir))
            .map_err(LifecycleError::Template),
        other => Err(LifecycleError::TemplateNotFound(other.to_string())),
    }
}

fn invalid(msg: impl Into<String>) -> LifecycleError {
    LifecycleError::InvalidRequest(msg.into())
}

/// A template name: `[a-z0-9][a-z0-9_.-]{0,62}`, not a built-in template's.
pub fn name(n: &str) -> Result<(), LifecycleError> {
    let mut b = n.bytes();
    let first = b
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest = b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(&c));
    if !first || !rest || n.len() > 63 {
        return Err(invalid(format!(
            "invalid template name {n:?}: use 1-63 lowercase letters, digits, '_', '.' or '-', \
             starting with a letter or digit"
        )));
    }
    if TEMPLATES.contains(&n) {
        return Err(invalid(format!("{n:?} is a built-in template")));
    }
    Ok(())
}

/// Check a template definition and fill in its defaults (`from`, `build_timeout_s`).
pub fn spec(mut s: TemplateSpec, max_lifetime_s: u64) -> Result<TemplateSpec, LifecycleError> {
    name(&s.name)?;
    let from = s.from.take().unwrap_or_else(|| "base".into());
    if from.trim().is_empty() || from.len() > 512 {
        return Err(invalid(
            "from must be `base` or an image reference (at most 512 bytes)",
        ));
    }
    s.from = Some(from);
    if s.run.len() > MAX_SETUP_COMMANDS {
        return Err(invalid(format!(
            "at most {MAX_SETUP_COMMANDS} setup commands"
        )));
    }
    for (i, c) in s.run.iter().enumerate() {
        if c.trim().is_empty() || c.contains('\0') || c.len() > 256 * 1024 {
            return Err(invalid(format!(
                "setup command {} is empty, too long or contains a NUL byte",
                i + 1
            )));
        }
    }
    validate::env(&s.env)?;
    validate::resources(&s.resources)?;
    validate::ports(&s.ports)?;
    if let Some(start) = &s.start {
        validate::argv("start", start)?;
    }
    // cwd, user and the build network are checked the way a create request checks them.
    let probe = prism_types::CreateSandboxRequest {
        cwd: s.cwd.clone(),
        user: s.user.clone(),
        network: s.build_network.clone(),
        ..Default::default()
    };
    validate::create(probe, 0, max_lifetime_s)?;
    let t = s.build_timeout_s.unwrap_or(DEFAULT_BUILD_TIMEOUT_S);
    if t == 0 || t > validate::MAX_EXEC_TIMEOUT_S {
        return Err(invalid(format!(
            "build_timeout_s must be between 1 and {}, not {t}",
            validate::MAX_EXEC_TIMEOUT_S
        )));
    }
    s.build_timeout_s = Some(t);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_specs_are_checked() {
        let ok = |j: &str| {
            spec(
                serde_json::from_str(j).unwrap_or_else(|e| panic!("{e}")),
                86400,
            )
        };
        let s = ok(r#"{"name":"py-1.x","run":["echo hi"],"ports":[8080]}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.from.as_deref(), Some("base"));
        assert_eq!(s.build_timeout_s, Some(DEFAULT_BUILD_TIMEOUT_S));
        for bad in [
            r#"{"name":"base"}"#,
            r#"{"name":"Py"}"#,
            r#"{"name":"a:1"}"#,
            r#"{"name":""}"#,
            r#"{"name":"a","run":[""]}"#,
            r#"{"name":"a","env":{"1A":"x"}}"#,
            r#"{"name":"a","ports":[0]}"#,
            r#"{"name":"a","start":[]}"#,
            r#"{"name":"a","cwd":"rel"}"#,
            r#"{"name":"a","build_network":"weird"}"#,
            r#"{"name":"a","build_timeout_s":0}"#,
            r#"{"name":"a","resources":{"memory_mb":1}}"#,
            r#"{"name":"a","from":" "}"#,
        ] {
            assert!(
                matches!(ok(bad), Err(LifecycleError::InvalidRequest(_))),
                "{bad} passed"
            );
        }
    }

    #[test]
    fn base_is_known_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spec = rootfs("base", dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.mounts[0].target, PathBuf::from("/"));
        assert!(matches!(
            rootfs("nope", dir.path()),
            Err(LifecycleError::TemplateNotFound(_))
        ));
    }
}
