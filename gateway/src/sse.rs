//! Server-Sent Events: `GET /v1/conversations/{id}/events` streams one
//! conversation's messages to a reader that only needs to read (a browser's
//! `EventSource`, `curl -N`), with the same replay-then-live semantics as a
//! WebSocket `sync`.
//!
//! - **Auth**: `Authorization: Bearer <session token>`, or — because
//!   `EventSource` cannot set headers — `?access_token=<session token>`.
//!   Only members may read (anyone else gets the same 404 as for a missing
//!   conversation).
//! - **Events**: `id: <seq>`, `event: message`, `data:` the same `msg` JSON a
//!   WebSocket gets; after the replay one `event: synced` (the WebSocket
//!   `synced` frame); `:keepalive` comments every 15 s; before the stream
//!   ends on the server's side, `event: close` with `{"code", "reason"}`
//!   (1012 drain, 4008 slow reader).
//! - **Resume**: `Last-Event-ID` (sent by `EventSource` on reconnect) or
//!   `?after=<seq>` for the first request: messages with a greater seq are
//!   replayed (log, then store), then live ones follow. A live message is
//!   written only if it is the next seq; a duplicate is skipped and a gap is
//!   filled from the log first, so the stream is gap-free and in order.
//! - **Bounded memory**: the stream is one of the user's connections in the
//!   hub with the same bounded queue as a socket. A reader that does not keep
//!   up fills it and is cut off (`event: close`, code 4008); it reconnects
//!   with `Last-Event-ID` and misses nothing.
//!
//! An SSE reader sends no acks, so it does not move the delivered watermark
//! and gets no resends: what it missed it gets by resuming.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_core::broker::BrokerError;
use switchboard_core::ids::{Address, ConvId, ConvKind};
use switchboard_core::protocol::{ServerFrame, close};
use time::OffsetDateTime;

use crate::history::{self, HistoryError};
use crate::hub::{ConnHandle, Outbound};
use crate::problem::ApiError;
use crate::rest::AppRef;
use crate::state::AppState;

/// Interval of the `:keepalive` comments: below the idle timeouts of common
/// proxies and load balancers (30–60 s).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// The session token, for clients that cannot set a header.
    access_token: Option<String>,
    /// Replay messages after this seq (a `Last-Event-ID` header wins).
    after: Option<u64>,
}

/// `GET /v1/conversations/{id}/events`.
pub async fn events(
    State(state): State<AppRef>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let conv: ConvId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    stream(state, conv, q, headers).await
}

/// `GET /v1/channels/{id}/events`: the same stream for a channel, named
/// `ch:<name>` or just `<name>`.
pub async fn channel_events(
    State(state): State<AppRef>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let name = id.strip_prefix("ch:").unwrap_or(&id);
    let conv = ConvId::channel(name).map_err(|e| ApiError::bad_request(format!("{e}")))?;
    stream(state, conv, q, headers).await
}

async fn stream(
    state: AppRef,
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
    let user = state
        .tokens
        .verify(token, OffsetDateTime::now_utc())
        .map_err(|e| ApiError::unauthorized(format!("invalid session token: {e}")))?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a message seq"))?,
        None => q.after.unwrap_or(0),
    };
    if state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            switchboard_core::protocol::ErrorCode::Unavailable,
            "draining; reconnect elsewhere",
        ));
    }
    if !state.is_member(&conv, &user).await? {
        return Err(ApiError::not_found("no such conversation"));
    }
    let reader = Reader::open(state, user, vec![(conv, after)], Format::Native).await?;
    Ok(sse(reader))
}

/// The reader as an SSE response with keep-alive comments.
pub(crate) fn sse(reader: Reader) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold(reader, |mut r| async move {
        let ev = r.next().await?;
        Some((Ok(ev), r))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
}

/// How a stream writes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Switchboard's: `id: <seq>`, `data:` the `msg` frame, then `synced`
    /// after the first replay (one conversation per stream).
    Native,
    /// Ably's (`crate::ably`): `id:` a cursor over every channel of the
    /// stream, `data:` the Ably message with its `channel` (enveloped), or
    /// only its `data`.
    Ably { enveloped: bool },
}

/// One conversation of a stream and where it stands.
struct Feed {
    conv: ConvId,
    /// The last seq written to the stream.
    last: u64,
    /// Read the history after `last` before taking live messages.
    catch_up: bool,
}

/// One SSE stream: a hub connection of `user`, filtered to its feeds (a
/// channel's messages come through the channel's subscription, others
/// through the user's routing).
pub(crate) struct Reader {
    state: Arc<AppState>,
    user: Address,
    handle: Arc<ConnHandle>,
    feeds: Vec<Feed>,
    format: Format,
    /// Replayed events not written yet.
    replay: VecDeque<Event>,
    /// The `synced` event is still owed (native format, first replay).
    synced_owed: bool,
    /// The stream has ended (after `event: close` or `event: error`).
    ended: bool,
}

impl Reader {
    /// Open a stream for `user` over `feeds` (conversation, last seq the
    /// reader holds). The caller has checked the right to read each.
    pub(crate) async fn open(
        state: Arc<AppState>,
        user: Address,
        feeds: Vec<(ConvId, u64)>,
        format: Format,
    ) -> Result<Reader, BrokerError> {
        // Registered before the replay, so nothing sent in between is missed:
        // live messages queue up and the seq check drops what the replay
        // already wrote.
        let (handle, first_here) = state.hub.add(user, state.cfg.send_queue);
        if first_here && let Err(e) = state.broker.register(&user, &state.cfg.gateway_id).await {
            tracing::warn!(error = %e, "registry update failed");
        }
        state.metrics.sse_streams.inc();
        // From here on, Drop undoes the registration.
        let reader = Reader {
            state,
            user,
            handle,
            feeds: feeds
                .into_iter()
                .map(|(conv, last)| Feed {
                    conv,
                    last,
                    catch_up: true,
                })
                .collect(),
            format,
            replay: VecDeque::new(),
            synced_owed: format == Format::Native,
            ended: false,
        };
        for f in &reader.feeds {
            if f.conv.kind() == ConvKind::Channel
                && reader.state.hub.subscribe(&f.conv, &reader.handle)
            {
                let gw = &reader.state.cfg.gateway_id;
                reader.state.broker.subscribe_channel(gw, &f.conv).await?;
            }
        }
        Ok(reader)
    }

    /// The next event, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(ev) = self.replay.pop_front() {
                return Some(ev);
            }
            if let Some(i) = self.feeds.iter().position(|f| f.catch_up) {
                if let Err(ev) = self.fill(i).await {
                    self.ended = true;
                    return Some(ev);
                }
                continue;
            }
            let item = tokio::select! {
                biased;
                _ = self.handle.close.closed() => {
                    self.ended = true;
                    return Some(close_event(self.handle.close.code()));
                }
                item = self.handle.outbox.pop() => item,
            };
            let (ack, frame) = match item {
                Outbound::Msg { ack, frame } => (ack, frame),
                Outbound::Channel { seq, frame } => (seq, frame),
                Outbound::Frame(_) => continue,
            };
            let (conv, seq) = &*ack;
            let Some(i) = self.feeds.iter().position(|f| f.conv == *conv) else {
                continue;
            };
            let last = self.feeds[i].last;
            if *seq <= last {
                continue;
            }
            if *seq == last + 1 {
                self.feeds[i].last = *seq;
                match self.event(i, *seq, &frame) {
                    Some(ev) => return Some(ev),
                    None => continue,
                }
            }
            // A gap (a message routed before this stream registered, or lost
            // in transit): the log has it, and this one after it.
            self.feeds[i].catch_up = true;
        }
    }

    /// The event for message `seq` of feed `i` (its `last` already moved),
    /// whose `msg` frame is `frame`.
    fn event(&self, i: usize, seq: u64, frame: &str) -> Option<Event> {
        match self.format {
            Format::Native => Some(message_event(seq, frame)),
            Format::Ably { enveloped } => {
                let Ok(ServerFrame::Msg(m)) = ServerFrame::from_json(frame) else {
                    return None;
                };
                let name = self.feeds[i].conv.channel_name().unwrap_or_default();
                let mut v = crate::ably::ably_message(&m);
                let data = if enveloped {
                    v["channel"] = json!(name);
                    v.to_string()
                } else {
                    match v.get("data") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    }
                };
                Some(
                    Event::default()
                        .id(self.cursor())
                        .event("message")
                        .data(data),
                )
            }
        }
    }

    /// Ably format: where every feed stands, `<name>@<seq>|…` — the id a
    /// reconnect passes back (`lastEvent` / `Last-Event-ID`).
    fn cursor(&self) -> String {
        self.feeds
            .iter()
            .map(|f| format!("{}@{}", f.conv.channel_name().unwrap_or_default(), f.last))
            .collect::<Vec<_>>()
            .join("|")
    }

    /// One page of feed `i`'s replay into `self.replay` (then, in the native
    /// format, `synced` after the first replay). `Err`: the history cannot
    /// be read; the error event to end the stream with.
    async fn fill(&mut self, i: usize) -> Result<(), Event> {
        let limit = self.state.cfg.sync_limit.max(1);
        let conv = self.feeds[i].conv.clone();
        let page = match history::replay(&self.state, &conv, self.feeds[i].last, limit).await {
            Ok(p) => p,
            Err(e) => {
                let msg = match e {
                    HistoryError::Broker(e) => e.to_string(),
                    HistoryError::Store(e) => {
                        tracing::warn!(error = %e, "history read failed");
                        "message history unavailable; reconnect shortly".into()
                    }
                };
                return Err(Event::default()
                    .event("error")
                    .data(json!({"code": "unavailable", "message": msg}).to_string()));
            }
        };
        let got = page.messages.len();
        for m in page.messages {
            let seq = m.seq;
            self.feeds[i].last = seq;
            let frame = ServerFrame::Msg(m).to_json();
            if let Some(ev) = self.event(i, seq, &frame) {
                self.replay.push_back(ev);
            }
        }
        // A full page may have more behind it; a short one (or a hole the
        // store cannot fill yet) ends this catch-up.
        if got >= limit && page.recovered {
            return Ok(());
        }
        self.feeds[i].catch_up = false;
        if !std::mem::take(&mut self.synced_owed) {
            return Ok(());
        }
        let synced = ServerFrame::Synced {
            conv,
            recovered: page.recovered,
            last_seq: page.last_seq,
            epoch: page.epoch,
            epoch_base: page.epoch_base,
        };
        // After the replayed messages: queue it behind them.
        self.replay
            .push_back(Event::default().event("synced").data(synced.to_json()));
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.state.metrics.sse_streams.dec();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for f in &self.feeds {
                if f.conv.kind() == ConvKind::Channel {
                    let (state, conv, handle) =
                        (self.state.clone(), f.conv.clone(), self.handle.clone());
                    rt.spawn(
                        async move { crate::conn::leave_channel(&state, &conv, &handle).await },
                    );
                }
            }
        }
        if self.state.hub.remove(&self.user, &self.handle) {
            let (state, user) = (self.state.clone(), self.user);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = state.broker.unregister(&user, &state.cfg.gateway_id).await {
                        tracing::warn!(error = %e, "registry update failed");
                    }
                    // The user's last connection here: presence moves on as
                    // after a socket (an SSE reader does not heartbeat, so it
                    // never kept the user online by itself).
                    crate::presence::after_disconnect(state, user);
                });
            }
        }
    }
}

fn message_event(seq: u64, frame: &str) -> Event {
    Event::default()
        .id(seq.to_string())
        .event("message")
        .data(frame)
}

fn close_event(code: u16) -> Event {
    let reason = match code {
        close::GOING_AWAY => "the gateway is draining; reconnect (Last-Event-ID resumes)",
        close::SLOW_CONSUMER => "the reader fell too far behind; reconnect (Last-Event-ID resumes)",
        _ => "closed by the server; reconnect (Last-Event-ID resumes)",
    };
    Event::default()
        .event("close")
        .data(json!({"code": code, "reason": reason}).to_string())
}
