//! Code contexts: stateful Python, JavaScript and bash sessions, each served by a small driver
//! process shipped in this binary (`drivers/`), started lazily. A run sends the code to the
//! driver and streams its events; raw output of subprocesses (fds 1 and 2 of the driver) is
//! merged in as stdout/stderr. Interrupt is SIGINT to the driver; a run that does not stop
//! within a grace period after its timeout or interrupt gets its driver killed (state lost).

mod driver;
pub mod http;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_proto::code::{
    CodeError, CodeEvent, ContextInfo, CreateContext, Invoke, InvokeLogs, InvokeResult, RunCode,
    RunStatus,
};
use prism_proto::{Code, ConnectError};
use rustix::process::Signal;
use tokio::sync::{Mutex as AsyncMutex, mpsc};

use self::driver::{Driver, DriverSpec};
use crate::fdio::TryRead;
use crate::reaper::Reaper;
use crate::users::User;

/// Default per-run timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Time a driver gets to stop after SIGINT before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// The languages of code contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    Python,
    JavaScript,
    Bash,
}

impl Language {
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Self::Python),
            "javascript" | "js" | "node" | "nodejs" => Ok(Self::JavaScript),
            "bash" | "shell" | "sh" => Ok(Self::Bash),
            other => Err(ConnectError::new(
                Code::InvalidArgument,
                format!("unknown language {other:?}: use python, javascript or bash"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::JavaScript => "javascript",
            Self::Bash => "bash",
        }
    }
}

/// One context.
struct Context {
    id: String,
    language: Language,
    user: User,
    cwd: PathBuf,
    envs: Vec<(String, String)>,
    /// The driver; held for the whole of a run, so runs of one context are serial.
    driver: AsyncMutex<Option<Driver>>,
    /// Pid of the driver while a run is going (0 otherwise), for interrupts.
    running_pid: AtomicU32,
    interrupted: std::sync::atomic::AtomicBool,
    /// Counts runs, so a late kill after an interrupt hits only the run it was meant for.
    run_seq: AtomicU64,
}

/// All contexts of the sandbox.
pub struct Contexts {
    table: Mutex<HashMap<String, Arc<Context>>>,
    seq: AtomicU64,
    reaper: Arc<Reaper>,
    base_env: Arc<crate::env::BaseEnv>,
}

fn not_found(id: &str) -> ConnectError {
    ConnectError::new(Code::NotFound, format!("no code context {id:?}"))
}

fn poisoned() -> ConnectError {
    ConnectError::new(Code::Internal, "context table poisoned")
}

impl Context {
    fn info(&self, pid: Option<u32>) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language.as_str().into(),
            cwd: self.cwd.display().to_string(),
            user: self.user.name.clone(),
            pid,
        }
    }
}

impl Contexts {
    pub fn new(reaper: Arc<Reaper>, base_env: Arc<crate::env::BaseEnv>) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            reaper,
            base_env,
        })
    }

    fn get(&self, id: &str) -> Result<Arc<Context>, ConnectError> {
        let t = self.table.lock().map_err(|_| poisoned())?;
        t.get(id).cloned().ok_or_else(|| not_found(id))
    }

    fn start_driver(&self, ctx: &Context) -> Result<Driver, ConnectError> {
        let base_env = self.base_env.snapshot();
        Driver::spawn(
            &DriverSpec {
                language: ctx.language,
                user: &ctx.user,
                cwd: &ctx.cwd,
                envs: &ctx.envs,
                base_env: &base_env,
            },
            &self.reaper,
        )
    }

    /// Creates a context and starts its driver (so a missing interpreter is reported now).
    pub async fn create(
        &self,
        req: CreateContext,
        user: User,
        id: Option<String>,
    ) -> Result<ContextInfo, ConnectError> {
        let language = Language::parse(&req.language)?;
        let cwd = match req.cwd.as_deref() {
            None | Some("") => user.home.clone(),
            Some(c) => crate::paths::resolve(c, &user),
        };
        let cwd = if cwd.is_dir() {
            cwd
        } else if req.cwd.is_none() {
            PathBuf::from("/")
        } else {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("working directory {} is not a directory", cwd.display()),
            ));
        };
        let id = id.unwrap_or_else(|| format!("ctx-{}", self.seq.fetch_add(1, Ordering::Relaxed)));
        let ctx = Context {
            id: id.clone(),
            language,
            user,
            cwd,
            envs: req.envs.into_iter().collect(),
            driver: AsyncMutex::new(None),
            running_pid: AtomicU32::new(0),
            interrupted: false.into(),
            run_seq: AtomicU64::new(0),
        };
        let driver = self.start_driver(&ctx)?;
        let info = ctx.info(Some(driver.pid));
        *ctx.driver.lock().await = Some(driver);
        let mut t = self.table.lock().map_err(|_| poisoned())?;
        if t.contains_key(&id) {
            return Err(ConnectError::new(
                Code::AlreadyExists,
                format!("code context {id:?} exists"),
            ));
        }
        t.insert(id, Arc::new(ctx));
        Ok(info)
    }

    pub async fn list(&self) -> Result<Vec<ContextInfo>, ConnectError> {
        let ctxs: Vec<Arc<Context>> = {
            let t = self.table.lock().map_err(|_| poisoned())?;
            t.values().cloned().collect()
        };
        let mut out = Vec::new();
        for c in ctxs {
            let pid = match c.driver.try_lock() {
                Ok(d) => d.as_ref().map(|d| d.pid),
                Err(_) => Some(c.running_pid.load(Ordering::Relaxed)).filter(|p| *p != 0),
            };
            out.push(c.info(pid));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Deletes a context; a running run is killed.
    pub async fn delete(&self, id: &str) -> Result<(), ConnectError> {
        let ctx = {
            let mut t = self.table.lock().map_err(|_| poisoned())?;
            t.remove(id).ok_or_else(|| not_found(id))?
        };
        kill_running(&ctx);
        ctx.driver.lock().await.take();
        Ok(())
    }

    /// Restarts a context's driver: a running run is killed and the state dropped.
    pub async fn restart(&self, id: &str) -> Result<ContextInfo, ConnectError> {
        let ctx = self.get(id)?;
        kill_running(&ctx);
        let mut guard = ctx.driver.lock().await;
        guard.take();
        let driver = self.start_driver(&ctx)?;
        let info = ctx.info(Some(driver.pid));
        *guard = Some(driver);
        Ok(info)
    }

    /// Interrupts the running code of a context (SIGINT); the context survives.
    pub fn interrupt(&self, id: &str) -> Result<(), ConnectError> {
        let ctx = self.get(id)?;
        let pid = ctx.running_pid.load(Ordering::Relaxed);
        if pid != 0 {
            ctx.interrupted.store(true, Ordering::Relaxed);
            signal(pid, Signal::INT);
            let seq = ctx.run_seq.load(Ordering::Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep(INTERRUPT_GRACE).await;
                if ctx.running_pid.load(Ordering::Relaxed) == pid
                    && ctx.run_seq.load(Ordering::Relaxed) == seq
                {
                    tracing::debug!(context = %ctx.id, "interrupt ignored; killing the driver");
                    signal(pid, Signal::KILL);
                }
            });
        }
        Ok(())
    }

    /// The default context of a language (`default-<language>`), created on first use.
    async fn default_context(
        &self,
        language: &str,
        user: User,
        envs: std::collections::BTreeMap<String, String>,
    ) -> Result<Arc<Context>, ConnectError> {
        let lang = Language::parse(language)?;
        let id = format!("default-{}", lang.as_str());
        if let Ok(c) = self.get(&id) {
            return Ok(c);
        }
        let req = CreateContext {
            language: lang.as_str().into(),
            envs,
            ..Default::default()
        };
        match self.create(req, user, Some(id.clone())).await {
            Ok(_) => {}
            Err(e) if e.code == Code::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.get(&id)
    }

    /// Starts a run; its events arrive on the returned channel, the last one `end`. The run
    /// goes on (and keeps the context busy) even if the receiver is dropped.
    pub async fn run(
        self: &Arc<Self>,
        req: RunCode,
        user: User,
    ) -> Result<mpsc::Receiver<CodeEvent>, ConnectError> {
        let ctx = match (&req.context_id, &req.language) {
            (Some(id), _) => self.get(id)?,
            (None, Some(lang)) => {
                self.default_context(lang, user, req.context_envs.clone())
                    .await?
            }
            (None, None) => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "context_id or language is required",
                ));
            }
        };
        if let (Some(_), Some(lang)) = (&req.context_id, &req.language)
            && Language::parse(lang)? != ctx.language
        {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!(
                    "context {} runs {}, not {lang}",
                    ctx.id,
                    ctx.language.as_str()
                ),
            ));
        }
        let timeout = match req.timeout_s {
            None | Some(0) => DEFAULT_TIMEOUT,
            Some(s) => Duration::from_secs(s),
        };
        let msg = serde_json::json!({"type": "run", "code": req.code, "env": req.envs});
        Ok(self.spawn_run(ctx, msg, timeout))
    }

    fn spawn_run(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        msg: serde_json::Value,
        timeout: Duration,
    ) -> mpsc::Receiver<CodeEvent> {
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut guard = ctx.driver.lock().await;
            if guard.is_none() {
                match this.start_driver(&ctx) {
                    Ok(d) => *guard = Some(d),
                    Err(e) => {
                        let _ = tx.send(crash_error("DriverError", e.message)).await;
                        let _ = tx.send(end(RunStatus::Crashed, Instant::now())).await;
                        return;
                    }
                }
            }
            let Some(driver) = guard.as_mut() else { return };
            ctx.interrupted.store(false, Ordering::Relaxed);
            ctx.run_seq.fetch_add(1, Ordering::Relaxed);
            ctx.running_pid.store(driver.pid, Ordering::Relaxed);
            let started = Instant::now();
            let status = drive(driver, &msg, timeout, &ctx, &tx).await;
            ctx.running_pid.store(0, Ordering::Relaxed);
            if status == RunStatus::Crashed {
                guard.take();
            }
            let _ = tx.send(end(status, started)).await;
        });
        rx
    }

    /// Calls `handler(event)` in a fresh context that is thrown away afterwards.
    pub async fn invoke(
        self: &Arc<Self>,
        req: Invoke,
        user: User,
    ) -> Result<InvokeResult, ConnectError> {
        let language = Language::parse(&req.language)?;
        if language == Language::Bash {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "invoke supports python and javascript",
            ));
        }
        if req.code.is_none() == req.path.is_none() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                "exactly one of code and path is required",
            ));
        }
        let path = req.path.as_deref().map(|p| crate::paths::resolve(p, &user));
        let id = format!("invoke-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let create = CreateContext {
            language: language.as_str().into(),
            envs: req.envs,
            ..Default::default()
        };
        self.create(create, user, Some(id.clone())).await?;
        let msg = serde_json::json!({
            "type": "invoke",
            "code": req.code,
            "path": path.map(|p| p.display().to_string()),
            "handler": req.handler.unwrap_or_else(|| "handler".into()),
            "event": req.event,
        });
        let timeout = match req.timeout_s {
            None | Some(0) => DEFAULT_TIMEOUT,
            Some(s) => Duration::from_secs(s),
        };
        let ctx = self.get(&id)?;
        let mut rx = self.spawn_run(ctx, msg, timeout);
        let mut out = InvokeResult::default();
        let mut logs = InvokeLogs::default();
        while let Some(ev) = rx.recv().await {
            match ev {
                CodeEvent::Stdout { text } => logs.stdout.push_str(&text),
                CodeEvent::Stderr { text } => logs.stderr.push_str(&text),
                CodeEvent::Result { mut data } => {
                    out.result = data
                        .remove("application/json")
                        .unwrap_or(serde_json::Value::Null);
                }
                CodeEvent::Error(e) => out.error = Some(e),
                CodeEvent::End { duration_ms, .. } => out.duration_ms = duration_ms,
                CodeEvent::Display { .. } | CodeEvent::ExecutionCount { .. } => {}
            }
        }
        out.logs = logs;
        let _ = self.delete(&id).await;
        Ok(out)
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn kill_running(ctx: &Context) {
    let pid = ctx.running_pid.load(Ordering::Relaxed);
    if pid != 0 {
        signal(pid, Signal::KILL);
    }
}

fn end(status: RunStatus, started: Instant) -> CodeEvent {
    CodeEvent::End {
        status,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn crash_error(name: &str, value: String) -> CodeEvent {
    CodeEvent::Error(CodeError {
        name: name.into(),
        value,
        traceback: String::new(),
    })
}

/// Runs one command on the driver, forwarding events until its `end`.
async fn drive(
    d: &mut Driver,
    msg: &serde_json::Value,
    timeout: Duration,
    ctx: &Context,
    tx: &mpsc::Sender<CodeEvent>,
) -> RunStatus {
    let emit = |ev: CodeEvent| async move {
        // A gone client does not stop the run: the driver must reach its `end`.
        let _ = tx.send(ev).await;
    };
    if let Err(e) = d.send(msg).await {
        emit(crash_error(
            "DriverError",
            format!("the driver is gone: {e}"),
        ))
        .await;
        return RunStatus::Crashed;
    }
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    let (mut b1, mut b2) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut o_open, mut e_open) = (true, true);
    loop {
        tokio::select! {
            line = d.lines.next_line() => match line {
                Ok(Some(line)) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        tracing::debug!(%line, "driver sent a malformed line");
                        continue;
                    };
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("end") => {
                            drain(d, &mut b1, tx).await;
                            let count = v.get("execution_count").and_then(serde_json::Value::as_u64);
                            if let Some(c) = count.filter(|_| msg.get("type").and_then(|t| t.as_str()) == Some("run")) {
                                emit(CodeEvent::ExecutionCount { execution_count: c }).await;
                            }
                            let ok = v.get("status").and_then(|s| s.as_str()) == Some("ok");
                            return if timed_out {
                                RunStatus::Timeout
                            } else if ctx.interrupted.load(Ordering::Relaxed) && !ok {
                                RunStatus::Interrupted
                            } else if ok {
                                RunStatus::Ok
                            } else {
                                RunStatus::Error
                            };
                        }
                        Some("ready") => {}
                        _ => match serde_json::from_value::<CodeEvent>(v) {
                            Ok(ev) => emit(ev).await,
                            Err(e) => tracing::debug!(error = %e, "driver sent an unknown event"),
                        },
                    }
                }
                Ok(None) | Err(_) => {
                    drain(d, &mut b1, tx).await;
                    emit(crash_error("DriverExited", "the driver exited; the context's state is lost".into())).await;
                    return RunStatus::Crashed;
                }
            },
            r = d.stdout.read(&mut b1), if o_open => match r {
                Ok(n) if n > 0 => emit(CodeEvent::Stdout { text: String::from_utf8_lossy(&b1[..n]).into_owned() }).await,
                _ => o_open = false,
            },
            r = d.stderr.read(&mut b2), if e_open => match r {
                Ok(n) if n > 0 => emit(CodeEvent::Stderr { text: String::from_utf8_lossy(&b2[..n]).into_owned() }).await,
                _ => e_open = false,
            },
            _ = tokio::time::sleep_until(deadline) => {
                if timed_out {
                    d.signal(Signal::KILL);
                    emit(crash_error("Timeout", "the run did not stop after SIGINT; the driver was killed and the context's state is lost".into())).await;
                    return RunStatus::Crashed;
                }
                timed_out = true;
                emit(crash_error("Timeout", format!("the run exceeded its timeout of {} s", timeout.as_secs()))).await;
                d.signal(Signal::INT);
                deadline = tokio::time::Instant::now() + INTERRUPT_GRACE;
            }
        }
    }
}

/// Forwards what is left in the driver's raw output pipes.
async fn drain(d: &Driver, buf: &mut [u8], tx: &mpsc::Sender<CodeEvent>) {
    for (pipe, out) in [(&d.stdout, true), (&d.stderr, false)] {
        while let Ok(TryRead::Data(n)) = pipe.try_read(buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ev = if out {
                CodeEvent::Stdout { text }
            } else {
                CodeEvent::Stderr { text }
            };
            let _ = tx.send(ev).await;
        }
    }
}
