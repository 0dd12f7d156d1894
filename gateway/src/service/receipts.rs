//! Watermarks and the frames that announce them: a member's delivered and
//! read marks only move forward, and each move goes to every member's
//! devices as one `receipt`. Typing indicators go to the other members;
//! they are ephemeral and never stored.
//!
//! Delivered acks are gathered gateway-wide ([`DeliveredAcks`]) for up to
//! `receipt_delay` and applied together: one mark script call for all of
//! them (per conversation on a Redis Cluster), then one receipt per
//! watermark that moved, all routed together (each other gateway gets its
//! share in one publish). A socket only records its ack; it arms no timer
//! and makes no Redis call of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_core::broker::{Mark, MarkRequest, Watermarks};
use switchboard_proto::frames::ServerFrame;
use switchboard_proto::ids::{Address, ConvId};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{ChatService, Result};
use crate::hub::ConnHandle;

/// Gathered `(conversation, user, connection)` acks past which a flush
/// starts at once rather than at the end of `receipt_delay`: bounds the
/// map whatever the clients send (acks are exempt from the frame limit).
const MAX_GATHERED: usize = 50_000;

/// `(conversation, user, connection id)` → (highest acked seq, connection).
type Gathered = HashMap<(ConvId, Address, u64), (u64, Arc<ConnHandle>)>;

/// The highest delivered seq acked per `(conversation, user, connection)`
/// since the last flush, and the connection (whose own receipt is skipped).
/// Keyed by connection too so that two devices of one user acking the same
/// message behave as they would one after the other: the first moves the
/// watermark (its receipt skips it, reaches the other), the second moves
/// nothing.
#[derive(Default)]
pub struct DeliveredAcks {
    gathered: Mutex<Gathered>,
    /// The first ack after a flush arrived: start the delay.
    first: Notify,
    /// The map reached [`MAX_GATHERED`]: flush now.
    full: Notify,
    /// Held by a flush, so the last one at shutdown runs after any that is
    /// under way and finds every ack that arrived before it.
    flushing: tokio::sync::Mutex<()>,
}

impl DeliveredAcks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.gathered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChatService {
    /// Record that `conn` (a socket of `user`) acked `conv` up to `seq`:
    /// the delivered watermark moves, and its receipt goes out, at the next
    /// flush (within `receipt_delay`). The caller has checked membership.
    pub fn delivered(&self, conv: ConvId, user: Address, seq: u64, conn: &Arc<ConnHandle>) {
        let (first, full) = {
            let mut gathered = self.acks.lock();
            let first = gathered.is_empty();
            let entry = gathered
                .entry((conv, user, conn.id))
                .or_insert_with(|| (seq, conn.clone()));
            entry.0 = entry.0.max(seq);
            (first, gathered.len() >= MAX_GATHERED)
        };
        if first {
            self.acks.first.notify_one();
        }
        if full {
            self.acks.full.notify_one();
        }
    }

    /// The task that flushes gathered acks `receipt_delay` after the first
    /// of them. It runs until aborted; the gateway's shutdown calls
    /// [`ChatService::flush_delivered`] once more after its sockets closed.
    pub fn spawn_ack_flusher(self: &Arc<Self>) -> JoinHandle<()> {
        let chat = self.clone();
        tokio::spawn(async move {
            loop {
                chat.acks.first.notified().await;
                tokio::select! {
                    _ = tokio::time::sleep(chat.cfg.receipt_delay) => {}
                    _ = chat.acks.full.notified() => {}
                }
                chat.flush_delivered().await;
            }
        })
    }

    /// Apply every gathered ack now: the marks in as few broker calls as it
    /// takes, then a receipt per watermark that moved. A failure is logged
    /// (the watermark moves with the next ack of that conversation; each
    /// move is monotonic).
    pub async fn flush_delivered(&self) {
        let _one_at_a_time = self.acks.flushing.lock().await;
        let gathered = std::mem::take(&mut *self.acks.lock());
        if gathered.is_empty() {
            return;
        }
        if self.broker_down() {
            tracing::warn!(
                acks = gathered.len(),
                "delivered watermarks not recorded: broker unavailable"
            );
            return;
        }
        let (marks, conns): (Vec<MarkRequest>, Vec<Arc<ConnHandle>>) = gathered
            .into_iter()
            .map(|((conv, user, _), (seq, conn))| {
                let mark = MarkRequest {
                    conv,
                    user,
                    mark: Mark::Delivered,
                    seq,
                };
                (mark, conn)
            })
            .unzip();
        let moved = match self.broker.mark_many(&marks).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, acks = marks.len(), "delivered watermarks not recorded");
                return;
            }
        };
        let mut receipts = Vec::new();
        for ((m, conn), w) in marks.into_iter().zip(conns).zip(moved) {
            let Some(w) = w else { continue };
            // A failed members look-up drops that receipt (the members see
            // the watermark with their next read of the conversation).
            match self.members(&m.conv).await {
                Ok(Some(members)) => {
                    let frame = receipt_frame(m.conv, m.user, w);
                    let to = members.as_ref().clone();
                    receipts.push(self.routed(to, frame, None, Some(&conn)));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, conv = %m.conv, "receipt not sent"),
            }
        }
        self.route_many(receipts).await;
    }

    /// Raise `user`'s `mark` in `conv` to `seq` and, when it moved, send the
    /// receipt to every member's devices but `skip` (the connection that
    /// asked). The caller has checked membership.
    pub async fn mark(
        &self,
        conv: &ConvId,
        user: Address,
        mark: Mark,
        seq: u64,
        skip: Option<&Arc<ConnHandle>>,
    ) -> Result<()> {
        if self.broker_down() {
            return Err(Self::broker_down_error());
        }
        let Some(w) = self.broker.mark(conv, &user, mark, seq).await? else {
            return Ok(());
        };
        let Some(members) = self.members(conv).await? else {
            return Ok(());
        };
        let frame = receipt_frame(conv.clone(), user, w);
        self.route(members.as_ref().clone(), frame, None, skip)
            .await;
        Ok(())
    }

    /// Tell the other members of `conv` that `user` is typing. Best effort:
    /// a failed look-up drops the indicator. The caller has checked
    /// membership and throttles.
    pub async fn typing(&self, conv: ConvId, user: Address) {
        let Ok(Some(members)) = self.members(&conv).await else {
            return;
        };
        let others: Vec<Address> = members.iter().copied().filter(|m| *m != user).collect();
        let frame = ServerFrame::Typing { conv, user }.to_json();
        self.route(others, frame, None, None).await;
    }
}

/// The `receipt` frame announcing `user`'s watermarks `w` in `conv`.
fn receipt_frame(conv: ConvId, user: Address, w: Watermarks) -> String {
    ServerFrame::Receipt {
        conv,
        user,
        delivered: w.delivered,
        read: w.read,
    }
    .to_json()
}
