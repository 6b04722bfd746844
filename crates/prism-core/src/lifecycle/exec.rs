//! Work inside a running sandbox: buffered and streamed exec, files, logs and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use prism_store::SandboxRecord;
use prism_types::ws::ExecStart;
use prism_types::{ExecRequest, ExecResult, SandboxMetrics};

use super::agent::{Agent, AgentError, EntryInfo, EntryKind, ProcEvent, ProcSpec, ProcStream};
use super::manager::{SandboxManager, blocking};
use super::state::{Action, plan};
use super::{LifecycleError, validate};
use crate::SandboxHandle;

/// How long a killed process gets to report its end before the exec gives up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the end of a process's event stream may trail its end event (see [`drain`]).
const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Read a process's event stream to its end after the end event: only a response read to
/// the end returns its keep-alive connection to the agent pool (dropped earlier, the
/// connection is closed and the next call opens a new one).
pub(crate) async fn drain(events: &mut ProcEvents) {
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        while events.next().await.is_some() {}
    })
    .await;
}

/// What `GET files` found at a path.
#[derive(Debug)]
pub enum FileContent {
    File(Bytes),
    Tar(Bytes),
    Dir(Vec<EntryInfo>),
}

/// The events of a streamed exec's process.
pub type ProcEvents = BoxStream<'static, Result<ProcEvent, AgentError>>;

/// The controls of a streamed exec's process (WebSocket, terminal).
pub struct ExecSession {
    pub pid: u32,
    agent: Arc<dyn Agent>,
    manager: SandboxManager,
    sandbox_id: String,
    handle: SandboxHandle,
    oom_before: Option<u64>,
    started: Instant,
    tty: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("pid", &self.pid)
            .finish()
    }
}

impl ExecSession {
    pub async fn stdin(&self, data: Bytes) -> Result<(), LifecycleError> {
        self.manager.touch(&self.sandbox_id);
        Ok(self.agent.send_stdin(self.pid, data, self.tty).await?)
    }

    pub async fn eof(&self) -> Result<(), LifecycleError> {
        Ok(self.agent.close_stdin(self.pid).await?)
    }

    pub async fn signal(&self, signal: i32) -> Result<(), LifecycleError> {
        Ok(self.agent.signal(self.pid, signal).await?)
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), LifecycleError> {
        Ok(self.agent.resize(self.pid, cols, rows).await?)
    }

    /// Milliseconds since the process started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the sandbox's OOM killer fired since the process started.
    pub async fn oom_killed(&self) -> bool {
        self.manager.touch(&self.sandbox_id);
        oom_since(&self.manager, &self.handle, self.oom_before)
    }
}

/// The sandbox's OOM-kill counter. Read on the calling (async) thread: it is one small read
/// of a cgroup file (`memory.oom_control` / `memory.events`), cheaper than the two thread
/// hand-offs of the blocking pool.
fn oom_kills(m: &SandboxManager, handle: &SandboxHandle) -> Option<u64> {
    m.inner.runtime.oom_kills(handle).ok()
}

fn oom_since(m: &SandboxManager, handle: &SandboxHandle, before: Option<u64>) -> bool {
    match (before, oom_kills(m, handle)) {
        (Some(b), Some(a)) => a > b,
        _ => false,
    }
}

/// Append to a capped buffer; returns false when something was cut.
fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() <= room
}

impl SandboxManager {
    /// The record, runtime handle and agent of a running sandbox.
    pub(super) async fn running(
        &self,
        id_or_name: &str,
    ) -> Result<(SandboxRecord, SandboxHandle, Arc<dyn Agent>), LifecycleError> {
        let rec = self.record(id_or_name).await?;
        plan(Action::Use, rec.state)?;
        let handle = Self::handle_of(&rec)?;
        let agent = self.agent_of(&handle);
        self.touch(&rec.id);
        Ok((rec, handle, agent))
    }

    /// Run a command to completion and return its output (each stream capped).
    pub async fn exec(
        &self,
        id_or_name: &str,
        req: ExecRequest,
    ) -> Result<ExecResult, LifecycleError> {
        let (argv, timeout_s) = validate::exec(&req)?;
        let (rec, handle, agent) = self.running(id_or_name).await?;
        let mut env = self.process_env(&rec).await;
        env.extend(req.env.clone());
        let oom_before = oom_kills(self, &handle);
        let spec = ProcSpec {
            argv,
            env,
            cwd: req.cwd.clone().or_else(|| rec.spec.cwd.clone()),
            user: req.user.clone().or_else(|| rec.spec.user.clone()),
            pty: None,
            stdin: req.stdin.is_some(),
            tag: None,
        };
        let started = Instant::now();
        let mut ps = agent.spawn(spec).await?;
        if let Some(input) = req.stdin {
            agent.send_stdin(ps.pid, Bytes::from(input), false).await?;
            agent.close_stdin(ps.pid).await?;
        }
        let cap = self.inner.cfg.exec_output_limit;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut result = ExecResult::default();
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
        let mut ended = false;
        loop {
            tokio::select! {
                ev = ps.events.next() => match ev {
                    Some(Ok(ProcEvent::Stdout(b) | ProcEvent::Pty(b))) => {
                        result.truncated |= !push_capped(&mut out, &b, cap);
                    }
                    Some(Ok(ProcEvent::Stderr(b))) => {
                        result.truncated |= !push_capped(&mut err, &b, cap);
                    }
                    Some(Ok(ProcEvent::End { exit_code, signal })) => {
                        result.exit_code = exit_code;
                        result.signal = signal;
                        ended = true;
                        break;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    if result.timed_out {
                        break;
                    }
                    result.timed_out = true;
                    if let Err(error) = agent.signal(ps.pid, 9).await {
                        tracing::debug!(message = "kill of a timed-out exec failed", %error);
                    }
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                }
            }
        }
        if ended {
            drain(&mut ps.events).await;
        } else {
            result.exit_code = -1;
        }
        result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        result.stdout = String::from_utf8_lossy(&out).into_owned();
        result.stderr = String::from_utf8_lossy(&err).into_owned();
        result.oom_killed = oom_since(self, &handle, oom_before);
        self.touch(&rec.id);
        Ok(result)
    }

    /// Start a streamed exec (WebSocket, terminal): its controls and its events.
    pub async fn exec_stream(
        &self,
        id_or_name: &str,
        start: ExecStart,
    ) -> Result<(ExecSession, ProcEvents), LifecycleError> {
        let argv = validate::exec_argv(start.cmd.as_deref(), start.command.as_deref())?;
        validate::env(&start.env)?;
        let (rec, handle, agent) = self.running(id_or_name).await?;
        let tty = start.tty;
        let mut env = self.process_env(&rec).await;
        env.extend(start.env);
        if start.tty && !env.contains_key("TERM") {
            env.insert("TERM".into(), "xterm-256color".into());
        }
        let spec = ProcSpec {
            argv,
            env,
            cwd: start.cwd.or_else(|| rec.spec.cwd.clone()),
            user: start.user.or_else(|| rec.spec.user.clone()),
            pty: start.tty.then(|| {
                (
                    start.cols.unwrap_or(80).max(1),
                    start.rows.unwrap_or(24).max(1),
                )
            }),
            stdin: true,
            tag: None,
        };
        let oom_before = oom_kills(self, &handle);
        let ProcStream { pid, events } = agent.spawn(spec).await?;
        let session = ExecSession {
            pid,
            agent,
            manager: self.clone(),
            sandbox_id: rec.id,
            handle,
            oom_before,
            started: Instant::now(),
            tty,
        };
        Ok((session, events))
    }

    /// Read a path: a file's bytes, a directory as a tar (when `tar`) or as a listing.
    pub async fn read_path(
        &self,
        id_or_name: &str,
        path: &str,
        tar: bool,
    ) -> Result<FileContent, LifecycleError> {
        validate::path(path)?;
        let (_, _, agent) = self.running(id_or_name).await?;
        let info = agent.stat(path).await?;
        Ok(match (info.kind, tar) {
            (EntryKind::Dir, true) => FileContent::Tar(agent.read_tar(path).await?),
            (EntryKind::Dir, false) => FileContent::Dir(agent.list_dir(path).await?),
            _ => FileContent::File(agent.read_file(path).await?),
        })
    }

    /// Write a file (parents created), or unpack a tar into a directory.
    pub async fn write_path(
        &self,
        id_or_name: &str,
        path: &str,
        data: Bytes,
        tar: bool,
    ) -> Result<(), LifecycleError> {
        validate::path(path)?;
        let (_, _, agent) = self.running(id_or_name).await?;
        if tar {
            agent.write_tar(path, data).await?;
        } else {
            agent.write_file(path, data).await?;
        }
        Ok(())
    }

    pub async fn remove_path(&self, id_or_name: &str, path: &str) -> Result<(), LifecycleError> {
        validate::path(path)?;
        let (_, _, agent) = self.running(id_or_name).await?;
        Ok(agent.remove(path).await?)
    }

    /// The sandbox's output log: the last `tail` lines (all when `None`), then, with `follow`,
    /// new output until the main process ends or the sandbox stops. Works in every state but
    /// destroyed.
    pub async fn logs(
        &self,
        id_or_name: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, LifecycleError> {
        let rec = self.record(id_or_name).await?;
        if rec.state == prism_types::SandboxState::Destroyed {
            return Err(super::InvalidState {
                action: Action::Use,
                state: rec.state,
            }
            .into());
        }
        let hub = self.log_hub(&rec.id)?;
        let from = match tail {
            Some(n) => {
                let h = hub.clone();
                blocking(move || h.tail_offset(n))
                    .await?
                    .map_err(|source| LifecycleError::Log { op: "read", source })?
            }
            None => hub.status().prev_start,
        };
        Ok(hub.stream(from, follow))
    }

    /// Usage counters of a running sandbox.
    pub async fn metrics(&self, id_or_name: &str) -> Result<SandboxMetrics, LifecycleError> {
        let (_, handle, _) = self.running(id_or_name).await?;
        let handle_id = handle.id.clone();
        let rt = self.inner.runtime.clone();
        let s = blocking(move || rt.stats(&handle))
            .await?
            .map_err(|source| LifecycleError::Runtime {
                op: "read the stats of",
                source,
            })?;
        Ok(SandboxMetrics {
            cpu_usage_ns: s.cpu_usage_ns,
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            pids: s.pids,
            oom_kills: s.oom_kills,
            disk_bytes: s.disk_bytes,
            io_read_bytes: s.io_read_bytes,
            io_write_bytes: s.io_write_bytes,
            network: self
                .net_counters(&handle_id)
                .map(|n| prism_types::NetworkCounters {
                    rx_bytes: n.rx_bytes,
                    rx_packets: n.rx_packets,
                    tx_bytes: n.tx_bytes,
                    tx_packets: n.tx_packets,
                    dns_dropped: n.dns_dropped,
                    proxy_refused: n.proxy_refused,
                }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::{StreamExt, stream};

    use super::{ProcEvent, ProcEvents, drain, push_capped};

    fn counted(
        n: usize,
        seen: &Arc<AtomicUsize>,
    ) -> impl futures_util::Stream<Item = super::super::agent::AgentResult<ProcEvent>> + use<> {
        let seen = seen.clone();
        stream::iter((0..n).map(|_| Ok(ProcEvent::Stdout(bytes::Bytes::from_static(b"x")))))
            .inspect(move |_| {
                seen.fetch_add(1, Ordering::Relaxed);
            })
    }

    #[tokio::test]
    async fn drain_reads_a_stream_to_its_end() {
        let seen = Arc::new(AtomicUsize::new(0));
        let mut events: ProcEvents = counted(3, &seen).boxed();
        drain(&mut events).await;
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_on_a_stream_that_never_ends() {
        let seen = Arc::new(AtomicUsize::new(0));
        let mut events: ProcEvents = counted(2, &seen).chain(stream::pending()).boxed();
        drain(&mut events).await;
        assert_eq!(seen.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn capped_buffers_say_when_they_cut() {
        let mut b = Vec::new();
        assert!(push_capped(&mut b, b"abc", 5));
        assert!(!push_capped(&mut b, b"def", 5));
        assert_eq!(b, b"abcde");
        assert!(!push_capped(&mut b, b"x", 5));
        assert!(push_capped(&mut b, b"", 5));
    }
}
