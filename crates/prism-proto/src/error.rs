//! Connect error codes, the `{code, message}` error body, and the client's error type.

use serde::{Deserialize, Serialize};

/// A Connect error code (the gRPC status codes, by their Connect names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The Connect name, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::Unknown => "unknown",
            Self::InvalidArgument => "invalid_argument",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Aborted => "aborted",
            Self::OutOfRange => "out_of_range",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DataLoss => "data_loss",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (Connect protocol specification).
    pub fn http_status(self) -> u16 {
        match self {
            Self::Canceled => 499,
            Self::Unknown | Self::Internal | Self::DataLoss => 500,
            Self::InvalidArgument | Self::FailedPrecondition | Self::OutOfRange => 400,
            Self::DeadlineExceeded => 504,
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Aborted => 409,
            Self::PermissionDenied => 403,
            Self::ResourceExhausted => 429,
            Self::Unimplemented => 501,
            Self::Unavailable => 503,
            Self::Unauthenticated => 401,
        }
    }

    /// The code a client infers from an HTTP status when the body carries none.
    pub fn from_http_status(status: u16) -> Self {
        match status {
            400 => Self::Internal,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::Unimplemented,
            408 | 499 => Self::Canceled,
            429 | 502..=504 => Self::Unavailable,
            _ => Self::Unknown,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON error body: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    pub code: Code,
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    /// Builds an error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Serialises the error as its JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"code":"internal"}"#.to_vec())
    }
}

/// Errors of the host-side client.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The agent answered with a Connect (or envd REST) error.
    #[error("agent error: {0}")]
    Rpc(#[from] ConnectError),
    /// The agent's socket could not be reached.
    #[error("cannot connect to the agent socket")]
    Connect(#[source] std::io::Error),
    /// An HTTP-level failure on the connection.
    #[error("HTTP exchange with the agent failed")]
    Http(#[from] hyper::Error),
    /// A pooled call failed before a response arrived (the connection broke).
    #[error("HTTP exchange with the agent failed")]
    Client(#[source] hyper_util::client::legacy::Error),
    /// The request could not be built.
    #[error("invalid request")]
    Request(#[from] http::Error),
    /// A message did not parse.
    #[error("malformed JSON message")]
    Json(#[from] serde_json::Error),
    /// The streaming framing was broken.
    #[error("malformed stream")]
    Envelope(#[from] crate::envelope::EnvelopeError),
    /// A body stream given to the client failed.
    #[error("request body failed")]
    Body(#[source] std::io::Error),
    /// The stream ended without its end-of-stream message.
    #[error("stream ended early")]
    Truncated,
}

impl ProtoError {
    /// The Connect code of the error (transport failures map to `unavailable`/`internal`).
    pub fn code(&self) -> Code {
        match self {
            Self::Rpc(e) => e.code,
            Self::Connect(_) | Self::Http(_) | Self::Client(_) | Self::Truncated => {
                Code::Unavailable
            }
            Self::Request(_) | Self::Json(_) | Self::Envelope(_) | Self::Body(_) => Code::Internal,
        }
    }
}

/// Parses an error body: Connect's `{"code":"not_found",...}` or envd REST's
/// `{"code":404,"message":...}`; falls back to the HTTP status.
pub fn parse_error_body(status: u16, body: &[u8]) -> ConnectError {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        code: serde_json::Value,
        #[serde(default)]
        message: String,
    }
    let fallback = Code::from_http_status(status);
    match serde_json::from_slice::<Loose>(body) {
        Ok(l) => {
            let code = match &l.code {
                serde_json::Value::String(s) => {
                    serde_json::from_value(serde_json::Value::String(s.clone())).unwrap_or(fallback)
                }
                serde_json::Value::Number(n) => rest_code(
                    n.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(status),
                ),
                _ => rest_code(status),
            };
            ConnectError::new(code, l.message)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body).trim().to_string();
            ConnectError::new(rest_code(status), text)
        }
    }
}

/// The code for a REST (non-Connect) HTTP status.
fn rest_code(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        507 => Code::ResourceExhausted,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape() {
        let e = ConnectError::new(Code::NotFound, "no such file");
        assert_eq!(
            String::from_utf8(e.to_json()).ok().as_deref(),
            Some(r#"{"code":"not_found","message":"no such file"}"#)
        );
        assert_eq!(Code::FailedPrecondition.http_status(), 400);
        assert_eq!(Code::DeadlineExceeded.http_status(), 504);
    }

    #[test]
    fn parses_connect_and_rest_errors() {
        let e = parse_error_body(409, br#"{"code":"already_exists","message":"x"}"#);
        assert_eq!(e.code, Code::AlreadyExists);
        let e = parse_error_body(404, br#"{"code":404,"message":"missing"}"#);
        assert_eq!((e.code, e.message.as_str()), (Code::NotFound, "missing"));
        let e = parse_error_body(503, b"oops");
        assert_eq!(e.code, Code::Unavailable);
    }
}
