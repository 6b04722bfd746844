//! The client side of the streamed-exec WebSocket ([`prism_types::ws`]).

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prism_types::ws::{
    ClientMessage, ExecStart, STREAM_STDERR, STREAM_STDOUT, ServerEvent, SignalSpec,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::{Client, ClientError, Result};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Event(ServerEvent),
}

/// A streamed exec in progress (already started: [`ExecWs::pid`]).
#[derive(Debug)]
pub struct ExecWs {
    socket: Socket,
    pid: u32,
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::WebSocket(Box::new(e))
}

impl ExecWs {
    pub(crate) async fn connect(client: &Client, url: Url, start: &ExecStart) -> Result<Self> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.as_str().into_client_request().map_err(ws_err)?;
        if let Some(key) = client.api_key()
            && let Ok(v) = format!("Bearer {key}").parse()
        {
            request.headers_mut().insert("authorization", v);
        }
        let (mut socket, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(s) => s,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                let error = serde_json::from_slice(&body).unwrap_or_else(|_| {
                    prism_types::ApiError::new("http_error", String::from_utf8_lossy(&body))
                });
                return Err(ClientError::Api { status, error });
            }
            Err(tokio_tungstenite::tungstenite::Error::Io(e)) => {
                return Err(ClientError::Protocol(format!(
                    "cannot reach prismd at {}: is it running? start it with `prismd` (see \
                     README) ({e})",
                    client.base_url()
                )));
            }
            Err(e) => return Err(ws_err(e)),
        };
        let text =
            serde_json::to_string(start).map_err(|e| ClientError::Protocol(e.to_string()))?;
        socket
            .send(Message::Text(text.into()))
            .await
            .map_err(ws_err)?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) => {
                    match serde_json::from_str::<ServerEvent>(t.as_str()) {
                        Ok(ServerEvent::Started { pid }) => return Ok(ExecWs { socket, pid }),
                        Ok(ServerEvent::Error { code, message }) => {
                            return Err(ClientError::Api {
                                status: 0,
                                error: prism_types::ApiError { code, message },
                            });
                        }
                        _ => return Err(ClientError::Protocol(format!("unexpected frame {t}"))),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => {
                    return Err(ClientError::Protocol(format!("unexpected frame {other:?}")));
                }
                Some(Err(e)) => return Err(ws_err(e)),
                None => return Err(ClientError::Protocol("closed before start".into())),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Split into a sender (stdin, controls) and a receiver (output, exit).
    pub fn split(self) -> (ExecWsSender, ExecWsReceiver) {
        let (sink, stream) = self.socket.split();
        (ExecWsSender { sink }, ExecWsReceiver { stream })
    }
}

/// Sends stdin and controls.
#[derive(Debug)]
pub struct ExecWsSender {
    sink: SplitSink<Socket, Message>,
}

impl ExecWsSender {
    pub async fn stdin(&mut self, data: impl Into<Bytes>) -> Result<()> {
        self.sink
            .send(Message::Binary(data.into()))
            .await
            .map_err(ws_err)
    }

    async fn control(&mut self, msg: &ClientMessage) -> Result<()> {
        let text = serde_json::to_string(msg).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.sink
            .send(Message::Text(text.into()))
            .await
            .map_err(ws_err)
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.control(&ClientMessage::Resize { cols, rows }).await
    }

    pub async fn signal(&mut self, signal: i32) -> Result<()> {
        self.control(&ClientMessage::Signal {
            signal: SignalSpec::Number(signal),
        })
        .await
    }

    pub async fn eof(&mut self) -> Result<()> {
        self.control(&ClientMessage::Eof).await
    }

    pub async fn close(&mut self) -> Result<()> {
        self.sink.send(Message::Close(None)).await.map_err(ws_err)
    }
}

/// Receives output and the exit event.
#[derive(Debug)]
pub struct ExecWsReceiver {
    stream: SplitStream<Socket>,
}

impl ExecWsReceiver {
    /// The next output chunk or event; `None` once the server closed.
    pub async fn next(&mut self) -> Option<Result<WsEvent>> {
        loop {
            let msg = match self.stream.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(ws_err(e))),
            };
            match msg {
                Message::Binary(b) if !b.is_empty() => {
                    let data = b.slice(1..);
                    return Some(Ok(match b[0] {
                        STREAM_STDERR => WsEvent::Stderr(data),
                        STREAM_STDOUT => WsEvent::Stdout(data),
                        _ => WsEvent::Stdout(data),
                    }));
                }
                Message::Text(t) => {
                    return Some(
                        serde_json::from_str(t.as_str())
                            .map(WsEvent::Event)
                            .map_err(|e| ClientError::Protocol(e.to_string())),
                    );
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}
