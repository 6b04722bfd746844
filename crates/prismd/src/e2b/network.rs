//! E2B's egress rules (`network: {allowOut, denyOut}` at create, `PUT /sandboxes/{id}/network`)
//! as Prism network modes.
//!
//! E2B: everything is allowed unless denied; `allowOut` entries (CIDRs, addresses, names)
//! win over `denyOut` entries (CIDRs, addresses); `allow_internet_access: false` is
//! `denyOut: ["0.0.0.0/0"]`. Prism has three modes, so:
//!
//! | E2B | Prism |
//! |---|---|
//! | nothing denied (any `allowOut`) | `open` (private, link-local and host ranges stay denied) |
//! | `0.0.0.0/0` denied, no `allowOut` | `none` |
//! | `0.0.0.0/0` denied, `allowOut` | `allow=` the `allowOut` entries |
//! | some ranges denied, not `0.0.0.0/0` | refused (400): Prism cannot deny single ranges of `open` |

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::E2bError;
use super::sandboxes::{json, live};
use crate::AppState;

type E2bResult<T> = Result<T, E2bError>;

/// E2B's egress rules.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRules {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
}

fn denies_all(entry: &str) -> bool {
    matches!(entry.trim(), "0.0.0.0/0" | "0.0.0.0/0.0.0.0")
}

/// The Prism mode of E2B's rules (`deny_all` also when internet access is off).
pub fn mode_of(rules: &NetworkRules, deny_all: bool) -> E2bResult<String> {
    let allow: Vec<&str> = rules
        .allow_out
        .iter()
        .flatten()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let deny: Vec<&str> = rules.deny_out.iter().flatten().map(|s| s.trim()).collect();
    let deny_all = deny_all || deny.iter().any(|d| denies_all(d));
    if !deny_all && !deny.is_empty() {
        return Err(E2bError::bad_request(format!(
            "denyOut {deny:?}: Prism denies private, link-local and host addresses itself and \
             can deny everything (0.0.0.0/0, with allowOut for the exceptions), not single ranges"
        )));
    }
    let mode = match (deny_all, allow.is_empty()) {
        (false, _) => "open".to_string(),
        (true, true) => "none".to_string(),
        (true, false) => format!("allow={}", allow.join(",")),
    };
    prism_types::network::NetworkMode::parse(&mode)
        .map_err(|e| E2bError::bad_request(format!("allowOut: {e}")))?;
    Ok(mode)
}

/// `PUT /sandboxes/{id}/network`: replace the egress rules of a sandbox (a missing field
/// clears it). 204.
pub async fn set(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let rules: NetworkRules = json(&body)?;
    let mode = mode_of(&rules, false)?;
    let (sb, _) = live(&st, &id).await?;
    st.manager.set_network_mode(&sb.id, &mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> NetworkRules {
        let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect());
        NetworkRules {
            allow_out: v(allow),
            deny_out: v(deny),
        }
    }

    #[test]
    fn e2b_rules_become_prism_modes() {
        let m = |a: &[&str], d: &[&str], off| mode_of(&rules(a, d), off).map_err(|e| e.message);
        assert_eq!(m(&[], &[], false), Ok("open".into()));
        assert_eq!(m(&["pypi.org"], &[], false), Ok("open".into()));
        assert_eq!(m(&[], &["0.0.0.0/0"], false), Ok("none".into()));
        assert_eq!(m(&[], &[], true), Ok("none".into()));
        assert_eq!(
            m(&["pypi.org", "8.8.8.8/32"], &["0.0.0.0/0"], false),
            Ok("allow=pypi.org,8.8.8.8/32".into())
        );
        assert_eq!(m(&["*.x.test"], &[], true), Ok("allow=*.x.test".into()));
        assert!(m(&[], &["10.0.0.0/8"], false).is_err());
        assert!(m(&["*.com"], &["0.0.0.0/0"], false).is_err());
        assert!(m(&["10.0.0.0/40"], &["0.0.0.0/0"], false).is_err());
    }
}
