//! The HTTP layer: routing, Connect framing (unary JSON, enveloped streams), and the request's
//! user. Handlers parse, call one service function, and map the result.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use prism_proto::envelope::{self, CONTENT_TYPE_STREAM, CONTENT_TYPE_UNARY, Decoder};
use prism_proto::filesystem as fsp;
use prism_proto::process::{self as pr, ProcessEvent, ProcessSelector};
use prism_proto::{Code, ConnectError, raw_output};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::process::{Processes, event_stream};
use crate::users::{Accounts, User};
use crate::watch::Watchers;
use crate::{files, fsops};

/// Response body type.
pub type RespBody = UnsyncBoxBody<Bytes, std::io::Error>;
/// Largest unary request body.
const MAX_UNARY: usize = 16 << 20;
/// Keepalive interval on idle server streams.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Body of `POST /init` (envd's): the sandbox's environment variables. envd's other fields
/// (access token, default user, timestamp) are accepted and ignored.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitRequest {
    #[serde(default)]
    env_vars: std::collections::BTreeMap<String, String>,
}

/// Shared state of the agent.
pub struct App {
    pub processes: Arc<Processes>,
    pub watchers: Arc<Watchers>,
    pub accounts: Accounts,
    pub contexts: Arc<crate::code::Contexts>,
    /// The sandbox-wide environment (`POST /init`).
    pub env: Arc<crate::env::BaseEnv>,
}

/// The hyper service function.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match route(&app, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, code = %e.code, message = %e.message, "request failed");
            error_response(&e)
        }
    };
    Ok(resp)
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<RespBody>, ConnectError> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(empty(StatusCode::NO_CONTENT)),
        (&Method::POST, "/init") => {
            let init: InitRequest = read_message(req).await?;
            app.env.set(&init.env_vars);
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, "/files") => files::download(app, req).await,
        (&Method::POST, "/files") => files::upload(app, req).await,
        (&Method::GET, "/tar") => files::tar_download(app, req).await,
        (&Method::PUT, "/tar") | (&Method::POST, "/tar") => files::tar_upload(app, req).await,
        (&Method::GET, p) if p.starts_with(prism_proto::ports::PATH_PREFIX) => {
            crate::ports::open(req).await
        }
        (_, p) if p.starts_with("/code/") => crate::code::http::route(app, req).await,
        (&Method::POST, p) => {
            let Some((service, method)) = p.trim_start_matches('/').split_once('/') else {
                return Err(unimplemented(p));
            };
            rpc(app, service, method, req).await
        }
        _ => Err(ConnectError::new(
            Code::NotFound,
            format!("no route for {path}"),
        )),
    }
}

fn unimplemented(path: &str) -> ConnectError {
    ConnectError::new(Code::Unimplemented, format!("{path} is not implemented"))
}

async fn rpc(
    app: &Arc<App>,
    service: &str,
    method: &str,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ConnectError> {
    let user = request_user(&app.accounts, &req);
    let streaming = is_stream(&req);
    let raw = wants_raw_output(&req);
    let timeline = req
        .headers()
        .get(crate::timeline::HEADER)
        .is_some_and(|v| v == "1");
    match (service, method) {
        (pr::SERVICE, "Start") => {
            let started = async {
                let user = user?;
                let msg: pr::StartRequest = read_message(req).await?;
                crate::timeline::mark(crate::timeline::Mark::Parsed);
                // Spawning is synchronous: the pid is registered with the reaper before we yield.
                let started = app.processes.start(msg, &user);
                crate::timeline::mark(crate::timeline::Mark::Spawned);
                started
            }
            .await;
            Ok(match started {
                Ok(s) => process_stream(s.pid, s.events, raw, timeline),
                Err(e) => stream_error(e),
            })
        }
        (pr::SERVICE, "Connect") => {
            let attached = async {
                let msg: pr::ConnectRequest = read_message(req).await?;
                app.processes.connect(&selector(msg.process)?)
            }
            .await;
            Ok(match attached {
                Ok((pid, sub)) => process_stream(pid, sub, raw, false),
                Err(e) => stream_error(e),
            })
        }
        (pr::SERVICE, "StreamInput") => Ok(stream_input(app, req).await),
        (pr::SERVICE, "List") => {
            let _: pr::ListRequest = read_message(req).await?;
            reply(
                streaming,
                &pr::ListResponse {
                    processes: app.processes.list(),
                },
            )
        }
        (pr::SERVICE, "Update") => {
            let msg: pr::UpdateRequest = read_message(req).await?;
            let size = msg.pty.and_then(|p| p.size).unwrap_or_default();
            app.processes.resize(&selector(msg.process)?, size)?;
            reply(streaming, &pr::Empty {})
        }
        (pr::SERVICE, "SendInput") => {
            let msg: pr::SendInputRequest = read_message(req).await?;
            let sel = selector(msg.process)?;
            let input = msg
                .input
                .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "input is missing"))?;
            app.processes.send_input(&sel, &input).await?;
            reply(streaming, &pr::Empty {})
        }
        (pr::SERVICE, "SendSignal") => {
            let msg: pr::SendSignalRequest = read_message(req).await?;
            app.processes
                .send_signal(&selector(msg.process)?, msg.signal)?;
            reply(streaming, &pr::Empty {})
        }
        (pr::SERVICE, "CloseStdin") => {
            let msg: pr::CloseStdinRequest = read_message(req).await?;
            app.processes.close_stdin(&selector(msg.process)?).await?;
            reply(streaming, &pr::Empty {})
        }
        (fsp::SERVICE, "WatchDir") => {
            let watching = async {
                let user = user?;
                let msg: fsp::WatchDirRequest = read_message(req).await?;
                app.watchers.watch_stream(&msg, &user, &app.accounts)
            }
            .await;
            Ok(match watching {
                Ok(events) => {
                    let start =
                        futures_util::stream::iter([fsp::WatchDirResponse::Start(pr::Empty {})]);
                    stream_response(start.chain(events).map(|ev| encode(&ev)))
                }
                Err(e) => stream_error(e),
            })
        }
        (fsp::SERVICE, "CreateWatcher") => {
            let user = user?;
            let msg: fsp::CreateWatcherRequest = read_message(req).await?;
            let id = app.watchers.create(&msg, &user, &app.accounts)?;
            reply(streaming, &fsp::CreateWatcherResponse { watcher_id: id })
        }
        (fsp::SERVICE, "GetWatcherEvents") => {
            let msg: fsp::WatcherRequest = read_message(req).await?;
            let events = app.watchers.drain(&msg.watcher_id)?;
            reply(streaming, &fsp::GetWatcherEventsResponse { events })
        }
        (fsp::SERVICE, "RemoveWatcher") => {
            let msg: fsp::WatcherRequest = read_message(req).await?;
            app.watchers.remove(&msg.watcher_id)?;
            reply(streaming, &pr::Empty {})
        }
        (fsp::SERVICE, m @ ("Stat" | "MakeDir" | "Move" | "ListDir" | "Remove")) => {
            let user = user?;
            let body = read_body(req).await?;
            let m = m.to_string();
            let accounts = app.accounts.clone();
            let out = tokio::task::spawn_blocking(move || {
                fsops::dispatch(&m, &body, streaming, &user, &accounts)
            })
            .await
            .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))??;
            reply_raw(streaming, out)
        }
        _ => Err(unimplemented(&format!("/{service}/{method}"))),
    }
}

fn stream_error(e: ConnectError) -> Response<RespBody> {
    stream_response(futures_util::stream::iter([Err(e)]))
}

fn selector(sel: Option<ProcessSelector>) -> Result<ProcessSelector, ConnectError> {
    sel.ok_or_else(|| ConnectError::new(Code::InvalidArgument, "process selector is missing"))
}

/// `timeline`: write the agent's timeline (`crate::timeline`) just before the end is sent.
fn process_stream(
    pid: u32,
    sub: crate::process::Subscription,
    raw: bool,
    timeline: bool,
) -> Response<RespBody> {
    let first = ProcessEvent::Start(pr::StartEvent { pid });
    let events = event_stream(Some(first), sub, KEEPALIVE);
    stream_response(events.flat_map(move |event| {
        if matches!(event, ProcessEvent::End(_)) {
            crate::timeline::mark(crate::timeline::Mark::EndSent);
            if timeline {
                crate::timeline::write();
            }
        }
        futures_util::stream::iter(frame_event(event, raw))
    }))
}

/// The body chunks of one process event: a JSON envelope, or (raw output asked for) the raw
/// envelope's header followed by the output bytes as they were read, uncopied.
fn frame_event(event: ProcessEvent, raw: bool) -> Vec<Result<Bytes, ConnectError>> {
    match event {
        ProcessEvent::Data(data) if raw => {
            let header = raw_output::raw_header(&data);
            let bytes = data.bytes().clone();
            if bytes.is_empty() {
                vec![Ok(header)]
            } else {
                vec![Ok(header), Ok(bytes)]
            }
        }
        event => vec![encode(&pr::StartResponse { event })],
    }
}

/// Whether the client asked for raw output envelopes (prismd does; E2B SDKs do not).
fn wants_raw_output(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(raw_output::RAW_OUTPUT_HEADER)
        .is_some_and(|v| v == raw_output::RAW_OUTPUT_VALUE)
}

/// `StreamInput`: the first message selects the process, the rest are written in order.
async fn stream_input(app: &Arc<App>, req: Request<Incoming>) -> Response<RespBody> {
    let mut body = req.into_body();
    let mut decoder = Decoder::default();
    let mut target: Option<ProcessSelector> = None;
    let result: Result<(), ConnectError> = async {
        loop {
            while let Some(env) = decoder.next_envelope().map_err(invalid)? {
                let msg: pr::StreamInputRequest =
                    serde_json::from_slice(&env.data).map_err(invalid)?;
                match msg {
                    pr::StreamInputRequest::Start(s) => target = Some(selector(s.process)?),
                    pr::StreamInputRequest::Data(d) => {
                        let sel = target.as_ref().ok_or_else(|| {
                            ConnectError::new(
                                Code::FailedPrecondition,
                                "data before the start message",
                            )
                        })?;
                        if let Some(input) = d.input {
                            app.processes.send_input(sel, &input).await?;
                        }
                    }
                    pr::StreamInputRequest::Keepalive(_) => {}
                }
            }
            match body.frame().await {
                None => return decoder.finish().map_err(invalid),
                Some(Err(e)) => return Err(ConnectError::new(Code::Canceled, e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        decoder.push(&d);
                    }
                }
            }
        }
    }
    .await;
    let items = match result {
        Ok(()) => vec![encode(&pr::Empty {})],
        Err(e) => vec![Err(e)],
    };
    stream_response(futures_util::stream::iter(items))
}

fn invalid(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, e.to_string())
}

fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ConnectError> {
    envelope::encode_message(msg).map_err(|e| ConnectError::new(Code::Internal, e.to_string()))
}

fn is_stream(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(CONTENT_TYPE_STREAM))
}

/// Reads a whole (bounded) request body.
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, ConnectError> {
    let streaming = is_stream(&req);
    let body = Limited::new(req.into_body(), MAX_UNARY)
        .collect()
        .await
        .map_err(|e| ConnectError::new(Code::ResourceExhausted, format!("request body: {e}")))?
        .to_bytes();
    if !streaming {
        return Ok(body);
    }
    let mut d = Decoder::new(MAX_UNARY);
    d.push(&body);
    match d.next_envelope().map_err(invalid)? {
        Some(env) => Ok(env.data),
        None => Err(ConnectError::new(
            Code::InvalidArgument,
            "missing request message",
        )),
    }
}

/// Parses one request message (unary JSON, or a single envelope for streaming calls).
pub fn parse_message<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ConnectError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| invalid(format!("invalid request message: {e}")))
}

async fn read_message<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ConnectError> {
    parse_message(&read_body(req).await?)
}

fn reply<T: Serialize>(streaming: bool, msg: &T) -> Result<Response<RespBody>, ConnectError> {
    let json =
        serde_json::to_vec(msg).map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?;
    reply_raw(streaming, json)
}

fn reply_raw(streaming: bool, json: Vec<u8>) -> Result<Response<RespBody>, ConnectError> {
    if streaming {
        let msg = envelope::encode(0, &json);
        return Ok(stream_response(futures_util::stream::iter([Ok(msg)])));
    }
    Ok(bytes_response(
        StatusCode::OK,
        CONTENT_TYPE_UNARY,
        Bytes::from(json),
    ))
}

/// A Connect streaming response: the messages, then the end-of-stream envelope (carrying the
/// first error, which also ends the stream).
pub fn stream_response<S>(messages: S) -> Response<RespBody>
where
    S: Stream<Item = Result<Bytes, ConnectError>> + Send + 'static,
{
    let frames = messages
        .map(Some)
        .chain(futures_util::stream::iter([None]))
        .scan(false, |done, item| {
            let out = match (*done, item) {
                (true, _) => None,
                (false, Some(Ok(b))) => Some(b),
                (false, Some(Err(e))) => {
                    *done = true;
                    Some(envelope::encode_end(Some(&e)))
                }
                (false, None) => {
                    *done = true;
                    Some(envelope::encode_end(None))
                }
            };
            futures_util::future::ready(out)
        })
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
    let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_STREAM),
    );
    resp
}

/// A complete response.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<RespBody> {
    let mut resp = Response::new(UnsyncBoxBody::new(Full::new(body).map_err(|e| match e {})));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn empty(status: StatusCode) -> Response<RespBody> {
    let mut resp = Response::new(UnsyncBoxBody::new(
        Full::new(Bytes::new()).map_err(|e| match e {}),
    ));
    *resp.status_mut() = status;
    resp
}

/// A unary Connect error: the code's HTTP status and `{"code","message"}`.
pub fn error_response(e: &ConnectError) -> Response<RespBody> {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    bytes_response(status, CONTENT_TYPE_UNARY, Bytes::from(e.to_json()))
}

/// The request's user: `Authorization: Basic base64(user:)` (as envd and the E2B SDK do), else
/// the `username` query parameter (envd's `/files`), else `root`.
pub fn request_user<B>(accounts: &Accounts, req: &Request<B>) -> Result<User, ConnectError> {
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .map(|s| s.split(':').next().unwrap_or_default().to_string())
        .filter(|s| !s.is_empty());
    let name = from_header
        .or_else(|| query_param(req.uri(), "username"))
        .unwrap_or_else(|| "root".to_string());
    accounts.lookup(&name)
}

/// A query parameter's decoded value.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
