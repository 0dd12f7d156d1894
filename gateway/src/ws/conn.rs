//! One WebSocket connection after authentication: a single task multiplexes
//! the socket's inbound frames, the hub's outbound queue, ack-retry timers
//! and the idle and close signals. One task per
//! socket (rather than a reader and a writer task) keeps idle connections
//! small, and handling a client's frames in order keeps its sends in the
//! order it wrote them.

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::SinkExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use switchboard_proto::frames::{ErrorCode, ServerFrame, close};
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::time::now_ms;
use tokio::time::{Duration, Instant, sleep_until};

use super::sparse::SparseMap;
use crate::cursor::SeqCursor;
use crate::hub::{ConnHandle, Outbound};
use crate::service::{Liveness, Principal};
use crate::state::AppState;

/// Why the loop ended, and what to tell the client.
pub(super) enum Exit {
    /// The client closed or the transport failed: nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// How long the close frame may take to go out before the socket is
/// dropped without it.
const CLOSE_FRAME_WAIT: Duration = Duration::from_secs(1);

/// Queued outbound items written with one flush ([`Conn::write_outbound`]).
/// Bounded so that a socket with a full queue still gets back to reading
/// its own frames and to its timers between batches.
const OUTBOX_BATCH: usize = 64;

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

/// Serve an authenticated socket until it closes.
/// The socket is borrowed, not moved in: the task that calls this holds it
/// already, and a moved-in copy would be a second ~370 bytes per socket in
/// this (boxed) future. The connect and disconnect steps are boxed too, so
/// this future is as large as the select loop's state, not as theirs. Not an
/// `async fn`, whose future would keep the arguments twice.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future would hold its arguments twice (see above)"
)]
pub fn serve(
    state: Arc<AppState>,
    socket: &mut WebSocket,
    caller: Principal,
) -> impl Future<Output = ()> + Send + '_ {
    async move {
        let user = caller.user;
        let handle = Box::pin(
            state
                .chat
                .connect(user, Some(caller.session), Liveness::Heartbeat),
        )
        .await;
        let ready = ServerFrame::Ready {
            user,
            heartbeat_ms: state.cfg.heartbeat.as_millis() as u64,
        };
        let mut conn = Conn {
            sends: limiter(state.cfg.send_rate, state.cfg.send_burst),
            frames: limiter(state.cfg.frame_rate, state.cfg.frame_burst),
            state,
            user,
            handle,
            pending: BTreeMap::new(),
            timers: VecDeque::new(),
            refused_in_row: 0,
            typing: SparseMap::default(),
            last_touch: Instant::now(),
            channels: SparseMap::default(),
        };
        let exit = if socket.send(text(&ready.to_json())).await.is_err() {
            Exit::Gone
        } else {
            conn.run(socket).await
        };
        Box::pin(conn.finish(socket, exit)).await;
    }
}

pub(super) fn text(s: &str) -> WsMessage {
    WsMessage::Text(s.into())
}

pub(super) struct Conn {
    pub(super) state: Arc<AppState>,
    pub(super) user: Address,
    pub(super) handle: Arc<ConnHandle>,
    // The maps are `BTreeMap`s: 24 bytes inline and no allocation while
    // empty (a `HashMap` is 48 with its hasher), on every idle socket; the
    // ones few sockets use are `SparseMap`s, 8 bytes.
    pending: BTreeMap<(ConvId, u64), Pending>,
    /// Retry deadlines in the order they fall due (every retry waits the same
    /// interval, so pushing to the back keeps the queue sorted). Entries for
    /// acked messages are skipped lazily.
    timers: VecDeque<(Instant, ConvId, u64)>,
    pub(super) sends: DefaultDirectRateLimiter,
    pub(super) frames: DefaultDirectRateLimiter,
    /// Frames refused by `frames` since the last one it admitted.
    pub(super) refused_in_row: u32,
    /// When this socket last relayed typing, per conversation.
    pub(super) typing: SparseMap<ConvId, Instant>,
    last_touch: Instant,
    /// Subscribed channels and where this socket stands in each.
    pub(super) channels: SparseMap<ConvId, SeqCursor>,
}

impl Conn {
    /// After the loop: channels, the close frame, and the hub and registry.
    /// (Its acks were handed to the chat service as they came: they count
    /// after the socket ends too.)
    async fn finish(mut self, socket: &mut WebSocket, exit: Exit) {
        let state = self.state.clone();
        for channel in std::mem::take(&mut self.channels).into_keys() {
            state.chat.leave_channel(&channel, &self.handle).await;
        }
        if let Exit::Close(code, reason) = exit {
            // Bounded: a peer that has stopped reading would hold this task
            // (and its connection slot) for as long as it keeps its window
            // shut.
            let frame = WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_FRAME_WAIT, socket.send(frame)).await;
        }
        if let Some(left) = state
            .chat
            .disconnect(self.user, &self.handle, Liveness::Heartbeat)
        {
            left.await;
        }
    }

    async fn run(&mut self, socket: &mut WebSocket) -> Exit {
        let mut idle_at = Instant::now() + self.state.cfg.idle_timeout;
        let handle = self.handle.clone();
        let close = &handle.close;
        loop {
            // One timer for the earlier of the idle deadline and the next
            // retry: each `Sleep` in a `select!` is ~100 bytes of this
            // future, held by every idle socket. (Nothing else derived from
            // the timers is kept across the wait: it would be more bytes.)
            let wake = self.timers.front().map_or(idle_at, |t| t.0.min(idle_at));
            tokio::select! {
                biased;
                _ = close.closed() => {
                    let code = close.code();
                    let reason = match code {
                        close::SLOW_CONSUMER => "slow consumer: reconnect with backoff and resync",
                        close::GOING_AWAY => "gateway draining: reconnect",
                        close::UNAUTHORIZED => "session expired or revoked: sign in again",
                        close::FLOODING => "frames kept coming past the frame limit",
                        _ => "closed by server",
                    };
                    return Exit::Close(code, reason);
                }
                _ = sleep_until(wake) => {
                    let now = Instant::now();
                    if idle_at <= now {
                        return Exit::Close(close::IDLE_TIMEOUT, "idle timeout: send ping frames");
                    }
                    if self.timers.front().is_some_and(|t| t.0 <= now)
                        && Box::pin(self.retry_due(socket)).await.is_err()
                    {
                        return Exit::Gone;
                    }
                }
                item = handle.outbox.pop() => {
                    // Handlers are boxed so their state lives on the heap only while
                    // they run: an idle socket's task keeps just the select loop.
                    if Box::pin(self.write_outbound(socket, item)).await.is_err() {
                        return Exit::Gone;
                    }
                }
                incoming = socket.recv() => {
                    idle_at = Instant::now() + self.state.cfg.idle_timeout;
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

    /// Write one frame now: [`Conn::feed`] and [`Conn::flush`] in one
    /// wait (one race with the close signal, not two).
    pub(super) async fn write(&self, socket: &mut WebSocket, s: &str) -> Result<(), axum::Error> {
        tokio::select! {
            biased;
            r = socket.send(text(s)) => r,
            _ = self.handle.close.closed() => Err(closed_while_writing()),
        }
    }

    /// Queue one frame in the socket's write buffer: it goes out when the
    /// buffer passes `ws_write_buffer` bytes or at the next flush, so a
    /// burst of frames costs a few system calls rather than one each.
    /// Whoever feeds flushes before the task waits for anything else.
    ///
    /// A peer that stops reading fills its TCP window and a write would wait
    /// forever, so this (and `flush` and `write`) also ends when the socket
    /// is told to close (the hub does that when the send queue fills). The
    /// write is polled first: one that can go out does, even after the
    /// signal. Otherwise a close signalled by this very task (too many
    /// unacked messages, in `write_msg`) would cut the rest of its batch
    /// short half the time, and the loop would end as if the socket were
    /// gone, without the close frame that tells the client why.
    pub(super) async fn feed(&self, socket: &mut WebSocket, s: &str) -> Result<(), axum::Error> {
        tokio::select! {
            biased;
            r = socket.feed(text(s)) => r,
            _ = self.handle.close.closed() => Err(closed_while_writing()),
        }
    }

    /// Write out what [`Conn::feed`] queued.
    pub(super) async fn flush(&self, socket: &mut WebSocket) -> Result<(), axum::Error> {
        tokio::select! {
            biased;
            r = SinkExt::flush(socket) => r,
            _ = self.handle.close.closed() => Err(closed_while_writing()),
        }
    }

    /// Answer an `error` frame, counted by code.
    pub(super) async fn error(
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

    /// Feed a `msg` (the caller flushes) and start waiting for its ack.
    pub(super) async fn write_msg(
        &mut self,
        socket: &mut WebSocket,
        conv: ConvId,
        seq: u64,
        frame: Arc<str>,
    ) -> Result<(), axum::Error> {
        self.feed(socket, &frame).await?;
        self.state.metrics.messages_out.inc();
        let key = (conv, seq);
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_pending() {
            // A client that reads but never acks would grow this map (and
            // the retry timers) without end: it is a slow consumer. The close
            // signal wins the loop's next select; it reconnects and syncs.
            tracing::debug!(user = %self.user, "too many unacked messages");
            self.handle.close.close(close::SLOW_CONSUMER);
            return Ok(());
        }
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

    /// Unacked messages one socket may have: a full `sync` page plus four
    /// outbox queues' worth of live traffic.
    fn max_pending(&self) -> usize {
        let cfg = &self.state.cfg;
        cfg.sync_limit.max(1) + cfg.send_queue.saturating_mul(4)
    }

    /// Write `item` and whatever else is queued by now (up to
    /// [`OUTBOX_BATCH`] items), flushing once: a group's or channel's burst,
    /// or receipts arriving together, go out in as few writes as the
    /// buffer allows.
    async fn write_outbound(
        &mut self,
        socket: &mut WebSocket,
        item: Outbound,
    ) -> Result<(), axum::Error> {
        self.feed_outbound(socket, item).await?;
        for _ in 1..OUTBOX_BATCH {
            let Some(next) = self.handle.outbox.try_pop() else {
                break;
            };
            self.feed_outbound(socket, next).await?;
        }
        self.flush(socket).await
    }

    async fn feed_outbound(
        &mut self,
        socket: &mut WebSocket,
        item: Outbound,
    ) -> Result<(), axum::Error> {
        match item {
            Outbound::Frame(f) => self.feed(socket, &f).await,
            Outbound::Msg { ack, frame } => {
                let (conv, seq) = (ack.0.clone(), ack.1);
                self.observe_latency(&frame);
                self.write_msg(socket, conv, seq, frame).await
            }
            Outbound::Channel { seq, frame } => {
                self.write_channel_msg(socket, &seq.0, seq.1, &frame).await
            }
        }
    }

    /// Delivery latency from the message's server time, for the histogram.
    pub(super) fn observe_latency(&self, frame: &str) {
        if let Some(ts) = frame_ts(frame) {
            let lat = now_ms().saturating_sub(ts) as f64 / 1000.0;
            self.state.metrics.delivery_latency.observe(lat);
        }
    }

    /// An `ack`: the chat service gathers it with every socket's for its
    /// next watermark flush.
    pub(super) fn acked(&self, conv: ConvId, seq: u64) {
        self.state
            .chat
            .delivered(conv, self.user, seq, &self.handle);
    }

    /// Forget a `msg` that was acked: no more resends.
    pub(super) fn settle(&mut self, conv: &ConvId, seq: u64) {
        self.pending.remove(&(conv.clone(), seq));
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
            self.feed(socket, &frame).await?;
        }
        self.flush(socket).await
    }

    /// Refresh `last_seen`, at most twice per heartbeat interval.
    pub(super) async fn maybe_touch(&mut self) {
        if self.last_touch.elapsed() >= self.state.cfg.heartbeat / 2 {
            self.last_touch = Instant::now();
            self.state.chat.touch(&self.user, now_ms()).await;
        }
    }
}

/// `ts` of a serialized `msg` frame, for the latency histogram. The frame was
/// produced by us, so a cheap scan for the last `"ts":` suffices.
fn frame_ts(frame: &str) -> Option<u64> {
    let rest = &frame[frame.rfind("\"ts\":")? + 5..];
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn closed_while_writing() -> axum::Error {
    axum::Error::new("socket closed while writing")
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

/// Sizes for the `sizes` test in `ws/mod.rs`: `serve`'s future, `Conn::run`'s
/// future and `Conn`, in bytes.
#[cfg(test)]
pub(super) fn sizes() -> (usize, usize, usize) {
    fn ret3<'a, B, F: Future>(_: impl Fn(Arc<AppState>, &'a mut WebSocket, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn ret_run<'a, F: Future>(_: impl Fn(&'a mut Conn, &'a mut WebSocket) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    (ret3(serve), ret_run(Conn::run), std::mem::size_of::<Conn>())
}
