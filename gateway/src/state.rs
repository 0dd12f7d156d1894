//! Shared state of one gateway instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_core::auth::siwe::SiweVerifier;
use switchboard_core::auth::token::TokenSigner;
use switchboard_core::broker::{BrokerError, Conversation, DynBroker};
use switchboard_core::ids::{Address, ConvId, ConvKind};
use switchboard_core::store::DynStore;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Conversation → (members, fetched at).
type MembersCache = HashMap<ConvId, (Arc<Vec<Address>>, Instant)>;

/// Bound on cached member lists; expired entries are swept past this size.
const MEMBERS_CACHE_MAX: usize = 10_000;

pub struct AppState {
    pub cfg: GatewayConfig,
    pub broker: DynBroker,
    /// The durable store, when one is configured: history beyond the
    /// broker's log, conversation listings, group membership.
    pub store: Option<DynStore>,
    pub tokens: TokenSigner,
    pub siwe: SiweVerifier,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the gateway starts draining.
    pub shutdown: CancellationToken,
    members: Mutex<MembersCache>,
}

impl AppState {
    pub fn new(cfg: GatewayConfig, broker: DynBroker, store: Option<DynStore>) -> Arc<Self> {
        let mut metrics = Metrics::new();
        metrics.describe_relay(cfg.relay.as_ref());
        let metrics = Arc::new(metrics);
        Arc::new(AppState {
            tokens: TokenSigner::new(&cfg.token_secret),
            siwe: SiweVerifier {
                domain: cfg.domain.clone(),
                chain_ids: cfg.chain_ids.clone(),
            },
            hub: Hub::new(cfg.gateway_id.clone(), metrics.clone()),
            metrics,
            broker,
            store,
            shutdown: CancellationToken::new(),
            members: Mutex::default(),
            cfg,
        })
    }

    /// Members of `conv` (`None` if it does not exist). Direct conversations
    /// need no look-up; group lists are cached for `members_cache_ttl`, which
    /// serves the ack, read and typing paths without a broker round trip.
    pub async fn members(&self, conv: &ConvId) -> Result<Option<Arc<Vec<Address>>>, BrokerError> {
        if conv.kind() == ConvKind::Direct {
            return Ok(conv.direct_members().map(|m| Arc::new(m.to_vec())));
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
        let list = Arc::new(c.members);
        let mut cache = self.lock_members();
        if cache.len() >= MEMBERS_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        cache.insert(conv.clone(), (list.clone(), Instant::now()));
        Ok(Some(list))
    }

    /// Whether `user` belongs to `conv`, through the members cache.
    /// For a channel: whether `user` may read it (public: anyone; else its
    /// members, publishers and creator), asked every time.
    pub async fn is_member(&self, conv: &ConvId, user: &Address) -> Result<bool, BrokerError> {
        if conv.kind() == ConvKind::Channel {
            return Ok(self.channel(conv).await?.is_some_and(|c| c.can_read(user)));
        }
        Ok(self.members(conv).await?.is_some_and(|m| m.contains(user)))
    }

    /// A channel's description: the broker's, or — when the broker lost it
    /// (Redis restarted empty) and a store is configured — the store's,
    /// given back to the broker on the way.
    pub async fn channel(&self, conv: &ConvId) -> Result<Option<Conversation>, BrokerError> {
        if let Some(c) = self.broker.conversation(conv).await? {
            return Ok(Some(c));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let stored = store
            .channel(conv)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("store: {e}")))?;
        let Some(c) = stored else { return Ok(None) };
        match self.broker.create_channel(&c).await {
            Ok(()) | Err(BrokerError::AlreadyExists) => {
                tracing::info!(%conv, "channel restored into the broker from the store");
                Ok(Some(c))
            }
            Err(e) => Err(e),
        }
    }

    /// Create a channel: in the store first (the source of truth, when
    /// configured), then in the broker, whose copy the send script checks.
    pub async fn create_channel(&self, conv: &Conversation) -> Result<(), BrokerError> {
        if let Some(store) = &self.store {
            let created = store
                .create_channel(conv)
                .await
                .map_err(|e| BrokerError::Unavailable(format!("store: {e}")))?;
            if !created {
                return Err(BrokerError::AlreadyExists);
            }
        }
        self.broker.create_channel(conv).await
    }

    /// Forget the cached members of `conv` after a membership change here
    /// (other gateways' caches expire within `members_cache_ttl`; sends are
    /// checked against the broker's set and are never stale).
    pub fn invalidate_members(&self, conv: &ConvId) {
        self.lock_members().remove(conv);
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, MembersCache> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}
