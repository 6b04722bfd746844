//! E2B's control plane: create, connect/resume, info, list, kill, timeout, pause — E2B's JSON
//! shapes over the sandbox manager.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prism_store::ListFilter;
use prism_types::{CreateSandboxRequest, Sandbox, SandboxState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{E2bError, ENVD_VERSION};
use crate::AppState;
use crate::auth::Caller;
use crate::auth::secrets::TokenKind;

type E2bResult<T> = Result<T, E2bError>;

/// E2B template names that mean "a general-purpose sandbox with Python": Prism's `base`.
const BASE_ALIASES: &[&str] = &["base", "code-interpreter-v1", "code-interpreter"];
/// Client id reported in every record (single-node Prism has no clusters of clients).
const CLIENT_ID: &str = "prism";

/// The Prism template an E2B template id or alias names.
pub fn template_of(e2b: &str) -> String {
    let name = e2b.split_once(':').map_or(e2b, |(n, _)| n);
    if BASE_ALIASES.contains(&name) {
        prism_types::DEFAULT_TEMPLATE.to_string()
    } else {
        e2b.to_string()
    }
}

/// Body of `POST /sandboxes` and `/v2/sandboxes` (fields Prism does not model are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds.
    pub timeout: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// Egress rules (`allowOut`, `denyOut`), see [`super::network`].
    #[serde(default)]
    pub network: Option<super::network::NetworkRules>,
}

/// `201` answer of create, connect and resume.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    alias: String,
    domain: Option<String>,
    /// With auth on: the token the SDK sends as `X-Access-Token` on the data plane.
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    /// With auth on: the token for the sandbox's other ports (`E2B-Traffic-Access-Token`).
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic_access_token: Option<String>,
}

/// A sandbox in `GET /sandboxes/{id}` and the lists.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    #[serde(rename = "templateID")]
    template_id: String,
    alias: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    cpu_count: u64,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    metadata: BTreeMap<String, String>,
}

/// E2B's name of a Prism state; `None` for states E2B does not show.
fn e2b_state(s: SandboxState) -> Option<&'static str> {
    match s {
        SandboxState::Running | SandboxState::Creating => Some("running"),
        SandboxState::Stopped => Some("paused"),
        _ => None,
    }
}

fn created(st: &AppState, sb: &Sandbox) -> Created {
    Created {
        template_id: sb.template.clone(),
        sandbox_id: sb.id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        alias: sb.template.clone(),
        domain: None,
        envd_access_token: super::access_token(st, TokenKind::Envd, &sb.id),
        traffic_access_token: super::access_token(st, TokenKind::Traffic, &sb.id),
    }
}

fn detail(sb: &Sandbox, state: &'static str) -> Detail {
    let started = sb
        .started_at
        .clone()
        .unwrap_or_else(|| sb.created_at.clone());
    // No TTL: E2B always shows an end; a sandbox without one ends at the lifetime cap.
    let end = sb
        .expires_at
        .clone()
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".into());
    Detail {
        template_id: sb.template.clone(),
        alias: sb.template.clone(),
        sandbox_id: sb.id.clone(),
        client_id: CLIENT_ID,
        started_at: started,
        end_at: end,
        envd_version: ENVD_VERSION,
        cpu_count: sb.resources.cpus.map_or(1, |c| c.ceil().max(1.0) as u64),
        memory_mb: sb.resources.memory_mb.unwrap_or(0),
        disk_size_mb: sb.resources.disk_mb.unwrap_or(0),
        state,
        // Prism's own labels (`prism.*`, e.g. the owner marker of a create) are not the
        // user's metadata.
        metadata: sb
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("prism."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A JSON body, or E2B's 400. An empty body counts as `{}` (the SDK omits some bodies).
pub(super) fn json<T: DeserializeOwned>(body: &Bytes) -> E2bResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| E2bError::bad_request(format!("bad JSON body: {e}")))
}

pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> E2bResult<(StatusCode, Json<Created>)> {
    let req: NewSandbox = json(&body)?;
    let network = match (&req.network, req.allow_internet_access) {
        (Some(rules), internet) => Some(super::network::mode_of(rules, internet == Some(false))?),
        (None, Some(false)) => Some("none".to_string()),
        (None, Some(true)) => Some("open".to_string()),
        (None, None) => None,
    };
    // The same path as Prism's own create: quota, owner (project), secrets.
    let create = CreateSandboxRequest {
        template: Some(template_of(&req.template_id)),
        env: req.env_vars.unwrap_or_default(),
        labels: req.metadata.unwrap_or_default(),
        timeout_s: Some(req.timeout.unwrap_or(prism_types::DEFAULT_TIMEOUT_S)),
        network,
        ..Default::default()
    };
    let sb = crate::auth::routes::create_owned(&st, &caller, create).await?;
    if let Err(e) = super::envd::init_env(&st, &sb.id, &sb.env).await {
        // Half a sandbox is worse than none: do not leave it running.
        if let Err(error) = st.manager.destroy(&sb.id).await {
            tracing::warn!(message = "could not destroy a sandbox whose env failed", sandbox_id = %sb.id, %error);
        }
        return Err(e);
    }
    Ok((StatusCode::CREATED, Json(created(&st, &sb))))
}

/// A live sandbox (not destroyed) or E2B's 404.
pub(super) async fn live(st: &AppState, id: &str) -> E2bResult<(Sandbox, &'static str)> {
    let sb = st.manager.get(id).await?;
    match e2b_state(sb.state) {
        Some(state) => Ok((sb, state)),
        None => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found (it is {})", sb.state),
        )),
    }
}

pub async fn info(State(st): State<AppState>, Path(id): Path<String>) -> E2bResult<Json<Detail>> {
    let (sb, state) = live(&st, &id).await?;
    Ok(Json(detail(&sb, state)))
}

pub async fn kill(State(st): State<AppState>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    live(&st, &id).await?;
    st.manager.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/connect` (and `/resume`): a paused (stopped) sandbox is started again;
/// the timeout, when given, is applied. 201 when resumed, 200 when it was running.
pub async fn connect(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let req: TimeoutBody = json(&body)?;
    let (sb, state) = live(&st, &id).await?;
    let resumed = state == "paused";
    if resumed {
        st.manager.start(&sb.id).await?;
        super::envd::init_env(&st, &sb.id, &sb.env).await?;
    }
    let sb = match req.timeout {
        Some(t) => st.manager.set_timeout(&sb.id, t).await?,
        None => sb,
    };
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created(&st, &sb))).into_response())
}

/// `POST /sandboxes/{id}/resume`: like connect, but only for a paused sandbox (409 otherwise).
pub async fn resume(st: State<AppState>, id: Path<String>, body: Bytes) -> E2bResult<Response> {
    let (_, state) = live(&st, &id).await?;
    if state != "paused" {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {} is already running", id.0),
        ));
    }
    connect(st, id, body).await
}

/// `POST /sandboxes/{id}/pause`: Prism stops the sandbox (its filesystem is kept; processes
/// and memory are not).
pub async fn pause(State(st): State<AppState>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    let (_, state) = live(&st, &id).await?;
    if state == "paused" {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    st.manager.stop(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_timeout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let req: TimeoutBody = json(&body)?;
    let t = req
        .timeout
        .ok_or_else(|| E2bError::bad_request("timeout (seconds) is required"))?;
    live(&st, &id).await?;
    st.manager.set_timeout(&id, t).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct RefreshBody {
    duration: Option<u64>,
}

/// `POST /sandboxes/{id}/refreshes`: keep alive for `duration` more seconds (default 60).
pub async fn refresh(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let req: RefreshBody = json(&body)?;
    live(&st, &id).await?;
    st.manager
        .set_timeout(&id, req.duration.unwrap_or(60))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One sample of `GET /sandboxes/{id}/metrics`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    timestamp: String,
    timestamp_unix: i64,
    cpu_count: u64,
    /// Average since the sandbox started (Prism keeps no history of samples).
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// `GET /sandboxes/{id}/metrics`: the current usage as a one-sample series (the `start`/`end`
/// window is not kept: Prism reads cgroup counters, it does not store a history).
pub async fn metrics(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> E2bResult<Json<Vec<Metric>>> {
    let (sb, state) = live(&st, &id).await?;
    if state != "running" {
        return Ok(Json(Vec::new()));
    }
    let m = st.manager.metrics(&id).await?;
    let d = detail(&sb, state);
    let now = prism_core::lifecycle::now_ms();
    let started_ms = humantime::parse_rfc3339(&d.started_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |t| i64::try_from(t.as_millis()).unwrap_or(now));
    let wall_ns = u64::try_from(now.saturating_sub(started_ms).max(1)).unwrap_or(1) * 1_000_000;
    let pct = m.cpu_usage_ns as f64 * 100.0 / (wall_ns as f64 * d.cpu_count as f64);
    Ok(Json(vec![Metric {
        timestamp: prism_core::lifecycle::rfc3339(now),
        timestamp_unix: now / 1000,
        cpu_count: d.cpu_count,
        cpu_used_pct: (pct * 100.0).round() / 100.0,
        mem_used: m.memory_bytes,
        mem_total: m.memory_limit_bytes.unwrap_or(0),
        mem_cache: 0,
        disk_used: m.disk_bytes,
        disk_total: d.disk_size_mb * 1024 * 1024,
    }]))
}

/// Query of `GET /v2/sandboxes`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// URL-encoded `k=v&k2=v2`.
    metadata: Option<String>,
    /// Comma-separated `running`, `paused`.
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    /// Template id or alias.
    template: Option<String>,
}

/// Parses E2B's metadata filter (`k=v&k2=v2`, each part percent-encoded).
pub fn parse_metadata(q: &str) -> E2bResult<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                E2bError::bad_request(format!("metadata filter {p:?} must be key=value"))
            })?;
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> E2bResult<String> {
    let bad = || E2bError::bad_request(format!("bad percent-encoding in {s:?}"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `GET /v2/sandboxes`: a page of running and/or paused sandboxes, oldest first; the next
/// page's token is in `x-next-token`.
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> E2bResult<Response> {
    let mut states = Vec::new();
    for s in q.state.as_deref().unwrap_or("running,paused").split(',') {
        match s.trim() {
            "running" => states.push("running"),
            "paused" => states.push("paused"),
            "" => {}
            other => {
                return Err(E2bError::bad_request(format!(
                    "unknown state {other:?}: use running or paused"
                )));
            }
        }
    }
    let metadata = parse_metadata(q.metadata.as_deref().unwrap_or(""))?;
    let template = q
        .template
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(template_of);
    let limit = match q.limit {
        Some(0) => return Err(E2bError::bad_request("limit must be at least 1")),
        Some(n) => n.min(1000),
        None => 100,
    };
    let store_state = match states.as_slice() {
        ["running"] => Some(SandboxState::Running),
        ["paused"] => Some(SandboxState::Stopped),
        _ => None,
    };
    let mut page = Vec::new();
    let mut cursor = q.next_token.filter(|t| !t.is_empty());
    let mut more = true;
    // Filters the store cannot apply (several metadata pairs, E2B-invisible states) are applied
    // here, so keep reading until the page is full or the store is exhausted.
    while more && page.len() <= limit {
        let filter = ListFilter {
            state: store_state,
            label: metadata.first().cloned(),
            limit: 1000,
            after_id: cursor.clone(),
            project: caller.project.clone(),
        };
        let (batch, next) = st.manager.list(filter).await?;
        more = next.is_some();
        cursor = next;
        for sb in batch {
            let Some(state) = e2b_state(sb.state) else {
                continue;
            };
            let meta_ok = metadata.iter().all(|(k, v)| sb.labels.get(k) == Some(v));
            // `name` matches every version (`name:3`) of a Prism template.
            let template_ok = template.as_ref().is_none_or(|t| {
                *t == sb.template
                    || sb
                        .template
                        .strip_prefix(t.as_str())
                        .is_some_and(|v| v.starts_with(':') && !t.contains(':'))
            });
            if states.contains(&state) && meta_ok && template_ok {
                page.push(detail(&sb, state));
            }
        }
    }
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|d| d.sandbox_id.clone())
    } else {
        None
    };
    let mut resp = Json(page).into_response();
    if let Some(t) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert("x-next-token", t);
    }
    Ok(resp)
}

/// `GET /sandboxes` (v1): every running sandbox, optionally filtered by metadata.
pub async fn list_running(
    st: State<AppState>,
    caller: Caller,
    Query(mut q): Query<ListQuery>,
) -> E2bResult<Response> {
    q.state = Some("running".into());
    q.limit = Some(1000);
    q.next_token = None;
    list(st, caller, Query(q)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_decoded() {
        let m = parse_metadata("user%3Dalice=x&b=c+d%26").unwrap();
        assert_eq!(
            m,
            vec![
                ("user=alice".into(), "x".into()),
                ("b".into(), "c d&".into())
            ]
        );
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("a=%zz").is_err());
        assert!(parse_metadata("").unwrap().is_empty());
    }

    #[test]
    fn e2b_templates_map_to_prism_templates() {
        assert_eq!(template_of("base"), "base");
        assert_eq!(template_of("code-interpreter-v1"), "base");
        assert_eq!(template_of("mine:v2"), "mine:v2");
    }
}
