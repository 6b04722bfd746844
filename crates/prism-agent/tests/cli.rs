//! The agent's command line, as the runtime and an operator see it.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prism-agent"))
        .args(args)
        .output()
        .expect("run the agent")
}

#[test]
fn bad_command_lines_exit_2_with_the_reason_and_the_usage() {
    for (args, reason) in [
        (&["--bogus"][..], "unknown argument \"--bogus\""),
        (&[][..], "--listen PATH or --listen-fd N is required"),
        (
            &["--listen-fd", "x"][..],
            "invalid value \"x\" for --listen-fd",
        ),
        (
            &["--listen-fd", "3", "--listen", "/s"][..],
            "cannot be used together",
        ),
    ] {
        let out = agent(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage: prism-agent"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_and_version_print_and_exit_0() {
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--shutdown-grace-secs"));
    let out = agent(&["-V"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("prism-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_listen_fd_that_is_not_open_fails_cleanly() {
    let out = agent(&["--listen-fd", "77"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot take listening fd 77"), "{stderr}");
}
