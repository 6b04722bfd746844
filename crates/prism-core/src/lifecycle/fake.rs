//! In-memory fakes of [`Runtime`] and [`Agent`] (feature `fake`, and unit tests): the lifecycle
//! and the HTTP layer are tested on them without root, processes or sockets.
//!
//! The fake agent understands a few programs: `echo ARGS…`, `sh -c 'exit N'` (any other script
//! is echoed), `cat` (echoes stdin until EOF), `sleep` (runs until signalled), `yes` (floods
//! stdout with 4 MiB), `oom` (bumps the fake runtime's OOM counter and dies of SIGKILL).
//! Anything else ends with 127.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::StreamExt;
use tokio::sync::mpsc;

use super::agent::{
    Agent, AgentConnector, AgentError, AgentResult, EntryInfo, EntryKind, ProcEvent, ProcSpec,
    ProcStream,
};
use crate::{Runtime, RuntimeError, SandboxHandle, SandboxSpec, SandboxStats};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct RtState {
    /// id → running pid (absent = stopped or never started).
    running: HashMap<String, u32>,
    /// ids that have something on the "host".
    present: HashMap<String, ()>,
    /// ids whose PID 1 "died".
    dead: HashMap<String, i32>,
    calls: Vec<String>,
}

/// A runtime that keeps sandboxes in a map.
#[derive(Debug)]
pub struct FakeRuntime {
    state_dir: PathBuf,
    st: Mutex<RtState>,
    next_pid: AtomicU32,
    /// Make the next `start` calls fail.
    pub fail_start: Mutex<bool>,
    pub oom_kills: Arc<AtomicU64>,
}

impl FakeRuntime {
    pub fn new(state_dir: &Path) -> Arc<Self> {
        Arc::new(FakeRuntime {
            state_dir: state_dir.to_path_buf(),
            st: Mutex::new(RtState::default()),
            next_pid: AtomicU32::new(1000),
            fail_start: Mutex::new(false),
            oom_kills: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The calls made so far (`start ID`, `stop ID`, ...).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.st).calls.clone()
    }

    pub fn is_running(&self, id: &str) -> bool {
        lock(&self.st).running.contains_key(id)
    }

    pub fn is_present(&self, id: &str) -> bool {
        lock(&self.st).present.contains_key(id)
    }

    /// Simulate the death of a sandbox's PID 1.
    pub fn kill(&self, id: &str) {
        let mut st = lock(&self.st);
        st.running.remove(id);
        st.dead.insert(id.to_string(), 137);
    }

    /// Simulate something left on the host with no record.
    pub fn plant_leftover(&self, id: &str) {
        lock(&self.st).present.insert(id.to_string(), ());
    }

    /// Forget running sandboxes as a host reboot would.
    pub fn forget_all(&self) {
        lock(&self.st).running.clear();
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn start(&self, spec: &SandboxSpec) -> Result<SandboxHandle, RuntimeError> {
        let mut st = lock(&self.st);
        st.calls.push(format!("start {}", spec.id));
        if *lock(&self.fail_start) {
            return Err(RuntimeError::StartFailed("fake failure".into()));
        }
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        st.running.insert(spec.id.clone(), pid);
        st.present.insert(spec.id.clone(), ());
        st.dead.remove(&spec.id);
        Ok(SandboxHandle {
            id: spec.id.clone(),
            pid,
            pid_start_time: u64::from(pid),
            uid_base: 100_000,
            agent_socket: self.state_dir.join(&spec.id).join("agent.sock"),
        })
    }

    fn stop(&self, handle: &SandboxHandle) -> Result<(), RuntimeError> {
        let mut st = lock(&self.st);
        st.calls.push(format!("stop {}", handle.id));
        st.running.remove(&handle.id);
        Ok(())
    }

    fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let mut st = lock(&self.st);
        st.calls.push(format!("destroy {id}"));
        st.running.remove(id);
        st.present.remove(id);
        Ok(())
    }

    fn adopt(&self, handle: &SandboxHandle) -> Result<bool, RuntimeError> {
        let st = lock(&self.st);
        Ok(st.running.get(&handle.id) == Some(&handle.pid))
    }

    fn pidfd(&self, handle: &SandboxHandle) -> Result<OwnedFd, RuntimeError> {
        Err(RuntimeError::NotFound(handle.id.clone()))
    }

    fn reap(&self, handle: &SandboxHandle) -> Result<Option<i32>, RuntimeError> {
        Ok(lock(&self.st).dead.get(&handle.id).copied())
    }

    fn stats(&self, handle: &SandboxHandle) -> Result<SandboxStats, RuntimeError> {
        if !self.is_running(&handle.id) {
            return Err(RuntimeError::NotFound(handle.id.clone()));
        }
        Ok(SandboxStats {
            cpu_usage_ns: 1_000,
            memory_bytes: 4 << 20,
            memory_limit_bytes: None,
            pids: 1,
            oom_kills: self.oom_kills.load(Ordering::Relaxed),
            disk_bytes: 0,
            ..Default::default()
        })
    }

    fn leftovers(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(lock(&self.st).present.keys().cloned().collect())
    }
}

type Tx = mpsc::UnboundedSender<Result<ProcEvent, AgentError>>;

#[derive(Default)]
struct AgentState {
    files: BTreeMap<String, Bytes>,
    procs: HashMap<u32, Tx>,
    tags: HashMap<String, u32>,
    resizes: Vec<(u32, u16, u16)>,
}

/// A fake agent per socket path; `FakeAgents` hands out the same one for the same path.
#[derive(Clone)]
pub struct FakeAgent {
    st: Arc<Mutex<AgentState>>,
    next_pid: Arc<AtomicU32>,
    oom_kills: Arc<AtomicU64>,
}

/// The [`AgentConnector`] of fake agents.
#[derive(Clone, Default)]
pub struct FakeAgents {
    agents: Arc<Mutex<HashMap<PathBuf, FakeAgent>>>,
    oom_kills: Arc<AtomicU64>,
}

impl FakeAgents {
    /// Fake agents that bump `runtime`'s OOM counter for the `oom` program.
    pub fn for_runtime(runtime: &FakeRuntime) -> Arc<Self> {
        Arc::new(FakeAgents {
            agents: Arc::default(),
            oom_kills: runtime.oom_kills.clone(),
        })
    }

    /// The resize calls seen by the agent at `socket`.
    pub fn resizes(&self, socket: &Path) -> Vec<(u32, u16, u16)> {
        lock(&self.agents)
            .get(socket)
            .map(|a| lock(&a.st).resizes.clone())
            .unwrap_or_default()
    }
}

impl AgentConnector for FakeAgents {
    fn connect(&self, socket: &Path) -> Arc<dyn Agent> {
        let agent = lock(&self.agents)
            .entry(socket.to_path_buf())
            .or_insert_with(|| FakeAgent {
                st: Arc::default(),
                next_pid: Arc::new(AtomicU32::new(2)),
                oom_kills: self.oom_kills.clone(),
            })
            .clone();
        Arc::new(agent)
    }
}

fn end(tx: &Tx, exit_code: i32, signal: Option<i32>) {
    let _ = tx.send(Ok(ProcEvent::End { exit_code, signal }));
}

fn out(tx: &Tx, s: impl Into<Bytes>) {
    let _ = tx.send(Ok(ProcEvent::Stdout(s.into())));
}

impl FakeAgent {
    fn run(&self, spec: &ProcSpec, pid: u32, tx: Tx) -> AgentResult<()> {
        let args: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        let program = args.first().map(|p| p.rsplit('/').next().unwrap_or(p));
        match (program, &args[1.min(args.len())..]) {
            (Some("fail-spawn"), _) => return Err(AgentError::Remote("exec failed".into())),
            (Some("echo"), rest) => {
                out(&tx, format!("{}\n", rest.join(" ")));
                end(&tx, 0, None);
            }
            (Some("sh"), ["-c", script]) => match script.strip_prefix("exit ") {
                Some(n) => end(&tx, n.trim().parse().unwrap_or(1), None),
                None => {
                    out(&tx, format!("{script}\n"));
                    let _ = tx.send(Ok(ProcEvent::Stderr(Bytes::from_static(b"err\n"))));
                    end(&tx, 0, None);
                }
            },
            (Some("cat" | "sleep"), _) => {
                if let Some(tag) = &spec.tag {
                    lock(&self.st).tags.insert(tag.clone(), pid);
                }
                lock(&self.st).procs.insert(pid, tx);
            }
            (Some("yes"), _) => {
                for _ in 0..4 {
                    out(&tx, vec![b'y'; 1 << 20]);
                }
                end(&tx, 0, None);
            }
            (Some("oom"), _) => {
                self.oom_kills.fetch_add(1, Ordering::Relaxed);
                end(&tx, -1, Some(9));
            }
            _ => {
                let _ = tx.send(Ok(ProcEvent::Stderr(Bytes::from_static(b"not found\n"))));
                end(&tx, 127, None);
            }
        }
        Ok(())
    }

    fn proc_tx(&self, pid: u32) -> AgentResult<Tx> {
        lock(&self.st)
            .procs
            .get(&pid)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("process {pid}")))
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    futures_util::future::ready(v).boxed()
}

impl Agent for FakeAgent {
    fn health(&self) -> BoxFuture<'_, AgentResult<()>> {
        ready(Ok(()))
    }

    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'_, AgentResult<ProcStream>> {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let r = self.run(&spec, pid, tx).map(|()| ProcStream {
            pid,
            events: tokio_stream_from(rx),
        });
        ready(r)
    }

    fn connect_tag(&self, tag: &str) -> BoxFuture<'_, AgentResult<ProcStream>> {
        let pid = lock(&self.st).tags.get(tag).copied();
        let r = match pid {
            Some(pid) => {
                let (tx, rx) = mpsc::unbounded_channel();
                lock(&self.st).procs.insert(pid, tx);
                Ok(ProcStream {
                    pid,
                    events: tokio_stream_from(rx),
                })
            }
            None => Err(AgentError::NotFound(format!("process tagged {tag}"))),
        };
        ready(r)
    }

    fn send_stdin(&self, pid: u32, data: Bytes, _pty: bool) -> BoxFuture<'_, AgentResult<()>> {
        ready(self.proc_tx(pid).map(|tx| out(&tx, data)))
    }

    fn close_stdin(&self, pid: u32) -> BoxFuture<'_, AgentResult<()>> {
        let r = self.proc_tx(pid).map(|tx| {
            end(&tx, 0, None);
            lock(&self.st).procs.remove(&pid);
        });
        ready(r)
    }

    fn signal(&self, pid: u32, signal: i32) -> BoxFuture<'_, AgentResult<()>> {
        let r = self.proc_tx(pid).map(|tx| {
            end(&tx, -1, Some(signal));
            lock(&self.st).procs.remove(&pid);
        });
        ready(r)
    }

    fn resize(&self, pid: u32, cols: u16, rows: u16) -> BoxFuture<'_, AgentResult<()>> {
        lock(&self.st).resizes.push((pid, cols, rows));
        ready(Ok(()))
    }

    fn stat(&self, path: &str) -> BoxFuture<'_, AgentResult<EntryInfo>> {
        let st = lock(&self.st);
        let name = path.rsplit('/').next().unwrap_or(path).to_string();
        let r = if let Some(b) = st.files.get(path) {
            Ok(EntryInfo {
                name,
                path: path.into(),
                kind: EntryKind::File,
                size: b.len() as u64,
            })
        } else if path == "/" || st.files.keys().any(|k| k.starts_with(&format!("{path}/"))) {
            Ok(EntryInfo {
                name,
                path: path.into(),
                kind: EntryKind::Dir,
                size: 0,
            })
        } else {
            Err(AgentError::NotFound(path.into()))
        };
        ready(r)
    }

    fn list_dir(&self, path: &str) -> BoxFuture<'_, AgentResult<Vec<EntryInfo>>> {
        let st = lock(&self.st);
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let list = st
            .files
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                (!rest.contains('/')).then(|| EntryInfo {
                    name: rest.into(),
                    path: k.clone(),
                    kind: EntryKind::File,
                    size: v.len() as u64,
                })
            })
            .collect();
        ready(Ok(list))
    }

    fn read_file(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>> {
        let r = lock(&self.st)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(path.into()));
        ready(r)
    }

    fn write_file(&self, path: &str, data: Bytes) -> BoxFuture<'_, AgentResult<()>> {
        lock(&self.st).files.insert(path.to_string(), data);
        ready(Ok(()))
    }

    fn remove(&self, path: &str) -> BoxFuture<'_, AgentResult<()>> {
        let r = match lock(&self.st).files.remove(path) {
            Some(_) => Ok(()),
            None => Err(AgentError::NotFound(path.into())),
        };
        ready(r)
    }

    fn read_tar(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>> {
        ready(Ok(Bytes::from(format!("TAR of {path}"))))
    }

    fn write_tar(&self, path: &str, tar: Bytes) -> BoxFuture<'_, AgentResult<()>> {
        lock(&self.st)
            .files
            .insert(format!("{}/from.tar", path.trim_end_matches('/')), tar);
        ready(Ok(()))
    }
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<Result<ProcEvent, AgentError>>,
) -> futures_util::stream::BoxStream<'static, Result<ProcEvent, AgentError>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
