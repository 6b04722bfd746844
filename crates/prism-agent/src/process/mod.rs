//! The process service: spawning, the process table, input, signals, PTY resize, re-attach.
//! Transport-free: the HTTP layer (`crate::server`) calls these functions.

mod bufpool;
mod output;
mod spawn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prism_proto::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessInfo, ProcessInput, ProcessSelector, PtySize,
    Signal, StartRequest,
};
use prism_proto::{Code, ConnectError};
use rustix::process::{Pid, Signal as Sig};
use tokio::sync::{Mutex as AsyncMutex, oneshot, watch};

use self::bufpool::BufPool;
use self::output::Output;
pub use self::output::Subscription;
pub use self::spawn::build_env;
use crate::fdio::AsyncPipe;
use crate::reaper::{Reaper, end_event};
use crate::users::User;

/// Pipe capacity asked for a process's stdout and stderr (the kernel's default is 64 KiB).
const PIPE_SIZE: usize = 1024 * 1024;

/// One running process.
struct Proc {
    pid: u32,
    seq: u64,
    tag: Option<String>,
    config: ProcessConfig,
    /// Stdin pipe, or a handle on the PTY master; `None` once closed.
    input: AsyncMutex<Option<Arc<AsyncPipe>>>,
    pty: Option<Arc<AsyncPipe>>,
    output: Output,
}

/// The process table and what spawning needs.
pub struct Processes {
    table: Mutex<HashMap<u32, Arc<Proc>>>,
    count: watch::Sender<usize>,
    seq: AtomicU64,
    reaper: Arc<Reaper>,
    base_env: Arc<crate::env::BaseEnv>,
}

/// A started process: its pid and the starter's subscription.
pub struct Started {
    pub pid: u32,
    pub events: Subscription,
}

fn not_found(sel: &ProcessSelector) -> ConnectError {
    ConnectError::new(Code::NotFound, format!("process with {sel} not found"))
}

impl Processes {
    pub fn new(reaper: Arc<Reaper>, base_env: Arc<crate::env::BaseEnv>) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(HashMap::new()),
            count: watch::Sender::new(0),
            seq: AtomicU64::new(0),
            reaper,
            base_env,
        })
    }

    fn find(&self, sel: &ProcessSelector) -> Result<Arc<Proc>, ConnectError> {
        let table = self
            .table
            .lock()
            .map_err(|_| ConnectError::new(Code::Internal, "poisoned"))?;
        let found = match sel {
            ProcessSelector::Pid(pid) => table.get(pid).cloned(),
            ProcessSelector::Tag(tag) => table
                .values()
                .filter(|p| p.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|p| p.seq)
                .cloned(),
        };
        found.ok_or_else(|| not_found(sel))
    }

    /// Starts a process; must be called on the runtime thread (see `crate::reaper`).
    pub fn start(
        self: &Arc<Self>,
        req: StartRequest,
        user: &User,
    ) -> Result<Started, ConnectError> {
        let config = req.process.unwrap_or_default();
        let pty = req.pty.map(|p| p.size.unwrap_or_default());
        let base_env = self.base_env.snapshot();
        let params = spawn::SpawnParams {
            base_env: &base_env,
            user,
            config: &config,
            pty,
            stdin: req.stdin.unwrap_or(true),
        };
        let spawned = spawn::spawn(&params)?;
        // Register before anything can yield to the reaper.
        let exit = self.reaper.register(spawned.pid);
        let pid = u32::try_from(spawned.pid).unwrap_or_default();
        let wrap = |fd: Option<std::os::fd::OwnedFd>| -> Result<Option<AsyncPipe>, ConnectError> {
            fd.map(AsyncPipe::new)
                .transpose()
                .map_err(|e| ConnectError::new(Code::Internal, format!("pipe setup: {e}")))
        };
        let pty_master = wrap(spawned.pty_master)?.map(Arc::new);
        let stdin = wrap(spawned.stdin)?.map(Arc::new);
        let (stdout, stderr) = (wrap(spawned.stdout)?, wrap(spawned.stderr)?);
        let input = pty_master.clone().or(stdin);
        let proc = Arc::new(Proc {
            pid,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            tag: req.tag,
            config,
            input: AsyncMutex::new(input),
            pty: pty_master.clone(),
            output: Output::default(),
        });
        let events = proc
            .output
            .subscribe()
            .ok_or_else(|| ConnectError::new(Code::Internal, "process ended at birth"))?;
        if let Ok(mut t) = self.table.lock() {
            t.insert(pid, proc.clone());
            self.count.send_replace(t.len());
        }
        tracing::debug!(pid, cmd = %proc.config.cmd, user = %user.name, "process started");
        let this = self.clone();
        tokio::spawn(async move {
            pump(&proc, stdout, stderr, pty_master, exit).await;
            if let Ok(mut t) = this.table.lock() {
                t.remove(&proc.pid);
                this.count.send_replace(t.len());
            }
        });
        Ok(Started { pid, events })
    }

    /// Re-attaches to a running process.
    pub fn connect(&self, sel: &ProcessSelector) -> Result<(u32, Subscription), ConnectError> {
        let p = self.find(sel)?;
        let sub = p.output.subscribe().ok_or_else(|| not_found(sel))?;
        Ok((p.pid, sub))
    }

    /// The running processes.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let Ok(t) = self.table.lock() else {
            return Vec::new();
        };
        let mut v: Vec<_> = t.values().cloned().collect();
        v.sort_by_key(|p| p.seq);
        v.into_iter()
            .map(|p| ProcessInfo {
                config: Some(p.config.clone()),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect()
    }

    /// Writes input to the process's stdin pipe or PTY.
    pub async fn send_input(
        &self,
        sel: &ProcessSelector,
        input: &ProcessInput,
    ) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let guard = p.input.lock().await;
        let Some(pipe) = guard.as_ref() else {
            return Err(ConnectError::new(
                Code::FailedPrecondition,
                format!("process with {sel} has no open stdin (start it with stdin: true)"),
            ));
        };
        if matches!(input, ProcessInput::Pty(_)) && p.pty.is_none() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "process has no PTY",
            ));
        }
        pipe.write_all(input.bytes()).await.map_err(|e| {
            ConnectError::new(
                Code::FailedPrecondition,
                format!("writing to the process failed: {e}"),
            )
        })
    }

    /// Closes the process's stdin pipe (EOF); PTY processes take Ctrl-D instead.
    pub async fn close_stdin(&self, sel: &ProcessSelector) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        if p.pty.is_some() {
            return Err(ConnectError::new(
                Code::FailedPrecondition,
                "cannot close stdin of a PTY process; send Ctrl-D (0x04) instead",
            ));
        }
        p.input.lock().await.take();
        Ok(())
    }

    /// Sends SIGTERM or SIGKILL.
    pub fn send_signal(&self, sel: &ProcessSelector, signal: Signal) -> Result<(), ConnectError> {
        let sig = match signal {
            Signal::Sigterm => Sig::TERM,
            Signal::Sigkill => Sig::KILL,
            Signal::Unspecified => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "signal is unspecified",
                ));
            }
        };
        let p = self.find(sel)?;
        kill(p.pid, sig).map_err(|e| ConnectError::new(Code::Internal, format!("kill: {e}")))
    }

    /// Resizes the process's PTY.
    pub fn resize(&self, sel: &ProcessSelector, size: PtySize) -> Result<(), ConnectError> {
        let p = self.find(sel)?;
        let pty = p
            .pty
            .as_ref()
            .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "process has no PTY"))?;
        spawn::set_winsize(pty.fd(), size)
            .map_err(|e| ConnectError::new(Code::Internal, format!("resize: {e}")))
    }

    /// Stops everything: SIGTERM, then SIGKILL for what is left after `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let mut count = self.count.subscribe();
        for sig in [Sig::TERM, Sig::KILL] {
            let pids: Vec<u32> = self
                .table
                .lock()
                .map(|t| t.keys().copied().collect())
                .unwrap_or_default();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = kill(pid, sig);
            }
            let _ = tokio::time::timeout(grace, count.wait_for(|n| *n == 0)).await;
        }
    }
}

fn kill(pid: u32, sig: Sig) -> rustix::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(rustix::io::Errno::SRCH)?;
    rustix::process::kill_process(pid, sig)
}

/// Reads the process's output until it exits, then drains what is left and sends the end.
async fn pump(
    proc: &Proc,
    stdout: Option<AsyncPipe>,
    stderr: Option<AsyncPipe>,
    pty: Option<Arc<AsyncPipe>>,
    mut exit: oneshot::Receiver<i32>,
) {
    // Bigger pipes let a fast writer run ahead while we send, and reads return more at once.
    for pipe in [stdout.as_ref(), stderr.as_ref()].into_iter().flatten() {
        let _ = rustix::pipe::fcntl_setpipe_size(pipe.fd(), PIPE_SIZE);
    }
    let pool = BufPool::default();
    let (mut o_open, mut e_open, mut p_open) = (stdout.is_some(), stderr.is_some(), pty.is_some());
    let status = loop {
        tokio::select! {
            r = read_opt(stdout.as_ref(), &pool), if o_open => match r {
                Ok(Some(b)) => proc.output.deliver(DataEvent::Stdout(b)).await,
                _ => o_open = false,
            },
            r = read_opt(stderr.as_ref(), &pool), if e_open => match r {
                Ok(Some(b)) => proc.output.deliver(DataEvent::Stderr(b)).await,
                _ => e_open = false,
            },
            r = read_opt(pty.as_deref(), &pool), if p_open => match r {
                Ok(Some(b)) => proc.output.deliver(DataEvent::Pty(b)).await,
                _ => p_open = false,
            },
            st = &mut exit => break st.ok(),
        }
    };
    // What the process wrote before exiting is in the pipes; do not wait for descendants that
    // may keep them open. A pipe already read to its end is not read again.
    type Wrap = fn(Bytes) -> DataEvent;
    let pipes: [(Option<&AsyncPipe>, bool, Wrap); 3] = [
        (stdout.as_ref(), o_open, DataEvent::Stdout),
        (stderr.as_ref(), e_open, DataEvent::Stderr),
        (pty.as_deref(), p_open, DataEvent::Pty),
    ];
    for (pipe, open, wrap) in pipes {
        let Some(pipe) = pipe.filter(|_| open) else {
            continue;
        };
        while let Ok(Some(b)) = pool.read(pipe.fd()) {
            proc.output.deliver(wrap(b)).await;
        }
    }
    proc.input.lock().await.take();
    let end = end_event(status);
    tracing::debug!(pid = proc.pid, status = %end.status, "process ended");
    proc.output.end(end).await;
}

/// The next chunk of a pipe (`None` at EOF), read once it is readable (see [`BufPool::read`]:
/// a quiet or short-lived process maps no read buffer).
async fn read_opt(pipe: Option<&AsyncPipe>, pool: &BufPool) -> std::io::Result<Option<Bytes>> {
    let Some(p) = pipe else {
        return std::future::pending().await;
    };
    p.read_with(|fd| pool.read(fd)).await
}

/// Turns a subscription into the events a `Start`/`Connect` stream sends (after `start`).
pub fn event_stream(
    first: Option<ProcessEvent>,
    sub: Subscription,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = ProcessEvent> + Send + 'static {
    use prism_proto::process::KeepAlive;
    let initial: std::collections::VecDeque<ProcessEvent> =
        first.into_iter().chain(sub.backlog).collect();
    futures_util::stream::unfold(
        (initial, sub.rx, false),
        move |(mut initial, mut rx, done)| async move {
            if done {
                return None;
            }
            if let Some(ev) = initial.pop_front() {
                return Some((ev, (initial, rx, false)));
            }
            match tokio::time::timeout(keepalive, rx.recv()).await {
                Err(_) => Some((ProcessEvent::Keepalive(KeepAlive {}), (initial, rx, false))),
                Ok(Some(ev)) => {
                    let end = matches!(ev, ProcessEvent::End(_));
                    Some((ev, (initial, rx, end)))
                }
                Ok(None) => None,
            }
        },
    )
}
