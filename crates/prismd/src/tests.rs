//! Router tests with `oneshot` on the fake runtime and agents: no socket, no root.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use prism_core::lifecycle::fake::{FakeAgents, FakeRuntime};
use prism_core::lifecycle::{ManagerConfig, SandboxManager};
use prism_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

struct T {
    _dir: tempfile::TempDir,
    app: Router,
}

fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    let rt = FakeRuntime::new(dir.path());
    let agents = FakeAgents::for_runtime(&rt);
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    let auth = Arc::new(
        crate::auth::Auth::new(false, store.clone(), crate::auth::Limits::default()).unwrap(),
    );
    let manager =
        SandboxManager::new(store, rt, agents, ManagerConfig::new(dir.path().into())).unwrap();
    let state = AppState {
        manager,
        ready: Arc::new(AtomicBool::new(true)),
        listen: "127.0.0.1:8008".parse().unwrap(),
        auth,
        publish: Arc::new(crate::publish::Publisher::new([127, 0, 0, 1].into())),
    };
    T {
        _dir: dir,
        app: app(state),
    }
}

impl T {
    async fn call(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }

    async fn json(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (s, b) = self.call(method, uri, body).await;
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&b)));
        (s, v)
    }
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn create_inspect_list_destroy() {
    let t = setup();
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"name":"web","labels":{"k":"v"}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "running");
    let id = v["id"].as_str().unwrap().to_string();
    let (s, v) = t.json(Method::GET, "/v1/sandboxes/web", None).await;
    assert_eq!((s, v["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
    let (_, v) = t.json(Method::GET, "/v1/sandboxes?label=k=v", None).await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1);
    let (_, v) = t
        .json(Method::GET, "/v1/sandboxes?label=k=other", None)
        .await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 0);
    let (s, v) = t.json(Method::POST, "/v1/sandboxes/web/stop", None).await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("stopped")));
    let (_, v) = t
        .json(Method::GET, "/v1/sandboxes?state=stopped", None)
        .await;
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1);
    let (s, v) = t
        .json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("destroyed"))
    );
    let (_, v) = t
        .json(Method::GET, &format!("/v1/sandboxes/{id}/events"), None)
        .await;
    assert!(v.as_array().unwrap().len() >= 3);
    let (s, v) = t.json(Method::GET, "/v1/sandboxes/web", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "names of destroyed sandboxes are free"
    );
    assert_error(&v, "not_found");
}

#[tokio::test]
async fn bad_input_gets_json_errors_with_the_right_status() {
    let t = setup();
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            "/v1/sandboxes",
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "/v1/sandboxes",
            r#"{"nmae":"x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "/v1/sandboxes",
            r#"{"timeout_s":-5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "/v1/sandboxes",
            r#"{"resources":{"memory_mb":99999999999}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "/v1/sandboxes",
            r#"{"template":"nope"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_not_found",
        ),
        (
            "/v1/sandboxes/nope/exec",
            r#"{"cmd":["true"]}"#,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (uri, body, status, code) in cases {
        let (s, v) = t.json(Method::POST, uri, Some(body)).await;
        assert_eq!(s, *status, "{uri} {body}: {v}");
        assert_error(&v, code);
    }
    t.json(Method::POST, "/v1/sandboxes", Some(r#"{"name":"dup"}"#))
        .await;
    let (s, v) = t
        .json(Method::POST, "/v1/sandboxes", Some(r#"{"name":"dup"}"#))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "name_conflict");
    let (s, v) = t.json(Method::GET, "/v1/nothing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "route_not_found");
    let (s, v) = t.json(Method::PATCH, "/v1/sandboxes", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&v, "method_not_allowed");
    let (s, v) = t.json(Method::GET, "/v1/sandboxes?state=bogus", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    // Without a JSON content type.
    let req = Request::post("/v1/sandboxes")
        .body(Body::from("{}"))
        .unwrap();
    let resp = t.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn exec_buffered_and_state_errors() {
    let t = setup();
    let (_, v) = t
        .json(Method::POST, "/v1/sandboxes", Some(r#"{"name":"x"}"#))
        .await;
    assert_eq!(v["state"], "running");
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes/x/exec",
            Some(r#"{"cmd":["echo","hi"]}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["truncated"], false);
    let (_, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes/x/exec",
            Some(r#"{"command":"exit 7"}"#),
        )
        .await;
    assert_eq!(v["exit_code"], 7);
    let (s, v) = t
        .json(Method::POST, "/v1/sandboxes/x/exec", Some(r#"{}"#))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "invalid_request");
    t.json(Method::POST, "/v1/sandboxes/x/stop", None).await;
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes/x/exec",
            Some(r#"{"cmd":["true"]}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "invalid_state");
}

#[tokio::test]
async fn files_put_get_list_delete() {
    let t = setup();
    t.json(Method::POST, "/v1/sandboxes", Some(r#"{"name":"f"}"#))
        .await;
    let req = Request::put("/v1/sandboxes/f/files?path=/d/a.txt")
        .body(Body::from("bytes!"))
        .unwrap();
    let resp = t.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, b) = t
        .call(Method::GET, "/v1/sandboxes/f/files?path=/d/a.txt", None)
        .await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, &b"bytes!"[..]));
    let (s, v) = t
        .json(Method::GET, "/v1/sandboxes/f/files?path=/d", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!([{"name":"a.txt","path":"/d/a.txt","kind":"file","size":6}])
    );
    let (s, b) = t
        .call(
            Method::GET,
            "/v1/sandboxes/f/files?path=/d&format=tar",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.starts_with(b"TAR"));
    let (s, _) = t
        .call(Method::DELETE, "/v1/sandboxes/f/files?path=/d/a.txt", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = t
        .json(Method::GET, "/v1/sandboxes/f/files?path=/d/a.txt", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = t.json(Method::GET, "/v1/sandboxes/f/files", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "path is required: {v}");
}

#[tokio::test]
async fn logs_metrics_timeout_health_info() {
    let t = setup();
    let (_, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"name":"l","cmd":["echo","out"]}"#),
        )
        .await;
    assert_eq!(v["state"], "running", "{v}");
    let (s, b) = t
        .call(Method::GET, "/v1/sandboxes/l/logs?follow=true", None)
        .await;
    assert_eq!((s, b.as_slice()), (StatusCode::OK, &b"out\n"[..]));
    let (s, v) = t.json(Method::GET, "/v1/sandboxes/l/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["memory_bytes"].as_u64().unwrap() > 0);
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes/l/timeout",
            Some(r#"{"timeout_s":60}"#),
        )
        .await;
    assert_eq!((s, v["timeout_s"].as_u64()), (StatusCode::OK, Some(60)));
    let (s, v) = t
        .json(
            Method::POST,
            "/v1/sandboxes/l/timeout",
            Some(r#"{"timeout_s":99999999}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&v, "invalid_request");
    let (s, v) = t.json(Method::GET, "/healthz", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, _) = t.json(Method::GET, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.json(Method::GET, "/v1/info", None).await;
    assert_eq!(v["runtime"], "fake");
    assert_eq!(v["sandboxes"]["running"], 1);
}

#[tokio::test]
async fn openapi_lists_every_route_and_docs_are_served() {
    let t = setup();
    let (s, v) = t.json(Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = v["paths"].as_object().unwrap();
    for p in [
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/exec/ws",
        "/v1/sandboxes/{id}/files",
        "/v1/sandboxes/{id}/logs",
        "/v1/templates",
        "/v1/templates/{reference}",
        "/healthz",
    ] {
        assert!(paths.contains_key(p), "{p} missing from OpenAPI");
    }
    // Every documented operation is routed (not the JSON 404/405 fallbacks).
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let uri = path.replace("{id}", "nope");
            let (s, b) = t.call(m.clone(), &uri, None).await;
            let body = String::from_utf8_lossy(&b);
            assert!(
                s != StatusCode::METHOD_NOT_ALLOWED && !body.contains("route_not_found"),
                "{m} {uri}: {s} {body}"
            );
        }
    }
    let (s, b) = t.call(Method::GET, "/docs/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&b).contains("swagger"),
        "Swagger UI page"
    );
}
