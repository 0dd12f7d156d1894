//! Sign-in over HTTP (`GET /v1/auth/nonce`, `POST /v1/auth/verify`),
//! sign-out everywhere (`POST /v1/auth/revoke`, and an operator's
//! `POST /v1/users/{address}/revoke`) and the caller of every other
//! endpoint: `Authorization: Bearer <session token>`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use switchboard_proto::frames::ErrorCode;
use switchboard_proto::ids::Address;
use switchboard_proto::rest::{NonceResponse, VerifyRequest, VerifyResponse};
use time::format_description::well_known::Rfc3339;

use super::params::body;
use super::problem::ApiError;
use crate::keys::ApiKey;
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
            .authenticate(token)
            .await
            .map(|p| Authed(p.user))
            .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))
    }
}

/// `POST /v1/auth/revoke`: sign out everywhere. Every session of the
/// caller issued until now is refused from now on (this one included), and
/// its open sockets and streams on every gateway close with 4001.
pub async fn revoke_own(
    State(state): State<AppRef>,
    Authed(user): Authed,
) -> Result<StatusCode, ApiError> {
    state.chat.revoke_sessions(user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/users/{address}/revoke`: an operator signs a user out
/// everywhere (a stolen device, a banned wallet), without rotating the
/// token secret for everyone. Needs HTTP Basic with an API key that is not
/// limited to some channels.
pub async fn revoke_user(
    State(state): State<AppRef>,
    Path(address): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::unauthorized("use HTTP Basic with an API key"))?;
    let key = ApiKey::find(&state.cfg.api_keys, &given)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    if !key.unrestricted() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this API key is limited to some channels; revoking sessions needs an unrestricted key",
        ));
    }
    let user: Address = address
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
    state.chat.revoke_sessions(user).await?;
    Ok(StatusCode::NO_CONTENT)
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
