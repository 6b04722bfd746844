//! The host-side client of `prism-agent`: typed methods for every RPC over keep-alive HTTP/1.1
//! connections to the agent's unix socket (kept in a pool, see [`AgentPool`]), and a raw
//! pass-through on a connection of its own.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::conn_pool::{AgentPool, Http, full};
use crate::envelope::{
    self, CONTENT_TYPE_STREAM, CONTENT_TYPE_UNARY, Decoder, EndStream, EnvelopeError,
};
use crate::error::{ProtoError, parse_error_body};
use crate::filesystem::{self as fs, EntryInfo, FilesystemEvent, UploadedEntry, WatchDirResponse};
use crate::process::{self as pr, ProcessEvent, ProcessInput, ProcessSelector, PtySize, Signal};
use crate::raw_output::{self, FLAG_RAW_DATA, RAW_OUTPUT_HEADER, RAW_OUTPUT_VALUE};

/// A stream of decoded server-stream messages; ends after the end-of-stream envelope, yielding
/// its error (if any) as the last item.
pub type RpcStream<T> = BoxStream<'static, Result<T, ProtoError>>;
/// A stream of raw body bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, ProtoError>>;
/// The request body type used by the client.
pub type ClientBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Client of one agent, addressed by its unix socket path. Clones share its connections.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
    /// The pool key of the socket (its path, hex-encoded, as the URI's host).
    authority: http::uri::Authority,
    user: Option<String>,
    /// Headers added to every request ([`AgentClient::with_header`]).
    extra: http::HeaderMap,
    http: Http,
}

impl AgentClient {
    /// A client for the agent listening on `socket_path`, with a connection pool of its own;
    /// requests run as the agent's default user (root) unless [`AgentClient::with_user`] is used.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        AgentPool::default().client(socket_path)
    }

    pub(crate) fn with_http(socket: PathBuf, authority: http::uri::Authority, http: Http) -> Self {
        Self {
            socket,
            authority,
            user: None,
            extra: http::HeaderMap::new(),
            http,
        }
    }

    /// The same client, acting as `user` (sent as `Authorization: Basic base64(user:)`).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The same client, adding `name: value` to every request it sends (for example
    /// `prism-timeline: 1`, which makes the agent log its start-up timeline).
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.extra.insert(name, value);
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Sends any request unchanged, on a connection of its own, and returns the agent's response
    /// unchanged (E2B pass-through). The caller sets every header, including `Authorization`.
    pub async fn raw<B>(&self, req: Request<B>) -> Result<Response<Incoming>, ProtoError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = UnixStream::connect(&self.socket)
            .await
            .map_err(ProtoError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            // The connection's outcome is reported through the response and its body.
            let _ = conn.await;
        });
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request on a pooled keep-alive connection (a new one when none is idle; a
    /// connection that broke while idle is replaced without resending anything that reached
    /// the agent).
    pub(crate) async fn send(
        &self,
        mut req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, ProtoError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()?;
        self.http
            .request(req)
            .await
            .map_err(crate::conn_pool::client_error)
    }

    pub(crate) fn request(&self, method: Method, uri: &str) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost")
            .header("connect-protocol-version", "1");
        if let Some(user) = &self.user {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
            b = b.header(header::AUTHORIZATION, format!("Basic {token}"));
        }
        for (name, value) in &self.extra {
            b = b.header(name, value);
        }
        b
    }

    /// Calls a unary RPC `/<service>/<method>` with a JSON body.
    pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<Resp, ProtoError> {
        let body = full(Bytes::from(serde_json::to_vec(req)?));
        let req = self
            .request(Method::POST, &format!("/{service}/{method}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE_UNARY)
            .body(body)?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(parse_error_body(status.as_u16(), &bytes).into());
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Calls a server-streaming RPC and returns its messages as a stream.
    pub async fn server_stream<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
    ) -> Result<RpcStream<Resp>, ProtoError> {
        let body = full(envelope::encode_message(req)?);
        let req = self
            .request(Method::POST, &format!("/{service}/{method}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM)
            .body(body)?;
        let resp = check_status(self.send(req).await?).await?;
        Ok(decode_stream(resp.into_body()))
    }

    /// Calls a client-streaming RPC with the given messages and waits for its response.
    pub async fn client_stream<Req, Resp, S>(
        &self,
        service: &str,
        method: &str,
        messages: S,
    ) -> Result<Resp, ProtoError>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned + Send + 'static,
        S: Stream<Item = Req> + Send + 'static,
    {
        let frames = messages.map(|m| {
            envelope::encode_message(&m)
                .map(Frame::data)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        let req = self
            .request(Method::POST, &format!("/{service}/{method}"))
            .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM)
            .body(UnsyncBoxBody::new(StreamBody::new(frames)))?;
        let resp = check_status(self.send(req).await?).await?;
        let mut messages = decode_stream::<Resp>(resp.into_body());
        let mut last = None;
        while let Some(m) = messages.next().await {
            last = Some(m?);
        }
        last.ok_or(ProtoError::Truncated)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<(), ProtoError> {
        let req = self
            .request(Method::GET, "/health")
            .body(full(Bytes::new()))?;
        check_status(self.send(req).await?).await.map(drop)
    }

    // ---- process.Process ----

    /// `List`: the running processes.
    pub async fn list(&self) -> Result<Vec<pr::ProcessInfo>, ProtoError> {
        let r: pr::ListResponse = self.unary(pr::SERVICE, "List", &pr::ListRequest {}).await?;
        Ok(r.processes)
    }

    /// A `Start`/`Connect` stream, asking for raw output envelopes (see [`crate::raw_output`]).
    async fn process_events<Req: Serialize>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<RpcStream<ProcessEvent>, ProtoError> {
        let req = self
            .request(Method::POST, &format!("/{}/{method}", pr::SERVICE))
            .header(header::CONTENT_TYPE, CONTENT_TYPE_STREAM)
            .header(RAW_OUTPUT_HEADER, RAW_OUTPUT_VALUE)
            .body(full(envelope::encode_message(req)?))?;
        let resp = check_status(self.send(req).await?).await?;
        let raw = |payload| {
            raw_output::decode_raw(payload).map(|d| pr::StartResponse {
                event: ProcessEvent::Data(d),
            })
        };
        let s = decode_stream_with::<pr::StartResponse>(resp.into_body(), raw);
        Ok(s.map_ok(|r| r.event).boxed())
    }

    /// `Start`: spawns a process; the stream yields `start`, `data`…, `end` events.
    pub async fn start(
        &self,
        req: &pr::StartRequest,
    ) -> Result<RpcStream<ProcessEvent>, ProtoError> {
        self.process_events("Start", req).await
    }

    /// `Connect`: re-attaches to a running process.
    pub async fn connect(
        &self,
        process: ProcessSelector,
    ) -> Result<RpcStream<ProcessEvent>, ProtoError> {
        let req = pr::ConnectRequest {
            process: Some(process),
        };
        self.process_events("Connect", &req).await
    }

    /// `Update`: resizes a process's PTY.
    pub async fn update(&self, process: ProcessSelector, size: PtySize) -> Result<(), ProtoError> {
        let req = pr::UpdateRequest {
            process: Some(process),
            pty: Some(pr::Pty { size: Some(size) }),
        };
        self.unary::<_, pr::Empty>(pr::SERVICE, "Update", &req)
            .await
            .map(drop)
    }

    /// `SendInput`: writes to a process's stdin or PTY.
    pub async fn send_input(
        &self,
        process: ProcessSelector,
        input: ProcessInput,
    ) -> Result<(), ProtoError> {
        let req = pr::SendInputRequest {
            process: Some(process),
            input: Some(input),
        };
        self.unary::<_, pr::Empty>(pr::SERVICE, "SendInput", &req)
            .await
            .map(drop)
    }

    /// `StreamInput`: writes a stream of inputs in order, then completes.
    pub async fn stream_input<S>(
        &self,
        process: ProcessSelector,
        inputs: S,
    ) -> Result<(), ProtoError>
    where
        S: Stream<Item = ProcessInput> + Send + 'static,
    {
        let first = pr::StreamInputRequest::Start(pr::StreamInputStart {
            process: Some(process),
        });
        let rest =
            inputs.map(|i| pr::StreamInputRequest::Data(pr::StreamInputData { input: Some(i) }));
        let all = stream::iter([first]).chain(rest);
        self.client_stream::<_, pr::Empty, _>(pr::SERVICE, "StreamInput", all)
            .await
            .map(drop)
    }

    /// `SendSignal`.
    pub async fn send_signal(
        &self,
        process: ProcessSelector,
        signal: Signal,
    ) -> Result<(), ProtoError> {
        let req = pr::SendSignalRequest {
            process: Some(process),
            signal,
        };
        self.unary::<_, pr::Empty>(pr::SERVICE, "SendSignal", &req)
            .await
            .map(drop)
    }

    /// `CloseStdin`: EOF on the process's stdin pipe.
    pub async fn close_stdin(&self, process: ProcessSelector) -> Result<(), ProtoError> {
        let req = pr::CloseStdinRequest {
            process: Some(process),
        };
        self.unary::<_, pr::Empty>(pr::SERVICE, "CloseStdin", &req)
            .await
            .map(drop)
    }

    // ---- filesystem.Filesystem ----

    /// `Stat`.
    pub async fn stat(&self, path: &str) -> Result<EntryInfo, ProtoError> {
        let r: fs::EntryResponse = self
            .unary(fs::SERVICE, "Stat", &fs::PathRequest { path: path.into() })
            .await?;
        Ok(r.entry.unwrap_or_default())
    }

    /// `MakeDir` (with parents; `already_exists` if present).
    pub async fn make_dir(&self, path: &str) -> Result<EntryInfo, ProtoError> {
        let r: fs::EntryResponse = self
            .unary(
                fs::SERVICE,
                "MakeDir",
                &fs::PathRequest { path: path.into() },
            )
            .await?;
        Ok(r.entry.unwrap_or_default())
    }

    /// `Move`.
    pub async fn move_entry(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<EntryInfo, ProtoError> {
        let req = fs::MoveRequest {
            source: source.into(),
            destination: destination.into(),
        };
        let r: fs::EntryResponse = self.unary(fs::SERVICE, "Move", &req).await?;
        Ok(r.entry.unwrap_or_default())
    }

    /// `ListDir` to `depth` levels (0 means 1).
    pub async fn list_dir(&self, path: &str, depth: u32) -> Result<Vec<EntryInfo>, ProtoError> {
        let req = fs::ListDirRequest {
            path: path.into(),
            depth,
        };
        let r: fs::ListDirResponse = self.unary(fs::SERVICE, "ListDir", &req).await?;
        Ok(r.entries)
    }

    /// `Remove` (files, or directories recursively).
    pub async fn remove(&self, path: &str) -> Result<(), ProtoError> {
        let req = fs::PathRequest { path: path.into() };
        self.unary::<_, pr::Empty>(fs::SERVICE, "Remove", &req)
            .await
            .map(drop)
    }

    /// `WatchDir`: a stream starting with `start`, then `filesystem` events.
    pub async fn watch_dir(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<RpcStream<WatchDirResponse>, ProtoError> {
        let req = fs::WatchDirRequest {
            path: path.into(),
            recursive,
            include_entry: false,
        };
        self.server_stream(fs::SERVICE, "WatchDir", &req).await
    }

    /// `CreateWatcher`: returns the watcher id.
    pub async fn create_watcher(&self, path: &str, recursive: bool) -> Result<String, ProtoError> {
        let req = fs::WatchDirRequest {
            path: path.into(),
            recursive,
            include_entry: false,
        };
        let r: fs::CreateWatcherResponse = self.unary(fs::SERVICE, "CreateWatcher", &req).await?;
        Ok(r.watcher_id)
    }

    /// `GetWatcherEvents`: the events since the last call.
    pub async fn get_watcher_events(
        &self,
        watcher_id: &str,
    ) -> Result<Vec<FilesystemEvent>, ProtoError> {
        let req = fs::WatcherRequest {
            watcher_id: watcher_id.into(),
        };
        let r: fs::GetWatcherEventsResponse =
            self.unary(fs::SERVICE, "GetWatcherEvents", &req).await?;
        Ok(r.events)
    }

    /// `RemoveWatcher`.
    pub async fn remove_watcher(&self, watcher_id: &str) -> Result<(), ProtoError> {
        let req = fs::WatcherRequest {
            watcher_id: watcher_id.into(),
        };
        self.unary::<_, pr::Empty>(fs::SERVICE, "RemoveWatcher", &req)
            .await
            .map(drop)
    }

    // ---- files over REST ----

    /// `GET /files?path=`: the file's bytes, streamed.
    pub async fn read_file(&self, path: &str) -> Result<ByteStream, ProtoError> {
        let req = self
            .request(Method::GET, &path_uri("/files", path))
            .body(full(Bytes::new()))?;
        let resp = check_status(self.send(req).await?).await?;
        Ok(body_stream(resp.into_body()))
    }

    /// `POST /files?path=` with a raw body: writes the file (creating parent directories).
    pub async fn write_file<S>(&self, path: &str, body: S) -> Result<Vec<UploadedEntry>, ProtoError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let req = self
            .request(Method::POST, &path_uri("/files", path))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(stream_body(body))?;
        let resp = check_status(self.send(req).await?).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// `GET /tar?path=DIR`: a tar stream of the directory's contents.
    pub async fn tar_download(&self, path: &str) -> Result<ByteStream, ProtoError> {
        let req = self
            .request(Method::GET, &path_uri("/tar", path))
            .body(full(Bytes::new()))?;
        let resp = check_status(self.send(req).await?).await?;
        Ok(body_stream(resp.into_body()))
    }

    /// `PUT /tar?path=DIR`: unpacks a tar stream into the directory (created if missing).
    pub async fn tar_upload<S>(&self, path: &str, body: S) -> Result<(), ProtoError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let req = self
            .request(Method::PUT, &path_uri("/tar", path))
            .header(header::CONTENT_TYPE, "application/x-tar")
            .body(stream_body(body))?;
        check_status(self.send(req).await?).await.map(drop)
    }
}

fn path_uri(base: &str, path: &str) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("path", path)
        .finish();
    format!("{base}?{q}")
}

/// Turns a non-success response into its error.
pub(crate) async fn check_status(
    resp: Response<Incoming>,
) -> Result<Response<Incoming>, ProtoError> {
    let status = resp.status();
    if status.is_success() || status == StatusCode::NO_CONTENT {
        return Ok(resp);
    }
    let bytes = resp.into_body().collect().await?.to_bytes();
    Err(parse_error_body(status.as_u16(), &bytes).into())
}

pub(crate) fn body_stream(body: Incoming) -> ByteStream {
    stream::unfold(Some(body), |state| async move {
        let mut body = state?;
        loop {
            match body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Some((Ok(data), Some(body)));
                    }
                }
                Err(e) => return Some((Err(ProtoError::Http(e)), None)),
            }
        }
    })
    .boxed()
}

struct DecodeState<T> {
    body: Incoming,
    decoder: Decoder,
    raw: fn(Bytes) -> Option<T>,
}

/// Decodes a Connect streaming response body into messages.
fn decode_stream<T: DeserializeOwned + Send + 'static>(body: Incoming) -> RpcStream<T> {
    decode_stream_with(body, |_| None)
}

/// [`decode_stream`], with raw output envelopes turned into messages by `raw` (`None`: an
/// envelope nobody asked for, which ends the stream with an error).
fn decode_stream_with<T: DeserializeOwned + Send + 'static>(
    body: Incoming,
    raw: fn(Bytes) -> Option<T>,
) -> RpcStream<T> {
    let state = DecodeState {
        body,
        decoder: Decoder::default(),
        raw,
    };
    stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            match st.decoder.next_envelope() {
                Err(e) => return Some((Err(e.into()), None)),
                Ok(Some(env)) if env.is_end_stream() => {
                    let end: EndStream = match serde_json::from_slice(&env.data) {
                        Ok(end) => end,
                        Err(e) => return Some((Err(e.into()), None)),
                    };
                    return end.error.map(|e| (Err(ProtoError::Rpc(e)), None));
                }
                Ok(Some(env)) if env.flags & FLAG_RAW_DATA != 0 => {
                    return Some(match (st.raw)(env.data) {
                        Some(item) => (Ok(item), Some(st)),
                        None => (Err(EnvelopeError::UnexpectedRaw.into()), None),
                    });
                }
                Ok(Some(env)) => {
                    let item = serde_json::from_slice::<T>(&env.data).map_err(ProtoError::from);
                    return Some((item, Some(st)));
                }
                Ok(None) => {}
            }
            match st.body.frame().await {
                None => return Some((Err(ProtoError::Truncated), None)),
                Some(Err(e)) => return Some((Err(ProtoError::Http(e)), None)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        st.decoder.push(&data);
                    }
                }
            }
        }
    })
    .boxed()
}

/// Boxes any byte stream as a [`ClientBody`], for [`AgentClient::raw`].
pub fn stream_body<S>(s: S) -> ClientBody
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    UnsyncBoxBody::new(StreamBody::new(s.map_ok(Frame::data)))
}
