//! [`AgentClient`] methods of the code-context service (`/code/…`, see [`crate::code`]).

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::{Method, header};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{AgentClient, body_stream, check_status};
use crate::code::{CodeEvent, ContextInfo, CreateContext, Invoke, InvokeResult, RunCode};
use crate::conn_pool::full;
use crate::envelope::CONTENT_TYPE_UNARY;
use crate::error::ProtoError;

/// The events of a run, as they arrive.
pub type CodeEvents = BoxStream<'static, Result<CodeEvent, ProtoError>>;

impl AgentClient {
    async fn code_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Req>,
    ) -> Result<Resp, ProtoError> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = self
            .request(method, uri)
            .header(header::CONTENT_TYPE, CONTENT_TYPE_UNARY)
            .body(full(bytes))?;
        let resp = check_status(self.send(req).await?).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        Ok(serde_json::from_slice(text)?)
    }

    /// `POST /code/contexts`.
    pub async fn create_context(&self, req: &CreateContext) -> Result<ContextInfo, ProtoError> {
        self.code_call(Method::POST, "/code/contexts", Some(req))
            .await
    }

    /// `GET /code/contexts`.
    pub async fn list_contexts(&self) -> Result<Vec<ContextInfo>, ProtoError> {
        self.code_call::<(), _>(Method::GET, "/code/contexts", None)
            .await
    }

    /// `DELETE /code/contexts/{id}`.
    pub async fn delete_context(&self, id: &str) -> Result<(), ProtoError> {
        let uri = format!("/code/contexts/{}", encode(id));
        self.code_call::<(), serde_json::Value>(Method::DELETE, &uri, None)
            .await
            .map(drop)
    }

    /// `POST /code/contexts/{id}/restart`: a fresh driver, state dropped.
    pub async fn restart_context(&self, id: &str) -> Result<ContextInfo, ProtoError> {
        let uri = format!("/code/contexts/{}/restart", encode(id));
        self.code_call::<(), _>(Method::POST, &uri, None).await
    }

    /// `POST /code/contexts/{id}/interrupt`: SIGINT to the running code.
    pub async fn interrupt_context(&self, id: &str) -> Result<(), ProtoError> {
        let uri = format!("/code/contexts/{}/interrupt", encode(id));
        self.code_call::<(), serde_json::Value>(Method::POST, &uri, None)
            .await
            .map(drop)
    }

    /// `POST /code/run`: the run's events, ending with `end`.
    pub async fn run_code(&self, req: &RunCode) -> Result<CodeEvents, ProtoError> {
        let req = self
            .request(Method::POST, "/code/run")
            .header(header::CONTENT_TYPE, CONTENT_TYPE_UNARY)
            .body(full(Bytes::from(serde_json::to_vec(req)?)))?;
        let resp = check_status(self.send(req).await?).await?;
        Ok(ndjson(body_stream(resp.into_body())))
    }

    /// `POST /code/invoke`.
    pub async fn invoke(&self, req: &Invoke) -> Result<InvokeResult, ProtoError> {
        self.code_call(Method::POST, "/code/invoke", Some(req))
            .await
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Splits a byte stream into JSON lines.
fn ndjson(bytes: BoxStream<'static, Result<Bytes, ProtoError>>) -> CodeEvents {
    stream::unfold(
        (bytes, BytesMut::new(), false),
        |(mut bytes, mut buf, done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(i + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let ev = serde_json::from_slice(&line).map_err(ProtoError::from);
                    return Some((ev, (bytes, buf, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(e), (bytes, buf, true))),
                    None => {
                        if buf.iter().all(u8::is_ascii_whitespace) {
                            return None;
                        }
                        buf.extend_from_slice(b"\n");
                        return Some((Err(ProtoError::Truncated), (bytes, BytesMut::new(), true)));
                    }
                }
            }
        },
    )
    .boxed()
}
