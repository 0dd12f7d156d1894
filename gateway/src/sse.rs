//! The Server-Sent Events reader both SSE transports stream from: Switchboard's
//! own (`GET /v1/conversations/{id}/events`, `GET /v1/channels/{id}/events`,
//! in `http::events`) and Ably's (`GET /sse`, in `ably`). One reader follows
//! one or more feeds (conversations or channels) of one user, with the same
//! replay-then-live semantics as a WebSocket `sync`; only the event format
//! differs, and each transport brings its own [`EventFormat`].
//!
//! - **Order**: the reader is one of the user's connections in the hub,
//!   registered before the replay, so nothing sent in between is missed.
//!   Each feed has a [`SeqCursor`]: a live message is written only if it is
//!   the next seq; a repeat is skipped and a gap is filled from the log
//!   first, so every feed is gap-free and in order.
//! - **Bounded memory**: the hub connection has the same bounded queue as a
//!   socket. A reader that does not keep up fills it and is cut off
//!   (`event: close`, code 4008); it reconnects with `Last-Event-ID` and
//!   misses nothing.
//! - **End**: before the stream ends on the server's side, `event: close`
//!   with `{"code", "reason"}` (1012 drain, 4008 slow reader); a history
//!   that cannot be read ends it with `event: error`.
//!
//! A reader sends no acks, so it does not move the delivered watermark and
//! gets no resends: what it missed it gets by resuming.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use switchboard_proto::frames::{ServerFrame, close};
use switchboard_proto::ids::{Address, ConvId, ConvKind};

use crate::cursor::{SeqCursor, Step};
use crate::hub::{ConnHandle, Outbound, SessionTimes};
use crate::limits::ConnSlot;
use crate::metrics::Metrics;
use crate::service::{ChatError, ChatService, Engine, Liveness};
use crate::state::AppState;

/// Interval of the `:keepalive` comments: below the idle timeouts of common
/// proxies and load balancers (30–60 s).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// How a transport writes its events.
pub trait EventFormat: Send + Sync + 'static {
    /// The event for message `seq` of `feeds[i]` (its cursor already moved
    /// past it), whose `msg` frame is `frame`; `None` skips it.
    fn message(&self, feeds: &[Feed], i: usize, seq: u64, frame: &str) -> Option<Event>;
    /// Whether a `synced` event (the WebSocket `synced` frame) follows the
    /// first replay.
    fn synced_after_replay(&self) -> bool;
}

/// One conversation of a stream and where it stands.
pub struct Feed {
    pub conv: ConvId,
    pub cursor: SeqCursor,
    /// Read the history after the cursor before taking live messages.
    catch_up: bool,
}

/// One SSE stream: a hub connection of `user`, filtered to its feeds (a
/// channel's messages come through the channel's subscription, others
/// through the user's routing).
pub struct Reader<F: EventFormat> {
    chat: Arc<ChatService>,
    metrics: Arc<Metrics>,
    user: Address,
    handle: Arc<ConnHandle>,
    feeds: Vec<Feed>,
    format: F,
    sync_limit: usize,
    /// Replayed events not written yet.
    replay: VecDeque<Event>,
    /// The `synced` event is still owed (first replay).
    synced_owed: bool,
    /// The stream has ended (after `event: close` or `event: error`).
    ended: bool,
    /// Its place in the connection caps, released with the stream.
    _slot: ConnSlot,
}

impl<F: EventFormat> Reader<F> {
    /// Open a stream for `user` over `feeds` (conversation, last seq the
    /// reader holds), holding `slot` (the connection caps) while it lasts.
    /// The caller has checked the right to read each.
    pub async fn open(
        state: &AppState,
        slot: ConnSlot,
        user: Address,
        session: Option<SessionTimes>,
        feeds: Vec<(ConvId, u64)>,
        format: F,
    ) -> Result<Self, ChatError> {
        let handle = state.chat.connect(user, session, Liveness::Listener).await;
        state.metrics.sse_streams.inc();
        // From here on, Drop undoes the registration.
        let reader = Reader {
            chat: state.chat.clone(),
            metrics: state.metrics.clone(),
            user,
            handle,
            feeds: feeds
                .into_iter()
                .map(|(conv, last)| Feed {
                    conv,
                    cursor: SeqCursor::at(last),
                    catch_up: true,
                })
                .collect(),
            synced_owed: format.synced_after_replay(),
            format,
            sync_limit: state.cfg.sync_limit.max(1),
            replay: VecDeque::new(),
            ended: false,
            _slot: slot,
        };
        for f in &reader.feeds {
            if f.conv.kind() == ConvKind::Channel {
                reader.chat.join_channel(&f.conv, &reader.handle).await?;
            }
        }
        Ok(reader)
    }

    /// The reader as an SSE response with keep-alive comments.
    pub fn into_response(self) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let stream = futures_util::stream::unfold(self, |mut r| async move {
            let ev = r.next().await?;
            Some((Ok(ev), r))
        });
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
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
            match self.feeds[i].cursor.step(*seq) {
                Step::Skip => continue,
                Step::Write => {
                    self.feeds[i].cursor.advance(*seq);
                    match self.format.message(&self.feeds, i, *seq, &frame) {
                        Some(ev) => return Some(ev),
                        None => continue,
                    }
                }
                // A message routed before this stream registered, or lost
                // in transit: the log has it, and this one after it.
                Step::Gap => self.feeds[i].catch_up = true,
            }
        }
    }

    /// One page of feed `i`'s replay into `self.replay` (then `synced` after
    /// the first replay, when the format has it). `Err`: the history cannot
    /// be read; the error event to end the stream with.
    async fn fill(&mut self, i: usize) -> Result<(), Event> {
        let limit = self.sync_limit;
        let conv = self.feeds[i].conv.clone();
        let after = self.feeds[i].cursor.last();
        let page = match self.chat.replay(&conv, after, limit).await {
            Ok(p) => p,
            Err(e) => {
                let msg = match e {
                    ChatError::Unavailable {
                        what: Engine::Store,
                        detail,
                    } => {
                        tracing::warn!(error = %detail, "history read failed");
                        "message history unavailable; reconnect shortly".into()
                    }
                    other => other.to_string(),
                };
                return Err(Event::default()
                    .event("error")
                    .data(json!({"code": "unavailable", "message": msg}).to_string()));
            }
        };
        let got = page.messages.len();
        for m in page.messages {
            let seq = m.seq;
            self.feeds[i].cursor.advance(seq);
            let frame = ServerFrame::Msg(m).to_json();
            if let Some(ev) = self.format.message(&self.feeds, i, seq, &frame) {
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

impl<F: EventFormat> Drop for Reader<F> {
    fn drop(&mut self) {
        self.metrics.sse_streams.dec();
        let channels: Vec<ConvId> = self
            .feeds
            .iter()
            .filter(|f| f.conv.kind() == ConvKind::Channel)
            .map(|f| f.conv.clone())
            .collect();
        // The user's last connection here: presence moves on as after a
        // socket (a reader does not heartbeat, so it never kept the user
        // online by itself).
        let left = self
            .chat
            .disconnect(self.user, &self.handle, Liveness::Listener);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (chat, handle) = (self.chat.clone(), self.handle.clone());
        rt.spawn(async move {
            for c in &channels {
                chat.leave_channel(c, &handle).await;
            }
            if let Some(left) = left {
                left.await;
            }
        });
    }
}

fn close_event(code: u16) -> Event {
    let reason = match code {
        close::GOING_AWAY => "the gateway is draining; reconnect (Last-Event-ID resumes)",
        close::UNAUTHORIZED => {
            "the session expired or was revoked; sign in again and reconnect (Last-Event-ID resumes)"
        }
        close::SLOW_CONSUMER => "the reader fell too far behind; reconnect (Last-Event-ID resumes)",
        _ => "closed by the server; reconnect (Last-Event-ID resumes)",
    };
    Event::default()
        .event("close")
        .data(json!({"code": code, "reason": reason}).to_string())
}
