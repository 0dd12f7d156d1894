//! The chat service's one error. Every transport maps it to its own wire
//! form (an `error` frame, problem JSON, an Ably `ErrorInfo`, an SSE `error`
//! event) in one function each; none of them sees a broker or store error.

use switchboard_core::broker::BrokerError;
use switchboard_core::store::StoreError;

/// Which engine failed, for the operator's logs and for clients that retry
/// differently (a history read can be retried later; a send at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The broker (Redis, or the in-process engine).
    Broker,
    /// The durable store (PostgreSQL).
    Store,
    /// The fallback relay, in relay mode (Redis unreachable): the relay
    /// itself failed, the gateway's spool is full, or what the message
    /// needs is not known without Redis. The detail says which, for the
    /// client.
    Relay,
}

/// Why a chat operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The conversation does not exist, or the caller may not see it: the
    /// two are not distinguished, so existence does not leak.
    #[error("no such conversation")]
    NotFound,
    /// The caller is not a member of the conversation (a send, a receipt, a
    /// subscription). Transports that must not leak existence answer it like
    /// [`ChatError::NotFound`].
    #[error("not a member of this conversation")]
    NotMember,
    /// The user to remove from a group is not in it.
    #[error("not a member of this conversation")]
    NoSuchMember,
    /// A send to a channel by someone who is not one of its publishers.
    #[error("not a publisher of this channel")]
    NotPublisher,
    /// Allowed to see it, not to do this (e.g. manage a group's members).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request breaks a rule of the service (a limit, a kind that does
    /// not take this operation); the message says which.
    #[error("{0}")]
    Invalid(String),
    /// A wallet tried to create a channel whose name the operator reserved
    /// (`--reserved-channel`): only API keys create those.
    #[error(
        "channel name {name:?} is reserved (pattern {pattern:?}): only the operator's API keys may create it"
    )]
    Reserved { name: String, pattern: String },
    /// A group or channel with this id or name exists already.
    #[error("conversation already exists")]
    AlreadyExists,
    /// An engine could not be reached; nothing was changed. Retry.
    #[error("{what:?} unavailable: {detail}")]
    Unavailable { what: Engine, detail: String },
    /// A bug or data we cannot read; logged where it is mapped.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ChatError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ChatError::Invalid(message.into())
    }
}

impl From<BrokerError> for ChatError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotMember => ChatError::NotMember,
            BrokerError::NotPublisher => ChatError::NotPublisher,
            BrokerError::AlreadyExists => ChatError::AlreadyExists,
            BrokerError::Unavailable(detail) => ChatError::Unavailable {
                what: Engine::Broker,
                detail,
            },
            BrokerError::Corrupt(m) => ChatError::Internal(format!("broker data corrupt: {m}")),
            // Refused for the store's sake: the durable side is behind.
            e @ BrokerError::Backlogged(_) => ChatError::Unavailable {
                what: Engine::Store,
                detail: e.to_string(),
            },
            // The service seeds and resends; an unseeded answer that gets
            // here is a bug in the service, not the caller's problem.
            BrokerError::Unseeded(_) => {
                ChatError::Internal("a send reached a transport unseeded".into())
            }
        }
    }
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        ChatError::Unavailable {
            what: Engine::Store,
            detail: e.to_string(),
        }
    }
}
