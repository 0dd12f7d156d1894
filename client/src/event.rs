//! What the connection task reports to the app.

use switchboard_proto::frames::{ErrorCode, Message, PresenceStatus};
use switchboard_proto::ids::{Address, ConvId};

/// One item of [`crate::Client::next_event`].
#[derive(Debug, Clone)]
pub enum Event {
    /// A connection is up and authenticated (after the first connect and
    /// after every reconnect). Syncs and queued sends follow.
    Connected { user: Address },
    /// The connection ended. `code` is the server's close code when it sent
    /// one (1012 drain, 4008 slow consumer, 4001 unauthorized, ...). The client
    /// reconnects by itself unless the code was 4001 or the app closed it.
    Disconnected { code: Option<u16>, reason: String },
    /// A message, surfaced once, in seq order per conversation.
    Message(Message),
    /// A member's delivered/read watermarks in `conv` moved.
    Receipt {
        conv: ConvId,
        user: Address,
        delivered: u64,
        read: u64,
    },
    /// A member is typing in `conv`.
    Typing { conv: ConvId, user: Address },
    /// A peer's presence changed.
    Presence {
        user: Address,
        status: PresenceStatus,
        last_seen: u64,
    },
    /// A sync of `conv` finished: every message up to `held` has been
    /// surfaced; `last_seq` is the conversation's last seq at the server.
    /// `lost` counts messages the server no longer had (0 normally).
    Synced {
        conv: ConvId,
        last_seq: u64,
        held: u64,
        lost: u64,
    },
    /// An `error` frame not answered through a send's future (a refused
    /// `read`, `typing` or `sync`, a frame rate limit, ...).
    Error {
        code: ErrorCode,
        message: String,
        reference: Option<String>,
    },
}
