//! Who calls an Ably endpoint: an API key (HTTP Basic, or `key=` for SSE)
//! with its channel patterns, or a signed-in wallet with its session token
//! (Ably's token auth: `Bearer`, as is or base64) and exactly its rights.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::Conversation;

use super::AblyError;
use crate::hub::SessionTimes;
use crate::keys::ApiKey;
use crate::service::{Creator, Principal};
use crate::state::AppState;

/// Who calls an Ably endpoint: a configured API key, or a signed-in wallet
/// with its session token (Ably's token auth).
#[derive(Debug, Clone)]
pub(super) enum Caller {
    Key(ApiKey),
    User(Principal),
}

impl Caller {
    /// The address it publishes and subscribes as.
    pub(super) fn address(&self) -> Address {
        match self {
            Caller::Key(k) => k.address(),
            Caller::User(p) => p.user,
        }
    }

    /// As the creator of a channel it names that does not exist yet.
    pub(super) fn creator(&self) -> Creator {
        match self {
            Caller::Key(k) => Creator::ApiKey(k.address()),
            Caller::User(p) => Creator::Wallet(p.user),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Caller::Key(k) => format!("API key {}", k.name),
            Caller::User(p) => format!("wallet {}", p.user),
        }
    }

    /// The session a wallet's connection lives by (`None` for a key).
    pub(super) fn session(&self) -> Option<SessionTimes> {
        match self {
            Caller::Key(_) => None,
            Caller::User(p) => Some(p.session),
        }
    }

    /// Whether it may publish to `channel` (named `name`): a key by its
    /// patterns, a wallet as a publisher.
    pub(super) fn may_publish(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(p) => channel.can_publish(&p.user),
        }
    }

    /// Whether it may subscribe to / read `channel`.
    pub(super) fn may_read(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(p) => channel.can_read(&p.user),
        }
    }
}

/// The caller of a request: `Authorization: Basic` with an API key, or
/// `Bearer` with a session token (as issued by `/v1/auth/verify`; Ably SDKs
/// send a token base64-encoded, which is accepted too).
pub(super) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, AblyError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AblyError::unauthorized(
                "no credentials: use HTTP Basic with an API key, or Bearer with a session token",
            )
        })?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return session(state, token.trim()).await;
    }
    let encoded = value.strip_prefix("Basic ").ok_or_else(|| {
        AblyError::unauthorized("use HTTP Basic with an API key, or Bearer with a session token")
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| AblyError::unauthorized("malformed Basic credentials"))?;
    key_of(state, &decoded).map(Caller::Key)
}

/// A session token, as given or base64-encoded.
pub(super) async fn session(state: &AppState, token: &str) -> Result<Caller, AblyError> {
    let err = match state.chat.authenticate(token).await {
        Ok(user) => return Ok(Caller::User(user)),
        Err(e) => e,
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(t) = decoded
        && let Ok(user) = state.chat.authenticate(&t).await
    {
        return Ok(Caller::User(user));
    }
    let msg = format!("invalid session token: {err}");
    // Ably's code for an expired token, so SDKs know to renew it.
    let code = if msg.contains("expired") {
        40142
    } else {
        40101
    };
    Err(AblyError::new(code, StatusCode::UNAUTHORIZED, msg))
}

/// The configured key `keyName:keySecret` names.
pub(super) fn key_of(state: &AppState, given: &str) -> Result<ApiKey, AblyError> {
    if !given.contains(':') {
        return Err(AblyError::unauthorized("an API key is keyName:keySecret"));
    }
    ApiKey::find(&state.cfg.api_keys, given)
        .cloned()
        .ok_or_else(|| AblyError::unauthorized("invalid API key"))
}

/// The channel an Ably name stands for (`ch:<name>`).
pub(super) fn channel_id(name: &str) -> Result<ConvId, AblyError> {
    ConvId::channel(name).map_err(|e| AblyError::new(40010, StatusCode::BAD_REQUEST, e.to_string()))
}
