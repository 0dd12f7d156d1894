//! The chat service: every rule of the chat lives here, once. Transports
//! (`ws`, `sse`, `http`, `ably`) parse a request, authenticate the caller and
//! serialise the answer; this layer decides — membership and publishing
//! rights, which engine is the source of truth (the broker for ordering and
//! the recent log, the store for history, groups, channels and listings),
//! seeding a conversation the broker lost, and fan-out to the recipients.
//!
//! | file | what |
//! |---|---|
//! | `send` | a message's write path: the broker's atomic send, seeding from the store and epochs, fan-out |
//! | `history` | replay: the broker's log, then the store behind it, cut at the first hole |
//! | `conversations` | groups: create, read, list, members and their watermarks |
//! | `channels` | channels: create (reserved names for API keys only), read (given back to the broker from the store), join and leave |
//! | `receipts` | watermarks, receipts and typing |
//! | `presence` | status from last-seen, announcements to peers, connection open and close |
//! | `relay` | relay mode while Redis is unreachable: relayed sends, the probes, replaying held messages |
//! | `auth` | sign-in: nonces, SIWE verification, session tokens |
//! | `error` | [`ChatError`], the one error of every operation |
//!
//! With no store configured (the embedded default) the broker answers every
//! read itself; no transport branches on that.

mod auth;
mod channels;
mod conversations;
mod error;
mod history;
mod presence;
mod receipts;
mod relay;
mod send;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_core::broker::{DynBroker, Routed};
use switchboard_core::store::DynStore;
use switchboard_proto::auth::nonce::NonceSigner;
use switchboard_proto::auth::siwe::{MAX_CLOCK_SKEW, SiweVerifier};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::model::Conversation;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::hub::{ConnHandle, Hub};
use crate::metrics::Metrics;

pub use self::auth::{Principal, Session, SignInError};
pub use self::channels::{Creator, MAX_PUBLISHERS, NewChannel};
pub use self::conversations::{ListPage, MemberView};
pub use self::error::{ChatError, Engine};
pub use self::history::Replay;
pub use self::presence::{Liveness, MAX_PRESENCE_USERS, status_for};
use self::receipts::DeliveredAcks;
pub use self::relay::PROBE_TIMEOUT;
use self::relay::Relaying;
use crate::relay::RelayError;

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// Conversation → (members, fetched at).
type MembersCache = HashMap<ConvId, (Arc<Vec<Address>>, Instant)>;

/// Channel descriptions as last read, for relay mode (with a relay only).
type ChannelCache = HashMap<ConvId, Conversation>;

/// Bound on cached member lists; expired entries are swept past this size.
const MEMBERS_CACHE_MAX: usize = 10_000;

/// One gateway's chat service. Cheap to share: the transports hold it
/// through the gateway's state.
pub struct ChatService {
    cfg: Arc<GatewayConfig>,
    broker: DynBroker,
    /// The durable store, when one is configured.
    store: Option<DynStore>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The gateway's drain signal: background work (presence timers) stops.
    shutdown: CancellationToken,
    /// Session tokens: issued at sign-in, verified by every transport.
    pub tokens: TokenSigner,
    /// Sign-in nonces: signed with a key derived from the token secret.
    nonces: NonceSigner,
    siwe: SiweVerifier,
    members: Mutex<MembersCache>,
    channels: Mutex<ChannelCache>,
    /// A re-registration after the broker lost this gateway is due (set
    /// until one completes, so a failure half way is retried).
    reassert_due: AtomicBool,
    /// The fallback relay, when one is configured.
    relay: Option<Relaying>,
    /// Delivered acks waiting for the next flush (`receipts`).
    acks: DeliveredAcks,
}

impl ChatService {
    pub fn new(
        cfg: Arc<GatewayConfig>,
        broker: DynBroker,
        store: Option<DynStore>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Self, RelayError> {
        let relay = match &cfg.relay {
            Some(r) => Some(Relaying::new(r, &cfg)?),
            None => None,
        };
        Ok(ChatService {
            relay,
            tokens: TokenSigner::new(&cfg.token_secret),
            nonces: NonceSigner::new(&cfg.token_secret),
            siwe: SiweVerifier {
                domain: cfg.domain.clone(),
                chain_ids: cfg.chain_ids.clone(),
                // A message is signed after its nonce was issued, and the
                // nonce lives `nonce_ttl`: older is never an honest sign-in.
                max_age: cfg.nonce_ttl + MAX_CLOCK_SKEW,
            },
            cfg,
            broker,
            store,
            hub,
            metrics,
            shutdown,
            members: Mutex::default(),
            channels: Mutex::default(),
            reassert_due: AtomicBool::new(false),
            acks: DeliveredAcks::default(),
        })
    }

    /// The broker, for the gateway's own plumbing (attaching its event feed,
    /// liveness, connection reports); chat operations go through the
    /// service's methods.
    pub(crate) fn broker(&self) -> &DynBroker {
        &self.broker
    }

    /// Whether the engines answer (`/readyz`).
    pub async fn ping(&self) -> Result<()> {
        Ok(self.broker.ping().await?)
    }

    /// Members of `conv` (`None` if it does not exist). Direct conversations
    /// need no look-up; group lists are cached for `members_cache_ttl`, which
    /// serves the ack, read and typing paths without a broker round trip.
    pub async fn members(&self, conv: &ConvId) -> Result<Option<Arc<Vec<Address>>>> {
        if conv.kind() == ConvKind::Direct {
            return Ok(conv.direct_members().map(|m| Arc::new(m.to_vec())));
        }
        if self.broker_down() {
            // Relay mode: what was right when Redis last answered.
            return Ok(self.cached_members(conv));
        }
        let ttl = self.cfg.members_cache_ttl;
        if let Some((m, at)) = self.lock_members().get(conv)
            && at.elapsed() < ttl
        {
            return Ok(Some(m.clone()));
        }
        let Some(c) = self.broker.conversation(conv).await? else {
            return Ok(None);
        };
        Ok(Some(self.remember_members(conv, &c.members)))
    }

    /// Keep `c` for relay mode (bounded like the members cache: past the
    /// bound the oldest half is not tracked, so the cache is cleared).
    fn remember_channel(&self, c: &Conversation) {
        let mut cache = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MEMBERS_CACHE_MAX && !cache.contains_key(&c.id) {
            cache.clear();
        }
        cache.insert(c.id.clone(), c.clone());
    }

    fn cached_channel(&self, conv: &ConvId) -> Option<Conversation> {
        let cache = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(conv).cloned()
    }

    /// The cached members of `conv`, however old.
    fn cached_members(&self, conv: &ConvId) -> Option<Arc<Vec<Address>>> {
        self.lock_members().get(conv).map(|(m, _)| m.clone())
    }

    /// Cache `members` as `conv`'s, fresh.
    fn remember_members(&self, conv: &ConvId, members: &[Address]) -> Arc<Vec<Address>> {
        let list = Arc::new(members.to_vec());
        let ttl = self.cfg.members_cache_ttl;
        let mut cache = self.lock_members();
        if cache.len() >= MEMBERS_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        cache.insert(conv.clone(), (list.clone(), Instant::now()));
        list
    }

    /// Whether `user` may read `conv`: a member, through the members cache;
    /// for a channel, whether it is public or `user` is one of its members,
    /// publishers or creator (asked every time).
    pub async fn can_read(&self, conv: &ConvId, user: &Address) -> Result<bool> {
        if conv.kind() == ConvKind::Channel {
            return Ok(self.channel(conv).await?.is_some_and(|c| c.can_read(user)));
        }
        Ok(self.members(conv).await?.is_some_and(|m| m.contains(user)))
    }

    /// Like [`ChatService::can_read`], as an error when not.
    pub async fn require_reader(&self, conv: &ConvId, user: &Address) -> Result<()> {
        if self.can_read(conv, user).await? {
            Ok(())
        } else {
            Err(ChatError::NotMember)
        }
    }

    /// The conversation's last seq (0 when it has none).
    pub async fn last_seq(&self, conv: &ConvId) -> Result<u64> {
        Ok(self.broker.read_log(conv, u64::MAX - 1, 1).await?.last_seq)
    }

    /// Forget the cached members of `conv` after a membership change here
    /// (other gateways' caches expire within `members_cache_ttl`; sends are
    /// checked against the broker's set and are never stale).
    fn invalidate_members(&self, conv: &ConvId) {
        self.lock_members().remove(conv);
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, MembersCache> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Route `frame` to `users`' connections: this gateway's share straight
    /// to its hub, the rest through the broker. Failures are logged, not
    /// returned: what is routed is durable or ephemeral, and recipients of
    /// a durable message catch up by `sync`.
    async fn route(
        &self,
        users: Vec<Address>,
        frame: String,
        ack: Option<(ConvId, u64)>,
        skip_conn: Option<&Arc<ConnHandle>>,
    ) {
        if users.is_empty() {
            return;
        }
        let ev = self.routed(users, frame, ack, skip_conn);
        if self.broker_down() {
            return self.relay_route(ev).await;
        }
        match self.broker.route_local(ev, &self.cfg.gateway_id).await {
            Ok(Some(mine)) => self.hub.deliver(&mine),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fan-out failed; recipients will catch up by sync")
            }
        }
    }

    /// The event [`ChatService::route`] sends.
    fn routed(
        &self,
        users: Vec<Address>,
        frame: String,
        ack: Option<(ConvId, u64)>,
        skip_conn: Option<&Arc<ConnHandle>>,
    ) -> Routed {
        Routed {
            users,
            frame: frame.into(),
            ack,
            skip_conn: skip_conn.map(|h| self.hub.conn_name(h)),
            channel: None,
            revoke: None,
        }
    }

    /// [`ChatService::route`] for several events: each other gateway gets
    /// all of its share in one broker publish.
    async fn route_many(&self, evs: Vec<Routed>) {
        if evs.is_empty() {
            return;
        }
        if self.broker_down() {
            for ev in evs {
                self.relay_route(ev).await;
            }
            return;
        }
        match self
            .broker
            .route_local_many(evs, &self.cfg.gateway_id)
            .await
        {
            Ok(mine) => mine.iter().for_each(|ev| self.hub.deliver(ev)),
            Err(e) => {
                tracing::warn!(error = %e, "fan-out failed; recipients will catch up by sync")
            }
        }
    }
}
