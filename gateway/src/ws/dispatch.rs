//! One function per client frame type. `on_text` parses a frame, applies
//! the per-socket frame limit and hands it on; each handler asks the chat
//! service and answers with the frame the protocol names, or an `error`
//! frame mapped from the service's error in [`Conn::chat_error`].

use std::sync::Arc;

use axum::extract::ws::WebSocket;
use serde_json::value::RawValue;
use switchboard_core::broker::{Mark, SendRequest};
use switchboard_proto::frames::{ClientFrame, ErrorCode, ServerFrame, close};
use switchboard_proto::ids::{ConvId, ConvKind, MsgId};
use tokio::time::Instant;

use super::conn::Conn;
use crate::service::{ChatError, Engine};

type WsResult = Result<(), axum::Error>;

/// The `limit` label of a socket closed for flooding frames.
const FRAME_FLOOD: &str = "frames";

/// Refusals in a row that close a socket: the frame burst, at least this.
const MIN_FLOOD_RUN: u32 = 100;

impl Conn {
    pub(super) async fn on_text(&mut self, socket: &mut WebSocket, t: &str) -> WsResult {
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
            // A client that keeps sending through a whole burst of refusals
            // is not slowing down: each refusal costs an answer, so close it
            // (the reconnect then passes the REST and connection limits).
            self.refused_in_row += 1;
            if self.refused_in_row >= self.state.cfg.frame_burst.max(MIN_FLOOD_RUN) {
                self.state.metrics.refusal(FRAME_FLOOD);
                self.handle.close.close(close::FLOODING);
                return Ok(());
            }
            let reference = match &frame {
                ClientFrame::Send { id, .. } => Some(id.to_string()),
                _ => None,
            };
            let msg = "too many frames; slow down";
            return self
                .error(socket, ErrorCode::RateLimited, msg, reference)
                .await;
        }
        self.refused_in_row = 0;
        match frame {
            ClientFrame::Auth { .. } => {
                self.error(socket, ErrorCode::BadFrame, "already authenticated", None)
                    .await
            }
            ClientFrame::Ping {} => self.write(socket, &ServerFrame::Pong {}.to_json()).await,
            ClientFrame::Send { conv, id, body } => self.on_send(socket, conv, id, body).await,
            ClientFrame::Ack { conv, seq } => self.on_ack(socket, conv, seq).await,
            ClientFrame::Read { conv, seq } => self.on_read(socket, conv, seq).await,
            ClientFrame::Typing { conv } => self.on_typing(socket, conv).await,
            ClientFrame::Sync { conv, after } => self.on_sync(socket, conv, after).await,
            ClientFrame::Subscribe { channel, after } => {
                self.on_subscribe(socket, channel, after).await
            }
            ClientFrame::Unsubscribe { channel } => self.on_unsubscribe(socket, channel).await,
        }
    }

    /// `send`: store it (answer `sent` with its seq), then deliver it.
    async fn on_send(
        &mut self,
        socket: &mut WebSocket,
        conv: ConvId,
        id: MsgId,
        body: Box<RawValue>,
    ) -> WsResult {
        if self.sends.check().is_err() {
            let msg = "sending too fast; retry later with the same id";
            return self
                .error(socket, ErrorCode::RateLimited, msg, Some(id.to_string()))
                .await;
        }
        let reference = id.to_string();
        let req = SendRequest {
            conv,
            id,
            from: self.user,
            body,
            privileged: false,
        };
        match self.state.chat.send(req).await {
            Ok(out) => {
                let m = &out.message;
                let sent = ServerFrame::Sent {
                    id: m.id.clone(),
                    conv: m.conv.clone(),
                    seq: m.seq,
                    ts: m.ts,
                    relayed: m.relayed,
                };
                self.write(socket, &sent.to_json()).await?;
                let handle = Arc::clone(&self.handle);
                self.state.chat.fan_out(out, Some(&handle)).await;
                Ok(())
            }
            Err(e) => self.chat_error(socket, e, reference).await,
        }
    }

    /// `ack`: the message reached this device. Stops its resends; the
    /// delivered watermark moves at the next flush. Channel messages are
    /// not acked (no per-viewer delivery tracking): such an ack is ignored.
    async fn on_ack(&mut self, socket: &mut WebSocket, conv: ConvId, seq: u64) -> WsResult {
        if conv.kind() == ConvKind::Channel {
            return Ok(());
        }
        self.settle(&conv, seq);
        if self.require_member(socket, &conv).await? {
            self.acked(conv, seq);
        }
        Ok(())
    }

    /// `read`: raise the read watermark now (a user action, never bulk).
    async fn on_read(&mut self, socket: &mut WebSocket, conv: ConvId, seq: u64) -> WsResult {
        if conv.kind() == ConvKind::Channel {
            return self.no_receipts_in_channels(socket, conv).await;
        }
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        let chat = &self.state.chat;
        match chat
            .mark(&conv, self.user, Mark::Read, seq, Some(&self.handle))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => self.chat_error(socket, e, conv.to_string()).await,
        }
    }

    /// `typing`: best effort; over-frequent indicators are dropped silently.
    async fn on_typing(&mut self, socket: &mut WebSocket, conv: ConvId) -> WsResult {
        if conv.kind() == ConvKind::Channel {
            return self.no_receipts_in_channels(socket, conv).await;
        }
        let now = Instant::now();
        let interval = self.state.cfg.typing_interval;
        if self
            .typing
            .get(&conv)
            .is_some_and(|at| now.duration_since(*at) < interval)
        {
            return Ok(());
        }
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        if self.typing.len() > 64 {
            self.typing
                .retain(|_, at| now.duration_since(*at) < interval);
        }
        self.typing.insert(conv.clone(), now);
        self.state.chat.typing(conv, self.user).await;
        Ok(())
    }

    /// `sync`: replay after `after` (each `msg` tracked for its ack), then
    /// `synced`.
    async fn on_sync(&mut self, socket: &mut WebSocket, conv: ConvId, after: u64) -> WsResult {
        if !self.require_member(socket, &conv).await? {
            return Ok(());
        }
        let limit = self.state.cfg.sync_limit.max(1);
        let page = match self.state.chat.replay(&conv, after, limit).await {
            Ok(p) => p,
            Err(e) => return self.chat_error(socket, e, conv.to_string()).await,
        };
        let recovered = page.recovered;
        // Channel messages take no acks: a channel's replay is written once,
        // never tracked for resending (its acks are ignored).
        let acked = conv.kind() != ConvKind::Channel;
        for m in page.messages {
            let seq = m.seq;
            let frame: Arc<str> = ServerFrame::Msg(m).to_json().into();
            if acked {
                self.write_msg(socket, conv.clone(), seq, frame).await?;
            } else {
                self.feed(socket, &frame).await?;
                self.state.metrics.messages_out.inc();
            }
        }
        // The page went into the write buffer; `synced` flushes it.
        let synced = ServerFrame::Synced {
            conv,
            recovered,
            last_seq: page.last_seq,
            epoch: page.epoch,
            epoch_base: page.epoch_base,
        };
        self.write(socket, &synced.to_json()).await
    }

    async fn no_receipts_in_channels(&self, socket: &mut WebSocket, conv: ConvId) -> WsResult {
        let msg = "channels have no read receipts or typing indicators";
        self.error(socket, ErrorCode::BadFrame, msg, Some(conv.to_string()))
            .await
    }

    /// Check the right to read `conv` through the members cache; answers
    /// `forbidden` itself.
    pub(super) async fn require_member(
        &self,
        socket: &mut WebSocket,
        conv: &ConvId,
    ) -> Result<bool, axum::Error> {
        match self.state.chat.can_read(conv, &self.user).await {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.chat_error(socket, ChatError::NotMember, conv.to_string())
                    .await?;
                Ok(false)
            }
            Err(e) => {
                self.chat_error(socket, e, conv.to_string()).await?;
                Ok(false)
            }
        }
    }

    /// The `error` frame for a refused or failed operation; `reference` is
    /// the message id or conversation it concerns.
    pub(super) async fn chat_error(
        &self,
        socket: &mut WebSocket,
        e: ChatError,
        reference: String,
    ) -> WsResult {
        let (code, msg) = match &e {
            ChatError::NotMember | ChatError::NotFound | ChatError::NoSuchMember => {
                (ErrorCode::Forbidden, "not a member of this conversation")
            }
            ChatError::NotPublisher => (ErrorCode::Forbidden, "not a publisher of this channel"),
            ChatError::Forbidden(m) => (ErrorCode::Forbidden, *m),
            ChatError::Invalid(m) => {
                return self
                    .error(socket, ErrorCode::Invalid, m, Some(reference))
                    .await;
            }
            ChatError::Reserved { .. } => {
                return self
                    .error(socket, ErrorCode::Reserved, &e.to_string(), Some(reference))
                    .await;
            }
            ChatError::Unavailable {
                what: Engine::Store,
                ..
            } => (
                ErrorCode::Unavailable,
                "message store unavailable; retry shortly",
            ),
            ChatError::Unavailable {
                what: Engine::Broker,
                ..
            } => (
                ErrorCode::Unavailable,
                "broker unavailable; retry with the same id",
            ),
            // The service wrote the detail for the client (relay mode).
            ChatError::Unavailable {
                what: Engine::Relay,
                detail,
            } => {
                return self
                    .error(socket, ErrorCode::Unavailable, detail, Some(reference))
                    .await;
            }
            ChatError::AlreadyExists | ChatError::Internal(_) => {
                (ErrorCode::Internal, "internal error")
            }
        };
        if !matches!(e, ChatError::NotMember | ChatError::NotPublisher) {
            tracing::warn!(error = %e, "chat operation failed");
        }
        self.error(socket, code, msg, Some(reference)).await
    }
}
