//! End-to-end tests of API keys, project scoping, rate limits, quotas and the audit trail: the
//! real prismd (namespace runtime, root) with `auth = true`, driven over HTTP and by prismctl.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use prism_types::CreateSandboxRequest;
use prism_types::auth::{AuditEntry, CreateApiKeyRequest};
use reqwest::{Method, StatusCode};
use support::{Daemon, prismctl};

fn client(d: &Daemon, key: &str) -> prism_client::Client {
    prism_client::Client::new(&d.url())
        .unwrap()
        .with_api_key(Some(key.to_string()))
}

async fn project_key(admin: &prism_client::Client, project: &str) -> (String, String) {
    let k = admin
        .create_api_key(&CreateApiKeyRequest {
            name: format!("{project}-key"),
            project: Some(project.into()),
        })
        .await
        .unwrap();
    (k.info.id, k.key)
}

fn named(name: &str) -> CreateSandboxRequest {
    serde_json::from_value(serde_json::json!({ "name": name })).unwrap()
}

/// `(status, code, body)` of a raw request with `key`.
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    key: Option<&str>,
) -> (StatusCode, String, String) {
    let mut req = http
        .request(method, url)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.body("{}").send().await.unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_projects_and_every_sandbox_route_is_scoped() {
    if !support::root_or_skip("keys_projects_and_every_sandbox_route_is_scoped") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        dir.path(),
        "auth = true\n[limits]\nrequests_per_s = 0\ncreates_per_s = 0\n",
    )
    .await;
    let http = reqwest::Client::new();
    let base = d.url();

    // No key, a malformed key: 401 with a JSON error; health stays open.
    let (st, code, _) = call(&http, Method::GET, &format!("{base}/v1/sandboxes"), None).await;
    assert_eq!(
        (st, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (st, _, _) = call(
        &http,
        Method::GET,
        &format!("{base}/v1/sandboxes"),
        Some("x"),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(d.client.health().await.is_ok());

    let admin_secret = d.admin_key();
    let admin = client(&d, &admin_secret);
    let (a_id, a_key) = project_key(&admin, "team-a").await;
    let (_b_id, b_key) = project_key(&admin, "team-b").await;
    let (a, b) = (client(&d, &a_key), client(&d, &b_key));

    // X-API-KEY works as well as Bearer.
    let resp = http
        .get(format!("{base}/v1/sandboxes"))
        .header("x-api-key", &a_key)
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "req-123");

    let sa = a.create(&named("owned-by-a")).await.unwrap();
    let sb = b.create(&named("owned-by-b")).await.unwrap();
    let ids = |l: Vec<prism_types::Sandbox>| l.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(a.list_all(None, None).await.unwrap()),
        vec![sa.id.clone()]
    );
    assert_eq!(
        ids(b.list_all(None, None).await.unwrap()),
        vec![sb.id.clone()]
    );
    assert_eq!(admin.list_all(None, None).await.unwrap().len(), 2);

    // Walk every route of the OpenAPI document that names a sandbox: B gets 404 for A's
    // sandbox, by id and by name, on every method.
    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains("{id}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for target in [sa.id.as_str(), "owned-by-a"] {
                let url = format!(
                    "{base}{}",
                    path.replace("{id}", target).replace("{ctx}", "python")
                );
                let url = format!("{url}?path=/etc/hostname");
                let (st, code, body) = call(&http, m.clone(), &url, Some(&b_key)).await;
                assert_eq!(
                    (st, code.as_str()),
                    (StatusCode::NOT_FOUND, "not_found"),
                    "{method} {path} as tenant B: {body}"
                );
                assert!(!body.contains(&sa.id) || target == sa.id, "{body}");
                walked += 1;
            }
        }
    }
    assert!(walked >= 30, "walked only {walked} routes");
    // A's sandbox survived B's DELETE, stop and exec attempts.
    let still = a.get(&sa.id).await.unwrap();
    assert_eq!(still.state, prism_types::SandboxState::Running);

    // Project keys cannot use admin routes.
    for (m, p) in [
        (Method::POST, "/v1/api-keys"),
        (Method::GET, "/v1/api-keys"),
        (Method::GET, "/v1/info"),
        (Method::POST, "/v1/images/pull"),
    ] {
        let (st, code, _) = call(&http, m, &format!("{base}{p}"), Some(&a_key)).await;
        assert_eq!(
            (st, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{p}"
        );
    }

    // Templates belong to the project that built them: B cannot see, use, replace or remove A's.
    let spec: prism_types::templates::TemplateSpec =
        serde_json::from_value(serde_json::json!({"name": "team-a-tpl", "env": {"T": "a"}}))
            .unwrap();
    let t = a.create_template(&spec).await.unwrap();
    assert_eq!(t.reference, "team-a-tpl:1");
    assert_eq!(a.list_templates().await.unwrap().templates.len(), 1);
    assert!(b.list_templates().await.unwrap().templates.is_empty());
    for e in [
        b.get_template("team-a-tpl").await.unwrap_err(),
        b.remove_template("team-a-tpl:1").await.unwrap_err(),
        b.create(&serde_json::from_value(serde_json::json!({"template": "team-a-tpl"})).unwrap())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(404), "{e}");
    }
    let e = b.create_template(&spec).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    let sa_t = a
        .create(&serde_json::from_value(serde_json::json!({"template": "team-a-tpl"})).unwrap())
        .await
        .unwrap();
    assert_eq!(sa_t.template, "team-a-tpl:1");
    a.destroy(&sa_t.id).await.unwrap();

    // prismctl with A's key sees A's sandbox only and cannot exec in B's.
    let out = Command::new(prismctl())
        .args(["--api", &base, "--api-key", &a_key, "ls", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sa.id);
    let out = Command::new(prismctl())
        .args(["--api", &base, "exec", &sb.id, "--", "true"])
        .env("PRISM_API_KEY", &a_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no sandbox"),
        "{out:?}"
    );

    // The audit trail names who created A's sandbox and B's refused delete.
    let trail: Vec<AuditEntry> = admin.audit(Some(&sa.id), None, Some(1000)).await.unwrap();
    assert!(
        trail.iter().any(|e| e.action == "POST /v1/sandboxes"
            && e.key_id.as_deref() == Some(a_id.as_str())
            && e.status == 201),
        "{trail:?}"
    );
    assert!(
        trail.iter().any(|e| e.action == "DELETE /v1/sandboxes/{id}"
            && e.project.as_deref() == Some("team-b")
            && e.status == 404),
        "{trail:?}"
    );
    // A project key reads its own project's trail only.
    let own = a.audit(None, None, Some(1000)).await.unwrap();
    assert!(!own.is_empty());
    assert!(own.iter().all(|e| e.project.as_deref() == Some("team-a")));

    // Revoked by prismctl (admin key from the state dir's admin.key): refused at once.
    let out = Command::new(prismctl())
        .args(["--api", &base, "api-key", "revoke", &a_id])
        .env("PRISM_STATE_DIR", &d.state)
        .env_remove("PRISM_API_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let e = a.list_all(None, None).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    let out = Command::new(prismctl())
        .args([
            "--api",
            &base,
            "--api-key",
            &admin_secret,
            "api-key",
            "ls",
            "--json",
        ])
        .output()
        .unwrap();
    let keys: Vec<prism_types::auth::ApiKey> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(keys.iter().any(|k| k.id == a_id && k.revoked_at.is_some()));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(!listed.contains(&a_key) && !listed.contains(&admin_secret));

    admin.destroy(&sa.id).await.unwrap();
    admin.destroy(&sb.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_and_quota_refuses_the_extra_sandbox() {
    if !support::root_or_skip("rate_limit_answers_429_and_quota_refuses_the_extra_sandbox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        dir.path(),
        "auth = true\n[limits]\nrequests_per_s = 0.2\nrequests_burst = 8\ncreates_per_s = 0\n\
         max_sandboxes = 2\n",
    )
    .await;
    let admin = client(&d, &d.admin_key());
    let (_, key) = project_key(&admin, "q").await;
    let p = client(&d, &key);

    // Quota: two sandboxes run, the third is refused with a clear 429, the first stays.
    let s1 = p.create(&named("q1")).await.unwrap();
    let _s2 = p.create(&named("q2")).await.unwrap();
    let e = p.create(&named("q3")).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(429), Some("quota_exceeded")),
        "{e}"
    );
    assert!(e.to_string().contains("quota is 2"), "{e}");
    // Admin keys have no quota.
    let s3 = admin.create(&named("admin-made")).await.unwrap();
    // Freed by a destroy: the project may create again.
    p.destroy(&s1.id).await.unwrap();
    let s4 = p.create(&named("q4")).await.unwrap();

    // Rate limit: 5 of the burst of 8 are spent; within a few more requests the key is refused
    // with Retry-After (the refill, 0.2/s, cannot keep up).
    let http = reqwest::Client::new();
    let mut sent = 0;
    let resp = loop {
        let resp = http
            .get(format!("{}/v1/sandboxes", d.url()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        sent += 1;
        if resp.status() != StatusCode::OK || sent > 20 {
            break resp;
        }
    };
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        sent <= 5,
        "the burst of 8 allowed {sent} more requests after 5"
    );
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Per key: the admin key still passes.
    admin.destroy(&s4.id).await.unwrap();
    admin.destroy(&s3.id).await.unwrap();
    admin.destroy(&_s2.id).await.unwrap();
}

#[test]
fn refuses_to_serve_unauthenticated_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prismd.toml");
    std::fs::write(&config, "auth = false\n").unwrap();
    let out = Command::new(support::PRISMD)
        .args(["--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve without authentication"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "{err}");
}

fn printenv(name: &str) -> prism_types::ExecRequest {
    prism_types::ExecRequest {
        command: Some(format!("printenv {name}")),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_sandbox_env_and_nothing_else() {
    if !support::root_or_skip("secrets_reach_the_sandbox_env_and_nothing_else") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(
        dir.path(),
        "auth = true\n[limits]\nrequests_per_s = 0\ncreates_per_s = 0\n",
    )
    .await;
    let base = d.url();
    let admin = client(&d, &d.admin_key());
    let (_, p_key) = project_key(&admin, "proj").await;
    let (_, q_key) = project_key(&admin, "other").await;
    let (p, q) = (client(&d, &p_key), client(&d, &q_key));
    let secret = format!(
        "s3cr3t-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );

    // Set through prismctl, the value on stdin.
    let mut child = Command::new(prismctl())
        .args(["--api", &base, "secret", "set", "API_TOKEN"])
        .env("PRISM_API_KEY", &p_key)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{secret}").unwrap();
    }
    assert!(child.wait().unwrap().success());

    // The main process and every exec see it; another project's sandbox does not.
    let req: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "name": "with-secret",
        "cmd": ["sh", "-c", "printenv API_TOKEN > /tmp/main-env; exec sleep 600"],
    }))
    .unwrap();
    let sb = p.create(&req).await.unwrap();
    let r = p.exec(&sb.id, &printenv("API_TOKEN")).await.unwrap();
    assert_eq!(r.stdout.trim(), secret);
    let main_env = support::eventually(20, "the main process's env file", || {
        let p = p.clone();
        let id = sb.id.clone();
        async move {
            match p.read_path(&id, "/tmp/main-env", false).await {
                Ok(prism_client::PathContent::File(b)) if !b.is_empty() => Some(b),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&main_env).trim(), secret);
    let other = q.create(&named("no-secret")).await.unwrap();
    let r = q.exec(&other.id, &printenv("API_TOKEN")).await.unwrap();
    assert_ne!(
        r.exit_code, 0,
        "another project's sandbox got the secret: {r:?}"
    );

    // Still injected after a restart (the owner is recorded by then).
    p.restart(&sb.id).await.unwrap();
    let r = p.exec(&sb.id, &printenv("API_TOKEN")).await.unwrap();
    assert_eq!(r.stdout.trim(), secret);

    // No response, audit record, log or database page holds the value.
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for path in [
        format!("/v1/sandboxes/{}", sb.id),
        "/v1/sandboxes".to_string(),
        "/v1/secrets".to_string(),
        "/v1/audit?limit=1000".to_string(),
        format!("/v1/sandboxes/{}/events", sb.id),
    ] {
        let text = http
            .get(format!("{base}{path}"))
            .bearer_auth(&p_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        bodies.push((path, text));
    }
    assert!(bodies[2].1.contains("API_TOKEN"), "{}", bodies[2].1);
    let audit = &bodies[3].1;
    assert!(audit.contains("PUT /v1/secrets/{name}"), "{audit}");
    for (path, text) in &bodies {
        assert!(!text.contains(&secret), "GET {path} returned the secret");
    }
    for entry in std::fs::read_dir(&d.state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret in clear",
                path.display()
            );
        }
    }

    // Removed: new processes no longer get it.
    p.remove_secret("API_TOKEN", None).await.unwrap();
    let r = p.exec(&sb.id, &printenv("API_TOKEN")).await.unwrap();
    assert_ne!(r.exit_code, 0);
    admin.destroy(&sb.id).await.unwrap();
    admin.destroy(&other.id).await.unwrap();
}
