//! One WebSocket connection: authenticate, then a single task multiplexes the
//! socket's inbound frames, the hub's outbound queue, ack-retry timers and the
//! idle and close signals. One task per socket (rather than a reader and a
//! writer task) keeps idle connections small, and handling a client's frames in
//! order keeps its sends in the order it wrote them.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use switchboard_core::broker::{BrokerError, Mark, Routed, SendRequest};
use switchboard_core::ids::{Address, ConvId, ConvKind};
use switchboard_core::protocol::{
    ClientFrame, ErrorCode, Message, PresenceStatus, ServerFrame, close,
};
use switchboard_core::time::now_ms;
use tokio::time::{Instant, sleep_until};

use crate::hub::{ConnHandle, Outbound};
use crate::presence;
use crate::state::AppState;

/// Why the loop ended, and what to tell the client.
enum Exit {
    /// The client closed or the transport failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// A `msg` frame waiting for its ack.
struct Pending {
    frame: Arc<str>,
    /// Resends so far.
    retries: u32,
}

fn limiter(rate: u32, burst: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// Wait for the `auth` frame. Returns the user, or `None` after telling the
/// client why and closing with 4001.
pub async fn authenticate(state: &AppState, socket: &mut WebSocket) -> Option<Address> {
    let first = tokio::time::timeout(state.cfg.auth_timeout, socket.recv()).await;
    let reason = match first {
        Err(_) => "no auth frame within the time limit",
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(WsMessage::Text(t)))) => match ClientFrame::from_json(&t) {
            Ok(ClientFrame::Auth { token }) => {
                match state.tokens.verify(&token, time::OffsetDateTime::now_utc()) {
                    Ok(user) => return Some(user),
                    Err(_) => "invalid or expired token",
                }
            }
            _ => "the first frame must be auth {token}",
        },
        Ok(Some(Ok(_))) => "the first frame must be auth {token}",
    };
    state.metrics.error(ErrorCode::Unauthorized.as_str());
    let frame = ServerFrame::error(ErrorCode::Unauthorized, reason, None);
    let _ = socket.send(WsMessage::Text(frame.to_json().into())).await;
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: close::UNAUTHORIZED,
            reason: "unauthorized".into(),
        })))
        .await;
    None
}

/// Serve an authenticated socket until it closes.
pub async fn serve(state: Arc<AppState>, mut socket: WebSocket, user: Address) {
    let was_connected = state.broker.is_connected(&user).await.unwrap_or(true);
    let (handle, first_here) = state.hub.add(user, state.cfg.send_queue);
    if first_here && let Err(e) = state.broker.register(&user, &state.cfg.gateway_id).await {
        tracing::warn!(error = %e, "registry update failed");
    }
    let now = now_ms();
    let _ = state.broker.touch(&user, now).await;
    if !was_connected
        && let Err(e) = presence::announce(&state, user, PresenceStatus::Online, now).await
    {
        tracing::debug!(error = %e, "presence announce failed");
    }

    let mut conn = Conn {
        state: state.clone(),
        user,
        handle: handle.clone(),
        pending: HashMap::new(),
        timers: VecDeque::new(),
        sends: limiter(state.cfg.send_rate, state.cfg.send_burst),
        frames: limiter(state.cfg.frame_rate, state.cfg.frame_burst),
        typing: HashMap::new(),
        last_touch: Instant::now(),
        acked: HashMap::new(),
        flush_at: None,
        channels: HashMap::new(),
    };
    let ready = ServerFrame::Ready {
        user,
        heartbeat_ms: state.cfg.heartbeat.as_millis() as u64,
    };
    let exit = if socket.send(text(&ready.to_json())).await.is_err() {
        Exit::Gone
    } else {
        conn.run(&mut socket).await
    };
    // Acks that arrived just before the socket ended still count.
    Box::pin(conn.flush_acks()).await;
    for channel in std::mem::take(&mut conn.channels).into_keys() {
        leave_channel(&state, &channel, &handle).await;
    }
    if let Exit::Close(code, reason) = exit {
        let _ = socket
            .send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }

    if state.hub.remove(&user, &handle) {
        if let Err(e) = state.broker.unregister(&user, &state.cfg.gateway_id).await {
            tracing::warn!(error = %e, "registry update failed");
        }
        let _ = state.broker.touch(&user, now_ms()).await;
        presence::after_disconnect(state.clone(), user);
    }
}

/// Drop `handle`'s subscription to `channel`; the gateway unsubscribes when
/// it was the last local one.
pub(crate) async fn leave_channel(state: &AppState, channel: &ConvId, handle: &Arc<ConnHandle>) {
    if state.hub.unsubscribe(channel, handle)
        && let Err(e) = state
            .broker
            .unsubscribe_channel(&state.cfg.gateway_id, channel)
            .await
    {
        tracing::warn!(error = %e, %channel, "channel unsubscribe failed");
    }
}

/// Fan a new channel message out to every gateway with a subscriber.
/// Failures are logged: the message is durable and subscribers catch up.
pub(crate) async fn publish_channel(state: &AppState, m: Message) {
    let channel = Some((m.conv.clone(), m.seq));
    let ev = Routed {
        users: Vec::new(),
        frame: ServerFrame::Msg(m).to_json().into(),
        ack: None,
        skip_conn: None,
        channel,
    };
    if let Err(e) = state.broker.publish_channel(ev).await {
        tracing::warn!(error = %e, "channel fan-out failed; subscribers will catch up");
    }
}

fn text(s: &str) -> WsMessage {
    WsMessage::Text(s.into())
}

struct Conn {
    state: Arc<AppState>,
    user: Address,
    handle: Arc<ConnHandle>,
    pending: HashMap<(ConvId, u64), Pending>,
    /// Retry deadlines in the order they fall due (every retry waits the same
    /// interval, so pushing to the back keeps the queue sorted). Entries for
    /// acked messages are skipped lazily.
    timers: VecDeque<(Instant, ConvId, u64)>,
    sends: DefaultDirectRateLimiter,
    frames: DefaultDirectRateLimiter,
    typing: HashMap<ConvId, Instant>,
    last_touch: Instant,
    /// Highest acked seq per conversation since the last flush: delivered
    /// watermarks and their receipts go out once per `receipt_delay`, not
    /// once per message.
    acked: HashMap<ConvId, u64>,
    flush_at: Option<Instant>,
    /// Subscribed channels → the last seq written to this socket.
    channels: HashMap<ConvId, u64>,
}

/// Channels one socket may follow at once.
pub const MAX_CHANNELS_PER_CONN: usize = 100;

impl Conn {
    async fn run(&mut self, socket: &mut WebSocket) -> Exit {
        let idle = self.state.cfg.idle_timeout;
        let mut idle_at = Instant::now() + idle;
        let handle = self.handle.clone();
        let close = &handle.close;
        loop {
            let next_retry = self.timers.front().map(|t| t.0);
            tokio::select! {
                biased;
                _ = close.closed() => {
                    let code = close.code();
                    let reason = match code {
                        close::SLOW_CONSUMER => "slow consumer: reconnect with backoff and resync",
                        close::GOING_AWAY => "gateway draining: reconnect",
                        _ => "closed by server",
                    };
                    return Exit::Close(code, reason);
                }
                _ = sleep_until(idle_at) => {
                    return Exit::Close(close::IDLE_TIMEOUT, "idle timeout: send ping frames");
                }
                item = handle.outbox.pop() => {
                    // Handlers are boxed so their state lives on the heap only while
                    // they run: an idle socket's task keeps just the select loop.
                    if Box::pin(self.write_outbound(socket, item)).await.is_err() {
                        return Exit::Gone;
                    }
                }
                _ = sleep_until(self.flush_at.unwrap_or(idle_at)), if self.flush_at.is_some() => {
                    Box::pin(self.flush_acks()).await;
                }
                _ = sleep_until(next_retry.unwrap_or(idle_at)), if next_retry.is_some() => {
                    if Box::pin(self.retry_due(socket)).await.is_err() {
                        return Exit::Gone;
                    }
                }
                incoming = socket.recv() => {
                    idle_at = Instant::now() + idle;
                    match incoming {
                        None => return Exit::Gone,
                        Some(Err(e)) => return classify_read_error(e),
                        Some(Ok(WsMessage::Text(t))) => {
                            if Box::pin(self.on_text(socket, &t)).await.is_err() {
                                return Exit::Gone;
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            if Box::pin(self.error(socket, ErrorCode::BadFrame, "binary frames are not supported; send JSON text", None)).await.is_err() {
                                return Exit::Gone;
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) => return Exit::Gone,
                        Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    }
                }
            }
        }
    }

    /// Write one frame. A peer that stops reading fills its TCP window and
    /// this write would wait forever, so it also ends when the socket is told
    /// to close (the hub does that when the send queue fills).
    async fn write(&self, socket: &mut WebSocket, s: &str) -> Result<(), axum::Error> {
        tokio::select! {
            r = socket.send(text(s)) => r,
            _ = self.handle.close.closed() => Err(axum::Error::new("socket closed while writing")),
        }
    }

    async fn error(
        &self,
        socket: &mut WebSocket,
        code: ErrorCode,
        message: &str,
        reference: Option<String>,
    ) -> Result<(), axum::Error> {
        self.state.metrics.error(code.as_str());
        self.write(
            socket,
            &ServerFrame::error(code, message, reference).to_json(),
        )
        .await
    }

    /// Write a `msg` and start waiting for its ack.
    async fn write_msg(
        &mut self,
        socket: &mut WebSocket,
        conv: ConvId,
        seq: u64,
        frame: Arc<str>,
    ) -> Result<(), axum::Error> {
        self.write(socket, &frame).await?;
        self.state.metrics.messages_out.inc();
        let key = (conv, seq);
        if !self.pending.contains_key(&key) {
            self.timers.push_back((
                Instant::now() + self.state.cfg.ack_timeout,
                key.0.clone(),
                key.1,
            ));
            self.pending.insert(key, Pending { frame, retries: 0 });
        }
        Ok(())
    }

    async fn write_outbound(
        &mut self,
        socket: &mut WebSocket,
        item: Outbound,
    ) -> Result<(), axum::Error> {
        match item {
            Outbound::Frame(f) => self.write(socket, &f).await,
            Outbound::Msg { ack, frame } => {
                let (conv, seq) = (ack.0.clone(), ack.1);
                if let Some(ts) = frame_ts(&frame) {
                    let lat = now_ms().saturating_sub(ts) as f64 / 1000.0;
                    self.state.metrics.delivery_latency.observe(lat);
                }
                self.write_msg(socket, conv, seq, frame).await
            }
            Outbound::Channel { seq, frame } => {
                let (channel, seq) = (&seq.0, seq.1);
                let Some(&last) = self.channels.get(channel) else {
                    return Ok(()); // unsubscribed meanwhile
                };
                if seq <= last {
                    return Ok(()); // already written (replay, or a repeat)
                }
                if seq > last + 1 {
                    // A gap (published before the subscription took effect,
                    // or lost in transit): the log has it.
                    self.catch_up(socket, channel, seq - 1).await?;
                    if self.channels.get(channel).is_none_or(|l| *l >= seq) {
                        return Ok(());
                    }
                }
                if let Some(ts) = frame_ts(&frame) {
                    let lat = now_ms().saturating_sub(ts) as f64 / 1000.0;
                    self.state.metrics.delivery_latency.observe(lat);
                }
                self.write(socket, &frame).await?;
                self.state.metrics.messages_out.inc();
                self.channels.insert(channel.clone(), seq);
                Ok(())
            }
        }
    }

    /// Write `channel`'s messages after the last one this socket holds, up
    /// to `upto` (`u64::MAX`: all there are). Returns the replay's
    /// `(last_seq, recovered)`.
    async fn catch_up(
        &mut self,
        socket: &mut WebSocket,
        channel: &ConvId,
        upto: u64,
    ) -> Result<(u64, bool), axum::Error> {
        let limit = self.state.cfg.sync_limit.max(1);
        loop {
            let Some(&last) = self.channels.get(channel) else {
                return Ok((0, true));
            };
            let page = match crate::history::replay(&self.state, channel, last, limit).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "channel catch-up failed");
                    return Ok((last, false));
                }
            };
            let got = page.messages.len();
            for m in page.messages.into_iter().take_while(|m| m.seq <= upto) {
                let seq = m.seq;
                self.write(socket, &ServerFrame::Msg(m).to_json()).await?;
                self.state.metrics.messages_out.inc();
                self.channels.insert(channel.clone(), seq);
            }
            let now = self.channels.get(channel).copied().unwrap_or(last);
            if got < limit || !page.recovered || now >= upto || now == last {
                return Ok((page.last_seq, page.recovered));
            }
        }
    }

    /// `subscribe`: check the right to read, join the channel (the gateway
    /// subscribes on its first local subscriber), replay after `after`, then
    /// answer `subscribed`; live messages follow through the hub.
    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        channel: ConvId,
        after: Option<u64>,
    ) -> Result<(), axum::Error> {
        let reference = Some(channel.to_string());
        if channel.kind() != ConvKind::Channel {
            let msg = "subscribe takes a channel (ch:<name>); conversations use sync";
            return self
                .error(socket, ErrorCode::BadFrame, msg, reference)
                .await;
        }
        if !self.channels.contains_key(&channel) && self.channels.len() >= MAX_CHANNELS_PER_CONN {
            let msg = format!("at most {MAX_CHANNELS_PER_CONN} channels per connection");
            return self
                .error(socket, ErrorCode::Invalid, &msg, reference)
                .await;
        }
        if !self.require_member(socket, &channel).await? {
            return Ok(());
        }
        let start = match after {
            Some(a) => a,
            // Only new messages: start from the current last seq.
            None => match self.state.broker.read_log(&channel, 0, 1).await {
                Ok(p) => p.last_seq,
                Err(e) => return self.broker_error(socket, e, channel.to_string()).await,
            },
        };
        if !self.channels.contains_key(&channel)
            && self.state.hub.subscribe(&channel, &self.handle)
            && let Err(e) = self
                .state
                .broker
                .subscribe_channel(&self.state.cfg.gateway_id, &channel)
                .await
        {
            self.state.hub.unsubscribe(&channel, &self.handle);
            return self.broker_error(socket, e, channel.to_string()).await;
        }
        // Registered before the replay: what is published meanwhile queues
        // up and is written after it, without repeats (seq check).
        self.channels.insert(channel.clone(), start);
        let (last_seq, recovered) = self.catch_up(socket, &channel, u64::MAX).await?;
        let done = ServerFrame::Subscribed {
            channel,
            last_seq,
            recovered,
        };
        self.write(socket, &done.to_json()).await
    }

    async fn unsubscribe(
        &mut self,
        socket: &mut WebSocket,
        channel: ConvId,
    ) -> Result<(), axum::Error> {
        if self.channels.remove(&channel).is_some() {
            leave_channel(&self.state, &channel, &self.handle).await;
        }
        self.write(socket, &ServerFrame::Unsubscribed { channel }.to_json())
            .await
    }

    /// Resend every `msg` whose ack is overdue, or give up on it after the
    /// last retry (the client then catches up with `sync`).
    async fn retry_due(&mut self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        let now = Instant::now();
        while let Some((at, _, _)) = self.timers.front() {
            if *at > now {
                break;
            }
            let Some((_, conv, seq)) = self.timers.pop_front() else {
                break;
            };
            let key = (conv, seq);
            let Some(p) = self.pending.get_mut(&key) else {
                continue;
            };
            if p.retries >= self.state.cfg.max_retries {
                self.pending.remove(&key);
                self.state.metrics.retries_exhausted.inc();
                continue;
            }
            p.retries += 1;
            let frame = p.frame.clone();
            self.state.metrics.retries.inc();
            self.timers
                .push_back((now + self.state.cfg.ack_timeout, key.0, key.1));
            self.write(socket, &frame).await?;
        }
        Ok(())
    }

    async fn on_text(&mut self, socket: &mut WebSocket, t: &str) -> Result<(), axum::Error> {
        self.maybe_touch().await;
        let frame = match ClientFrame::from_json(t) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!("malformed frame: {e}");
                return self.error(socket, ErrorCode::BadFrame, &msg, None).await;
            }
        };
        // Acks are exempt: each answers a frame we sent, so they are bounded
        // by our own output, and refusing them would only cause resends.
        if !matches!(frame, ClientFrame::Ack { .. }) && self.frames.check().is_err() {
            let reference = match &frame {
                ClientFrame::Send { id, .. } => Some(id.to_string()),
                _ => None,
            };
            return self
                .error(
                    socket,
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                    reference,
                )
                .await;
        }
        match frame {
            ClientFrame::Auth { .. } => {
                self.error(socket, ErrorCode::BadFrame, "already authenticated", None)
                    .await
            }
            ClientFrame::Ping {} => self.write(socket, &ServerFrame::Pong {}.to_json()).await,
            ClientFrame::Send { conv, id, body } => {
                if self.sends.check().is_err() {
                    return self
                        .error(
                            socket,
                            ErrorCode::RateLimited,
                            "sending too fast; retry later with the same id",
                            Some(id.to_string()),
                        )
                        .await;
                }
                let req = SendRequest {
                    conv,
                    id,
                    from: self.user,
                    body,
                    privileged: false,
                };
                let reference = req.id.to_string();
                match crate::history::send(&self.state, req).await {
                    Ok(out) => {
                        let m = &out.message;
                        let sent = ServerFrame::Sent {
                            id: m.id.clone(),
                            conv: m.conv.clone(),
                            seq: m.seq,
                            ts: m.ts,
                        };
                        self.write(socket, &sent.to_json()).await?;
                        if !out.duplicate {
                            self.state.metrics.messages_in.inc();
                            if m.conv.kind() == ConvKind::Channel {
                                publish_channel(&self.state, out.message).await;
                            } else {
                                let ack = Some((m.conv.clone(), m.seq));
                                let frame = ServerFrame::Msg(out.message).to_json();
                                self.route(out.members, frame, ack, true).await;
                            }
                        }
                        Ok(())
                    }
                    Err(e) => self.broker_error(socket, e, reference).await,
                }
            }
            // Channel messages are not acked (no per-viewer delivery
            // tracking); an ack for one is ignored.
            ClientFrame::Ack { conv, .. } if conv.kind() == ConvKind::Channel => Ok(()),
            ClientFrame::Read { conv, .. } | ClientFrame::Typing { conv }
                if conv.kind() == ConvKind::Channel =>
            {
                let msg = "channels have no read receipts or typing indicators";
                self.error(socket, ErrorCode::BadFrame, msg, Some(conv.to_string()))
                    .await
            }
            ClientFrame::Ack { conv, seq } => {
                self.pending.remove(&(conv.clone(), seq));
                if self.require_member(socket, &conv).await? {
                    let hw = self.acked.entry(conv).or_default();
                    *hw = (*hw).max(seq);
                    self.flush_at
                        .get_or_insert_with(|| Instant::now() + self.state.cfg.receipt_delay);
                }
                Ok(())
            }
            ClientFrame::Read { conv, seq } => self.mark(socket, conv, Mark::Read, seq).await,
            ClientFrame::Typing { conv } => self.typing(socket, conv).await,
            ClientFrame::Sync { conv, after } => self.sync(socket, conv, after).await,
            ClientFrame::Subscribe { channel, after } => {
                self.subscribe(socket, channel, after).await
            }
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(socket, channel).await,
        }
    }

    /// Refresh `last_seen`, at most twice per heartbeat interval.
    async fn maybe_touch(&mut self) {
        if self.last_touch.elapsed() >= self.state.cfg.heartbeat / 2 {
            self.last_touch = Instant::now();
            let _ = self.state.broker.touch(&self.user, now_ms()).await;
        }
    }

    async fn broker_error(
        &self,
        socket: &mut WebSocket,
        e: BrokerError,
        reference: String,
    ) -> Result<(), axum::Error> {
        let (code, msg) = match &e {
            BrokerError::NotMember => (ErrorCode::Forbidden, "not a member of this conversation"),
            BrokerError::NotPublisher => (ErrorCode::Forbidden, "not a publisher of this channel"),
            BrokerError::Unavailable(_) => (
                ErrorCode::Unavailable,
                "broker unavailable; retry with the same id",
            ),
            BrokerError::AlreadyExists | BrokerError::Corrupt(_) | BrokerError::Unseeded(_) => {
                (ErrorCode::Internal, "internal error")
            }
        };
        if !matches!(e, BrokerError::NotMember | BrokerError::NotPublisher) {
            tracing::warn!(error = %e, "broker call failed");
        }
        self.error(socket, code, msg, Some(reference)).await
    }

    /// Check membership through the cache; answers `forbidden` itself.
    async fn require_member(
        &self,
        socket: &mut WebSocket,
        conv: &ConvId,
    ) -> Result<bool, axum::Error> {
        match self.state.is_member(conv, &self.user).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.error(
                    socket,
                    ErrorCode::Forbidden,
                    "not a member of this conversation",
                    Some(conv.to_string()),
                )
                .await?;
                Ok(false)
            }
            Err(e) => {
                self.broker_error(socket, e, conv.to_string()).await?;
                Ok(false)
            }
        }
    }

    /// A `read`: raise the read watermark now (a user action, never bulk).
    async fn mark(
        &mut self,
        socket: &mut WebSocket,
        conv: ConvId,
        mark: Mark,
        seq: u64,
    ) -> Result<(), axum::Error> {
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        match self.apply_mark(&conv, mark, seq).await {
            Ok(()) => Ok(()),
            Err(e) => self.broker_error(socket, e, conv.to_string()).await,
        }
    }

    /// Raise the watermark and, when it moved, send the receipt to every
    /// member's devices (the other members and this user's other devices).
    async fn apply_mark(&self, conv: &ConvId, mark: Mark, seq: u64) -> Result<(), BrokerError> {
        let Some(w) = self.state.broker.mark(conv, &self.user, mark, seq).await? else {
            return Ok(());
        };
        let Some(members) = self.state.members(conv).await? else {
            return Ok(());
        };
        let frame = ServerFrame::Receipt {
            conv: conv.clone(),
            user: self.user,
            delivered: w.delivered,
            read: w.read,
        }
        .to_json();
        self.route(members.as_ref().clone(), frame, None, true)
            .await;
        Ok(())
    }

    /// Apply the acks gathered since the last flush.
    async fn flush_acks(&mut self) {
        self.flush_at = None;
        for (conv, seq) in std::mem::take(&mut self.acked) {
            if let Err(e) = self.apply_mark(&conv, Mark::Delivered, seq).await {
                tracing::warn!(error = %e, %conv, "delivered watermark not recorded");
            }
        }
    }

    async fn typing(&mut self, socket: &mut WebSocket, conv: ConvId) -> Result<(), axum::Error> {
        // Typing is best-effort: over-frequent indicators are dropped silently.
        let now = Instant::now();
        if self
            .typing
            .get(&conv)
            .is_some_and(|at| now.duration_since(*at) < self.state.cfg.typing_interval)
        {
            return Ok(());
        }
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        if self.typing.len() > 64 {
            let interval = self.state.cfg.typing_interval;
            self.typing
                .retain(|_, at| now.duration_since(*at) < interval);
        }
        self.typing.insert(conv.clone(), now);
        let Ok(Some(members)) = self.state.members(&conv).await else {
            return Ok(());
        };
        let others: Vec<Address> = members
            .iter()
            .copied()
            .filter(|m| *m != self.user)
            .collect();
        let frame = ServerFrame::Typing {
            conv,
            user: self.user,
        }
        .to_json();
        self.route(others, frame, None, false).await;
        Ok(())
    }

    async fn sync(
        &mut self,
        socket: &mut WebSocket,
        conv: ConvId,
        after: u64,
    ) -> Result<(), axum::Error> {
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        let limit = self.state.cfg.sync_limit.max(1);
        let page = match crate::history::replay(&self.state, &conv, after, limit).await {
            Ok(p) => p,
            Err(crate::history::HistoryError::Broker(e)) => {
                return self.broker_error(socket, e, conv.to_string()).await;
            }
            Err(crate::history::HistoryError::Store(e)) => {
                tracing::warn!(error = %e, "history read failed");
                let msg = "message history unavailable; sync again shortly";
                return self
                    .error(socket, ErrorCode::Unavailable, msg, Some(conv.to_string()))
                    .await;
            }
        };
        let recovered = page.recovered;
        for m in page.messages {
            let seq = m.seq;
            let frame: Arc<str> = ServerFrame::Msg(m).to_json().into();
            self.write_msg(socket, conv.clone(), seq, frame).await?;
        }
        let synced = ServerFrame::Synced {
            conv,
            recovered,
            last_seq: page.last_seq,
            epoch: page.epoch,
            epoch_base: page.epoch_base,
        };
        self.write(socket, &synced.to_json()).await
    }

    /// Route a frame to `users` through the broker. Failures are logged, not
    /// answered: the message is already durable and recipients resync.
    async fn route(
        &self,
        users: Vec<Address>,
        frame: String,
        ack: Option<(ConvId, u64)>,
        skip_self: bool,
    ) {
        if users.is_empty() {
            return;
        }
        let ev = Routed {
            users,
            frame: frame.into(),
            ack,
            skip_conn: skip_self.then(|| self.handle.name.clone()),
            channel: None,
        };
        match self
            .state
            .broker
            .route_local(ev, &self.state.cfg.gateway_id)
            .await
        {
            Ok(Some(mine)) => self.state.hub.deliver(&mine),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fan-out failed; recipients will catch up by sync")
            }
        }
    }
}

/// `ts` of a serialized `msg` frame, for the latency histogram. The frame was
/// produced by us, so a cheap scan for the last `"ts":` suffices.
fn frame_ts(frame: &str) -> Option<u64> {
    let i = frame.rfind("\"ts\":")?;
    let digits: String = frame[i + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn classify_read_error(e: axum::Error) -> Exit {
    let msg = e.to_string();
    // tungstenite reports an oversized frame or message as a capacity error.
    if msg.contains("Space limit exceeded") || msg.contains("too long") || msg.contains("too big") {
        Exit::Close(close::TOO_BIG, "frame larger than 64 KiB")
    } else {
        tracing::debug!(error = %msg, "socket read failed");
        Exit::Gone
    }
}
