//! Who calls an Ably endpoint: an API key (HTTP Basic, or `key=` for SSE)
//! with its channel patterns, or a signed-in wallet with its session token
//! (Ably's token auth: `Bearer`, as is or base64) and exactly its rights.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::Conversation;

use super::AblyError;
use crate::keys::ApiKey;
use crate::service::Creator;
use crate::state::AppState;

/// Who calls an Ably endpoint: a configured API key, or a signed-in wallet
/// with its session token (Ably's token auth).
#[derive(Debug, Clone)]
pub(super) enum Caller {
    Key(ApiKey),
    User(Address),
}

impl Caller {
    /// The address it publishes and subscribes as.
    pub(super) fn address(&self) -> Address {
        match self {
            Caller::Key(k) => k.address(),
            Caller::User(a) => *a,
        }
    }

    /// As the creator of a channel it names that does not exist yet.
    pub(super) fn creator(&self) -> Creator {
        match self {
            Caller::Key(k) => Creator::ApiKey(k.address()),
            Caller::User(a) => Creator::Wallet(*a),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Caller::Key(k) => format!("API key {}", k.name),
            Caller::User(a) => format!("wallet {a}"),
        }
    }

    /// Whether it may publish to `channel` (named `name`): a key by its
    /// patterns, a wallet as a publisher.
    pub(super) fn may_publish(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(a) => channel.can_publish(a),
        }
    }

    /// Whether it may subscribe to / read `channel`.
    pub(super) fn may_read(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(a) => channel.can_read(a),
        }
    }
}

/// The caller of a request: `Authorization: Basic` with an API key, or
/// `Bearer` with a session token (as issued by `/v1/auth/verify`; Ably SDKs
/// send a token base64-encoded, which is accepted too).
pub(super) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, AblyError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AblyError::unauthorized(
                "no credentials: use HTTP Basic with an API key, or Bearer with a session token",
            )
        })?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return session(state, token.trim());
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
pub(super) fn session(state: &AppState, token: &str) -> Result<Caller, AblyError> {
    let err = match state.chat.verify_token(token) {
        Ok(user) => return Ok(Caller::User(user)),
        Err(e) => e,
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(user) = decoded.and_then(|t| state.chat.verify_token(&t).ok()) {
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
    let (name, secret) = given
        .split_once(':')
        .ok_or_else(|| AblyError::unauthorized("an API key is keyName:keySecret"))?;
    // An unknown name and a wrong secret get the same answer (which key
    // names exist is not for a guesser to learn), after the same work.
    let refused = || AblyError::unauthorized("invalid API key");
    match state.cfg.api_keys.iter().find(|k| k.name == name) {
        Some(key) if key.secret_matches(secret) => Ok(key.clone()),
        Some(_) => Err(refused()),
        None => {
            let _ = crate::keys::digests_match(secret, name);
            Err(refused())
        }
    }
}

/// The channel an Ably name stands for (`ch:<name>`).
pub(super) fn channel_id(name: &str) -> Result<ConvId, AblyError> {
    ConvId::channel(name).map_err(|e| AblyError::new(40010, StatusCode::BAD_REQUEST, e.to_string()))
}
