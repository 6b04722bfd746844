//! End-to-end: sandboxes from OCI images through the real prismd (namespace runtime, root),
//! with Debian's `docker-registry` on loopback and images pushed by `skopeo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../prism-images/tests/support/mod.rs"]
mod registry;
mod support;

use prism_client::ClientError;
use prism_types::images::{PullEvent, PullImageRequest};
use prism_types::{CreateSandboxRequest, ExecRequest, SandboxState};
use support::Daemon;

fn create_req(json: serde_json::Value) -> CreateSandboxRequest {
    serde_json::from_value(json).unwrap()
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

/// `(status, code)` of an API error.
fn api_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, error }) => (status, error.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn out(c: &prism_client::Client, id: &str, cmd: &str) -> String {
    let r = c.exec(id, &sh(cmd)).await.unwrap();
    assert_eq!(r.exit_code, 0, "{cmd}: {}", r.stderr);
    r.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_from_registry_images() {
    if registry::skip(
        "sandboxes_from_registry_images",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let reg = registry::Registry::start();
    let layouts = tempfile::tempdir().unwrap();
    let v1 = layouts.path().join("v1");
    registry::busybox_layout(&v1, "1");
    reg.push(&v1, "1", "app:1");
    let image = format!("127.0.0.1:{}/app:1", reg.port);

    let state = registry::state_dir();
    let d = Daemon::start(state.path()).await;
    let c = &d.client;

    // Pull-on-create; the image's Env (under the request's), WorkingDir and layers apply.
    let sb = c
        .create(&create_req(serde_json::json!({
            "name": "img", "image": image, "env": {"MINE": "x", "GREETING": "override"},
        })))
        .await
        .unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    let pinned = format!("image:127.0.0.1:{}/app@sha256:", reg.port);
    assert!(sb.template.starts_with(&pinned), "{}", sb.template);
    assert_eq!(sb.env.get("PATH").map(String::as_str), Some("/bin"));
    assert_eq!(
        out(
            c,
            "img",
            "echo $GREETING $MINE; pwd; cat /opt/data/new; test ! -e /etc/old && ls /opt/data"
        )
        .await,
        "override x\n/opt\nnew\nnew\n"
    );
    // An explicit cwd on exec still wins over the image's WorkingDir.
    let r = c
        .exec(
            "img",
            &ExecRequest {
                cwd: Some("/bin".into()),
                ..sh("pwd")
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "/bin\n");

    // The same digest pulled again downloads nothing.
    let again = c
        .pull_image(&PullImageRequest {
            reference: image.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(again.blobs_downloaded, 0);

    // Move the tag to another image, remove it and prune: the running sandbox keeps its
    // layers (they are pinned), across a stop/start too.
    let v2 = layouts.path().join("v2");
    let base = registry::base_layer();
    registry::write_layout(
        &v2,
        "1",
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            registry::gzip(&base),
            base,
        )],
    );
    reg.push(&v2, "1", "app:1");
    // Pulled with progress (NDJSON): layer progress up to the blob's size, then the result.
    let mut events = c
        .pull_image_stream(&PullImageRequest {
            reference: image.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (mut progress, mut done) = (Vec::new(), None);
    while let Some(ev) = futures_util::StreamExt::next(&mut events).await {
        match ev.unwrap() {
            PullEvent::Progress { bytes, total, .. } => progress.push((bytes, total)),
            PullEvent::Done { result } => done = Some(result),
            PullEvent::Error { message, .. } => panic!("{message}"),
        }
    }
    let moved = done.expect("a done event");
    assert!(moved.blobs_downloaded > 0);
    assert!(
        progress.last().is_some_and(|(b, t)| b == t && *t > 0),
        "{progress:?}"
    );
    assert!(!sb.template.ends_with(&moved.image.digest));
    c.remove_image(&image).await.unwrap();
    let pruned = c.prune_images().await.unwrap();
    // v2's manifest and config go; every layer stays (v1's are pinned, v2 shares the base).
    assert_eq!((pruned.layers, pruned.blobs), (0, 2), "{pruned:?}");
    c.stop("img").await.unwrap();
    c.start("img").await.unwrap();
    assert_eq!(out(c, "img", "cat /opt/data/new").await, "new\n");
    c.destroy("img").await.unwrap();

    // Bad input: clear 4xx, nothing created.
    let bad = |image: &str| create_req(serde_json::json!({ "image": image }));
    assert_eq!(
        api_err(
            c.create(&bad(&format!("127.0.0.1:{}/nope:1", reg.port)))
                .await
        ),
        (404, "image_not_found".into())
    );
    assert_eq!(
        api_err(c.create(&bad("BAD REF")).await),
        (422, "invalid_request".into())
    );
    assert_eq!(
        api_err(c.create(&bad("127.0.0.1:1/x:1")).await),
        (424, "registry_unreachable".into())
    );
    assert_eq!(
        api_err(
            c.create(&create_req(
                serde_json::json!({ "image": image, "template": "base" })
            ))
            .await
        ),
        (422, "invalid_request".into())
    );
    let live = c.list_all(Some("running"), None).await.unwrap();
    assert!(live.is_empty(), "{live:?}");

    // prismctl: image import of an OCI layout, then run from it without a registry.
    let ctl = |args: &[&str]| d.ctl(args);
    let (code, stdout, stderr) = ctl(&[
        "image",
        "import",
        v1.to_str().unwrap(),
        "--as",
        "local.test/imported:7",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = ctl(&["image", "ls", "-q"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("local.test/imported:7"), "{stdout}");
    let (code, stdout, stderr) = ctl(&[
        "run",
        "--rm",
        "--image",
        "local.test/imported:7",
        "--",
        "sh",
        "-c",
        "cat /opt/data/new; echo $GREETING",
    ]);
    assert_eq!((code, stdout.as_str()), (Some(0), "new\nhi\n"), "{stderr}");
    let (code, _, stderr) = ctl(&["run", "--image", "127.0.0.1:1/x:1", "--", "true"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("unreachable") && stderr.contains("424"),
        "{stderr}"
    );
}
