//! The real [`Agent`]: prism-proto's Connect-RPC JSON client over the agent's unix socket.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt, stream};
use prism_proto::filesystem::{EntryInfo as ProtoEntry, FileType};
use prism_proto::process::{
    DataEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, Signal,
    StartRequest,
};
use prism_proto::{AgentClient, AgentPool, Code, ProtoError};

use super::agent::{
    Agent, AgentConnector, AgentError, AgentResult, EntryInfo, EntryKind, ProcEvent, ProcSpec,
    ProcStream,
};

/// Connects [`ProtoAgent`]s. Every agent it hands out shares one pool of keep-alive
/// connections (one key per agent socket), so successive calls to a sandbox skip the connect.
#[derive(Debug, Default, Clone)]
pub struct ProtoAgents {
    pool: AgentPool,
}

impl AgentConnector for ProtoAgents {
    fn connect(&self, socket: &Path) -> Arc<dyn Agent> {
        Arc::new(ProtoAgent {
            client: self.pool.client(socket),
        })
    }
}

/// One sandbox's agent over prism-proto.
#[derive(Debug, Clone)]
pub struct ProtoAgent {
    client: AgentClient,
}

pub(super) fn map_err(e: ProtoError) -> AgentError {
    match e {
        ProtoError::Rpc(c) => match c.code {
            Code::NotFound => AgentError::NotFound(c.message),
            Code::InvalidArgument
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::OutOfRange => AgentError::InvalidArgument(c.message),
            Code::Unavailable => AgentError::Unavailable(c.message),
            _ => AgentError::Remote(format!("{}: {}", c.code, c.message)),
        },
        ProtoError::Connect(e) => AgentError::Unavailable(e.to_string()),
        other => AgentError::Remote(error_chain(&other)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The signal number in Go's `os.ProcessState` text (`signal: killed`).
fn signal_of(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    Some(match name {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "illegal instruction" => 4,
        "trace/breakpoint trap" => 5,
        "aborted" => 6,
        "bus error" => 7,
        "floating point exception" => 8,
        "killed" => 9,
        "user defined signal 1" => 10,
        "segmentation fault" => 11,
        "user defined signal 2" => 12,
        "broken pipe" => 13,
        "alarm clock" => 14,
        "terminated" => 15,
        other => other
            .strip_prefix("signal ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    })
}

fn entry(e: ProtoEntry) -> EntryInfo {
    EntryInfo {
        kind: match e.file_type {
            FileType::File => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Unspecified => EntryKind::Other,
        },
        size: u64::try_from(e.size).unwrap_or(0),
        name: e.name,
        path: e.path,
    }
}

impl ProtoAgent {
    /// Turn an agent event stream into a [`ProcStream`]: waits for the `start` event.
    async fn proc_stream(
        mut events: prism_proto::RpcStream<ProcessEvent>,
    ) -> AgentResult<ProcStream> {
        let pid = loop {
            match events.next().await {
                Some(Ok(ProcessEvent::Start(s))) => break s.pid,
                Some(Ok(ProcessEvent::Keepalive(_))) => continue,
                Some(Ok(other)) => {
                    return Err(AgentError::Remote(format!(
                        "the agent sent {other:?} before the process start"
                    )));
                }
                Some(Err(e)) => return Err(map_err(e)),
                None => return Err(AgentError::Remote("the process stream was empty".into())),
            }
        };
        let mapped = events
            .filter_map(|ev| async move {
                match ev {
                    Ok(ProcessEvent::Data(DataEvent::Stdout(b))) => Some(Ok(ProcEvent::Stdout(b))),
                    Ok(ProcessEvent::Data(DataEvent::Stderr(b))) => Some(Ok(ProcEvent::Stderr(b))),
                    Ok(ProcessEvent::Data(DataEvent::Pty(b))) => Some(Ok(ProcEvent::Pty(b))),
                    Ok(ProcessEvent::End(end)) => {
                        let signal = if end.exited {
                            None
                        } else {
                            signal_of(&end.status)
                        };
                        Some(Ok(ProcEvent::End {
                            exit_code: end.exit_code,
                            signal,
                        }))
                    }
                    Ok(ProcessEvent::Start(_) | ProcessEvent::Keepalive(_)) => None,
                    Err(e) => Some(Err(map_err(e))),
                }
            })
            .boxed();
        Ok(ProcStream {
            pid,
            events: mapped,
        })
    }
}

impl Agent for ProtoAgent {
    fn health(&self) -> BoxFuture<'_, AgentResult<()>> {
        async move { self.client.health().await.map_err(map_err) }.boxed()
    }

    fn create_context(
        &self,
        req: prism_types::code::CreateContextRequest,
    ) -> BoxFuture<'_, AgentResult<prism_types::code::CodeContext>> {
        super::code_agent::create_context(&self.client, req).boxed()
    }
    fn list_contexts(&self) -> BoxFuture<'_, AgentResult<Vec<prism_types::code::CodeContext>>> {
        super::code_agent::list_contexts(&self.client).boxed()
    }
    fn delete_context(&self, id: &str) -> BoxFuture<'_, AgentResult<()>> {
        let id = id.to_string();
        async move { self.client.delete_context(&id).await.map_err(map_err) }.boxed()
    }
    fn restart_context(
        &self,
        id: &str,
    ) -> BoxFuture<'_, AgentResult<prism_types::code::CodeContext>> {
        super::code_agent::restart_context(&self.client, id.to_string()).boxed()
    }
    fn interrupt_context(&self, id: &str) -> BoxFuture<'_, AgentResult<()>> {
        let id = id.to_string();
        async move { self.client.interrupt_context(&id).await.map_err(map_err) }.boxed()
    }
    fn run_code(
        &self,
        req: prism_types::code::RunCodeRequest,
        context_env: std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'_, AgentResult<super::agent::CodeEvents>> {
        super::code_agent::run_code(&self.client, req, context_env).boxed()
    }
    fn invoke(
        &self,
        req: prism_types::code::InvokeRequest,
        env: std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'_, AgentResult<prism_types::code::InvokeResult>> {
        super::code_agent::invoke(&self.client, req, env).boxed()
    }

    fn open_port(&self, port: u16) -> BoxFuture<'_, AgentResult<super::agent::PortTunnel>> {
        async move {
            match self.client.open_port(port).await {
                Ok(s) => Ok(Box::new(s) as super::agent::PortTunnel),
                Err(ProtoError::Rpc(c)) if c.code == Code::Unavailable => {
                    Err(AgentError::PortClosed(c.message))
                }
                Err(e) => Err(map_err(e)),
            }
        }
        .boxed()
    }

    fn spawn(&self, spec: ProcSpec) -> BoxFuture<'_, AgentResult<ProcStream>> {
        async move {
            let mut argv = spec.argv.into_iter();
            let cmd = argv.next().unwrap_or_default();
            let req = StartRequest {
                process: Some(ProcessConfig {
                    cmd,
                    args: argv.collect(),
                    envs: spec.env,
                    cwd: spec.cwd,
                }),
                pty: spec.pty.map(|(cols, rows)| Pty {
                    size: Some(PtySize {
                        cols: u32::from(cols),
                        rows: u32::from(rows),
                    }),
                }),
                tag: spec.tag,
                stdin: Some(spec.stdin),
            };
            let client = match spec.user {
                Some(u) => self.client.clone().with_user(u),
                None => self.client.clone(),
            };
            let events = client.start(&req).await.map_err(map_err)?;
            Self::proc_stream(events).await
        }
        .boxed()
    }

    fn connect_tag(&self, tag: &str) -> BoxFuture<'_, AgentResult<ProcStream>> {
        let sel = ProcessSelector::Tag(tag.to_string());
        async move {
            let events = self.client.connect(sel).await.map_err(map_err)?;
            Self::proc_stream(events).await
        }
        .boxed()
    }

    fn send_stdin(&self, pid: u32, data: Bytes, pty: bool) -> BoxFuture<'_, AgentResult<()>> {
        let input = if pty {
            ProcessInput::Pty(data)
        } else {
            ProcessInput::Stdin(data)
        };
        async move {
            self.client
                .send_input(ProcessSelector::Pid(pid), input)
                .await
                .map_err(map_err)
        }
        .boxed()
    }

    fn close_stdin(&self, pid: u32) -> BoxFuture<'_, AgentResult<()>> {
        async move {
            self.client
                .close_stdin(ProcessSelector::Pid(pid))
                .await
                .map_err(map_err)
        }
        .boxed()
    }

    fn signal(&self, pid: u32, signal: i32) -> BoxFuture<'_, AgentResult<()>> {
        async move {
            let sig = match signal {
                9 => Signal::Sigkill,
                15 => Signal::Sigterm,
                n => {
                    return Err(AgentError::InvalidArgument(format!(
                        "signal {n} cannot be sent: the agent protocol carries SIGTERM (15) and \
                         SIGKILL (9); send Ctrl-C as terminal input instead"
                    )));
                }
            };
            self.client
                .send_signal(ProcessSelector::Pid(pid), sig)
                .await
                .map_err(map_err)
        }
        .boxed()
    }

    fn resize(&self, pid: u32, cols: u16, rows: u16) -> BoxFuture<'_, AgentResult<()>> {
        let size = PtySize {
            cols: u32::from(cols),
            rows: u32::from(rows),
        };
        async move {
            self.client
                .update(ProcessSelector::Pid(pid), size)
                .await
                .map_err(map_err)
        }
        .boxed()
    }

    fn stat(&self, path: &str) -> BoxFuture<'_, AgentResult<EntryInfo>> {
        let path = path.to_string();
        async move { self.client.stat(&path).await.map(entry).map_err(map_err) }.boxed()
    }

    fn list_dir(&self, path: &str) -> BoxFuture<'_, AgentResult<Vec<EntryInfo>>> {
        let path = path.to_string();
        async move {
            let list = self.client.list_dir(&path, 1).await.map_err(map_err)?;
            Ok(list.into_iter().map(entry).collect())
        }
        .boxed()
    }

    fn read_file(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>> {
        let path = path.to_string();
        async move {
            let s = self.client.read_file(&path).await.map_err(map_err)?;
            collect(s).await
        }
        .boxed()
    }

    fn write_file(&self, path: &str, data: Bytes) -> BoxFuture<'_, AgentResult<()>> {
        let path = path.to_string();
        async move {
            self.client
                .write_file(&path, stream::once(async move { Ok(data) }))
                .await
                .map(drop)
                .map_err(map_err)
        }
        .boxed()
    }

    fn remove(&self, path: &str) -> BoxFuture<'_, AgentResult<()>> {
        let path = path.to_string();
        async move { self.client.remove(&path).await.map_err(map_err) }.boxed()
    }

    fn read_tar(&self, path: &str) -> BoxFuture<'_, AgentResult<Bytes>> {
        let path = path.to_string();
        async move {
            let s = self.client.tar_download(&path).await.map_err(map_err)?;
            collect(s).await
        }
        .boxed()
    }

    fn write_tar(&self, path: &str, tar: Bytes) -> BoxFuture<'_, AgentResult<()>> {
        let path = path.to_string();
        async move {
            self.client
                .tar_upload(&path, stream::once(async move { Ok(tar) }))
                .await
                .map_err(map_err)
        }
        .boxed()
    }
}

async fn collect(s: prism_proto::ByteStream) -> AgentResult<Bytes> {
    let buf = s
        .map_err(map_err)
        .try_fold(BytesMut::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_signal_texts_map_to_numbers() {
        assert_eq!(signal_of("signal: killed"), Some(9));
        assert_eq!(signal_of("signal: terminated"), Some(15));
        assert_eq!(signal_of("exit status 1"), None);
    }

    #[test]
    fn connect_errors_map_to_agent_errors() {
        let e = map_err(ProtoError::Rpc(prism_proto::ConnectError::new(
            Code::NotFound,
            "x",
        )));
        assert!(matches!(e, AgentError::NotFound(_)));
        let e = map_err(ProtoError::Connect(std::io::Error::other("refused")));
        assert!(matches!(e, AgentError::Unavailable(_)));
    }
}
