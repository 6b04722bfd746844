//! End-to-end: versioned templates through the real prismd (namespace runtime, root): built
//! from an imported busybox image and from `base`, their setup captured once, versions pinned
//! by sandboxes across restarts, failures kept with their output, removal refused while used,
//! and the `prismctl template` commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../prism-images/tests/support/mod.rs"]
mod registry;
mod support;

use std::collections::BTreeMap;

use prism_client::{Client, ClientError};
use prism_types::templates::{TemplateSpec, TemplateStatus};
use prism_types::{CreateSandboxRequest, ExecRequest};
use support::Daemon;

fn create(template: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        template: Some(template.into()),
        ..Default::default()
    }
}

/// `(status, code, message)` of an API error.
fn api_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api { status, error }) => (status, error.code, error.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn out(c: &Client, id: &str, cmd: &str) -> String {
    let r = c
        .exec(
            id,
            &ExecRequest {
                command: Some(cmd.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{cmd}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// A tar of a directory (an OCI layout) for `POST /v1/images/import`.
fn tar_dir(dir: &std::path::Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

fn app_spec(version: &str) -> TemplateSpec {
    TemplateSpec {
        name: "app".into(),
        from: Some("local.test/busybox:1".into()),
        run: vec![
            "busybox mkdir -p /opt/app".into(),
            format!("echo {version} > /opt/app/version; echo $BUILD_ENV > /opt/app/env"),
            // Counts how often setup ran, and deletes a file of the image (a whiteout).
            "echo ran >> /opt/app/runs; busybox rm /opt/data/new".into(),
        ],
        env: BTreeMap::from([("BUILD_ENV".into(), "from-build".into())]),
        resources: prism_types::Resources {
            memory_mb: Some(256),
            ..Default::default()
        },
        ports: vec![8080],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_from_an_image_are_built_once_versioned_and_pinned() {
    if registry::skip("templates_from_an_image", &["busybox"]) {
        return;
    }
    let layouts = tempfile::tempdir().unwrap();
    registry::busybox_layout(&layouts.path().join("bb"), "1");
    let state = registry::state_dir();
    let mut d = Daemon::start(state.path()).await;
    let c = d.client.clone();
    c.import_image(
        tar_dir(&layouts.path().join("bb")),
        Some("local.test/busybox:1"),
    )
    .await
    .unwrap();

    // v1: built from the image, setup run once in a build sandbox that is gone afterwards.
    let v1 = c.create_template(&app_spec("v1")).await.unwrap();
    assert_eq!(
        (v1.version, v1.status),
        (1, TemplateStatus::Ready),
        "{v1:?}"
    );
    assert_eq!(v1.reference, "app:1");
    assert_eq!(
        v1.layers.len(),
        1,
        "one captured layer for the image's one mount"
    );
    assert!(v1.source.as_deref().unwrap().contains("@sha256:"), "{v1:?}");
    let live = c.list_all(None, None).await.unwrap();
    assert!(live.is_empty(), "no build sandbox left behind: {live:?}");

    let sb = c.create(&create("app")).await.unwrap();
    assert_eq!(sb.template, "app:1", "the record pins the version");
    assert_eq!(
        sb.resources.memory_mb,
        Some(256),
        "template default resources"
    );
    assert_eq!(sb.ports, vec![8080], "template default ports");
    assert_eq!(
        sb.env.get("GREETING").map(String::as_str),
        Some("hi"),
        "image env"
    );
    let check = "cat /opt/app/version /opt/app/runs /opt/app/env; echo $BUILD_ENV; \
                 test ! -e /opt/data/new && echo deleted; pwd";
    assert_eq!(
        out(&c, &sb.id, check).await,
        "v1\nran\nfrom-build\nfrom-build\ndeleted\n/opt\n"
    );
    // Request fields override template defaults.
    let mut req = create("app");
    req.resources.memory_mb = Some(128);
    req.env.insert("BUILD_ENV".into(), "mine".into());
    let own = c.create(&req).await.unwrap();
    assert_eq!(own.resources.memory_mb, Some(128));
    assert_eq!(out(&c, &own.id, "echo $BUILD_ENV").await, "mine\n");
    c.destroy(&own.id).await.unwrap();

    // v2 changes what new sandboxes see; the v1 sandbox keeps v1, across stop/start and a
    // daemon restart; `app:1` still pins v1.
    let v2 = c.create_template(&app_spec("v2")).await.unwrap();
    assert_eq!(v2.version, 2);
    let new = c.create(&create("app")).await.unwrap();
    assert_eq!(new.template, "app:2");
    assert_eq!(
        out(&c, &new.id, "cat /opt/app/version /opt/app/runs").await,
        "v2\nran\n"
    );
    let pinned = c.create(&create("app:1")).await.unwrap();
    assert_eq!(out(&c, &pinned.id, "cat /opt/app/version").await, "v1\n");
    c.destroy(&pinned.id).await.unwrap();
    c.stop(&sb.id).await.unwrap();
    d.term();
    let d2 = Daemon::start(state.path()).await;
    let c = d2.client.clone();
    c.start(&sb.id).await.unwrap();
    assert_eq!(
        out(&c, &sb.id, "cat /opt/app/version /opt/app/runs").await,
        "v1\nran\n"
    );

    // Prune keeps every layer a template needs (and the image it was built from).
    c.remove_image("local.test/busybox:1").await.unwrap();
    c.prune_images().await.unwrap();
    let after = c.create(&create("app:1")).await.unwrap();
    assert_eq!(out(&c, &after.id, "cat /opt/app/version").await, "v1\n");
    c.destroy(&after.id).await.unwrap();

    // Removing a version a sandbox uses is refused; once unused it goes, and its number is
    // never reused.
    let (s, code, msg) = api_err(c.remove_template("app:1").await);
    assert_eq!((s, code.as_str()), (409, "template_in_use"), "{msg}");
    assert!(msg.contains(&sb.id), "{msg}");
    c.destroy(&sb.id).await.unwrap();
    let removed = c.remove_template("app:1").await.unwrap();
    assert_eq!(removed.templates.len(), 1);
    let (s, code, msg) = api_err(c.create(&create("app:1")).await);
    assert_eq!((s, code.as_str()), (404, "template_not_found"), "{msg}");
    assert_eq!(c.get_template("app").await.unwrap().version, 2);
    assert_eq!(out(&c, &new.id, "cat /opt/app/version").await, "v2\n");
    c.destroy(&new.id).await.unwrap();
    c.remove_template("app").await.unwrap();
    c.import_image(
        tar_dir(&layouts.path().join("bb")),
        Some("local.test/busybox:1"),
    )
    .await
    .unwrap();
    let v3 = c.create_template(&app_spec("v3")).await.unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(
        c.list_templates()
            .await
            .unwrap()
            .templates
            .iter()
            .map(|t| t.version)
            .collect::<Vec<_>>(),
        vec![3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_from_base_failures_and_the_cli() {
    if !support::root_or_skip("templates_from_base_failures_and_the_cli") {
        return;
    }
    let state = registry::state_dir();
    let d = Daemon::start(state.path()).await;
    let c = &d.client;

    // From base: files under / and under the host-/usr view are both captured.
    let py = c
        .create_template(&TemplateSpec {
            name: "py".into(),
            run: vec![
                "mkdir -p /srv/app && echo 'print(6 * 7)' > /srv/app/main.py".into(),
                "python3 -m compileall -q /srv/app".into(),
                "mkdir -p /usr/local/lib/prism-tpl && echo usr > /usr/local/lib/prism-tpl/f".into(),
            ],
            start: Some(vec!["sleep".into(), "300".into()]),
            cwd: Some("/srv/app".into()),
            // Bounds the build sandbox too: its upper lives on a loop-mounted disk image.
            resources: prism_types::Resources {
                disk_mb: Some(64),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        py.layers.len(),
        2,
        "base has two mounts: / and /usr: {py:?}"
    );
    assert_eq!(py.source.as_deref(), Some("base"));
    let sb = c.create(&create("py")).await.unwrap();
    assert_eq!(sb.cmd, Some(vec!["sleep".to_string(), "300".to_string()]));
    assert_eq!(sb.resources.disk_mb, Some(64));
    assert_eq!(
        out(c, &sb.id, "ls __pycache__ | grep -c main; python3 main.py; cat /usr/local/lib/prism-tpl/f; cat /etc/hostname").await,
        format!("1\n42\nusr\n{}\n", &sb.id[..12]),
        "setup output is there, the hostname is the sandbox's own"
    );
    assert!(
        !std::path::Path::new("/usr/local/lib/prism-tpl").exists(),
        "the host's /usr is untouched"
    );
    c.destroy(&sb.id).await.unwrap();

    // The E2B surface: `templateID` names a Prism template.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/sandboxes", d.url()))
        .json(&serde_json::json!({"templateID": "py", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let e2b: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(e2b["templateID"], "py:1");
    let id = e2b["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(out(c, &id, "cat /usr/local/lib/prism-tpl/f").await, "usr\n");
    let listed: serde_json::Value = http
        .get(format!("{}/v2/sandboxes?template=py", d.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    c.destroy(&id).await.unwrap();
    let resp = http
        .post(format!("{}/sandboxes", d.url()))
        .json(&serde_json::json!({"templateID": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // A failing setup: 422 with its output, a failed version kept for inspection, 4xx on create.
    let (s, code, msg) = api_err(
        c.create_template(&TemplateSpec {
            name: "bad".into(),
            run: vec!["true".into(), "echo before; echo oops >&2; exit 3".into()],
            ..Default::default()
        })
        .await,
    );
    assert_eq!((s, code.as_str()), (422, "template_build_failed"), "{msg}");
    assert!(
        msg.contains("oops") && msg.contains("code 3") && msg.contains("2 of 2"),
        "{msg}"
    );
    let bad = c.get_template("bad").await.unwrap();
    assert_eq!(bad.status, TemplateStatus::Failed);
    assert!(bad.error.unwrap_or_default().contains("before"));
    let (s, code, msg) = api_err(c.create(&create("bad")).await);
    assert_eq!((s, code.as_str()), (404, "template_not_found"), "{msg}");
    let (s, code, msg) = api_err(c.create(&create("bad:1")).await);
    assert_eq!((s, code.as_str()), (422, "template_not_ready"), "{msg}");
    assert!(msg.contains("oops"), "{msg}");
    let (s, code, msg) = api_err(c.create(&create("nope")).await);
    assert_eq!((s, code.as_str()), (404, "template_not_found"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    let (s, code, _) = api_err(c.get_template("nope").await);
    assert_eq!((s, code.as_str()), (404, "template_not_found"));
    let (s, code, _) = api_err(
        c.create_template(&TemplateSpec {
            name: "Bad Name".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!((s, code.as_str()), (422, "invalid_request"));
    let (s, code, _) = api_err(
        c.create_template(&TemplateSpec {
            name: "x".into(),
            from: Some("127.0.0.1:1/none:1".into()),
            run: vec!["true".into()],
            ..Default::default()
        })
        .await,
    );
    assert_eq!((s, code.as_str()), (422, "template_build_failed"));
    assert!(
        c.list_all(None, None).await.unwrap().is_empty(),
        "no sandbox left"
    );

    // The CLI: create (plain progress lines on a non-terminal), ls, inspect, run, rm.
    let ctl = |args: &[&str]| d.ctl(args);
    let file = state.path().join("tpl.toml");
    std::fs::write(
        &file,
        "name = \"ctl\"\nrun = [\"echo one > /srv/one\"]\n[env]\nA = \"from-file\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = ctl(&[
        "template",
        "create",
        "-f",
        file.to_str().unwrap(),
        "--run",
        "echo two > /srv/two",
        "-e",
        "B=flag",
        "--memory",
        "300",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("built ctl:1"), "{stdout}");
    assert!(
        stderr.contains("step 1/2: echo one") && stderr.contains("step 2/2"),
        "{stderr}"
    );
    let (code, stdout, _) = ctl(&["template", "ls", "-q"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.lines().any(|l| l == "ctl:1") && stdout.contains("bad:1"),
        "{stdout}"
    );
    let (code, stdout, _) = ctl(&["template", "inspect", "ctl:1"]);
    assert_eq!(code, Some(0));
    let t: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(t["status"], "ready");
    assert_eq!(t["spec"]["resources"]["memory_mb"], 300);
    let (code, stdout, stderr) = ctl(&[
        "run",
        "--rm",
        "--template",
        "ctl:1",
        "--",
        "sh",
        "-c",
        "cat /srv/one /srv/two; echo $A $B",
    ]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "one\ntwo\nfrom-file flag\n"),
        "{stderr}"
    );
    let (code, stdout, stderr) = ctl(&["--json", "template", "create", "ctl", "--run", "false"]);
    assert_ne!(code, Some(0), "{stdout}");
    assert!(
        stderr.contains("template_build_failed") || stderr.contains("failed to build"),
        "{stderr}"
    );
    let (code, _, stderr) = ctl(&["template", "create", "ctl", "--run", "exit 4"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("code 4"), "{stderr}");
    let (code, stdout, stderr) = ctl(&["template", "rm", "ctl"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("removed ctl:1") && stdout.contains("removed ctl:3"),
        "{stdout}"
    );
    let (code, _, stderr) = ctl(&["run", "--rm", "--template", "ctl", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("ctl"), "{stderr}");
}
