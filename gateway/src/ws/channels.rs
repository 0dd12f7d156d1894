//! Channels on a socket: `subscribe` checks the right to read, joins the
//! channel (the gateway subscribes to its topic on its first local
//! subscriber), replays after `after` and answers `subscribed`; live
//! messages follow through the hub. Each subscription has a [`SeqCursor`],
//! so replay and live traffic interleave into one ascending, gap-free,
//! repeat-free run.

use axum::extract::ws::WebSocket;
use switchboard_proto::frames::{ErrorCode, ServerFrame};
use switchboard_proto::ids::{ConvId, ConvKind};

use super::conn::Conn;
use crate::cursor::{SeqCursor, Step};

/// Channels one socket may follow at once.
pub const MAX_CHANNELS_PER_CONN: usize = 100;

type WsResult = Result<(), axum::Error>;

impl Conn {
    pub(super) async fn on_subscribe(
        &mut self,
        socket: &mut WebSocket,
        channel: ConvId,
        after: Option<u64>,
    ) -> WsResult {
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
            None => match self.state.chat.last_seq(&channel).await {
                Ok(last) => last,
                Err(e) => return self.chat_error(socket, e, channel.to_string()).await,
            },
        };
        if !self.channels.contains_key(&channel)
            && let Err(e) = self.state.chat.join_channel(&channel, &self.handle).await
        {
            return self.chat_error(socket, e, channel.to_string()).await;
        }
        // Registered before the replay: what is published meanwhile queues
        // up and is written after it, without repeats (seq check).
        self.channels.insert(channel.clone(), SeqCursor::at(start));
        let (last_seq, recovered) = self.catch_up(socket, &channel, u64::MAX).await?;
        let done = ServerFrame::Subscribed {
            channel,
            last_seq,
            recovered,
        };
        self.write(socket, &done.to_json()).await
    }

    pub(super) async fn on_unsubscribe(
        &mut self,
        socket: &mut WebSocket,
        channel: ConvId,
    ) -> WsResult {
        if self.channels.remove(&channel).is_some() {
            self.state.chat.leave_channel(&channel, &self.handle).await;
        }
        self.write(socket, &ServerFrame::Unsubscribed { channel }.to_json())
            .await
    }

    /// A live channel message from the hub: fed (the caller flushes) if it
    /// is the next seq for this socket, after filling a gap from the log.
    pub(super) async fn write_channel_msg(
        &mut self,
        socket: &mut WebSocket,
        channel: &ConvId,
        seq: u64,
        frame: &str,
    ) -> WsResult {
        let Some(cursor) = self.channels.get(channel) else {
            return Ok(()); // unsubscribed meanwhile
        };
        if seq == 0 {
            // Relayed while Redis is down (`relayed: true`): no place in the
            // seq order yet. Written as it comes; its sequenced copy follows
            // in order once Redis is back (clients keep one per id).
            self.feed(socket, frame).await?;
            self.state.metrics.messages_out.inc();
            return Ok(());
        }
        match cursor.step(seq) {
            Step::Skip => return Ok(()), // already written (replay, or a repeat)
            Step::Write => {}
            Step::Gap => {
                // Published before the subscription took effect, or lost in
                // transit: the log has it.
                // Written by the catch-up already, or unsubscribed: done.
                self.catch_up(socket, channel, seq - 1).await?;
                if self
                    .channels
                    .get(channel)
                    .is_none_or(|c| c.step(seq) == Step::Skip)
                {
                    return Ok(());
                }
            }
        }
        self.observe_latency(frame);
        self.feed(socket, frame).await?;
        self.state.metrics.messages_out.inc();
        if let Some(c) = self.channels.get_mut(channel) {
            c.advance(seq);
        }
        Ok(())
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
        // Frames fed before (earlier items of an outbox batch) go out now,
        // not after the replay's round trip.
        self.flush(socket).await?;
        loop {
            let Some(last) = self.channels.get(channel).map(SeqCursor::last) else {
                return Ok((0, true));
            };
            let page = match self.state.chat.replay(channel, last, limit).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "channel catch-up failed");
                    return Ok((last, false));
                }
            };
            let got = page.messages.len();
            for m in page.messages.into_iter().take_while(|m| m.seq <= upto) {
                let seq = m.seq;
                self.feed(socket, &ServerFrame::Msg(m).to_json()).await?;
                self.state.metrics.messages_out.inc();
                if let Some(c) = self.channels.get_mut(channel) {
                    c.advance(seq);
                }
            }
            // Out before the next page's read: no frame waits on Redis.
            self.flush(socket).await?;
            let now = self.channels.get(channel).map_or(last, SeqCursor::last);
            if got < limit || !page.recovered || now >= upto || now == last {
                return Ok((page.last_seq, page.recovered));
            }
        }
    }
}
