//! Server-Sent Events: `GET /v1/conversations/{id}/events` streams one
//! conversation's messages to a reader that only needs to read (a browser's
//! `EventSource`, `curl -N`), and `GET /v1/channels/{id}/events` one
//! channel's, on the shared reader (`crate::sse`).
//!
//! - **Auth**: `Authorization: Bearer <session token>`, or — because
//!   `EventSource` cannot set headers — `?access_token=<session token>`.
//!   Only readers may read (anyone else gets the same 404 as for a missing
//!   conversation).
//! - **Events**: `id: <seq>`, `event: message`, `data:` the same `msg` JSON a
//!   WebSocket gets; after the replay one `event: synced` (the WebSocket
//!   `synced` frame); `:keepalive` comments every 15 s; `event: close` before
//!   the server ends the stream.
//! - **Resume**: `Last-Event-ID` (sent by `EventSource` on reconnect) or
//!   `?after=<seq>` for the first request: messages with a greater seq are
//!   replayed (log, then store), then live ones follow.

use std::convert::Infallible;

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::sse::{Event, Sse};
use futures_util::Stream;
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_proto::ids::ConvId;

use super::problem::ApiError;
use crate::limits::ClientAddr;
use crate::service::ChatError;
use crate::sse::{EventFormat, Feed, Reader};
use crate::state::AppRef;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct EventsQuery {
    /// The session token, for clients that cannot set a header.
    access_token: Option<String>,
    /// Replay messages after this seq (a `Last-Event-ID` header wins).
    after: Option<u64>,
}

/// `GET /v1/conversations/{id}/events`.
pub async fn conversation(
    State(state): State<AppRef>,
    Extension(addr): Extension<ClientAddr>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let conv: ConvId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    stream(state, addr, conv, q, headers).await
}

/// `GET /v1/channels/{id}/events`: the same stream for a channel, named
/// `ch:<name>` or just `<name>`.
pub async fn channel(
    State(state): State<AppRef>,
    Extension(addr): Extension<ClientAddr>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let name = id.strip_prefix("ch:").unwrap_or(&id);
    let conv = ConvId::channel(name).map_err(|e| ApiError::bad_request(format!("{e}")))?;
    stream(state, addr, conv, q, headers).await
}

async fn stream(
    state: AppRef,
    addr: ClientAddr,
    conv: ConvId,
    q: EventsQuery,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let header_token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = header_token.or(q.access_token.as_deref()).ok_or_else(|| {
        ApiError::unauthorized(
            "missing session token: send Authorization: Bearer <token> or ?access_token=<token>",
        )
    })?;
    let caller = state
        .chat
        .authenticate(token)
        .await
        .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))?;
    let user = caller.user;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a message seq"))?,
        None => q.after.unwrap_or(0),
    };
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("draining; reconnect elsewhere"));
    }
    // The connection caps, before the membership look-up.
    let slot = state.limits.connect(addr, user)?;
    if !state.chat.can_read(&conv, &user).await? {
        return Err(ChatError::NotFound.into());
    }
    let reader = Reader::open(
        &state,
        slot,
        user,
        Some(caller.session),
        vec![(conv, after)],
        Native,
    )
    .await?;
    Ok(reader.into_response())
}

/// Switchboard's events: `id: <seq>`, `data:` the `msg` frame, then
/// `synced` after the first replay (one conversation per stream).
struct Native;

impl EventFormat for Native {
    fn message(&self, _feeds: &[Feed], _i: usize, seq: u64, frame: &str) -> Option<Event> {
        Some(
            Event::default()
                .id(seq.to_string())
                .event("message")
                .data(frame),
        )
    }

    fn synced_after_replay(&self) -> bool {
        true
    }
}
