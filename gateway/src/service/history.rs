//! Reading a conversation's past: the broker's log holds the recent messages
//! (capped by length and age), the store holds everything. A read that
//! reaches behind the log's start is served from the store first, then the
//! log, as one ascending, gap-free run.

use switchboard_proto::frames::Message;
use switchboard_proto::ids::ConvId;

use super::{ChatService, Result};

/// One replay: messages after `after`, ascending, contiguous from `after + 1`
/// when `recovered`.
#[derive(Debug, Default)]
pub struct Replay {
    pub messages: Vec<Message>,
    /// The conversation's last seq.
    pub last_seq: u64,
    /// `true` when `messages` starts at `after + 1` (or there is nothing
    /// after `after`) and has no gap. `false` means some messages after
    /// `after` can no longer be read here: the log dropped them and no store
    /// has them (no store configured, or the worker has not written them
    /// yet); the client should treat what it holds as incomplete.
    pub recovered: bool,
    /// The conversation's epoch and its base (see `LogPage::epoch`).
    pub epoch: u64,
    pub epoch_base: u64,
}

impl ChatService {
    /// Messages of `conv` with seq > `after`, at most `limit`. The caller
    /// has checked the right to read.
    pub async fn replay(&self, conv: &ConvId, after: u64, limit: usize) -> Result<Replay> {
        if after == u64::MAX {
            // Nothing can follow the largest seq; answer where the
            // conversation stands (and never compute `after + 1`).
            let page = self.broker.read_log(conv, u64::MAX - 1, 1).await?;
            return Ok(Replay {
                messages: Vec::new(),
                last_seq: page.last_seq,
                recovered: true,
                epoch: page.epoch,
                epoch_base: page.epoch_base,
            });
        }
        let page = self.broker.read_log(conv, after, limit).await?;
        let last_seq = page.last_seq;
        let (epoch, epoch_base) = (page.epoch, page.epoch_base);
        let log_start = page
            .messages
            .first()
            .map_or(last_seq.saturating_add(1), |m| m.seq);
        let mut messages = page.messages;
        if log_start > after + 1
            && let Some(store) = &self.store
        {
            // The log no longer reaches back to `after`: the older part comes
            // from the store, up to where the log begins.
            let mut older = store.history(conv, after, Some(log_start), limit).await?;
            older.append(&mut messages);
            messages = older;
            messages.truncate(limit);
        }
        // Keep only the contiguous run: a hole (the worker has not stored
        // those seqs yet) ends the replay; the client syncs again from the
        // last seq.
        let cut = (after + 1..)
            .zip(&messages)
            .position(|(expected, m)| m.seq != expected)
            .unwrap_or(messages.len());
        let starts_right = messages.first().is_none_or(|m| m.seq == after + 1);
        let recovered = if messages.is_empty() {
            last_seq <= after
        } else {
            starts_right
        };
        if starts_right {
            messages.truncate(cut);
        }
        Ok(Replay {
            messages,
            last_seq,
            recovered,
            epoch,
            epoch_base,
        })
    }
}
