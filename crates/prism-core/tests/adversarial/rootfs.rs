//! Attacks on the filesystem boundary: host files, writes outside, /proc/*/root tricks, symlinks
//! and hard links through the agent's file API, huge names. Each case runs twice: on writable
//! layers whose overlays the sandbox mounted itself, and on overlays the host mounted ahead with
//! a spare directory (owned by the host's user namespace; what most first starts get).

use futures_util::StreamExt;

use crate::support::{Harness, Overlays, harness};
use crate::{field, py, small};

/// `#[test]`s running `case` on each kind of overlay.
macro_rules! on_both {
    ($case:ident, $in_sandbox:ident, $ahead:ident) => {
        #[test]
        fn $in_sandbox() {
            run($case, Overlays::InSandbox, stringify!($in_sandbox));
        }
        #[test]
        fn $ahead() {
            run($case, Overlays::Ahead, stringify!($ahead));
        }
    };
}

fn run(case: fn(&Harness, Overlays), overlays: Overlays, name: &str) {
    let _serial = crate::serial();
    let Some(h) = harness(&format!("adversarial {name}")) else {
        return;
    };
    case(&h, overlays);
}

/// Attacks: reading a host file and writing the host through every path the sandbox has: the
/// path itself, /proc/self/root and /proc/1/root, `..` beyond `/`, and the shared base (/usr).
/// Expected: the host secret is never found (ENOENT or EACCES), writes to /usr land in the
/// sandbox's own upper layer, and the host's file and /usr are unchanged afterwards.
fn host_files_are_neither_readable_nor_writable(h: &Harness, overlays: Overlays) {
    let secret = h.state.path().join("host-secret");
    std::fs::write(&secret, "TOPSECRET").expect("secret");
    let secret = secret.display().to_string();
    let (_handle, client) = h.start_on(overlays, "adv-files", small());
    let out = py(
        h,
        &client,
        &format!(
            r#"
import os
def attempt(name, f):
    try:
        print(f"{{name}}=ok:{{f()}}")
    except OSError as e:
        print(f"{{name}}={{e.errno}}")
s = "{secret}"
attempt("direct", lambda: open(s).read())
attempt("self_root", lambda: open("/proc/self/root" + s).read())
attempt("agent_root", lambda: open("/proc/1/root" + s).read())
attempt("dotdot", lambda: open("/../../.." + s).read())
attempt("usr_write", lambda: open("/usr/prism-adversarial-marker", "w").write("x"))
os.chdir("/")
for _ in range(20):
    os.chdir("..")
attempt("cwd", lambda: os.getcwd())
"#
        ),
    );
    assert_eq!(out.exit_code, 0, "{out:?}");
    for k in ["direct", "self_root", "dotdot"] {
        assert_eq!(field(&out, k), Some("2"), "{k}: {out:?}");
    }
    assert!(
        matches!(field(&out, "agent_root"), Some("13") | Some("2")),
        "{out:?}"
    );
    assert_eq!(field(&out, "cwd"), Some("ok:/"), "{out:?}");
    assert_eq!(field(&out, "usr_write"), Some("ok:1"), "{out:?}");
    assert!(!std::path::Path::new("/usr/prism-adversarial-marker").exists());
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "TOPSECRET"
    );
}

/// Attacks: the agent's file API (which runs as the sandbox's root, PID 1) through links made
/// by sandbox code: a symlink to /proc/1/root/.., a symlink chain to `/`, and a hard link to a
/// file of the shared base that the API then overwrites.
/// Expected: links resolve inside the sandbox's root (reading through them gives the sandbox's
/// own hostname), and writing through the hard link changes the sandbox's copy only: the host's
/// /usr/bin/python3 keeps its bytes.
fn links_through_the_file_api_stay_inside(h: &Harness, overlays: Overlays) {
    let host_py = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    let before = std::fs::read(&host_py).expect("read python3");
    let (_handle, client) = h.start_on(overlays, "adv-links", small());
    let out = h.sh(
        &client,
        &format!(
            "ln -s /proc/1/root/.. /tmp/up && ln -s / /tmp/r1 && ln -s /tmp/r1/../../ /tmp/r2 && \
             ln {} /usr/hard 2>&1; echo ln=$?",
            host_py.display()
        ),
    );
    assert!(out.stdout.contains("ln=0"), "{out:?}");
    h.rt.block_on(async {
        for path in ["/tmp/up/etc/hostname", "/tmp/r2/etc/hostname"] {
            let mut s = client.read_file(path).await.expect("read through link");
            let mut data = Vec::new();
            while let Some(chunk) = s.next().await {
                data.extend_from_slice(&chunk.expect("chunk"));
            }
            assert_eq!(
                String::from_utf8_lossy(&data).trim(),
                "host-adv-links",
                "{path}"
            );
        }
        client
            .write_file(
                "/usr/hard",
                futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"pwned"))]),
            )
            .await
            .expect("write through hard link");
    });
    assert_eq!(std::fs::read(&host_py).expect("read python3"), before);
}

/// Attacks: path-length handling of the kernel and of the agent: a 255-byte name (the limit), a
/// 256-byte one, and a 5000-byte path through the file API.
/// Expected: 255 works, 256 fails with ENAMETOOLONG, the API answers an error and the agent keeps
/// serving.
fn huge_filenames_get_clean_errors(h: &Harness, overlays: Overlays) {
    let (_handle, client) = h.start_on(overlays, "adv-names", small());
    let out = py(
        h,
        &client,
        r#"
def attempt(name, f):
    try:
        f(); print(f"{name}=ok")
    except OSError as e:
        print(f"{name}={e.errno}")
attempt("n255", lambda: open("/tmp/" + "a" * 255, "w").close())
attempt("n256", lambda: open("/tmp/" + "a" * 256, "w").close())
"#,
    );
    assert_eq!(field(&out, "n255"), Some("ok"), "{out:?}");
    assert_eq!(field(&out, "n256"), Some("36"), "{out:?}");
    let long = format!("/tmp/{}", "d/".repeat(2500));
    h.rt.block_on(async {
        assert!(client.make_dir(&long).await.is_err());
        assert!(client.stat(&long).await.is_err());
        client.health().await.expect("agent still healthy");
    });
}

/// Attacks: a symlink race on the file API (the classic TOCTOU of container `cp`). While the
/// host writes files under `/tmp/race/` through the API, a sandbox process swaps `/tmp/race`
/// between a real directory and a symlink to `/` with `renameat2(RENAME_EXCHANGE)`, as fast as
/// it can, hoping a write that resolved the path as a directory lands through the link — and,
/// were the path resolved on the host, in the host's root.
/// Expected: every write the API acknowledged lands inside the sandbox (in the directory or, via
/// the link, in the sandbox's own `/`), all of them are found there, and none reaches the host's
/// `/`.
fn symlink_swap_race_on_the_file_api_stays_inside(h: &Harness, overlays: Overlays) {
    let marker = format!("prism-race-{}", std::process::id());
    let (_handle, client) = h.start_on(overlays, "adv-race", small());
    // The swapper runs in the background until /tmp/stop exists (or 60 s pass).
    let swapper = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("/tmp/race"); os.symlink("/", "/tmp/swap")
end = time.time() + 60
n = 0
while not os.path.exists("/tmp/stop") and time.time() < end:
    if libc.syscall(316, -100, b"/tmp/race", -100, b"/tmp/swap", 2) != 0:
        raise SystemExit(f"renameat2 errno {ctypes.get_errno()}")
    n += 1
open("/tmp/swaps", "w").write(str(n))
"#;
    h.rt.block_on(async {
        client
            .write_file(
                "/tmp/swapper.py",
                futures_util::stream::iter([Ok(bytes::Bytes::from(swapper.as_bytes().to_vec()))]),
            )
            .await
            .expect("upload swapper");
    });
    let out = h.sh(
        &client,
        "setsid python3 /tmp/swapper.py >/tmp/swapper.log 2>&1 </dev/null & \
         while [ ! -L /tmp/swap ] && [ ! -L /tmp/race ]; do :; done; echo started",
    );
    assert!(out.stdout.contains("started"), "{out:?}");
    let mut acked = 0;
    h.rt.block_on(async {
        for i in 0..300 {
            let path = format!("/tmp/race/{marker}-{i}");
            let data = bytes::Bytes::from(format!("{i}"));
            if client
                .write_file(&path, futures_util::stream::iter([Ok(data)]))
                .await
                .is_ok()
            {
                acked += 1;
            }
        }
        client
            .write_file(
                "/tmp/stop",
                futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"1"))]),
            )
            .await
            .expect("stop the swapper");
    });
    let out = h.sh(
        &client,
        &format!(
            "while [ ! -e /tmp/swaps ]; do :; done; echo swaps=$(cat /tmp/swaps); \
             cat /tmp/swapper.log; \
             echo found=$(find / /tmp -xdev -name '{marker}-*' 2>/dev/null | wc -l); \
             echo in_root=$(ls / | grep -c '{marker}-')"
        ),
    );
    let swaps: u64 = field(&out, "swaps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(swaps > 100, "the swapper did not race: {out:?}");
    assert!(acked > 0, "no write was acknowledged: {out:?}");
    let found: usize = field(&out, "found")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    assert_eq!(
        found, acked,
        "every acknowledged write is inside the sandbox: {out:?}"
    );
    let on_host: Vec<_> = std::fs::read_dir("/")
        .expect("read host /")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&marker))
        .map(|e| e.path())
        .collect();
    for p in &on_host {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        on_host.is_empty(),
        "writes escaped to the host: {on_host:?}"
    );
    eprintln!(
        "symlink race: {swaps} swaps, {acked}/300 writes acknowledged, {} landed in the sandbox's /",
        field(&out, "in_root").unwrap_or("?")
    );
}

on_both!(
    host_files_are_neither_readable_nor_writable,
    host_files_are_neither_readable_nor_writable_in_sandbox,
    host_files_are_neither_readable_nor_writable_ahead
);
on_both!(
    links_through_the_file_api_stay_inside,
    links_through_the_file_api_stay_inside_in_sandbox,
    links_through_the_file_api_stay_inside_ahead
);
on_both!(
    huge_filenames_get_clean_errors,
    huge_filenames_get_clean_errors_in_sandbox,
    huge_filenames_get_clean_errors_ahead
);
on_both!(
    symlink_swap_race_on_the_file_api_stays_inside,
    symlink_swap_race_on_the_file_api_stays_inside_in_sandbox,
    symlink_swap_race_on_the_file_api_stays_inside_ahead
);
