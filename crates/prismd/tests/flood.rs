//! Adversarial cases against the daemon itself (issue 6): a sandbox that floods its output must
//! not grow prismd's memory. The real prismd (namespace runtime, root) is attacked through every
//! path output takes: a buffered exec, a streamed exec whose client stops reading, and the
//! sandbox's main process writing its log. Results: docs/security.md.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use prism_client::WsEvent;
use prism_types::ws::{ExecStart, ServerEvent};
use prism_types::{CreateSandboxRequest, ExecRequest};
use support::{Daemon, eventually};

/// How much prismd's resident memory may grow over its level before the floods.
const RSS_BUDGET: u64 = 64 << 20;
/// Bytes the buffered and the log floods write (64 times the caps).
const FLOOD: u64 = 64 << 20;
/// Bytes the streamed flood offers: more than the daemon could hold within the budget.
const STREAM_FLOOD: u64 = 1 << 30;

/// Resident memory of `pid` (0 once it has exited).
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    kb << 10
}

/// Samples prismd's RSS every few milliseconds until dropped; returns the peak.
struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakRss {
    fn watch(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_of(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_of(pid))
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Attacks: output floods through the daemon. (1) A buffered exec printing 64 MiB to stdout;
/// (2) a streamed exec (WebSocket) offering 1 GiB while its client stops reading; (3) the
/// sandbox's main process writing 64 MiB to its log.
/// Expected: (1) the result is cut at the configured cap and says `truncated`; (2) back-pressure
/// reaches the producer: while the client does not read, the writer blocks after a bounded
/// number of bytes (it does not run to the end into some buffer), and when the client reads
/// again the stream goes on; (3) the log on disk stays within its budget and the sandbox keeps
/// serving; and through all three prismd's RSS grows by less than 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_floods_keep_the_daemon_bounded() {
    if !support::root_or_skip("output_floods_keep_the_daemon_bounded") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(dir.path(), "log_max_bytes = 4194304").await;
    let pid = d.child.as_ref().unwrap().id();
    let c = &d.client;
    let req: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "name": "flood",
        "resources": {"memory_mb": 256},
    }))
    .unwrap();
    c.create(&req).await.unwrap();
    // Warm the daemon's paths once so its baseline includes their one-time allocations.
    let small = |cmd: &str| ExecRequest {
        command: Some(cmd.into()),
        ..Default::default()
    };
    c.exec("flood", &small("head -c 4M /dev/zero"))
        .await
        .unwrap();
    let baseline = rss_of(pid);
    let watch = PeakRss::watch(pid);

    // (1) Buffered exec.
    let mut flood = small(&format!("head -c {FLOOD} /dev/zero"));
    flood.timeout_s = Some(300);
    let r = c.exec("flood", &flood).await.unwrap();
    assert_eq!(
        (r.exit_code, r.timed_out, r.truncated, r.stdout.len()),
        (0, false, true, 1 << 20),
        "exit code, timed out, truncated, bytes kept (the default cap)"
    );

    // (2) Streamed exec with a client that stops reading.
    let start = ExecStart {
        command: Some(format!("head -c {STREAM_FLOOD} /dev/zero")),
        ..Default::default()
    };
    let (mut tx, mut rx) = c.exec_ws("flood", &start).await.unwrap().split();
    let mut got: u64 = 0;
    while got < 4 << 20 {
        if let WsEvent::Stdout(b) = rx.next().await.unwrap().unwrap() {
            got += b.len() as u64;
        }
    }
    // The client goes quiet. The writer must come to a stop: its written-bytes counter
    // (wchar of /proc/PID/io) stays the same over ten readings 100 ms apart.
    let written = small("cat /proc/$(pgrep -x head)/io | sed -n 's/^wchar: //p'");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (mut last, mut same) = (0u64, 0);
    while same < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never blocked while the client did not read (wrote {last} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c.exec("flood", &written).await.unwrap();
        let w: u64 = r.stdout.trim().parse().unwrap_or_else(|_| {
            panic!("the writer ran to its end while the client did not read: {r:?}")
        });
        if w == last {
            same += 1;
        } else {
            (last, same) = (w, 0);
        }
    }
    let buffered = last.saturating_sub(got);
    assert!(
        buffered < RSS_BUDGET,
        "{buffered} bytes written but not delivered while the client did not read"
    );
    eprintln!("floods: the stream's writer blocked {buffered} bytes ahead of the paused client");
    // Reading again resumes the stream; stop it with a signal once it has moved on.
    let resume_from = got;
    while got < resume_from + (16 << 20) {
        match rx.next().await {
            Some(Ok(WsEvent::Stdout(b))) => got += b.len() as u64,
            Some(Ok(_)) => {}
            other => panic!("the stream ended before it resumed: {other:?}"),
        }
    }
    tx.signal(9).await.unwrap();
    let mut exit = None;
    while let Some(ev) = rx.next().await {
        if let WsEvent::Event(ServerEvent::Exit { exit_code, .. }) = ev.unwrap() {
            exit = Some(exit_code);
        }
    }
    assert!(exit.is_some(), "the killed stream reports its exit");

    // (3) The main process floods the sandbox's log.
    let req: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "name": "flood-log",
        "cmd": ["/bin/sh", "-c", format!("head -c {FLOOD} /dev/zero; echo done >&2")],
    }))
    .unwrap();
    c.create(&req).await.unwrap();
    let c2 = c.clone();
    eventually(120, "the log flood to finish", || {
        let c = c2.clone();
        async move {
            let r = c.exec("flood-log", &small("pgrep -x head")).await.ok()?;
            (r.exit_code != 0).then_some(())
        }
    })
    .await;
    let peak = watch.peak();
    let log_bytes: u64 = walk_size(&dir.path().join("logs"));
    assert!(
        log_bytes <= 4 << 20,
        "the log stays within its budget: {log_bytes} bytes"
    );
    let r = c.exec("flood-log", &small("echo alive")).await.unwrap();
    assert_eq!(r.stdout, "alive\n");
    assert!(
        peak < baseline + RSS_BUDGET,
        "prismd RSS grew from {} MiB to {} MiB",
        baseline >> 20,
        peak >> 20
    );
    eprintln!(
        "floods: prismd RSS {} MiB before, peak {} MiB; log on disk {} KiB",
        baseline >> 20,
        peak >> 20,
        log_bytes >> 10
    );
    c.destroy("flood").await.unwrap();
    c.destroy("flood-log").await.unwrap();
}

/// Total size of the regular files below `dir` (0 when it does not exist).
fn walk_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}
