//! End-to-end tests: the real prismd binary with the namespace runtime (root), driven over HTTP
//! by prism-client and by the prismctl binary.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use futures_util::StreamExt;
use prism_client::{PathContent, WsEvent};
use prism_types::ws::{ExecStart, ServerEvent};
use prism_types::{CreateSandboxRequest, ExecRequest, SandboxState};
use support::{Daemon, eventually, prismctl};

fn create_req(json: &str) -> CreateSandboxRequest {
    serde_json::from_str(json).unwrap()
}

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_exec_files_logs_and_ws() {
    if !support::root_or_skip("lifecycle_exec_files_logs_and_ws") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    let sb = c
        .create(&create_req(
            r#"{"name":"e2e","cmd":["sh","-c","echo one; echo two >&2; sleep 0.3; echo three"]}"#,
        ))
        .await
        .unwrap();
    assert_eq!(sb.state, SandboxState::Running);

    // Follow the log until the main process ends.
    let mut logs = c.logs("e2e", None, true).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    // stdout and stderr are separate pipes: only the order within one stream, and the order
    // across the sleep, are defined.
    let text = String::from_utf8_lossy(&text);
    let mut first: Vec<_> = text.lines().take(2).collect();
    first.sort_unstable();
    assert_eq!(
        (first, text.lines().nth(2)),
        (vec!["one", "two"], Some("three")),
        "{text}"
    );
    let tail = c.logs("e2e", Some(1), false).await.unwrap();
    let tail: Vec<_> = tail.collect().await;
    assert_eq!(
        tail.into_iter()
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
            .concat(),
        b"three\n"
    );

    // Buffered exec.
    let r = c
        .exec("e2e", &sh("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let r = c
        .exec(
            "e2e",
            &ExecRequest {
                cmd: Some(vec!["cat".into()]),
                stdin: Some("piped".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "piped");
    let r = c
        .exec(
            "e2e",
            &ExecRequest {
                command: Some("sleep 30".into()),
                timeout_s: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");

    // Files, single and as tar.
    let base = std::path::Path::new("/root/files");
    let f = format!("{}/a/b.txt", base.display());
    c.write_file("e2e", &f, "content").await.unwrap();
    assert_eq!(
        c.read_path("e2e", &f, false).await.unwrap(),
        PathContent::File("content".into())
    );
    let listing = c
        .read_path("e2e", &format!("{}/a", base.display()), false)
        .await
        .unwrap();
    assert!(
        matches!(listing, PathContent::Dir(ref l) if l.len() == 1 && l[0].name == "b.txt"),
        "{listing:?}"
    );
    let tar = c
        .read_path("e2e", &format!("{}/a", base.display()), true)
        .await
        .unwrap();
    let PathContent::Tar(tar) = tar else {
        panic!("{tar:?}")
    };
    c.write_tar("e2e", &format!("{}/copy", base.display()), tar)
        .await
        .unwrap();
    assert_eq!(
        c.exec("e2e", &sh("cat /root/files/copy/b.txt"))
            .await
            .unwrap()
            .stdout,
        "content"
    );
    c.remove("e2e", &f).await.unwrap();
    let e = c.read_path("e2e", &f, false).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");

    // Streamed exec with stdin over the WebSocket.
    let start = ExecStart {
        cmd: Some(vec!["cat".into()]),
        ..Default::default()
    };
    let (mut tx, mut rx) = c.exec_ws("e2e", &start).await.unwrap().split();
    tx.stdin("hello ws\n").await.unwrap();
    let first = rx.next().await.unwrap().unwrap();
    assert_eq!(first, WsEvent::Stdout("hello ws\n".into()));
    tx.eof().await.unwrap();
    let mut exit = None;
    while let Some(ev) = rx.next().await {
        if let WsEvent::Event(ServerEvent::Exit { exit_code, .. }) = ev.unwrap() {
            exit = Some(exit_code);
        }
    }
    assert_eq!(exit, Some(0));

    // Metrics, stop/start, destroy.
    assert!(c.metrics("e2e").await.unwrap().memory_bytes > 0);
    assert_eq!(c.stop("e2e").await.unwrap().state, SandboxState::Stopped);
    let e = c.exec("e2e", &sh("true")).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_state"));
    assert_eq!(c.start("e2e").await.unwrap().state, SandboxState::Running);
    assert_eq!(
        c.exec("e2e", &sh("echo back")).await.unwrap().stdout,
        "back\n"
    );
    assert_eq!(
        c.destroy("e2e").await.unwrap().state,
        SandboxState::Destroyed
    );
    assert_eq!(c.get("e2e").await.unwrap_err().status(), Some(404));
    // The runtime's state goes with the background teardown that destroy started.
    let gone = dir.path().join("sandboxes").join(&sb.id);
    eventually(30, "runtime state removed", || {
        let gone = gone.clone();
        async move { (!gone.exists()).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_destroys_the_sandbox() {
    if !support::root_or_skip("ttl_expiry_destroys_the_sandbox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let sb = d
        .client
        .create(&create_req(r#"{"timeout_s":1}"#))
        .await
        .unwrap();
    let keep = d
        .client
        .create(&create_req(r#"{"timeout_s":600}"#))
        .await
        .unwrap();
    let c = d.client.clone();
    let id = sb.id.clone();
    eventually(20, "TTL expiry", || {
        let c = c.clone();
        let id = id.clone();
        async move { (c.get(&id).await.ok()?.state == SandboxState::Destroyed).then_some(()) }
    })
    .await;
    assert_eq!(
        d.client.get(&keep.id).await.unwrap().state,
        SandboxState::Running
    );
    // Extending works and is visible.
    let ext = d.client.set_timeout(&keep.id, 1200).await.unwrap();
    assert!(ext.expires_at.unwrap() > keep.expires_at.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_kill_9_and_sandboxes_are_readopted() {
    if !support::root_or_skip("records_survive_kill_9_and_sandboxes_are_readopted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path()).await;
    let c = d.client.clone();
    let looping = r#"{"name":"loop","cmd":["sh","-c","i=0; while true; do echo line$i; i=$((i+1)); sleep 0.1; done"]}"#;
    let a = c.create(&create_req(looping)).await.unwrap();
    let b = c.create(&create_req(r#"{"name":"plain"}"#)).await.unwrap();
    let s = c
        .create(&create_req(r#"{"name":"stopped"}"#))
        .await
        .unwrap();
    let dead = c.create(&create_req(r#"{"name":"dead"}"#)).await.unwrap();
    c.stop("stopped").await.unwrap();
    c.write_file("plain", "/root/kept.txt", "x").await.unwrap();
    // Sixteen more, so the daemon dies under twenty running sandboxes.
    let mut more = Vec::new();
    for i in 0..16 {
        more.push(
            c.create(&create_req(&format!(r#"{{"name":"more{i}"}}"#)))
                .await
                .unwrap(),
        );
    }
    d.kill9();
    // One sandbox dies while the daemon is down.
    let cgroups = prism_sys::cgroup::detect(&d.cgroup_parent).unwrap();
    cgroups.kill_all(&dead.id).unwrap();

    let d2 = Daemon::start(dir.path()).await;
    let c = d2.client.clone();
    let all = c.list_all(None, None).await.unwrap();
    assert_eq!(all.len(), 20, "every record is still there: {all:?}");
    for m in &more {
        assert_eq!(c.get(&m.id).await.unwrap().state, SandboxState::Running);
    }
    assert_eq!(
        c.exec("more15", &sh("echo adopted")).await.unwrap().stdout,
        "adopted\n"
    );
    assert_eq!(c.get(&a.id).await.unwrap().state, SandboxState::Running);
    assert_eq!(c.get(&b.id).await.unwrap().state, SandboxState::Running);
    assert_eq!(c.get(&s.id).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(c.get(&dead.id).await.unwrap().state, SandboxState::Failed);
    assert_eq!(
        c.exec("plain", &sh("echo adopted")).await.unwrap().stdout,
        "adopted\n"
    );
    // The main process's output is captured again after re-attaching.
    let before = c
        .logs("loop", None, false)
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await
        .len();
    let _ = before;
    let lines_now = |c: prism_client::Client| async move {
        let chunks: Vec<_> = c.logs("loop", None, false).await.ok()?.collect().await;
        let text: Vec<u8> = chunks
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|b| b.to_vec())
            .collect();
        Some(String::from_utf8_lossy(&text).lines().count())
    };
    let n0 = lines_now(c.clone()).await.unwrap();
    eventually(10, "log lines after re-adoption", || {
        let c = c.clone();
        async move { (lines_now(c).await? > n0 + 2).then_some(()) }
    })
    .await;
    // The failed one can be started again, then everything destroyed.
    assert_eq!(c.start("dead").await.unwrap().state, SandboxState::Running);
    for id in [&a.id, &b.id, &s.id, &dead.id]
        .into_iter()
        .chain(more.iter().map(|m| &m.id))
    {
        assert_eq!(c.destroy(id).await.unwrap().state, SandboxState::Destroyed);
    }
    // Nothing leaked: once the background teardowns are done, no cgroup and no directory of
    // any sandbox remains (the runtime's own `.trash` and `.dev-*` are not sandboxes).
    let sandboxes = dir.path().join("sandboxes");
    eventually(30, "every sandbox's cgroup and directory gone", || {
        let sandboxes = sandboxes.clone();
        let cgroups = &cgroups;
        async move {
            let left: Vec<_> = std::fs::read_dir(&sandboxes)
                .ok()?
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| !n.to_string_lossy().starts_with('.'))
                .collect();
            (cgroups.list().ok()?.is_empty() && left.is_empty()).then_some(())
        }
    })
    .await;
    // Destroyed sandboxes' directories are deleted in the background: the trash empties.
    let trash = dir.path().join("sandboxes/.trash");
    eventually(30, "the trash to empty", || {
        let trash = trash.clone();
        async move { (std::fs::read_dir(&trash).ok()?.next().is_none()).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_is_refused_and_sigterm_is_graceful() {
    if !support::root_or_skip("second_daemon_is_refused_and_sigterm_is_graceful") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path()).await;
    let out = Command::new(support::PRISMD)
        .args([
            "--runtime",
            "namespace",
            "--listen",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another prismd") && err.contains("is already using"),
        "{err}"
    );
    assert!(
        d.client.health().await.is_ok(),
        "the first daemon is unharmed"
    );
    let st = d.term();
    assert!(st.success(), "SIGTERM exit: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_sandboxes_when_configured() {
    if !support::root_or_skip("sigterm_stops_sandboxes_when_configured") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_with(dir.path(), "stop_sandboxes_on_shutdown = true").await;
    let sb = d
        .client
        .create(&create_req(r#"{"name":"s"}"#))
        .await
        .unwrap();
    let cgroups = prism_sys::cgroup::detect(&d.cgroup_parent).unwrap();
    assert!(!cgroups.pids(&sb.id).unwrap().is_empty());
    assert!(d.term().success());
    // Every process of the sandbox is gone with the daemon, and its record says stopped.
    assert!(cgroups.pids(&sb.id).unwrap_or_default().is_empty());
    let d2 = Daemon::start(dir.path()).await;
    assert_eq!(
        d2.client.get(&sb.id).await.unwrap().state,
        SandboxState::Stopped
    );
    // The writable layer survives: it can be started again.
    assert_eq!(
        d2.client.start("s").await.unwrap().state,
        SandboxState::Running
    );
}

/// Unmounts the tmpfs of the full-disk test whatever happens.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_a_clear_error_and_loses_nothing() {
    if !support::root_or_skip("a_full_disk_gets_a_clear_error_and_loses_nothing") {
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let state = outer.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "prism-e2e-full"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a small tmpfs");
    let _unmount = Tmpfs(state.clone());
    let d = Daemon::start(&state).await;
    let c = &d.client;
    let kept = c.create(&create_req(r#"{"name":"kept"}"#)).await.unwrap();
    // Fill the state disk from the host.
    let filler = state.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let e = c
        .create(&create_req(r#"{"name":"more"}"#))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("full"), "{e}");
    // Nothing lost, nothing half-made: the daemon answers, the old sandbox still works.
    assert!(c.health().await.is_ok());
    let all = c.list_all(None, None).await.unwrap();
    assert!(all.iter().any(|s| s.id == kept.id), "{all:?}");
    assert!(
        all.iter()
            .all(|s| s.name.as_deref() != Some("more") || s.state != SandboxState::Running)
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        c.exec("kept", &sh("echo fine")).await.unwrap().stdout,
        "fine\n"
    );
    let again = c.create(&create_req(r#"{"name":"more"}"#)).await.unwrap();
    assert_eq!(again.state, SandboxState::Running);
}

fn ctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(prismctl())
        .args(args)
        .env("PRISM_API", d.url())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prismctl_end_to_end() {
    if !support::root_or_skip("prismctl_end_to_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let out = ctl(&d, &["run", "--json", "--name", "cli"]);
    assert!(out.status.success(), "{out:?}");
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sb["state"], "running");
    let out = ctl(&d, &["exec", "cli", "--", "sh", "-c", "echo hi; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    // cp both ways, directories included.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f.txt"), "data").unwrap();
    let inside = dir.path().join("inside");
    let out = ctl(
        &d,
        &[
            "cp",
            src.to_str().unwrap(),
            &format!("cli:{}", inside.display()),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let back = dir.path().join("back");
    let out = ctl(
        &d,
        &[
            "cp",
            &format!("cli:{}", inside.display()),
            back.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(back.join("sub/f.txt")).unwrap(),
        "data"
    );
    let out = ctl(&d, &["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = ctl(&d, &["rm", "cli"]);
    assert!(!out.status.success(), "rm of a running sandbox needs -f");
    let out = ctl(&d, &["rm", "-f", "cli"]);
    assert!(out.status.success(), "{out:?}");
    let out = ctl(&d, &["inspect", "cli"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no sandbox"),
        "{out:?}"
    );
    // run with a command: attached, exit code propagates, --rm cleans up.
    let out = ctl(
        &d,
        &["run", "--rm", "--", "sh", "-c", "echo attached; exit 4"],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "attached\n");
    let out = ctl(&d, &["ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // A daemon that is not there.
    let out = Command::new(prismctl())
        .args(["ls"])
        .env(
            "PRISM_API",
            format!("http://127.0.0.1:{}", support::free_port()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach prismd") && err.contains("start it with `prismd`"),
        "{err}"
    );
    let out = ctl(&d, &["completions", "bash"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("prismctl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openapi_path_is_served() {
    if !support::root_or_skip("every_openapi_path_is_served") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let http = reqwest::Client::new();
    let spec: serde_json::Value = http
        .get(format!("{}/openapi.json", d.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 12, "{paths:?}");
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{}", d.url(), path.replace("{id}", "missing"));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = http.request(m.clone(), &url).send().await.unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("route_not_found"),
                "{m} {url}: {status} {body}"
            );
        }
    }
    let docs = http.get(format!("{}/docs/", d.url())).send().await.unwrap();
    assert_eq!(docs.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_over_websocket() {
    if !support::root_or_skip("terminal_over_websocket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    c.create(&create_req(r#"{"name":"e2e"}"#)).await.unwrap();
    // A terminal.
    let start = ExecStart {
        command: Some("tty; stty size".into()),
        tty: true,
        cols: Some(91),
        rows: Some(33),
        ..Default::default()
    };
    let (_tx, mut rx) = c.exec_ws("e2e", &start).await.unwrap().split();
    let mut out = Vec::new();
    while let Some(ev) = rx.next().await {
        if let WsEvent::Stdout(b) = ev.unwrap() {
            out.extend_from_slice(&b);
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/") && out.contains("33 91"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_is_mounted_only_when_asked() {
    if !support::root_or_skip("sys_is_mounted_only_when_asked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    let c = &d.client;
    c.create(&create_req(r#"{"name":"nosys"}"#)).await.unwrap();
    c.create(&create_req(r#"{"name":"sys","security":{"sysfs":true}}"#))
        .await
        .unwrap();
    let probe = "ls /sys | wc -l; test -d /sys/kernel && echo kernel; \
                 touch /sys/x 2>/dev/null && echo rw || echo ro";
    let none = c.exec("nosys", &sh(probe)).await.unwrap();
    // Without sysfs, /sys is an empty directory of the sandbox's own writable root.
    assert_eq!(none.stdout, "0\nrw\n", "{none:?}");
    let with = c.exec("sys", &sh(probe)).await.unwrap();
    let lines: Vec<&str> = with.stdout.lines().collect();
    assert!(lines[0].parse::<u32>().unwrap_or(0) > 0, "{with:?}");
    assert_eq!(&lines[1..], ["kernel", "ro"], "{with:?}");
    // An unknown security option is a 4xx, not silently ignored.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes", d.url()))
        .header("content-type", "application/json")
        .body(r#"{"security":{"sysfs":true,"nope":1}}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    // The CLI flag reaches the same option.
    let out = ctl(
        &d,
        &[
            "run",
            "--rm",
            "--sysfs",
            "--",
            "sh",
            "-c",
            "test -d /sys/kernel && echo kernel",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kernel"),
        "{out:?}"
    );
}
