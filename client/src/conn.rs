//! The connection task: owns the WebSocket, reconnects, and runs the outbox
//! and the tracker against whichever connection is up.
//!
//! One task does everything (read, write, timers, app commands), so the state
//! needs no locks and a connection's frames are written in the order the app
//! issued them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::frames::{ClientFrame, ErrorCode, ServerFrame, close};
use switchboard_proto::ids::{Address, ConvId};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::error::TlsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config,
};

use crate::backoff::{Backoff, jitter};
use crate::error::ClientError;
use crate::event::Event;
use crate::options::ClientOptions;
use crate::outbox::{Entry, ErrorOutcome, Outbox, RetryPolicy, Sent};
use crate::relayed::RelayedIds;
use crate::tls::{Tls, describe, tls_failure};
use crate::tracker::{SyncTimers, Tracker};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection that lived at least this long resets the reconnect backoff;
/// one that keeps failing sooner backs off further each time.
const STABLE_AFTER: Duration = Duration::from_secs(1);

/// Largest frame accepted from the server: a `msg` is a send frame (at most
/// 64 KiB) plus a few fields.
const MAX_INBOUND: usize = 1 << 20;

/// What the app asks the task to do.
pub(crate) enum Command {
    Send(Entry),
    Read { conv: ConvId, seq: u64 },
    Typing { conv: ConvId },
    Ping(oneshot::Sender<Result<Duration, ClientError>>),
    Track { conv: ConvId, after: u64 },
    Close(oneshot::Sender<()>),
}

/// An authenticated socket, `ready` received.
pub(crate) struct Connected {
    ws: Ws,
    pub user: Address,
    heartbeat: Duration,
}

pub(crate) enum DialError {
    Unauthorized(String),
    /// TLS could not be set up, or the handshake failed (an untrusted
    /// certificate): reported as [`ClientError::Tls`].
    Tls(String),
    Failed(String),
}

impl From<DialError> for ClientError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Unauthorized(m) => ClientError::Unauthorized(m),
            DialError::Tls(m) => ClientError::Tls(m),
            DialError::Failed(m) => ClientError::WebSocket(m),
        }
    }
}

/// Open `url`, send `auth {token}`, wait for `ready`.
pub(crate) async fn dial(
    url: &str,
    token: &str,
    tls: &Tls,
    limit: Duration,
) -> Result<Connected, DialError> {
    match timeout(limit, dial_inner(url, token, tls)).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Failed(format!("no ready within {limit:?}"))),
    }
}

async fn dial_inner(url: &str, token: &str, tls: &Tls) -> Result<Connected, DialError> {
    let failed = |e: &dyn std::fmt::Display| DialError::Failed(e.to_string());
    let cfg = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND));
    // The TLS configuration is built for wss:// only (plain ws:// works
    // on machines without a trust store).
    let connector = if url.starts_with("wss://") {
        let config = tls.client_config().map_err(|e| match e {
            ClientError::Tls(m) => DialError::Tls(m),
            other => DialError::Failed(other.to_string()),
        })?;
        Connector::Rustls(config)
    } else {
        Connector::Plain
    };
    let (mut ws, _) = connect_async_tls_with_config(url, Some(cfg), true, Some(connector))
        .await
        .map_err(|e| match &e {
            WsError::Tls(TlsError::Rustls(r)) => DialError::Tls(describe(r)),
            _ => match tls_failure(&e) {
                Some(m) => DialError::Tls(m),
                None => failed(&e),
            },
        })?;
    let auth = frame_text(&ClientFrame::Auth {
        token: token.to_owned(),
    })
    .map_err(|e| failed(&e))?;
    ws.send(WsMsg::text(auth)).await.map_err(|e| failed(&e))?;
    loop {
        match ws.next().await {
            None => return Err(DialError::Failed("connection closed before ready".into())),
            Some(Err(e)) => return Err(failed(&e)),
            Some(Ok(WsMsg::Text(t))) => match ServerFrame::from_json(t.as_str()) {
                Ok(ServerFrame::Ready { user, heartbeat_ms }) => {
                    return Ok(Connected {
                        ws,
                        user,
                        heartbeat: Duration::from_millis(heartbeat_ms),
                    });
                }
                Ok(ServerFrame::Error {
                    code: ErrorCode::Unauthorized,
                    message,
                    ..
                }) => return Err(DialError::Unauthorized(message)),
                Ok(other) => tracing::debug!(?other, "frame before ready ignored"),
                Err(e) => {
                    return Err(DialError::Failed(format!(
                        "unreadable frame before ready: {e}"
                    )));
                }
            },
            Some(Ok(WsMsg::Close(f))) => {
                let (code, reason) = close_info(f.as_ref());
                return Err(if code == Some(close::UNAUTHORIZED) {
                    DialError::Unauthorized(reason)
                } else {
                    DialError::Failed(format!("closed before ready ({code:?}): {reason}"))
                });
            }
            Some(Ok(_)) => {}
        }
    }
}

pub(crate) fn frame_text(f: &ClientFrame) -> Result<String, ClientError> {
    serde_json::to_string(f).map_err(|e| ClientError::Protocol(format!("cannot encode frame: {e}")))
}

fn close_info(f: Option<&CloseFrame>) -> (Option<u16>, String) {
    match f {
        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
        None => (None, "closed without a code".into()),
    }
}

/// Why a connection (or the whole task) ended.
enum End {
    /// The app closed the client or dropped every handle.
    Closed,
    /// The server refused the session: stop for good.
    Unauthorized(String),
    /// Anything else: reconnect.
    Lost { code: Option<u16>, reason: String },
}

fn lost(reason: impl std::fmt::Display) -> End {
    End::Lost {
        code: None,
        reason: reason.to_string(),
    }
}

/// A `pong` we wait for: the app's `ping()` (with its start time) or a heartbeat.
type PingWaiter = Option<(Instant, oneshot::Sender<Result<Duration, ClientError>>)>;

pub(crate) struct Task {
    ws_url: String,
    token: String,
    opts: ClientOptions,
    cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    outbox: Outbox,
    tracker: Tracker,
    /// Messages seen through the server's fallback relay (surfaced once).
    relayed: RelayedIds,
    /// The signed-in user (known once a connection is ready).
    user: Option<Address>,
    /// Read marks waiting for a connection (highest per conversation).
    reads: HashMap<ConvId, u64>,
    backoff: Backoff,
    closing: Option<oneshot::Sender<()>>,
}

impl Task {
    pub fn new(
        ws_url: String,
        token: String,
        opts: ClientOptions,
        cmds: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let mut tracker = Tracker::new(
            opts.backfill_new,
            SyncTimers {
                gap_grace: opts.gap_grace,
                sync_timeout: opts.sync_timeout,
                retry_after: opts.retry_base.max(Duration::from_millis(100)) * 5,
            },
        );
        for (conv, after) in &opts.track {
            tracker.track(conv.clone(), *after);
        }
        Task {
            relayed: RelayedIds::default(),
            user: None,
            outbox: Outbox::new(
                opts.max_in_flight,
                RetryPolicy {
                    base: opts.retry_base,
                    cap: opts.backoff_cap,
                    answer_timeout: opts.send_timeout,
                },
            ),
            backoff: Backoff::new(opts.backoff_base, opts.backoff_cap),
            tracker,
            reads: HashMap::new(),
            closing: None,
            ws_url,
            token,
            opts,
            cmds,
            events,
        }
    }

    fn emit(&self, e: Event) {
        // The app may have stopped listening; the task carries on regardless.
        let _ = self.events.send(e);
    }

    pub async fn run(mut self, first: Connected) {
        let mut next = Some(first);
        loop {
            let conn = match next.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Ok(c) => c,
                    Err(end) => return self.finish(end),
                },
            };
            let started = Instant::now();
            match self.serve(conn).await {
                End::Lost { code, reason } => {
                    tracing::debug!(?code, %reason, "connection lost; reconnecting");
                    self.emit(Event::Disconnected { code, reason });
                    self.outbox.on_disconnect();
                    if started.elapsed() >= STABLE_AFTER {
                        self.backoff.reset();
                    }
                }
                end => return self.finish(end),
            }
        }
    }

    /// The task ends: tell the app why and fail whatever is still pending.
    fn finish(mut self, end: End) {
        let err: Box<dyn Fn() -> ClientError> = match end {
            End::Unauthorized(message) => {
                self.emit(Event::Error {
                    code: ErrorCode::Unauthorized,
                    message: message.clone(),
                    reference: None,
                });
                self.emit(Event::Disconnected {
                    code: Some(close::UNAUTHORIZED),
                    reason: message.clone(),
                });
                Box::new(move || ClientError::Unauthorized(message.clone()))
            }
            End::Closed | End::Lost { .. } => {
                self.emit(Event::Disconnected {
                    code: Some(1000),
                    reason: "closed by the client".into(),
                });
                Box::new(|| ClientError::Closed)
            }
        };
        self.outbox.fail_all(&err);
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Command::Send(e) => e.resolve(Err(err())),
                Command::Ping(tx) => {
                    let _ = tx.send(Err(err()));
                }
                Command::Close(tx) => {
                    let _ = tx.send(());
                }
                Command::Read { .. } | Command::Typing { .. } | Command::Track { .. } => {}
            }
        }
        if let Some(tx) = self.closing.take() {
            let _ = tx.send(());
        }
    }

    /// Handle an app command while no connection is up. `Some` ends the task.
    fn offline_command(&mut self, cmd: Option<Command>) -> Option<End> {
        match cmd? {
            Command::Send(e) => self.outbox.push(e),
            Command::Read { conv, seq } => self.note_read(conv, seq),
            Command::Typing { .. } => {} // ephemeral: pointless later
            Command::Ping(tx) => {
                let _ = tx.send(Err(ClientError::NotConnected));
            }
            Command::Track { conv, after } => self.tracker.track(conv, after),
            Command::Close(tx) => {
                self.closing = Some(tx);
                return Some(End::Closed);
            }
        }
        None
    }

    fn note_read(&mut self, conv: ConvId, seq: u64) {
        let r = self.reads.entry(conv).or_insert(seq);
        *r = (*r).max(seq);
    }

    /// Back off, then dial until a connection is up; app commands keep being
    /// served meanwhile (sends queue in the outbox).
    async fn reconnect(&mut self) -> Result<Connected, End> {
        loop {
            let wake = Instant::now() + self.backoff.next_delay();
            loop {
                tokio::select! {
                    _ = sleep_until(wake) => break,
                    cmd = self.cmds.recv() => {
                        if let Some(end) = self.offline_command(cmd) {
                            return Err(end);
                        }
                    }
                }
            }
            let (url, token, tls) = (
                self.ws_url.clone(),
                self.token.clone(),
                self.opts.tls.clone(),
            );
            let attempt = dial(&url, &token, &tls, self.opts.connect_timeout);
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    cmd = self.cmds.recv() => {
                        if let Some(end) = self.offline_command(cmd) {
                            return Err(end);
                        }
                    }
                }
            };
            match result {
                Ok(c) => return Ok(c),
                Err(DialError::Unauthorized(m)) => return Err(End::Unauthorized(m)),
                Err(DialError::Failed(reason) | DialError::Tls(reason)) => {
                    tracing::debug!(%reason, "reconnect attempt failed")
                }
            }
        }
    }

    /// Run one connection until it ends.
    async fn serve(&mut self, conn: Connected) -> End {
        let Connected {
            mut ws,
            user,
            heartbeat,
        } = conn;
        let heartbeat = self.opts.heartbeat.unwrap_or(heartbeat);
        let heartbeat = if heartbeat.is_zero() {
            Duration::from_secs(30)
        } else {
            heartbeat
        };
        // Jittered within [3/4, 1] of the interval: spread out, never late.
        let next_beat = |now: Instant| now + heartbeat * 3 / 4 + jitter(heartbeat / 4);
        self.user = Some(user);
        self.emit(Event::Connected { user });
        self.tracker.on_connect();
        let mut pings: VecDeque<PingWaiter> = VecDeque::new();
        let mut beat_at = next_beat(Instant::now());
        let mut silent_since: Option<Instant> = None;

        let end = 'conn: {
            if let Err(end) = self.pump(&mut ws).await {
                break 'conn end;
            }
            loop {
                let mut deadline = beat_at;
                if let Some(s) = silent_since {
                    deadline = deadline.min(s + self.opts.pong_timeout);
                }
                for d in [self.tracker.next_deadline(), self.outbox.next_deadline()]
                    .into_iter()
                    .flatten()
                {
                    deadline = deadline.min(d);
                }
                tokio::select! {
                    cmd = self.cmds.recv() => {
                        let frame = match cmd {
                            None => {
                                close_ws(&mut ws).await;
                                break 'conn End::Closed;
                            }
                            Some(Command::Close(tx)) => {
                                self.closing = Some(tx);
                                close_ws(&mut ws).await;
                                break 'conn End::Closed;
                            }
                            Some(Command::Send(e)) => {
                                self.outbox.push(e);
                                None
                            }
                            Some(Command::Read { conv, seq }) => {
                                self.note_read(conv, seq);
                                None
                            }
                            Some(Command::Typing { conv }) => Some(ClientFrame::Typing { conv }),
                            Some(Command::Ping(tx)) => {
                                pings.push_back(Some((Instant::now(), tx)));
                                Some(ClientFrame::Ping {})
                            }
                            Some(Command::Track { conv, after }) => {
                                self.tracker.track(conv, after);
                                None
                            }
                        };
                        if let Some(f) = frame
                            && let Err(end) = self.write_frame(&mut ws, &f).await
                        {
                            break 'conn end;
                        }
                    }
                    incoming = ws.next() => {
                        silent_since = None;
                        match incoming {
                            None => break 'conn lost("connection closed"),
                            Some(Err(e)) => break 'conn lost(e),
                            Some(Ok(WsMsg::Text(t))) => {
                                if let Err(end) = self.on_frame(&mut ws, t.as_str(), &mut pings).await {
                                    break 'conn end;
                                }
                            }
                            Some(Ok(WsMsg::Close(f))) => {
                                let (code, reason) = close_info(f.as_ref());
                                if code == Some(close::UNAUTHORIZED) {
                                    break 'conn End::Unauthorized(reason);
                                }
                                break 'conn End::Lost { code, reason };
                            }
                            Some(Ok(_)) => {}
                        }
                    }
                    _ = sleep_until(deadline) => {
                        let now = Instant::now();
                        if silent_since.is_some_and(|s| now >= s + self.opts.pong_timeout) {
                            break 'conn lost("no answer to heartbeat");
                        }
                        if now >= beat_at {
                            beat_at = next_beat(now);
                            silent_since.get_or_insert(now);
                            pings.push_back(None);
                            if let Err(end) = self.write_frame(&mut ws, &ClientFrame::Ping {}).await {
                                break 'conn end;
                            }
                        }
                        self.outbox.expire(now);
                    }
                }
                if let Err(end) = self.pump(&mut ws).await {
                    break 'conn end;
                }
            }
        };
        for (_, tx) in pings.into_iter().flatten() {
            let _ = tx.send(Err(ClientError::NotConnected));
        }
        end
    }

    /// Write whatever is due: syncs, read marks, queued sends.
    async fn pump(&mut self, ws: &mut Ws) -> Result<(), End> {
        let now = Instant::now();
        for (conv, after) in self.tracker.due_syncs(now) {
            self.write_frame(ws, &ClientFrame::Sync { conv, after })
                .await?;
        }
        let reads: Vec<(ConvId, u64)> = self.reads.drain().collect();
        for (conv, seq) in reads {
            self.write_frame(ws, &ClientFrame::Read { conv, seq })
                .await?;
        }
        for text in self.outbox.take_due(now) {
            self.write_text(ws, text).await?;
        }
        Ok(())
    }

    async fn write_frame(&self, ws: &mut Ws, f: &ClientFrame) -> Result<(), End> {
        let text = frame_text(f).map_err(lost)?;
        self.write_text(ws, text).await
    }

    async fn write_text(&self, ws: &mut Ws, text: String) -> Result<(), End> {
        // A server that stops reading would block this write forever.
        match timeout(self.opts.connect_timeout, ws.send(WsMsg::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(e)),
            Err(_) => Err(lost("write timed out")),
        }
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        text: &str,
        pings: &mut VecDeque<PingWaiter>,
    ) -> Result<(), End> {
        let frame = match ServerFrame::from_json(text) {
            Ok(f) => f,
            Err(e) => {
                // A newer server may add frame types; skip what we cannot read.
                tracing::warn!(error = %e, "unreadable server frame ignored");
                return Ok(());
            }
        };
        let now = Instant::now();
        match frame {
            ServerFrame::Ready { .. } => {}
            // Answers to channel subscriptions, which this SDK does not make
            // yet (channels are followed with raw frames or SSE for now).
            ServerFrame::Subscribed { .. } | ServerFrame::Unsubscribed { .. } => {}
            ServerFrame::Sent {
                id,
                conv,
                seq,
                ts,
                relayed,
            } => {
                let sent = Sent {
                    id,
                    conv,
                    seq,
                    ts,
                    relayed,
                };
                self.outbox.on_sent(&sent);
                if relayed {
                    // No seq yet: the sequenced copy comes as a `msg` later
                    // and is not surfaced again.
                    if let Some(me) = self.user {
                        self.relayed.first_copy(&sent.conv, me, &sent.id);
                    }
                } else {
                    for m in self.tracker.on_sent(&sent.conv, seq, &sent.id, now) {
                        self.emit(Event::Message(m));
                    }
                }
            }
            // Relayed (no seq): surfaced once, never acked.
            ServerFrame::Msg(m) if m.relayed => {
                if self.relayed.first_copy(&m.conv, m.from, &m.id) {
                    self.emit(Event::Message(m));
                }
            }
            ServerFrame::Msg(m) => {
                let ack = ClientFrame::Ack {
                    conv: m.conv.clone(),
                    seq: m.seq,
                };
                self.write_frame(ws, &ack).await?;
                if let Some(keep) = self.tracker.renumbered(&m) {
                    // Held under another id: the server renumbered from
                    // m.seq (see Tracker::renumbered); the sync now due
                    // brings m and the rest back.
                    tracing::warn!(conv = %m.conv, seq = m.seq, keep, "a held seq came back under another id: the server renumbered; resyncing");
                    return Ok(());
                }
                for m in self.tracker.on_msg(m, now) {
                    if !self.relayed.sequenced(&m.conv, m.from, &m.id) {
                        self.emit(Event::Message(m));
                    }
                }
            }
            ServerFrame::Receipt {
                conv,
                user,
                delivered,
                read,
            } => self.emit(Event::Receipt {
                conv,
                user,
                delivered,
                read,
            }),
            ServerFrame::Typing { conv, user } => self.emit(Event::Typing { conv, user }),
            ServerFrame::Presence {
                user,
                status,
                last_seen,
            } => self.emit(Event::Presence {
                user,
                status,
                last_seen,
            }),
            ServerFrame::Synced {
                conv,
                recovered,
                last_seq,
                epoch,
                epoch_base,
            } => {
                let synced = crate::tracker::Synced {
                    recovered,
                    last_seq,
                    epoch,
                    epoch_base,
                };
                let out = self.tracker.on_synced(&conv, synced, now);
                if out.epoch_changed {
                    tracing::warn!(%conv, epoch, epoch_base, "conversation rebuilt by the server; resyncing above the epoch base");
                }
                for m in out.surfaced {
                    self.emit(Event::Message(m));
                }
                if out.lost > 0 {
                    tracing::warn!(%conv, lost = out.lost, "messages no longer available at the server");
                }
                let held = self.tracker.held(&conv).unwrap_or(last_seq);
                self.emit(Event::Synced {
                    conv,
                    last_seq,
                    held,
                    lost: out.lost,
                });
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => self.on_error(code, message, reference, now),
            ServerFrame::Pong {} => {
                if let Some(Some((at, tx))) = pings.pop_front() {
                    let _ = tx.send(Ok(at.elapsed()));
                }
            }
        }
        Ok(())
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        reference: Option<String>,
        now: Instant,
    ) {
        match &reference {
            Some(r) => {
                if self.outbox.on_error(r, code, &message, now) != ErrorOutcome::NotOurs {
                    return;
                }
                if let Ok(conv) = r.parse::<ConvId>() {
                    let permanent = matches!(
                        code,
                        ErrorCode::Forbidden
                            | ErrorCode::NotFound
                            | ErrorCode::BadFrame
                            | ErrorCode::Invalid
                    );
                    self.tracker.on_sync_error(&conv, permanent, now);
                }
            }
            None if code == ErrorCode::RateLimited => self.outbox.recheck_soon(now),
            None => {}
        }
        self.emit(Event::Error {
            code,
            message,
            reference,
        });
    }
}

/// Close handshake, bounded: say goodbye and wait briefly for the server's close.
async fn close_ws(ws: &mut Ws) {
    let _ = timeout(Duration::from_secs(1), async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closing".into(),
        };
        if ws.send(WsMsg::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
