//! Errors of the SDK: transport failures, the server's typed HTTP errors,
//! rejected sends and the end of a session.

use switchboard_proto::frames::ErrorCode;

/// Everything that can go wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL cannot be used (not `http://` or `https://`, or malformed).
    #[error("invalid server URL {0:?}: expected http://host:port")]
    InvalidUrl(String),
    /// The HTTP request failed before an answer arrived (connection refused,
    /// timeout, unreadable body).
    #[error("HTTP request failed: {0}")]
    Http(String),
    /// TLS could not be set up or the handshake failed: an untrusted or
    /// invalid certificate, or an unreadable CA file. Not transient.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered an HTTP request with an error status and its
    /// `{"error": {"code", "message"}}` body.
    #[error("server answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The WebSocket could not be opened or failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The server refused the session token (close code 4001): sign in again.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The server rejected a `send` for good (`forbidden`, `bad_frame`, ...).
    #[error("rejected ({}): {message}", code.as_str())]
    Rejected { code: ErrorCode, message: String },
    /// A message body larger than the protocol allows; it is never sent.
    #[error("message frame is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// The request needs a live connection (e.g. `ping`) and there is none.
    #[error("not connected")]
    NotConnected,
    /// The client was closed (or its connection task ended).
    #[error("client closed")]
    Closed,
    /// The server sent something that does not follow protocol v1.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http(_) | ClientError::WebSocket(_) | ClientError::NotConnected => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}
