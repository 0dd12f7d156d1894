//! Ably `ErrorInfo` answers: `{"error": {"code", "statusCode", "message",
//! "href"}}` with the content type and headers Ably clients read.

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::Refusal;
use crate::service::{ChatError, Engine};

/// The body of an Ably error answer.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfoBody {
    pub error: ErrorInfo,
}

/// Ably's `ErrorInfo`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    /// Ably's error code: 40000 bad request, 40009 too large, 40101 bad
    /// credentials, 40160 not allowed on this channel, 42910 rate limited,
    /// 50000 internal, 50003 unavailable.
    pub code: u32,
    /// The HTTP status.
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    pub message: String,
    pub href: String,
}

/// An Ably `ErrorInfo` answer.
#[derive(Debug)]
pub struct AblyError {
    code: u32,
    status: StatusCode,
    message: String,
    /// Sent as `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

impl AblyError {
    pub(super) fn new(code: u32, status: StatusCode, message: impl Into<String>) -> Self {
        AblyError {
            code,
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(40000, StatusCode::BAD_REQUEST, message)
    }
    pub(super) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(40101, StatusCode::UNAUTHORIZED, message)
    }
    pub(super) fn refused(message: impl Into<String>) -> Self {
        Self::new(40160, StatusCode::UNAUTHORIZED, message)
    }
}

impl From<ChatError> for AblyError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::NotMember | ChatError::NotPublisher => {
                AblyError::refused("the key is not allowed to publish to this channel")
            }
            ChatError::Unavailable { what, detail } => {
                tracing::warn!(error = %detail, engine = ?what, "engine unavailable");
                let message = match what {
                    Engine::Broker => "message broker unavailable; retry".to_string(),
                    Engine::Store => "message history unavailable; retry".to_string(),
                    // Written for the client by the service (relay mode).
                    Engine::Relay => detail,
                };
                AblyError::new(50003, StatusCode::SERVICE_UNAVAILABLE, message)
            }
            ChatError::Invalid(m) => AblyError::bad_request(m),
            // Ably's "operation not permitted with provided capability".
            e @ ChatError::Reserved { .. } => AblyError::refused(e.to_string()),
            other => {
                tracing::error!(error = %other, "ably endpoint failed");
                AblyError::new(50000, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// A flood limit's refusal: Ably's 42910 (rate limit exceeded), HTTP 429,
/// with `Retry-After`.
impl From<Refusal> for AblyError {
    fn from(r: Refusal) -> Self {
        AblyError {
            code: 42910,
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("{} ({})", r.message(), r.limit.as_str()),
            retry_after: Some(r.retry_after_secs()),
        }
    }
}

impl IntoResponse for AblyError {
    fn into_response(self) -> Response {
        let body = ErrorInfoBody {
            error: ErrorInfo {
                code: self.code,
                status_code: self.status.as_u16(),
                message: self.message.clone(),
                href: format!("https://help.ably.io/error/{}", self.code),
            },
        };
        let text = serde_json::to_string(&body).unwrap_or_default();
        let mut r = (self.status, text).into_response();
        let h = r.headers_mut();
        // Ably clients read the body only for exactly this content type.
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-ably-errorcode", HeaderValue::from(self.code));
        if let Some(secs) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Ok(v) = HeaderValue::from_str(&self.message) {
            h.insert("x-ably-errormessage", v);
        }
        r
    }
}
