//! Process service tests against the real agent binary.

mod common;

use bytes::Bytes;
use common::{Agent, cmd, collect, read_until, sh, start_pid};
use futures_util::StreamExt;
use prism_proto::Code;
use prism_proto::process::{
    DataEvent, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, Signal,
};

#[tokio::test]
async fn output_streams_before_exit_and_stdin_round_trips() {
    let agent = Agent::start();
    let mut req = sh("echo a; read x; echo \"got $x\" >&2; exit 3");
    req.stdin = Some(true);
    let mut events = agent.client.start(&req).await.expect("start");
    let pid = start_pid(&mut events).await;
    // The first output arrives while the process still waits for stdin.
    match events.next().await {
        Some(Ok(ProcessEvent::Data(DataEvent::Stdout(b)))) => assert_eq!(&b[..], b"a\n"),
        other => panic!("expected stdout before exit, got {other:?}"),
    }
    agent
        .client
        .send_input(
            ProcessSelector::Pid(pid),
            ProcessInput::Stdin(Bytes::from_static(b"zz\n")),
        )
        .await
        .expect("send input");
    let out = collect(events).await;
    assert_eq!(String::from_utf8_lossy(&out.stderr), "got zz\n");
    let end = out.end.expect("end event");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (3, true, "exit status 3")
    );
}

#[tokio::test]
async fn exit_codes_and_env_and_cwd() {
    let agent = Agent::start();
    let out = collect(agent.client.start(&sh("true")).await.expect("start")).await;
    let end = out.end.expect("end");
    assert_eq!((end.exit_code, end.exited, end.error), (0, true, None));

    let mut req = sh("echo \"$FOO:$HOME:$(pwd)\"");
    if let Some(p) = req.process.as_mut() {
        p.envs.insert("FOO".into(), "bar".into());
        p.cwd = Some(agent.path_str(""));
    }
    let out = collect(agent.client.start(&req).await.expect("start")).await;
    let home = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .find(|l| l.starts_with("root:"))
                .map(|l| l.split(':').nth(5).unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "/root".into());
    let cwd = std::fs::canonicalize(agent.path("")).expect("canonical");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("bar:{home}:{}\n", cwd.display())
    );
}

#[tokio::test]
async fn sigkill_is_reported_like_envd() {
    let agent = Agent::start();
    let mut events = agent
        .client
        .start(&cmd("sleep", &["1000"]))
        .await
        .expect("start");
    let pid = start_pid(&mut events).await;
    agent
        .client
        .send_signal(ProcessSelector::Pid(pid), Signal::Sigkill)
        .await
        .expect("signal");
    let end = collect(events).await.end.expect("end");
    assert_eq!(
        (end.exit_code, end.exited, end.status.as_str()),
        (-1, false, "signal: killed")
    );
}

#[tokio::test]
async fn stream_input_then_close_stdin() {
    let agent = Agent::start();
    let mut req = cmd("cat", &[]);
    req.stdin = Some(true);
    let mut events = agent.client.start(&req).await.expect("start");
    let pid = start_pid(&mut events).await;
    let inputs = futures_util::stream::iter(
        ["hello ", "world"].map(|s| ProcessInput::Stdin(Bytes::from(s))),
    );
    agent
        .client
        .stream_input(ProcessSelector::Pid(pid), inputs)
        .await
        .expect("stream input");
    agent
        .client
        .close_stdin(ProcessSelector::Pid(pid))
        .await
        .expect("close stdin");
    let out = collect(events).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world");
    assert_eq!(out.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn pty_python_and_resize() {
    let agent = Agent::start();
    let mut req = cmd("python3", &["-i", "-q"]);
    req.pty = Some(Pty {
        size: Some(PtySize { cols: 80, rows: 24 }),
    });
    let mut events = agent.client.start(&req).await.expect("start");
    let pid = start_pid(&mut events).await;
    let sel = ProcessSelector::Pid(pid);
    let send = |s: &'static str| {
        agent
            .client
            .send_input(sel.clone(), ProcessInput::Pty(Bytes::from(s)))
    };
    send("print(6*7)\n").await.expect("input");
    read_until(&mut events, "42\r\n").await;
    send("import os; print('size', os.get_terminal_size())\n")
        .await
        .expect("input");
    read_until(&mut events, "columns=80, lines=24").await;
    agent
        .client
        .update(
            sel.clone(),
            PtySize {
                cols: 132,
                rows: 50,
            },
        )
        .await
        .expect("resize");
    send("import subprocess; subprocess.run(['stty', 'size'])\n")
        .await
        .expect("input");
    read_until(&mut events, "50 132").await;
    send("exit()\n").await.expect("input");
    let out = collect(events).await;
    assert_eq!(out.end.map(|e| e.exit_code), Some(0));
}

#[tokio::test]
async fn list_and_reattach_by_tag() {
    let agent = Agent::start();
    let mut req = sh("read x; echo \"late $x\"");
    req.stdin = Some(true);
    req.tag = Some("bg-job".into());
    let mut first = agent.client.start(&req).await.expect("start");
    let pid = start_pid(&mut first).await;
    drop(first);
    let list = agent.client.list().await.expect("list");
    let info = list.iter().find(|p| p.pid == pid).expect("listed");
    assert_eq!(info.tag.as_deref(), Some("bg-job"));
    assert_eq!(
        info.config.as_ref().map(|c| c.cmd.as_str()),
        Some("/bin/sh")
    );

    let mut again = agent
        .client
        .connect(ProcessSelector::Tag("bg-job".into()))
        .await
        .expect("connect");
    assert_eq!(start_pid(&mut again).await, pid);
    agent
        .client
        .send_input(
            ProcessSelector::Tag("bg-job".into()),
            ProcessInput::Stdin(Bytes::from_static(b"1\n")),
        )
        .await
        .expect("input");
    let out = collect(again).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late 1\n");
    assert_eq!(out.end.map(|e| e.exit_code), Some(0));
    let err = agent.client.connect(ProcessSelector::Pid(pid)).await;
    let err = match err {
        Ok(s) => collect_err(s).await,
        Err(e) => e.code(),
    };
    assert_eq!(err, Code::NotFound);
}

async fn collect_err(mut s: prism_proto::RpcStream<ProcessEvent>) -> Code {
    while let Some(ev) = s.next().await {
        if let Err(e) = ev {
            return e.code();
        }
    }
    panic!("stream ended without an error");
}

#[tokio::test]
async fn spawn_errors_are_clear() {
    let agent = Agent::start();
    let code = |r: Result<prism_proto::RpcStream<ProcessEvent>, prism_proto::ProtoError>| async move {
        match r {
            Ok(s) => collect_err(s).await,
            Err(e) => e.code(),
        }
    };
    assert_eq!(
        code(agent.client.start(&cmd("no-such-binary-xyz", &[])).await).await,
        Code::NotFound
    );
    // An absolute path is not looked up first: the spawn's own error says it is missing.
    assert_eq!(
        code(agent.client.start(&cmd("/no/such/binary-xyz", &[])).await).await,
        Code::NotFound
    );
    let mut bad_cwd = cmd("true", &[]);
    if let Some(p) = bad_cwd.process.as_mut() {
        p.cwd = Some("/no/such/dir".into());
    }
    assert_eq!(
        code(agent.client.start(&bad_cwd).await).await,
        Code::InvalidArgument
    );
    let stranger = agent.client.clone().with_user("no-such-user-xyz");
    assert_eq!(
        code(stranger.start(&cmd("true", &[])).await).await,
        Code::InvalidArgument
    );
    let missing = agent
        .client
        .send_signal(ProcessSelector::Pid(999_999), Signal::Sigterm)
        .await;
    assert_eq!(missing.err().map(|e| e.code()), Some(Code::NotFound));
    // The agent is still healthy after all that.
    agent.client.health().await.expect("health");
}

#[tokio::test]
async fn big_output_arrives_complete_with_a_reader() {
    let agent = Agent::start();
    let out = collect(
        agent
            .client
            .start(&sh("head -c 20000000 /dev/zero"))
            .await
            .expect("start"),
    )
    .await;
    assert_eq!(out.stdout.len(), 20_000_000);
    assert_eq!(out.end.map(|e| e.exit_code), Some(0));
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("number")
}

#[tokio::test]
async fn unattended_flood_is_bounded() {
    let agent = Agent::start();
    let mut req = sh("head -c 100000000 /dev/zero; echo done >&2; read x");
    req.stdin = Some(true);
    let mut first = agent.client.start(&req).await.expect("start");
    let pid = start_pid(&mut first).await;
    drop(first);
    let mut again = agent
        .client
        .connect(ProcessSelector::Pid(pid))
        .await
        .expect("connect");
    let mut stderr = Vec::new();
    while !stderr.ends_with(b"done\n") {
        match again.next().await {
            Some(Ok(ProcessEvent::Data(DataEvent::Stderr(b)))) => stderr.extend_from_slice(&b),
            Some(Ok(ProcessEvent::End(e))) => panic!("ended early: {e:?}"),
            Some(Ok(_)) => {}
            other => panic!("stream failed: {other:?}"),
        }
    }
    agent
        .client
        .send_input(
            ProcessSelector::Pid(pid),
            ProcessInput::Stdin(Bytes::from_static(b"\n")),
        )
        .await
        .expect("input");
    assert_eq!(collect(again).await.end.map(|e| e.exit_code), Some(0));
    let hwm = vm_hwm_kib(agent.child.id());
    assert!(
        hwm < 64 * 1024,
        "agent peak RSS {hwm} KiB after a 100 MB flood"
    );
}

#[tokio::test]
async fn sigterm_stops_processes_and_kills_stubborn_ones() {
    let mut agent = Agent::start_with(&["--shutdown-grace-secs", "1"]);
    let mut events = agent
        .client
        .start(&sh("trap '' TERM; echo ready; exec sleep 1000"))
        .await
        .expect("start");
    let pid = start_pid(&mut events).await;
    read_until(&mut events, "ready").await;
    let agent_pid =
        rustix::process::Pid::from_raw(i32::try_from(agent.child.id()).expect("pid")).expect("pid");
    rustix::process::kill_process(agent_pid, rustix::process::Signal::TERM).expect("kill");
    let end = collect(events).await.end.expect("end");
    assert_eq!(end.status, "signal: killed");
    let status = agent.child.wait().expect("wait");
    assert!(status.success(), "agent exit: {status:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived"
    );
}

#[tokio::test]
async fn listen_fd_and_children_inherit_only_stdio() {
    let dir = std::env::temp_dir().join(format!("prism-agent-fd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    // The socket listens before the agent starts: no readiness wait is needed.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_prism-agent"))
        .args(["--listen-fd", "0"])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            listener,
        )))
        .spawn()
        .expect("spawn");
    let client = prism_proto::AgentClient::new(&sock);
    client.health().await.expect("health");
    let out = collect(
        client
            .start(&cmd("ls", &["/proc/self/fd"]))
            .await
            .expect("start"),
    )
    .await;
    // ls itself holds one more fd (3) for the directory it reads.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
