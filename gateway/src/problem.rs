//! HTTP errors: every failure is `{"error": {"code", "message"}}` with a status
//! that matches the code, so clients branch on `code` and humans read `message`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchboard_core::broker::BrokerError;
use switchboard_core::protocol::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotMember => ApiError::not_found("no such conversation"),
            BrokerError::NotPublisher => ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "not a publisher of this channel",
            ),
            BrokerError::AlreadyExists => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Invalid,
                "conversation already exists",
            ),
            BrokerError::Unavailable(m) => {
                tracing::warn!(error = %m, "broker unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "message broker unavailable; retry",
                )
            }
            BrokerError::Unseeded(_) => {
                tracing::error!("a send reached the REST layer unseeded");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
            }
            BrokerError::Corrupt(m) => {
                tracing::error!(error = %m, "broker data corrupt");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code.as_str(), "message": self.message}})),
        )
            .into_response()
    }
}
