//! Sign-in over HTTP (`GET /v1/auth/nonce`, `POST /v1/auth/verify`) and the
//! caller of every other endpoint: `Authorization: Bearer <session token>`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use switchboard_proto::frames::ErrorCode;
use switchboard_proto::ids::Address;
use switchboard_proto::rest::{NonceResponse, VerifyRequest, VerifyResponse};
use time::format_description::well_known::Rfc3339;

use super::params::body;
use super::problem::ApiError;
use crate::service::SignInError;
use crate::state::AppRef;

/// The caller, authenticated by `Authorization: Bearer <session token>`.
pub struct Authed(pub Address);

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers)
}

/// The bearer token in `headers`, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl FromRequestParts<AppRef> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppRef) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        state
            .chat
            .verify_token(token)
            .map(Authed)
            .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))
    }
}

/// `GET /v1/auth/nonce`.
pub async fn nonce(State(state): State<AppRef>) -> Json<NonceResponse> {
    Json(NonceResponse {
        nonce: state.chat.new_nonce(),
    })
}

/// `POST /v1/auth/verify`.
pub async fn verify(
    State(state): State<AppRef>,
    b: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let b = body(b)?;
    let session = state
        .chat
        .sign_in(&b.message, &b.signature)
        .await
        .map_err(|e| match e {
            SignInError::Chat(e) => ApiError::from(e),
            refused => {
                state.metrics.error(ErrorCode::Unauthorized.as_str());
                ApiError::unauthorized(refused.to_string())
            }
        })?;
    Ok(Json(VerifyResponse {
        token: session.token,
        address: session.address,
        expires_at: session.expires_at.format(&Rfc3339).unwrap_or_default(),
    }))
}
