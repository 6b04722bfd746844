//! Spawning a process with pipes or a PTY; the session, controlling terminal and identity are set
//! between fork and exec by `prism_sys::exec`.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prism_proto::process::{ProcessConfig, PtySize};
use prism_proto::{Code, ConnectError};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::paths;
use crate::users::User;

/// The default `PATH` of spawned processes.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parent's ends of a spawned process's stdio.
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub pty_master: Option<OwnedFd>,
}

/// How to spawn.
pub struct SpawnParams<'a> {
    pub base_env: &'a [(String, String)],
    pub user: &'a User,
    pub config: &'a ProcessConfig,
    pub pty: Option<PtySize>,
    pub stdin: bool,
}

/// Spawns the process; errors are Connect errors the client can act on.
pub fn spawn(p: &SpawnParams<'_>) -> Result<Spawned, ConnectError> {
    let env = build_env(p.base_env, p.user, p.config, p.pty.is_some());
    let cwd = match p.config.cwd.as_deref() {
        None | Some("") => p.user.home.clone(),
        Some(c) => paths::resolve(c, p.user),
    };
    let cwd = if cwd.is_dir() {
        cwd
    } else if p.config.cwd.is_none() {
        PathBuf::from("/")
    } else {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!(
                "working directory {} does not exist or is not a directory",
                cwd.display()
            ),
        ));
    };
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let program = resolve_program(&p.config.cmd, path_var, &cwd)?;
    let identity = {
        let same = rustix::process::geteuid().as_raw() == p.user.uid
            && rustix::process::getegid().as_raw() == p.user.gid;
        (!same).then(|| prism_sys::exec::Identity {
            uid: p.user.uid,
            gid: p.user.gid,
            groups: p.user.groups.clone(),
        })
    };
    let mut cmd = Command::new(&program);
    cmd.arg0(&p.config.cmd)
        .args(&p.config.args)
        .current_dir(&cwd)
        .env_clear()
        .envs(env);
    // Without a terminal or an identity change nothing runs between fork and exec, so std can
    // use posix_spawn (a vfork-like clone: no copy of the agent's page tables, no copy-on-write
    // faults afterwards). Inherited fds cannot leak: the agent marked every fd it was born with
    // close-on-exec at start, and every fd Rust opens is.
    if p.pty.is_some() || identity.is_some() {
        prism_sys::exec::configure(
            &mut cmd,
            prism_sys::exec::ChildSetup {
                session_with_ctty: p.pty.is_some(),
                identity,
            },
        );
    }

    let mut pty_master = None;
    if let Some(size) = p.pty {
        let (master, slave) = open_pty(size).map_err(|e| internal(format!("openpty: {e}")))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(internal);
        cmd.stdin(dup(&slave)?)
            .stdout(dup(&slave)?)
            .stderr(Stdio::from(slave));
        pty_master = Some(master);
    } else {
        cmd.stdin(if p.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Code::NotFound,
            std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            _ => Code::Internal,
        };
        ConnectError::new(code, format!("cannot start {}: {e}", program.display()))
    })?;
    let pid = i32::try_from(child.id()).map_err(internal)?;
    // `child` is dropped without waiting: the reaper owns its exit status.
    Ok(Spawned {
        pid,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        pty_master,
    })
}

fn internal(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(Code::Internal, e.to_string())
}

/// The environment: the agent's own, `PATH` by default, the user's `HOME`/`USER`/`LOGNAME`,
/// `TERM` for PTYs, then the request's variables over all of them.
pub fn build_env(
    base: &[(String, String)],
    user: &User,
    config: &ProcessConfig,
    pty: bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base.to_vec();
    let mut set = |k: &str, v: String, force: bool| {
        if let Some(slot) = env.iter_mut().find(|(ek, _)| ek == k) {
            if force {
                slot.1 = v;
            }
        } else {
            env.push((k.to_string(), v));
        }
    };
    set("PATH", DEFAULT_PATH.to_string(), false);
    set("HOME", user.home.to_string_lossy().into_owned(), true);
    set("USER", user.name.clone(), true);
    set("LOGNAME", user.name.clone(), true);
    if pty {
        set("TERM", "xterm-256color".to_string(), false);
    }
    for (k, v) in &config.envs {
        set(k, v.clone(), true);
    }
    env
}

/// Finds the program like `execvp` would, so a missing binary is a clear error.
fn resolve_program(cmd: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, ConnectError> {
    if cmd.is_empty() {
        return Err(ConnectError::new(Code::InvalidArgument, "cmd is empty"));
    }
    if cmd.contains('\0') {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "cmd contains a NUL byte",
        ));
    }
    if cmd.contains('/') {
        // Not checked here: the spawn itself fails with `NotFound` (see `spawn`), and a stat
        // now would only repeat the exec's own lookup.
        return Ok(cwd.join(cmd));
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = cwd.join(dir).join(cmd);
        if let Ok(md) = std::fs::metadata(&p)
            && md.is_file()
            && md.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(ConnectError::new(
        Code::NotFound,
        format!("exec: {cmd:?}: executable file not found in $PATH"),
    ))
}

/// Opens a PTY pair (both ends close-on-exec) with the given window size.
fn open_pty(size: PtySize) -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    set_winsize(&master, size)?;
    Ok((master, slave))
}

/// Sets a PTY's window size (the kernel sends SIGWINCH to its foreground process group).
pub fn set_winsize(master: &OwnedFd, size: PtySize) -> rustix::io::Result<()> {
    let clamp = |v: u32, d: u16| {
        if v == 0 {
            d
        } else {
            u16::try_from(v).unwrap_or(u16::MAX)
        }
    };
    let ws = Winsize {
        ws_row: clamp(size.rows, 24),
        ws_col: clamp(size.cols, 80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws)
}
