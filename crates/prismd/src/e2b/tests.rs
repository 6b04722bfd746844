//! E2B surface router tests with `oneshot` on the fake runtime and agents (no socket, no
//! root): E2B's shapes, status codes and error JSON, pagination, and the header routing.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use prism_core::lifecycle::fake::{FakeAgents, FakeRuntime};
use prism_core::lifecycle::{ManagerConfig, SandboxManager};
use prism_store::SqliteStore;
use serde_json::Value;
use tower::ServiceExt;

use crate::{AppState, app};

struct T {
    _dir: tempfile::TempDir,
    app: Router,
}

fn setup() -> T {
    setup_with(false).0
}

/// The router with auth on or off; with auth on, also an admin key and a project key.
fn setup_with(auth_on: bool) -> (T, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(dir.path());
    let agents = FakeAgents::for_runtime(&rt);
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let secrets =
        Arc::new(crate::auth::secrets::Secrets::with_key([7; 32], store.clone()).unwrap());
    let auth = crate::auth::Auth::new(auth_on, store.clone(), crate::auth::Limits::default())
        .unwrap()
        .with_secrets(secrets);
    let (admin, _) = auth.create_key("admin", None).unwrap();
    let (project, _) = auth.create_key("team", Some("team")).unwrap();
    let auth = Arc::new(auth);
    let manager =
        SandboxManager::new(store, rt, agents, ManagerConfig::new(dir.path().into())).unwrap();
    let state = AppState {
        manager,
        ready: Arc::new(AtomicBool::new(true)),
        listen: "127.0.0.1:8008".parse().unwrap(),
        auth,
        publish: Arc::new(crate::publish::Publisher::new([127, 0, 0, 1].into())),
    };
    (
        T {
            _dir: dir,
            app: app(state),
        },
        admin,
        project,
    )
}

impl T {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (status, h) = (resp.status(), resp.headers().clone());
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, h, v)
    }

    async fn create(&self, body: &str) -> String {
        let (s, _, v) = self
            .call(Method::POST, "/v2/sandboxes", &[], Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["sandboxID"].as_str().unwrap().to_string()
    }
}

/// E2B's error JSON: the HTTP status as a number, and a message.
fn assert_e2b_error(v: &Value, status: StatusCode) {
    assert_eq!(v["code"], status.as_u16(), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn create_answers_what_the_sdk_requires() {
    let t = setup();
    let (s, _, v) = t
        .call(
            Method::POST,
            "/sandboxes",
            &[("x-api-key", "anything")],
            Some(r#"{"templateID":"code-interpreter-v1","timeout":120,"metadata":{"a":"b"},"autoPause":false}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for field in ["sandboxID", "templateID", "clientID", "envdVersion"] {
        assert!(v[field].is_string(), "{field} missing: {v}");
    }
    assert_eq!(v["templateID"], "base");
    assert_eq!(v["envdVersion"], super::ENVD_VERSION);
    let id = v["sandboxID"].as_str().unwrap();
    let (s, _, info) = t
        .call(Method::GET, &format!("/sandboxes/{id}"), &[], None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(info["state"], "running");
    assert_eq!(info["metadata"]["a"], "b");
    for field in [
        "startedAt",
        "endAt",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "clientID",
    ] {
        assert!(!info[field].is_null(), "{field} missing: {info}");
    }
}

#[tokio::test]
async fn bad_requests_get_e2b_errors() {
    let t = setup();
    let (s, _, v) = t
        .call(Method::POST, "/v2/sandboxes", &[], Some("{nope"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
    let (s, _, v) = t
        .call(
            Method::POST,
            "/v2/sandboxes",
            &[],
            Some(r#"{"templateID":"nope-tmpl"}"#),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
    assert_e2b_error(&v, s);
    assert!(v["message"].as_str().unwrap().contains("nope-tmpl"));
    let missing = "0".repeat(32);
    for (m, uri) in [
        (Method::GET, format!("/sandboxes/{missing}")),
        (Method::DELETE, format!("/sandboxes/{missing}")),
        (Method::POST, format!("/sandboxes/{missing}/pause")),
        (Method::POST, format!("/sandboxes/{missing}/connect")),
    ] {
        let (s, _, v) = t.call(m, &uri, &[], None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert_e2b_error(&v, s);
    }
    let id = t.create(r#"{"templateID":"base"}"#).await;
    let (s, _, v) = t
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/timeout"),
            &[],
            Some("{}"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
    let (s, _, v) = t
        .call(Method::GET, "/v2/sandboxes?state=sleeping", &[], None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
}

#[tokio::test]
async fn list_filters_and_pages_with_next_token() {
    let t = setup();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            t.create(&format!(
                r#"{{"templateID":"base","metadata":{{"team":"a","n":"{i}"}}}}"#
            ))
            .await,
        );
    }
    t.create(r#"{"templateID":"base","metadata":{"team":"b"}}"#)
        .await;
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &token {
            None => "/v2/sandboxes?metadata=team%3Da&limit=2".to_string(),
            Some(t) => format!("/v2/sandboxes?metadata=team%3Da&limit=2&nextToken={t}"),
        };
        let (s, h, v) = t.call(Method::GET, &uri, &[], None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        pages += 1;
        seen.extend(
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s["sandboxID"].as_str().unwrap().to_string()),
        );
        match h.get("x-next-token") {
            Some(n) => token = Some(n.to_str().unwrap().to_string()),
            None => break,
        }
    }
    assert_eq!((pages, &seen), (2, &ids));
    // Both metadata pairs must match.
    let (_, _, v) = t
        .call(
            Method::GET,
            "/v2/sandboxes?metadata=team%3Da%26n%3D1",
            &[],
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["sandboxID"], ids[1].as_str());
}

#[tokio::test]
async fn pause_connect_timeout_kill() {
    let t = setup();
    let id = t.create(r#"{"templateID":"base","timeout":60}"#).await;
    let (s, _, _) = t
        .call(Method::POST, &format!("/sandboxes/{id}/pause"), &[], None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, v) = t
        .call(Method::POST, &format!("/sandboxes/{id}/pause"), &[], None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_e2b_error(&v, s);
    let (_, _, v) = t
        .call(Method::GET, "/v2/sandboxes?state=paused", &[], None)
        .await;
    assert_eq!(v[0]["sandboxID"], id.as_str());
    assert_eq!(v[0]["state"], "paused");
    let (_, _, v) = t.call(Method::GET, "/sandboxes", &[], None).await;
    assert!(
        v.as_array().unwrap().is_empty(),
        "v1 list shows running only: {v}"
    );
    // Connect resumes (201), then just connects (200).
    let connect = format!("/sandboxes/{id}/connect");
    let (s, _, v) = t
        .call(Method::POST, &connect, &[], Some(r#"{"timeout":600}"#))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["sandboxID"], id.as_str());
    let (s, _, _) = t
        .call(Method::POST, &connect, &[], Some(r#"{"timeout":600}"#))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = t
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/timeout"),
            &[],
            Some(r#"{"timeout":30}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = t
        .call(Method::DELETE, &format!("/sandboxes/{id}"), &[], None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = t
        .call(Method::GET, &format!("/sandboxes/{id}"), &[], None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn data_plane_is_routed_by_headers() {
    let t = setup();
    let id = t.create(r#"{"templateID":"base"}"#).await;
    // Any other port: the port proxy's single entry point answers 502 with a clear message.
    let refs = [
        ("e2b-sandbox-id", id.as_str()),
        ("e2b-sandbox-port", "8080"),
    ];
    let (s, _, v) = t.call(Method::GET, "/anything", &refs, None).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_e2b_error(&v, s);
    assert!(v["message"].as_str().unwrap().contains("8080"));
    // A header that is not a port.
    let (s, _, v) = t
        .call(
            Method::GET,
            "/health",
            &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "http")],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
    // The data plane never reaches the REST routes, even on their paths.
    let (s, _, v) = t
        .call(
            Method::GET,
            "/v2/sandboxes",
            &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "1")],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    // ... except E2B control-plane paths sent with envd's headers (e2b 2.26's connect does):
    // envd has no such path, so they are the control plane's.
    let (s, _, v) = t
        .call(
            Method::POST,
            &format!("/sandboxes/{id}/connect"),
            &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "49983")],
            Some(r#"{"timeout":60}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sandboxID"], id.as_str());
    // A sandbox that is gone answers 502 on both envd and the code interpreter, like E2B.
    t.call(Method::DELETE, &format!("/sandboxes/{id}"), &[], None)
        .await;
    for port in ["49983", "49999"] {
        let (s, _, v) = t
            .call(
                Method::POST,
                if port == "49983" {
                    "/process.Process/List"
                } else {
                    "/contexts"
                },
                &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", port)],
                Some("{}"),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{port}: {v}");
        assert_e2b_error(&v, s);
    }
    // The code interpreter's unknown routes are 404s.
    let (s, _, v) = t
        .call(
            Method::GET,
            "/nope",
            &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "49999")],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_e2b_error(&v, s);
    // Requests without the header are Prism's own API.
    let (s, _, _) = t.call(Method::GET, "/healthz", &[], None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn with_auth_on_the_control_plane_needs_a_key_and_the_data_plane_its_token() {
    let (t, admin, project) = setup_with(true);
    let (s, _, v) = t
        .call(
            Method::POST,
            "/v2/sandboxes",
            &[],
            Some(r#"{"templateID":"base"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _, v) = t
        .call(
            Method::POST,
            "/v2/sandboxes",
            &[("x-api-key", &project)],
            Some(r#"{"templateID":"base"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["sandboxID"].as_str().unwrap().to_string();
    let token = v["envdAccessToken"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    let traffic = v["trafficAccessToken"].as_str().unwrap().to_string();
    assert_eq!(traffic.len(), 64);
    assert_ne!(traffic, token);
    // The project's list shows it; the data plane refuses without the token or with another
    // sandbox's, and lets the token (or an admin key) through to the agent.
    let (s, _, v) = t
        .call(
            Method::GET,
            "/v2/sandboxes",
            &[("x-api-key", &project)],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let on_port = |port: &str, extra: Vec<(&'static str, String)>| {
        let mut h = vec![
            ("e2b-sandbox-id", id.clone()),
            ("e2b-sandbox-port", port.to_string()),
        ];
        h.extend(extra);
        h
    };
    let plane = |extra| on_port("49999", extra);
    for (hdrs, want) in [
        // The traffic token opens the code interpreter's port, not envd's; the envd token is
        // not a traffic token.
        (
            plane(vec![("e2b-traffic-access-token", traffic.clone())]),
            StatusCode::OK,
        ),
        (
            on_port("49983", vec![("e2b-traffic-access-token", traffic.clone())]),
            StatusCode::UNAUTHORIZED,
        ),
        (
            plane(vec![("e2b-traffic-access-token", token.clone())]),
            StatusCode::UNAUTHORIZED,
        ),
        (plane(vec![]), StatusCode::UNAUTHORIZED),
        (
            plane(vec![("x-access-token", "00".repeat(32))]),
            StatusCode::UNAUTHORIZED,
        ),
        (
            plane(vec![("x-api-key", project.clone())]),
            StatusCode::UNAUTHORIZED,
        ),
        (
            plane(vec![("x-access-token", token.clone())]),
            StatusCode::OK,
        ),
        (plane(vec![("x-api-key", admin.clone())]), StatusCode::OK),
    ] {
        let refs: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, _, v) = t.call(Method::GET, "/contexts", &refs, None).await;
        // The fake agent has no code contexts: past the check, the answer is its error, never 401.
        if want == StatusCode::OK {
            assert_ne!(s, StatusCode::UNAUTHORIZED, "{refs:?}: {v}");
        } else {
            assert_eq!(s, want, "{refs:?}: {v}");
            assert_e2b_error(&v, s);
        }
    }
}

#[tokio::test]
async fn egress_rules_at_create_and_put_network_become_prism_modes() {
    let t = setup();
    // At create: everything denied → none (also via allow_internet_access: false).
    let id = t
        .create(r#"{"templateID":"base","network":{"denyOut":["0.0.0.0/0"]}}"#)
        .await;
    let (_, _, v) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}"), &[], None)
        .await;
    assert_eq!(v["network"], "none", "{v}");
    // Single denied ranges cannot be expressed: 400, at create and on PUT.
    let (s, _, v) = t
        .call(
            Method::POST,
            "/v2/sandboxes",
            &[],
            Some(r#"{"templateID":"base","network":{"denyOut":["10.0.0.0/8"]}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
    let put = |body: &'static str, id: String| {
        let t = &t;
        async move {
            t.call(
                Method::PUT,
                &format!("/sandboxes/{id}/network"),
                &[],
                Some(body),
            )
            .await
        }
    };
    let (s, _, v) = put(r#"{"denyOut":["10.0.0.0/8"]}"#, id.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_e2b_error(&v, s);
    let (s, _, v) = put(
        r#"{"allowOut":["*.com"],"denyOut":["0.0.0.0/0"]}"#,
        id.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("wildcard"), "{v}");
    let (s, _, v) = put(r#"{"denyOut":["0.0.0.0/0"]}"#, "nope".into()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_e2b_error(&v, s);
    // This daemon has no host networking: only `none` can be applied to a running sandbox.
    let (s, _, v) = put(r#"{"denyOut":["0.0.0.0/0"]}"#, id.clone()).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _, v) = put(r#"{}"#, id.clone()).await;
    assert!(s.is_client_error(), "{s} {v}");
    assert_e2b_error(&v, s);
    let (_, _, v) = t
        .call(Method::GET, &format!("/v1/sandboxes/{id}"), &[], None)
        .await;
    assert_eq!(v["network"], "none", "a refused change keeps the mode: {v}");
}
