//! HTTP endpoints: health, metrics, sign-in and conversations.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use switchboard_core::auth::nonce::generate_nonce;
use switchboard_core::broker::{Conversation, Visibility};
use switchboard_core::ids::{Address, ConvId, ConvKind};
use switchboard_core::protocol::ErrorCode;
use switchboard_core::time::now_ms;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::problem::ApiError;
use crate::state::AppState;

pub type AppRef = Arc<AppState>;

/// The caller, authenticated by `Authorization: Bearer <session token>`.
pub struct Authed(pub Address);

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
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
            .tokens
            .verify(token, OffsetDateTime::now_utc())
            .map(Authed)
            .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppRef>) -> Result<&'static str, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "draining",
        ));
    }
    state.broker.ping().await?;
    Ok("ready")
}

pub async fn metrics(State(state): State<AppRef>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn nonce(State(state): State<AppRef>) -> Result<Json<serde_json::Value>, ApiError> {
    let nonce = generate_nonce();
    state.broker.put_nonce(&nonce, state.cfg.nonce_ttl).await?;
    Ok(Json(json!({ "nonce": nonce })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    message: String,
    signature: String,
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {}", e.body_text())))
}

pub async fn verify(
    State(state): State<AppRef>,
    b: Result<Json<VerifyBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = body(b)?;
    let now = OffsetDateTime::now_utc();
    let signed = state
        .siwe
        .verify(&b.message, &b.signature, now)
        .map_err(|e| {
            state.metrics.error(ErrorCode::Unauthorized.as_str());
            ApiError::unauthorized(format!("sign-in rejected ({}): {e}", e.code()))
        })?;
    // The nonce is consumed only after the signature checks out, so forged
    // requests cannot burn a real client's nonce.
    if !state.broker.take_nonce(&signed.nonce).await? {
        state.metrics.error(ErrorCode::Unauthorized.as_str());
        return Err(ApiError::unauthorized(
            "sign-in rejected (bad_nonce): nonce unknown, expired or already used",
        ));
    }
    let mut ttl = state.cfg.session_ttl;
    if let Some(exp) = signed.expires_at {
        // Never outlive the expiration the user signed.
        let left = (exp - now).unsigned_abs();
        ttl = ttl.min(left);
    }
    let (token, expires_at) = state.tokens.issue(&signed.address, ttl, now);
    let _ = state.broker.touch(&signed.address, now_ms()).await;
    Ok(Json(json!({
        "token": token,
        "address": signed.address,
        "expires_at": expires_at.format(&Rfc3339).unwrap_or_default(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    kind: ConvKind,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    title: Option<String>,
}

const MAX_TITLE: usize = 200;

pub async fn create_conversation(
    State(state): State<AppRef>,
    Authed(user): Authed,
    b: Result<Json<CreateConversation>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let b = body(b)?;
    if b.kind != ConvKind::Group {
        return Err(ApiError::bad_request(
            "only kind \"group\" is created here; direct conversations need no creation (id dm:<addrA>:<addrB>)",
        ));
    }
    let mut members = vec![user];
    for (i, m) in b.members.iter().enumerate() {
        let a: Address = m
            .parse()
            .map_err(|e| ApiError::bad_request(format!("members[{i}]: {e}")))?;
        if !members.contains(&a) {
            members.push(a);
        }
    }
    if members.len() > state.cfg.max_group_members {
        return Err(ApiError::bad_request(format!(
            "a group has at most {} members (got {})",
            state.cfg.max_group_members,
            members.len()
        )));
    }
    if let Some(t) = &b.title
        && t.chars().count() > MAX_TITLE
    {
        return Err(ApiError::bad_request(format!(
            "title is longer than {MAX_TITLE} characters"
        )));
    }
    members.sort();
    let conv = Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: b.title.filter(|t| !t.is_empty()),
        members,
        created_by: Some(user),
        created_at: now_ms(),
        publishers: Vec::new(),
        visibility: None,
    };
    // PostgreSQL first (the source of truth), then the broker's copy that
    // the send script checks.
    if let Some(store) = &state.store
        && !store.create_group(&conv).await?
    {
        return Err(switchboard_core::broker::BrokerError::AlreadyExists.into());
    }
    state.broker.create_group(&conv).await?;
    Ok((StatusCode::CREATED, Json(conv)))
}

pub async fn get_conversation(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    let id: ConvId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    // Non-members get the same 404 as a missing conversation: existence does
    // not leak.
    let found = match (&state.store, id.kind()) {
        (Some(store), ConvKind::Group) => match store.members(&id).await? {
            Some(members) => state.broker.conversation(&id).await?.map(|mut c| {
                c.members = members.into_iter().map(|m| m.user).collect();
                c
            }),
            None => None,
        },
        (_, ConvKind::Channel) => state.channel(&id).await?,
        _ => state.broker.conversation(&id).await?,
    };
    match found {
        Some(c) if c.can_read(&user) => Ok(Json(c)),
        _ => Err(ApiError::not_found("no such conversation")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    name: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    visibility: Option<Visibility>,
    #[serde(default)]
    publishers: Vec<String>,
    #[serde(default)]
    members: Vec<String>,
}

/// Publishers a channel may name besides its creator.
pub const MAX_PUBLISHERS: usize = 100;

/// `POST /v1/channels`: create the channel `ch:<name>`, owned (and
/// publishable) by the caller.
pub async fn create_channel(
    State(state): State<AppRef>,
    Authed(user): Authed,
    b: Result<Json<CreateChannel>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let b = body(b)?;
    let id = ConvId::channel(&b.name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let parse = |what: &str, list: &[String]| -> Result<Vec<Address>, ApiError> {
        let mut out: Vec<Address> = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            let a: Address = a
                .parse()
                .map_err(|e| ApiError::bad_request(format!("{what}[{i}]: {e}")))?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out.sort();
        Ok(out)
    };
    let publishers = parse("publishers", &b.publishers)?;
    let members = parse("members", &b.members)?;
    if publishers.len() > MAX_PUBLISHERS {
        return Err(ApiError::bad_request(format!(
            "a channel has at most {MAX_PUBLISHERS} publishers besides its creator (got {})",
            publishers.len()
        )));
    }
    if members.len() > state.cfg.max_group_members {
        return Err(ApiError::bad_request(format!(
            "a members-only channel has at most {} members (got {})",
            state.cfg.max_group_members,
            members.len()
        )));
    }
    let visibility = b.visibility.unwrap_or(Visibility::Public);
    if visibility == Visibility::Public && !members.is_empty() {
        return Err(ApiError::bad_request(
            "members are only for \"visibility\": \"members\" (anyone may read a public channel)",
        ));
    }
    if let Some(t) = &b.title
        && t.chars().count() > MAX_TITLE
    {
        return Err(ApiError::bad_request(format!(
            "title is longer than {MAX_TITLE} characters"
        )));
    }
    let conv = Conversation {
        id,
        kind: ConvKind::Channel,
        title: b.title.filter(|t| !t.is_empty()),
        members,
        created_by: Some(user),
        created_at: now_ms(),
        publishers,
        visibility: Some(visibility),
    };
    state.create_channel(&conv).await?;
    // Read back: the creator is among the publishers.
    let created = state.channel(&conv.id).await?.unwrap_or(conv);
    Ok((StatusCode::CREATED, Json(created)))
}
