//! The broker: ordering, idempotency, fan-out routing, the connection registry,
//! presence, nonces and the gateways' connection reports ([`reports`]). Two
//! engines implement [`Broker`]:
//!
//! - [`MemoryBroker`]: in-process, for `switchboard dev` and tests; several gateways
//!   in one process can share one instance, which behaves like one Redis.
//! - [`RedisBroker`]: Redis standalone or Redis Cluster (fred). Per-conversation
//!   state lives under one hash tag so the atomic send script is valid on a cluster.
//!
//! Both engines pass the same conformance suite (`core/tests/broker.rs`).

pub mod lua;
mod memory;
pub mod persist;
mod redis;
mod registry_cache;
pub mod reports;
pub mod routed;
mod target;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::Conversation;

pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, connect_pool, redis_builder};
pub use self::reports::{
    ClusterRef, ConnectionReport, ConnectionReports, GatewayIdentity, IdentityError,
};
pub use self::routed::Routed;
pub use self::target::RedisTarget;

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The caller is not a member of the conversation (or it does not exist:
    /// the two are not distinguished, so existence does not leak).
    #[error("not a member of this conversation")]
    NotMember,
    /// A send to a channel by someone who is not one of its publishers.
    #[error("not a publisher of this channel")]
    NotPublisher,
    /// A group with this id already exists.
    #[error("conversation already exists")]
    AlreadyExists,
    /// The backing store could not be reached or answered with an error.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The backing store returned data we cannot read (a bug or a foreign writer).
    #[error("broker data corrupt: {0}")]
    Corrupt(String),
    /// With `seed_from_store` on: the broker holds no state for this
    /// conversation (new, or Redis lost its data). Nothing was stored; seed
    /// it with [`Broker::seed`] from the durable store and send again. The
    /// request comes back so the caller need not clone every send.
    #[error("conversation not seeded in the broker")]
    Unseeded(Box<SendRequest>),
    /// The shard's persistence stream holds `persist_backlog_max` entries:
    /// the worker is down or far behind. Nothing was stored; the sender
    /// retries later with the same id.
    #[error("persistence backlog full ({0} entries): the worker is down or behind")]
    Backlogged(usize),
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// Tunables shared by both engines.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Most recent messages kept per conversation log (the offline queue and
    /// the sync source). Older messages come from PostgreSQL once it exists.
    pub log_max_len: usize,
    /// Messages older than this leave the log too (checked on each send;
    /// zero disables). Older history comes from PostgreSQL.
    pub log_max_age: Duration,
    /// How long a client message id is remembered for idempotent retries.
    pub dedupe_ttl: Duration,
    /// Also append each message and watermark change to the shard's persistence
    /// stream for the worker. Off until a worker consumes the streams, so an
    /// install without one does not grow Redis forever.
    pub persist: bool,
    /// Refuse sends to conversations whose seq counter is missing with
    /// [`BrokerError::Unseeded`], so the caller seeds it from the durable
    /// store first: a Redis that lost its data then continues above the
    /// stored seqs, in a new epoch, instead of restarting at 1. On whenever a
    /// store is configured.
    pub seed_from_store: bool,
    /// With `persist`: a shard's persistence stream holding this many
    /// entries refuses new messages ([`BrokerError::Backlogged`]) instead of
    /// growing until Redis runs out of memory while the worker is down.
    /// Zero: no cap.
    pub persist_backlog_max: usize,
    /// Number of logical shards (hash tags). Fixed for the life of a deployment.
    pub shards: u16,
    /// A gateway that has not refreshed its liveness for this long is dead and
    /// its registry entries are ignored.
    pub gateway_ttl: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            log_max_len: 10_000,
            log_max_age: Duration::from_secs(30 * 24 * 3600),
            dedupe_ttl: Duration::from_secs(24 * 3600),
            persist: false,
            seed_from_store: false,
            persist_backlog_max: 100_000,
            shards: 64,
            gateway_ttl: Duration::from_secs(15),
        }
    }
}

/// A `send` as the broker sees it: membership already validated for direct
/// conversations, checked atomically inside the broker for groups.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub conv: ConvId,
    pub id: MsgId,
    pub from: Address,
    pub body: Box<RawValue>,
    /// The sender is a configured API key (the Ably-compatible endpoints),
    /// which may publish to every channel: the publisher check is skipped.
    /// Only for channels; `false` everywhere else.
    pub privileged: bool,
}

/// The result of a send.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    /// The stored message (for a duplicate: the original seq and ts).
    pub message: Message,
    /// `true` when this id was already sent in this conversation: nothing was
    /// stored or delivered again.
    pub duplicate: bool,
    /// Every member of the conversation, for fan-out (also for a duplicate).
    pub members: Vec<Address>,
}

/// One page of a conversation log.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    /// Messages with seq > `after`, ascending, at most `limit`.
    pub messages: Vec<Message>,
    /// The conversation's current last seq (0 when empty).
    pub last_seq: u64,
    /// The conversation's epoch: changes when the broker lost the
    /// conversation's state and it was seeded again from the store (Unix ms
    /// of the seeding; 0 when never seeded). Seqs are only comparable within
    /// one epoch.
    pub epoch: u64,
    /// The stored last seq the current epoch continued from: seqs up to it
    /// are the same messages in every epoch, seqs above it may differ.
    pub epoch_base: u64,
}

/// Which watermark a client moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Delivered,
    Read,
}

/// One watermark move, for [`Broker::mark_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRequest {
    pub conv: ConvId,
    pub user: Address,
    pub mark: Mark,
    pub seq: u64,
}

/// A member's high-water marks in one conversation. `read <= delivered` always:
/// reading implies delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Watermarks {
    pub delivered: u64,
    pub read: u64,
}

/// The engine interface. Every method is safe to call concurrently from many
/// gateways; atomicity is stated per method.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Record a sign-in nonce as used for `ttl` (the rest of its life):
    /// `true` for exactly one caller, `false` while it is recorded. Nonces
    /// are issued without storage (signed, see the gateway), so this is the
    /// only nonce state: one entry per successful sign-in, gone after `ttl`.
    async fn use_nonce(&self, nonce: &str, ttl: Duration) -> Result<bool>;

    /// Create a group conversation. Fails with `AlreadyExists` for a taken id.
    /// Members are kept as a set: [`Broker::conversation`] reads them back
    /// sorted and without duplicates, and an empty title reads back as `None`.
    async fn create_group(&self, conv: &Conversation) -> Result<()>;
    /// A conversation's description; direct conversations always exist.
    async fn conversation(&self, id: &ConvId) -> Result<Option<Conversation>>;
    /// Whether `user` may read `id` ([`Conversation::can_read`]): a member
    /// of a direct conversation or group; for a channel anyone when public,
    /// else its members, publishers and creator.
    async fn is_member(&self, id: &ConvId, user: &Address) -> Result<bool> {
        Ok(match id.kind() {
            ConvKind::Direct => id.direct_members().is_some_and(|m| m.contains(user)),
            ConvKind::Group | ConvKind::Channel => self
                .conversation(id)
                .await?
                .is_some_and(|c| c.can_read(user)),
        })
    }
    /// Create a channel (`kind: channel`, with `publishers`, `visibility`
    /// and, for a members-only channel, `members`). Fails with
    /// `AlreadyExists` for a taken name. Lists read back sorted, without
    /// duplicates.
    async fn create_channel(&self, conv: &Conversation) -> Result<()>;
    /// Add `users` to an existing group (a no-op for those already in).
    /// Fails with `NotMember` when the group does not exist.
    async fn add_members(&self, id: &ConvId, users: &[Address]) -> Result<()>;
    /// Remove `user` from a group; the next send no longer reaches them.
    /// `Ok(false)` when they were not a member.
    async fn remove_member(&self, id: &ConvId, user: &Address) -> Result<bool>;
    /// Conversations `user` belongs to (groups, and direct ones with traffic).
    async fn user_conversations(&self, user: &Address) -> Result<Vec<ConvId>>;

    /// Atomically: check membership (for a channel: that the sender is a
    /// publisher, else `NotPublisher`), dedupe by `(conv, from, id)`, assign the
    /// next seq, append to the conversation log (and the persistence
    /// stream). For a channel `members` comes back empty: its messages fan
    /// out through [`Broker::publish_channel`], not to users.
    async fn send(&self, req: SendRequest) -> Result<SendOutcome>;
    /// Give `conv` its broker state from the durable store: the seq counter
    /// continues at `last_seq`, a new epoch starts, and for a group its
    /// description and members are restored. Parts that exist are left
    /// alone (a concurrent seeding wins once). Returns the epoch.
    async fn seed(&self, conv: &ConvId, last_seq: u64, group: Option<&Conversation>)
    -> Result<u64>;
    /// Messages of `conv` with seq > `after`, ascending, at most `limit`.
    async fn read_log(&self, conv: &ConvId, after: u64, limit: usize) -> Result<LogPage>;
    /// Raise `user`'s watermark in `conv` to `seq` (clamped to the last seq).
    /// Returns the new marks when they moved, `None` when they did not.
    async fn mark(
        &self,
        conv: &ConvId,
        user: &Address,
        mark: Mark,
        seq: u64,
    ) -> Result<Option<Watermarks>>;
    /// [`Broker::mark`] for each of `marks`, answered in the same order.
    /// Engines that can apply several in one round trip do (the gateway
    /// gathers its sockets' acks and moves their watermarks together); any
    /// failure fails the whole call, which may have applied some of them
    /// (each move is monotonic, so applying it again is harmless).
    async fn mark_many(&self, marks: &[MarkRequest]) -> Result<Vec<Option<Watermarks>>> {
        let mut moved = Vec::with_capacity(marks.len());
        for m in marks {
            moved.push(self.mark(&m.conv, &m.user, m.mark, m.seq).await?);
        }
        Ok(moved)
    }
    /// Current watermarks of `user` in `conv`.
    async fn watermarks(&self, conv: &ConvId, user: &Address) -> Result<Watermarks>;

    /// Start receiving the events routed to users connected to `gateway`.
    /// Call once per gateway instance.
    async fn attach(&self, gateway: &str) -> Result<mpsc::Receiver<Routed>>;
    /// Refresh `gateway`'s liveness; a gateway that stops refreshing is
    /// considered dead after `gateway_ttl` and no longer routed to. Returns
    /// `true` when the broker did not list `gateway` before this refresh:
    /// the first one, or the broker lost its state (Redis restarted empty,
    /// a failover to a replica that had not seen it, a flush). The gateway
    /// then registers its users again, or they would silently stop
    /// receiving.
    async fn gateway_alive(&self, gateway: &str) -> Result<bool>;
    /// Record that `user` has at least one connection on `gateway`.
    async fn register(&self, user: &Address, gateway: &str) -> Result<()>;
    /// Record that `user`'s last connection on `gateway` closed.
    async fn unregister(&self, user: &Address, gateway: &str) -> Result<()>;
    /// Whether `user` has a connection on any live gateway.
    async fn is_connected(&self, user: &Address) -> Result<bool>;
    /// Deliver `ev` to every live gateway where one of `ev.users` is connected.
    async fn route(&self, ev: Routed) -> Result<()>;
    /// Like [`Broker::route`], but the share of `ev` for the calling gateway
    /// `local` is handed back instead of travelling through the broker, so
    /// the caller gives it to its own sockets without a pub/sub round trip.
    /// The local share is returned even if `local`'s liveness has lapsed (the
    /// caller is evidently running); the default implementation has no short
    /// cut and always returns `None`.
    async fn route_local(&self, ev: Routed, local: &str) -> Result<Option<Routed>> {
        let _ = local;
        self.route(ev).await.map(|()| None)
    }
    /// [`Broker::route_local`] for several events at once (a gateway's
    /// receipts of one ack flush): engines that publish send each other
    /// gateway one payload with all of its share. Returns the local shares.
    async fn route_local_many(&self, evs: Vec<Routed>, local: &str) -> Result<Vec<Routed>> {
        let mut mine = Vec::new();
        for ev in evs {
            mine.extend(self.route_local(ev, local).await?);
        }
        Ok(mine)
    }

    /// Start delivering `conv`'s channel events to `gateway`'s feed (the
    /// receiver [`Broker::attach`] returned). Gateways subscribe a channel
    /// only while they have a local subscriber, so a publish costs one
    /// message per interested gateway, not per viewer. Idempotent.
    async fn subscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()>;
    /// Stop delivering `conv`'s channel events to `gateway`. Idempotent.
    async fn unsubscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()>;
    /// Deliver a channel event (`ev.channel` set, `ev.users` empty) to every
    /// gateway subscribed to that channel, the caller's own included.
    async fn publish_channel(&self, ev: Routed) -> Result<()>;

    /// Record that `user` was seen at `now_ms`.
    async fn touch(&self, user: &Address, now_ms: u64) -> Result<()>;
    /// Last-seen times (Unix ms, 0 = never) for `users`, in order.
    async fn last_seen(&self, users: &[Address]) -> Result<Vec<u64>>;

    /// Revoke `user`'s sessions issued at or before `before` (Unix
    /// seconds). Remembered for `ttl` (the longest a session lives: older
    /// tokens expire by themselves); a later revocation replaces it.
    async fn revoke_sessions(&self, user: &Address, before: i64, ttl: Duration) -> Result<()>;
    /// The cut of `user`'s latest revocation (Unix seconds; sessions issued
    /// at or before it are revoked), if one is in force.
    async fn sessions_revoked_before(&self, user: &Address) -> Result<Option<i64>>;

    /// Report that the gateway pod `id` holds `connections` live connections
    /// now. The report replaces the pod's previous one and vanishes after
    /// `ttl` unless it is written again (see [`reports`]).
    async fn report_connections(
        &self,
        id: &GatewayIdentity,
        connections: u64,
        ttl: Duration,
    ) -> Result<()>;
    /// Delete the pod's report at once (a gateway that drains).
    async fn withdraw_report(&self, id: &GatewayIdentity) -> Result<()>;
    /// Every unexpired report of `cluster`, sorted by pod, with the broker's
    /// clock to age them against.
    async fn connection_reports(&self, cluster: &ClusterRef) -> Result<ConnectionReports>;
}

/// A shared handle to whichever engine is configured.
pub type DynBroker = Arc<dyn Broker>;

/// Logical shard of a conversation: FNV-1a of the id, modulo `shards`. Stable
/// across processes and versions, so keys never move.
pub fn shard_of(conv: &ConvId, shards: u16) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in conv.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(shards.max(1))) as u16
}
