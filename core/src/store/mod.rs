//! The durable store: PostgreSQL holds every message, conversation, member and
//! watermark for good. The broker (Redis) orders and fans out; the worker
//! copies its persistence streams here in batches.
//!
//! [`PgStore`] (feature `postgres`) is the only engine. In the embedded
//! memory default there is no store and the memory broker's bounded log serves
//! reads.

#[cfg(feature = "postgres")]
pub mod partitions;
#[cfg(feature = "postgres")]
mod pg;

#[cfg(feature = "postgres")]
pub use pg::PgStore;

use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_proto::model::{Conversation, ConversationSummary, ListCursor, Member};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached, or refused for a reason that passes
    /// (connection lost, shutting down, deadlock, serialization failure, too
    /// many connections). Retry with backoff; nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement failed because of the data (constraint, bad value).
    /// Retrying the same data fails again.
    #[error("database rejected the data: {0}")]
    Rejected(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A member's watermarks as the broker last reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkUpdate {
    pub conv: ConvId,
    pub user: Address,
    pub delivered: u64,
    pub read: u64,
}

/// What the worker writes in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub messages: Vec<Message>,
    pub watermarks: Vec<WatermarkUpdate>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.watermarks.is_empty()
    }
    pub fn len(&self) -> usize {
        self.messages.len() + self.watermarks.len()
    }
}

/// What a batch write changed.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Messages newly stored.
    pub inserted: u64,
    /// Messages that were already stored (a redelivered stream entry).
    pub duplicates: u64,
    /// Messages not stored because another message holds their seq: the
    /// broker's seq counter went back (Redis lost writes the store already
    /// has). Each must be given a new seq above `stored_max`.
    pub conflicts: Vec<SeqConflict>,
}

/// A message whose seq the store already gave to another message.
#[derive(Debug, Clone)]
pub struct SeqConflict {
    pub message: Message,
    /// The conversation's highest stored seq.
    pub stored_max: u64,
}

/// The durable engine interface, so the gateway and worker take any store
/// (and tests can drive the same code the binaries run).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// Write messages and watermarks in one transaction. Idempotent: writing
    /// the same batch twice stores every message once and leaves watermarks
    /// at their highest value.
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome>;
    /// Messages of `conv` with `after < seq < before` (no upper bound when
    /// `before` is `None`), ascending, at most `limit`.
    async fn history(
        &self,
        conv: &ConvId,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>>;
    /// Highest seq stored for `conv` (0 when none).
    async fn last_seq(&self, conv: &ConvId) -> Result<u64>;

    /// Create a group with its members; the creator is admin. `Ok(false)`
    /// when the id exists already.
    async fn create_group(&self, conv: &Conversation) -> Result<bool>;
    /// Create a channel: its conversation row and who may post and read.
    /// `Ok(false)` when the name is taken.
    async fn create_channel(&self, conv: &Conversation) -> Result<bool>;
    /// A channel as created (publishers including the creator), `None`
    /// when unknown: what the broker is given back after losing its state.
    async fn channel(&self, conv: &ConvId) -> Result<Option<Conversation>>;
    /// Members of `conv` with roles and watermarks; `None` when the
    /// conversation is unknown. Direct conversations list the members that
    /// have a row (they appear with their first message).
    async fn members(&self, conv: &ConvId) -> Result<Option<Vec<Member>>>;
    /// Add members to a group; returns those that were not members yet.
    async fn add_members(&self, conv: &ConvId, users: &[Address]) -> Result<Vec<Address>>;
    /// Remove a member; `false` when they were not one.
    async fn remove_member(&self, conv: &ConvId, user: &Address) -> Result<bool>;
    /// `user`'s conversations, most recently active first, strictly older
    /// than `before`, at most `limit`.
    async fn conversations_of(
        &self,
        user: &Address,
        before: Option<&ListCursor>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>>;
}

/// A shared handle to the configured store.
pub type DynStore = std::sync::Arc<dyn Store>;
