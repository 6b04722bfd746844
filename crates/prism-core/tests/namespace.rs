//! The namespace runtime for real: root, namespaces, overlayfs, cgroups, and the static agent as
//! PID 1. Every test makes its own state directory and cgroup parent.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use prism_core::{Limits, Runtime};
use prism_proto::process::{
    DataEvent, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, Signal,
};
use support::{harness, start_request};

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn output_streams_before_exit_and_stdin_and_exit_codes_work() {
    let Some(h) = harness("output_streams") else {
        return;
    };
    let (_handle, client) = h.start("stream", limits());
    h.rt.block_on(async {
        let mut req = start_request(&[
            "/bin/sh",
            "-c",
            "echo first; echo err >&2; read x; echo got:$x; exit 3",
        ]);
        req.stdin = Some(true);
        let mut events = client.start(&req).await.expect("start");
        let pid = match events.next().await.expect("event").expect("ok") {
            ProcessEvent::Start(s) => s.pid,
            other => panic!("first event {other:?}"),
        };
        // "first" arrives while the process still waits on stdin.
        let (mut seen, mut stderr) = (String::new(), String::new());
        while !seen.contains("first") {
            match events.next().await.expect("event").expect("ok") {
                ProcessEvent::Data(DataEvent::Stdout(b)) => {
                    seen.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::Data(DataEvent::Stderr(b)) => {
                    stderr.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::End(e) => panic!("ended before its input: {e:?}"),
                _ => {}
            }
        }
        client
            .send_input(
                ProcessSelector::Pid(pid),
                ProcessInput::Stdin(Bytes::from_static(b"hello\n")),
            )
            .await
            .expect("stdin");
        let (mut stdout, mut end) = (String::new(), None);
        while let Some(ev) = events.next().await {
            match ev.expect("ok") {
                ProcessEvent::Data(DataEvent::Stdout(b)) => {
                    stdout.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::Data(DataEvent::Stderr(b)) => {
                    stderr.push_str(&String::from_utf8_lossy(&b))
                }
                ProcessEvent::End(e) => end = Some(e),
                _ => {}
            }
        }
        assert!(stdout.contains("got:hello"), "{stdout:?}");
        assert_eq!(stderr, "err\n");
        let end = end.expect("end event");
        assert_eq!(end.exit_code, 3);
        assert!(end.exited);
    });
}

#[test]
fn a_killed_process_is_reported_as_signalled() {
    let Some(h) = harness("signals") else { return };
    let (_handle, client) = h.start("signals", limits());
    h.rt.block_on(async {
        let mut events = client
            .start(&start_request(&["sleep", "100"]))
            .await
            .expect("start");
        let pid = match events.next().await.expect("event").expect("ok") {
            ProcessEvent::Start(s) => s.pid,
            other => panic!("first event {other:?}"),
        };
        client
            .send_signal(ProcessSelector::Pid(pid), Signal::Sigkill)
            .await
            .expect("signal");
        let mut end = None;
        while let Some(ev) = events.next().await {
            if let ProcessEvent::End(e) = ev.expect("ok") {
                end = Some(e);
            }
        }
        let end = end.expect("end");
        assert!(!end.exited, "{end:?}");
        assert!(end.status.contains("killed"), "{end:?}");
    });
}

#[test]
fn a_pty_runs_python_interactively_and_resizes() {
    let Some(h) = harness("pty") else { return };
    let (_handle, client) = h.start("pty", limits());
    h.rt.block_on(async {
        let mut req = start_request(&["/usr/bin/python3", "-i", "-q"]);
        req.pty = Some(Pty {
            size: Some(PtySize { cols: 80, rows: 24 }),
        });
        let mut events = client.start(&req).await.expect("start");
        let pid = match events.next().await.expect("event").expect("ok") {
            ProcessEvent::Start(s) => s.pid,
            other => panic!("first event {other:?}"),
        };
        let sel = ProcessSelector::Pid(pid);
        let send = |s: &'static str| {
            let client = client.clone();
            let sel = sel.clone();
            async move {
                client
                    .send_input(sel, ProcessInput::Pty(Bytes::from_static(s.as_bytes())))
                    .await
                    .expect("input")
            }
        };
        let mut screen = String::new();
        let mut wait_for = async |needle: &str, screen: &mut String| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !screen.contains(needle) {
                assert!(
                    Instant::now() < deadline,
                    "never saw {needle:?} in {screen:?}"
                );
                match events.next().await.expect("stream open").expect("ok") {
                    ProcessEvent::Data(DataEvent::Pty(b)) => {
                        screen.push_str(&String::from_utf8_lossy(&b))
                    }
                    ProcessEvent::End(e) => panic!("python ended early: {e:?}; screen {screen:?}"),
                    _ => {}
                }
            }
        };
        send("print(6*7)\n").await;
        wait_for("42", &mut screen).await;
        client
            .update(
                sel.clone(),
                PtySize {
                    cols: 123,
                    rows: 45,
                },
            )
            .await
            .expect("resize");
        send("import os; print('size', os.get_terminal_size())\n").await;
        wait_for("columns=123, lines=45", &mut screen).await;
        send("exit()\n").await;
    });
}

#[test]
fn pid1_is_the_agent_and_the_hostname_is_the_sandboxes() {
    let Some(h) = harness("identity") else { return };
    let (_handle, client) = h.start("ident", limits());
    let out = h.sh(
        &client,
        "cat /proc/1/comm; hostname; id -u; ls /proc | grep -c '^[0-9]'",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "prism-agent", "{out:?}");
    assert_eq!(lines[1], "host-ident");
    assert_eq!(lines[2], "0");
    // Only the agent, the shell and its children: the host's processes are invisible.
    let n: u32 = lines[3].parse().expect("count");
    assert!(n <= 5, "{n} processes visible: {out:?}");
}

#[test]
fn two_sandboxes_see_neither_each_others_files_nor_processes() {
    let Some(h) = harness("isolation") else {
        return;
    };
    let (_a, ca) = h.start("iso-a", limits());
    let (_b, cb) = h.start("iso-b", limits());
    let out = h.sh(
        &ca,
        "echo secret > /root/a.txt; echo t > /tmp/a.txt; sleep 1000 & echo $!",
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    let out = h.sh(
        &cb,
        "cat /root/a.txt /tmp/a.txt 2>&1; ps -eo comm | grep -c sleep",
    );
    assert!(out.stdout.contains("No such file"), "{out:?}");
    assert_eq!(out.stdout.lines().last(), Some("0"), "{out:?}");
}

#[test]
fn sandbox_root_cannot_write_or_read_the_host() {
    let Some(h) = harness("host_write") else {
        return;
    };
    let (_handle, client) = h.start("hostw", limits());
    let marker = format!("prism-escape-{}", std::process::id());
    let out = h.sh(
        &client,
        &format!(
            "touch /usr/bin/{marker} /etc/{marker} /{marker}; echo done; \
             cat /etc/shadow 2>&1; ls {state} 2>&1; ls /work 2>&1",
            state = h.state.path().display()
        ),
    );
    assert!(out.stdout.contains("done"), "{out:?}");
    // Written in the sandbox's own layer, never on the host.
    assert!(!std::path::Path::new("/usr/bin").join(&marker).exists());
    assert!(!std::path::Path::new("/etc").join(&marker).exists());
    assert!(!std::path::Path::new("/").join(&marker).exists());
    assert!(out.stdout.contains("No such file"), "{out:?}");
    assert!(
        !out.stdout.contains("root:"),
        "host /etc/shadow leaked: {out:?}"
    );
    // Files the sandbox made are owned by its unprivileged host id range, not by host root.
    use std::os::unix::fs::MetadataExt;
    let upper = h
        .state
        .path()
        .join("sandboxes/hostw/upper/1/bin")
        .join(&marker);
    let md = std::fs::metadata(&upper).expect("file in the sandbox's writable layer");
    assert!(md.uid() >= 1 << 20, "owned by host uid {}", md.uid());
}

#[test]
fn memory_limit_kills_and_reports_oom() {
    let Some(h) = harness("memory") else { return };
    let (handle, client) = h.start(
        "mem",
        Limits {
            memory_bytes: Some(64 << 20),
            ..limits()
        },
    );
    let before = h.runtime.stats(&handle).expect("stats").oom_kills;
    let out = h.run(
        &client,
        &[
            "/usr/bin/python3",
            "-c",
            "b = bytearray(300 * 1024 * 1024); print('survived')",
        ],
    );
    assert!(!out.stdout.contains("survived"), "{out:?}");
    assert!(!out.exited && out.status.contains("killed"), "{out:?}");
    let after = h.runtime.stats(&handle).expect("stats").oom_kills;
    assert!(after > before, "oom_kills {before} -> {after}");
    // The sandbox itself survives its process's OOM.
    assert_eq!(h.sh(&client, "echo alive").stdout.trim(), "alive");
}

#[test]
fn a_fork_bomb_is_capped_by_the_pids_limit() {
    let Some(h) = harness("forkbomb") else { return };
    let (handle, client) = h.start(
        "bomb",
        Limits {
            pids: Some(64),
            ..limits()
        },
    );
    let script = "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError as e:\n        print('fork failed', e.errno)\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    n += 1\nprint('forked', n)\n";
    let out = h.run(&client, &["/usr/bin/python3", "-c", script]);
    assert!(out.stdout.contains("fork failed 11"), "{out:?}");
    let forked: u32 = out
        .stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(forked < 64, "forked {forked} under a pids limit of 64");
    let stats = h.runtime.stats(&handle).expect("stats");
    assert!(stats.pids <= 64, "pids {}", stats.pids);
    // The sandbox can still be torn down completely.
    h.destroy("bomb");
    assert!(!h.state.path().join("sandboxes/bomb").exists());
}

#[test]
fn cpu_quota_throttles_a_busy_loop() {
    let Some(h) = harness("cpu") else { return };
    let (handle, client) = h.start(
        "cpu",
        Limits {
            cpus: Some(0.2),
            ..limits()
        },
    );
    let before = h.runtime.stats(&handle).expect("stats").cpu_usage_ns;
    let t = Instant::now();
    let out = h.run(
        &client,
        &["timeout", "2", "sh", "-c", "while :; do :; done"],
    );
    let wall = t.elapsed().as_nanos() as f64;
    assert_eq!(out.exit_code, 124, "{out:?}");
    let used = (h.runtime.stats(&handle).expect("stats").cpu_usage_ns - before) as f64;
    let share = used / wall;
    assert!(share < 0.3, "used {share:.2} of a core under a 0.2 quota");
    assert!(
        share > 0.05,
        "used only {share:.2} of a core: did the loop run?"
    );
}

#[test]
fn destroy_leaves_no_process_mount_cgroup_or_directory() {
    let Some(h) = harness("teardown") else { return };
    let (handle, client) = h.start("gone", limits());
    // A process that ignores SIGTERM and one that double-forks away from its parent.
    let out = h.sh(
        &client,
        "trap '' TERM; (setsid sleep 1000 &) ; sleep 1000 & echo ok",
    );
    assert!(out.stdout.contains("ok"), "{out:?}");
    let cgroup_procs = format!("/sys/fs/cgroup/pids/{}/gone/cgroup.procs", h.cgroup_parent);
    let pids: Vec<u32> = std::fs::read_to_string(&cgroup_procs)
        .expect("cgroup.procs")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert!(pids.len() >= 3, "{pids:?}");
    h.destroy("gone");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived"
        );
    }
    assert!(!std::path::Path::new(&format!("/proc/{}", handle.pid)).exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains("sandboxes/gone"),
        "a mount of the sandbox remains"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten()
    {
        assert!(
            !hierarchy
                .path()
                .join(&h.cgroup_parent)
                .join("gone")
                .exists()
        );
    }
    assert!(!h.state.path().join("sandboxes/gone").exists());
    // Destroying again is fine.
    h.runtime.destroy("gone").expect("idempotent destroy");
}

#[test]
fn stop_then_start_keeps_the_writable_layer() {
    let Some(h) = harness("restart") else { return };
    let (handle, client) = h.start("keep", limits());
    assert_eq!(h.sh(&client, "echo kept > /root/f").exit_code, 0);
    // The writable layer is volatile (the default): its unmount does not sync the host's fs.
    let root = h.sh(&client, "awk '$2 == \"/\"' /proc/self/mounts");
    assert!(root.stdout.contains("volatile"), "{root:?}");
    h.runtime.stop(&handle).expect("stop");
    assert!(!std::path::Path::new(&format!("/proc/{}", handle.pid)).exists());
    // overlayfs leaves a mark that refuses a second mount; the restart clears it.
    let mark = h
        .state
        .path()
        .join("sandboxes/keep/work/0/work/incompat/volatile");
    assert!(mark.is_dir(), "{}", mark.display());
    let handle2 = h
        .runtime
        .start(&h.spec("keep", limits()))
        .expect("start again");
    assert_eq!(handle2.uid_base, handle.uid_base);
    let client = prism_proto::AgentClient::new(&handle2.agent_socket);
    assert_eq!(h.sh(&client, "cat /root/f").stdout.trim(), "kept");
    assert!(h.runtime.adopt(&handle2).expect("adopt"));
    assert!(!h.runtime.adopt(&handle).expect("adopt old"));
}

#[test]
fn fsync_sandboxes_mounts_the_writable_layer_without_volatile() {
    let Some(h) = harness("fsync") else { return };
    let rt = h.runtime_in("fsync", |c| c.fsync_sandboxes = true);
    let handle = rt.start(&h.spec("durable", limits())).expect("start");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let root = h.sh(
        &client,
        "awk '$2 == \"/\"' /proc/self/mounts; echo kept > /root/f; sync",
    );
    assert_eq!(root.exit_code, 0, "{root:?}");
    assert!(root.stdout.contains("overlay"), "{root:?}");
    assert!(!root.stdout.contains("volatile"), "{root:?}");
    rt.stop(&handle).expect("stop");
    let mark = h
        .state
        .path()
        .join("fsync/durable/work/0/work/incompat/volatile");
    assert!(!mark.exists(), "{}", mark.display());
    let handle = rt.start(&h.spec("durable", limits())).expect("start again");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    assert_eq!(h.sh(&client, "cat /root/f").stdout.trim(), "kept");
    rt.destroy("durable").expect("destroy");
    assert!(rt.settle(support::SETTLE));
}

#[test]
fn a_sandbox_whose_init_died_starts_again_with_its_writable_layer() {
    let Some(h) = harness("died") else { return };
    let (handle, client) = h.start("died", limits());
    assert_eq!(h.sh(&client, "echo kept > /root/f").exit_code, 0);
    // Killed from outside, no stop.
    let fd = prism_sys::proc::pidfd_open(handle.pid).expect("pidfd");
    prism_sys::proc::pidfd_kill(&fd, prism_sys::proc::SIGKILL).expect("kill");
    assert!(prism_sys::proc::pidfd_wait_exit(&fd, Duration::from_secs(10)).expect("wait"));
    let handle2 = h
        .runtime
        .start(&h.spec("died", limits()))
        .expect("start again");
    let client = prism_proto::AgentClient::new(&handle2.agent_socket);
    assert_eq!(h.sh(&client, "cat /root/f").stdout.trim(), "kept");
    h.destroy("died");
}

#[test]
fn failed_launches_report_their_step_and_leave_the_runtime_usable() {
    let Some(h) = harness("failed_launch") else {
        return;
    };
    let dumpable = prism_sys::proc::dumpable();
    // Fails in the parent, while the child waits for its mounts.
    let mut spec = h.spec("nolower", limits());
    spec.rootfs.mounts[1].lowers = vec!["/nonexistent-prism-lower".into()];
    let err = h.runtime.start(&spec).expect_err("missing lower");
    assert!(err.to_string().contains("idmapped mount"), "{err}");
    // Fails in the child: a mount point under a regular file.
    let mut spec = h.spec("badtarget", limits());
    spec.rootfs.mounts[1].target = "/etc/hostname/usr".into();
    let err = h
        .runtime
        .start(&spec)
        .expect_err("mount point under a file");
    assert!(err.to_string().contains("at step"), "{err}");
    assert!(err.to_string().contains("Not a directory"), "{err}");
    for id in ["nolower", "badtarget"] {
        h.runtime.destroy(id).expect("destroy");
    }
    assert!(h.runtime.settle(support::SETTLE));
    // The runtime still starts sandboxes, and its process kept its dumpable flag (each child
    // shared its memory until the exec and changed its credentials).
    let (_handle, client) = h.start("after", limits());
    assert_eq!(h.sh(&client, "echo ok").stdout.trim(), "ok");
    assert_eq!(prism_sys::proc::dumpable(), dumpable);
    h.destroy("after");
}

#[test]
fn bad_commands_get_clear_errors() {
    let Some(h) = harness("bad_input") else {
        return;
    };
    let (_handle, client) = h.start("bad", limits());
    h.rt.block_on(async {
        let failed = start_failure(&client, start_request(&["/no/such/binary"])).await;
        assert!(failed.contains("/no/such/binary"), "{failed}");
        let mut req = start_request(&["/bin/true"]);
        if let Some(p) = req.process.as_mut() {
            p.cwd = Some("/no/such/dir".into());
        }
        let failed = start_failure(&client, req).await;
        assert!(failed.contains("/no/such/dir"), "{failed}");
    });
    // `..` cannot leave the sandbox: it resolves inside its own root.
    let out = h.sh(&client, "cat /../../../etc/passwd");
    assert!(out.stdout.contains("user:x:1000"), "{out:?}");
}

/// The error a start request ends in, whether the agent refuses it at once or reports it in the
/// stream. Panics if the process ran successfully.
async fn start_failure(
    client: &prism_proto::AgentClient,
    req: prism_proto::process::StartRequest,
) -> String {
    match client.start(&req).await {
        Err(e) => e.to_string(),
        Ok(mut events) => {
            let mut text = String::new();
            while let Some(ev) = events.next().await {
                match ev {
                    Err(e) => text.push_str(&e.to_string()),
                    Ok(ProcessEvent::End(e)) => {
                        assert!(e.exit_code != 0 || e.error.is_some(), "it ran: {e:?}");
                        text.push_str(&format!("{e:?}"));
                    }
                    Ok(_) => {}
                }
            }
            text
        }
    }
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn collect(mut s: prism_proto::ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

#[test]
fn files_round_trip_byte_exact_including_100mb_and_tar_trees() {
    let Some(h) = harness("files") else { return };
    let (_handle, client) = h.start("files", limits());
    let big = pseudo_random(100 << 20, 0x9e37_79b9_7f4a_7c15);
    h.rt.block_on(async {
        let chunks: Vec<Result<Bytes, std::io::Error>> = big
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        client
            .write_file("/root/deep/er/big.bin", futures_util::stream::iter(chunks))
            .await
            .expect("upload");
        let back = collect(
            client
                .read_file("/root/deep/er/big.bin")
                .await
                .expect("download"),
        )
        .await;
        assert_eq!(back.len(), big.len());
        assert!(back == big, "100 MB file differs after the round trip");

        // A nested tree with binary content, an empty directory and a symlink, through tar.
        let mut builder = tar::Builder::new(Vec::new());
        let files = [
            ("a.txt", b"alpha\n".to_vec()),
            ("sub/b.bin", pseudo_random(70_001, 7)),
            ("sub/deeper/c", vec![0u8, 255, 10, 13]),
        ];
        for (path, data) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o640);
            header.set_cksum();
            builder
                .append_data(&mut header, path, data.as_slice())
                .expect("tar");
        }
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        dir.set_cksum();
        builder
            .append_data(&mut dir, "empty/", std::io::empty())
            .expect("tar dir");
        let archive = builder.into_inner().expect("tar");
        client
            .tar_upload(
                "/srv/tree",
                futures_util::stream::iter([Ok(Bytes::from(archive))]),
            )
            .await
            .expect("tar upload");
        let listing = super_run(
            &client,
            "cd /srv/tree && find . | sort && stat -c %a sub/b.bin",
        )
        .await;
        assert!(
            listing.contains("./empty") && listing.contains("./sub/deeper/c"),
            "{listing}"
        );
        assert!(listing.trim_end().ends_with("640"), "{listing}");
        let tarball = collect(
            client
                .tar_download("/srv/tree")
                .await
                .expect("tar download"),
        )
        .await;
        let mut archive = tar::Archive::new(tarball.as_slice());
        let mut seen = std::collections::BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
            seen.insert(path, data);
        }
        for (path, data) in &files {
            assert_eq!(
                seen.get(*path),
                Some(data),
                "{path} after the tar round trip"
            );
        }
    });
}

async fn super_run(client: &prism_proto::AgentClient, script: &str) -> String {
    support::run_async(client, &["/bin/sh", "-c", script])
        .await
        .stdout
}

/// Adversarial: a sandbox's root tries to reach host processes and host kernel state.
#[test]
fn sandbox_root_cannot_signal_host_processes_or_write_sys() {
    let Some(h) = harness("host_signal") else {
        return;
    };
    let (_handle, client) = h.start("hostsig", limits());
    let mut victim = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("host process");
    let host_pid = victim.id();
    let out = h.sh(
        &client,
        &format!(
            "kill -9 {host_pid} 2>&1; echo kill=$?; \
             echo 1 > /sys/kernel/mm/transparent_hugepage/enabled 2>&1; echo sys=$?; \
             echo 1 > /proc/sys/kernel/sysrq 2>&1; echo sysctl=$?; \
             hostname evil 2>&1; echo hostname=$?"
        ),
    );
    let victim_alive = victim.try_wait().expect("wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        out.stdout.contains("kill=1") && out.stdout.contains("hostname=1"),
        "{out:?}"
    );
    // The host process is not even visible: its pid means nothing (or another process) inside.
    assert!(victim_alive, "host process was killed: {out:?}");
    assert!(!out.stdout.contains("sys=0"), "/sys was writable: {out:?}");
    assert!(
        !out.stdout.contains("sysctl=0"),
        "a host sysctl was writable: {out:?}"
    );
    // Without CAP_SYS_ADMIN the sandbox cannot even rename its own uts namespace.
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_ne!(host_name.trim(), "evil");
}

/// `/dev` is the prepared read-only skeleton with its own devpts and shm; `/sys` is absent
/// unless asked for, and then read-only. Programs that count CPUs still work without it.
#[test]
fn dev_has_the_safe_devices_and_sys_is_opt_in() {
    let Some(h) = harness("dev_and_sys") else {
        return;
    };
    let (_handle, client) = h.start("devsys", limits());
    let out = h.sh(
        &client,
        "stat -c '%n %u %F %t:%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
         echo x > /dev/null; echo null=$?; \
         head -c 8 /dev/urandom | wc -c; \
         touch /dev/new 2>/dev/null; echo touch=$?; \
         echo shm > /dev/shm/f && cat /dev/shm/f; \
         readlink /dev/ptmx /dev/fd; \
         ls /dev/pts | grep -c ptmx; \
         ls /sys | wc -l; \
         nproc; python3 -c 'import os; print(\"cpus\", os.cpu_count())'",
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    for (dev, num) in [
        ("null", "1:3"),
        ("zero", "1:5"),
        ("full", "1:7"),
        ("random", "1:8"),
        ("urandom", "1:9"),
        ("tty", "5:0"),
    ] {
        let line = format!("/dev/{dev} 0 character special file {num}");
        assert!(out.stdout.contains(&line), "{line} in {out:?}");
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    let rest = &lines[6..];
    assert_eq!(rest[0], "null=0", "{out:?}");
    assert_eq!(rest[1], "8", "{out:?}");
    assert_ne!(rest[2], "touch=0", "/dev is writable: {out:?}");
    assert_eq!(rest[3], "shm", "{out:?}");
    assert_eq!(&rest[4..6], ["pts/ptmx", "/proc/self/fd"], "{out:?}");
    assert_eq!(rest[6], "1", "devpts has its ptmx: {out:?}");
    assert_eq!(rest[7], "0", "/sys is empty: {out:?}");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    assert_eq!(rest[8], cpus.to_string(), "{out:?}");
    assert_eq!(rest[9], format!("cpus {cpus}"), "{out:?}");

    let mut spec = h.spec("withsys", limits());
    spec.security.sysfs = true;
    let handle = h.runtime.start(&spec).expect("start with /sys");
    let client = prism_proto::AgentClient::new(&handle.agent_socket);
    let out = h.sh(
        &client,
        "test -d /sys/kernel && echo kernel; \
         echo 1 > /sys/kernel/mm/transparent_hugepage/enabled; echo write=$?",
    );
    assert!(out.stdout.starts_with("kernel\nwrite="), "{out:?}");
    assert!(
        !out.stdout.contains("write=0"),
        "/sys was writable: {out:?}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    h.destroy("withsys");
}
