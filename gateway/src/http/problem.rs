//! HTTP errors: every failure is `{"error": {"code", "message"}}` with a status
//! that matches the code, so clients branch on `code` and humans read `message`.

use std::time::Duration;

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use switchboard_proto::frames::ErrorCode;
use switchboard_proto::rest::{ErrorBody, ErrorDetail};

use crate::limits::Refusal;
use crate::service::{ChatError, Engine};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::NotFound | ChatError::NotMember => {
                ApiError::not_found("no such conversation")
            }
            ChatError::NoSuchMember => ApiError::not_found("not a member of this conversation"),
            ChatError::NotPublisher => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "not a publisher of this channel",
            ),
            ChatError::Forbidden(m) => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, m)
            }
            ChatError::Invalid(m) => ApiError::bad_request(m),
            e @ ChatError::Reserved { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Reserved, e.to_string())
            }
            ChatError::AlreadyExists => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Invalid,
                "conversation already exists",
            ),
            ChatError::Unavailable { what, detail } => {
                tracing::warn!(error = %detail, engine = ?what, "engine unavailable");
                let message = match what {
                    Engine::Broker => "message broker unavailable; retry".to_string(),
                    Engine::Store => "message store unavailable; retry".to_string(),
                    // Written for the client by the service (relay mode).
                    Engine::Relay => detail,
                };
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    message,
                )
            }
            ChatError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
            }
        }
    }
}

/// A flood limit's refusal: `429 rate_limited` with `Retry-After`.
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::RateLimited,
            message: format!("{} ({})", r.message(), r.limit.as_str()),
            retry_after: Some(Duration::from_secs(r.retry_after_secs())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.as_str().to_string(),
                    message: self.message,
                },
            }),
        )
            .into_response();
        if let Some(d) = self.retry_after {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
        r
    }
}
