//! Reading a conversation's past: the broker's log holds the recent messages
//! (capped by length and age), the store holds everything. A read that
//! reaches behind the log's start is served from the store first, then the
//! log, as one ascending, gap-free run.

use switchboard_core::broker::{BrokerError, SendOutcome, SendRequest};
use switchboard_core::ids::ConvId;
use switchboard_core::protocol::Message;
use switchboard_core::store::StoreError;

use crate::state::AppState;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

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

/// Messages of `conv` with seq > `after`, at most `limit`.
pub async fn replay(
    state: &AppState,
    conv: &ConvId,
    after: u64,
    limit: usize,
) -> Result<Replay, HistoryError> {
    let page = state.broker.read_log(conv, after, limit).await?;
    let last_seq = page.last_seq;
    let (epoch, epoch_base) = (page.epoch, page.epoch_base);
    let log_start = page.messages.first().map_or(last_seq + 1, |m| m.seq);
    let mut messages = page.messages;
    if log_start > after + 1
        && let Some(store) = &state.store
    {
        // The log no longer reaches back to `after`: the older part comes
        // from the store, up to where the log begins.
        let mut older = store.history(conv, after, Some(log_start), limit).await?;
        older.append(&mut messages);
        messages = older;
        messages.truncate(limit);
    }
    // Keep only the contiguous run: a hole (the worker has not stored those
    // seqs yet) ends the replay; the client syncs again from the last seq.
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

/// Send through the broker; when the broker has no state for the
/// conversation (its first message since Redis started empty), seed it from
/// the store — seq continues above what is stored, a new epoch begins, a
/// group gets its members back — and send again.
pub async fn send(state: &AppState, req: SendRequest) -> Result<SendOutcome, BrokerError> {
    let req = match state.broker.send(req).await {
        Err(BrokerError::Unseeded(req)) => *req,
        other => return other,
    };
    let Some(store) = &state.store else {
        // Seeding is only switched on together with a store.
        return Err(BrokerError::Unavailable(
            "broker asks for seeding but no store is configured".into(),
        ));
    };
    let unavailable = |e: StoreError| BrokerError::Unavailable(format!("store: {e}"));
    let last_seq = store.last_seq(&req.conv).await.map_err(unavailable)?;
    let group = match req.conv.kind() {
        switchboard_core::ids::ConvKind::Direct => None,
        // A channel's description comes back from the store first (the
        // send script checks its publishers); the seed gives its counter.
        switchboard_core::ids::ConvKind::Channel => {
            if state.channel(&req.conv).await?.is_none() {
                return Err(BrokerError::NotMember);
            }
            None
        }
        switchboard_core::ids::ConvKind::Group => {
            let Some(members) = store.members(&req.conv).await.map_err(unavailable)? else {
                return Err(BrokerError::NotMember);
            };
            Some(switchboard_core::broker::Conversation {
                id: req.conv.clone(),
                kind: switchboard_core::ids::ConvKind::Group,
                title: None,
                members: members.into_iter().map(|m| m.user).collect(),
                created_by: None,
                created_at: 0,
                publishers: Vec::new(),
                visibility: None,
            })
        }
    };
    let epoch = state
        .broker
        .seed(&req.conv, last_seq, group.as_ref())
        .await?;
    tracing::info!(conv = %req.conv, last_seq, epoch, "seeded conversation from the store");
    state.invalidate_members(&req.conv);
    match state.broker.send(req).await {
        // Seeded a moment ago: a second miss means Redis is flapping.
        Err(BrokerError::Unseeded(_)) => Err(BrokerError::Unavailable(
            "conversation state vanished right after seeding".into(),
        )),
        other => other,
    }
}
