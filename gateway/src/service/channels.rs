//! Channels (`ch:<name>`): one-to-many conversations with publishers and a
//! visibility. The store is their source of truth when configured; the
//! broker holds the copy its send script checks, and gets it back from the
//! store after losing it (Redis restarted empty). A gateway follows a
//! channel's topic only while it has a local subscriber.

use std::sync::Arc;

use switchboard_core::broker::BrokerError;
use switchboard_core::reserved::reserved_by;
use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::model::{Conversation, Visibility};
use switchboard_proto::time::now_ms;

use super::conversations::check_title;
use super::{ChatError, ChatService, Result};
use crate::hub::ConnHandle;

/// Publishers a channel may name besides its creator.
pub const MAX_PUBLISHERS: usize = 100;

/// Who creates a channel. Names matching a reserved pattern
/// ([`crate::GatewayConfig::reserved_channels`]) are for API keys only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    /// A signed-in wallet (REST, or the Ably endpoints with a session token).
    Wallet(Address),
    /// An API key of the Ably endpoints, acting as its address.
    ApiKey(Address),
}

impl Creator {
    /// The address that owns what it creates.
    pub fn address(self) -> Address {
        match self {
            Creator::Wallet(a) | Creator::ApiKey(a) => a,
        }
    }
}

/// A channel to create, as a client asked for it (addresses parsed).
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub title: Option<String>,
    pub visibility: Option<Visibility>,
    pub publishers: Vec<Address>,
    pub members: Vec<Address>,
}

impl ChatService {
    /// A channel's description: the broker's, or — when the broker lost it
    /// and a store is configured — the store's, given back to the broker on
    /// the way.
    pub async fn channel(&self, conv: &ConvId) -> Result<Option<Conversation>> {
        if self.broker_down() {
            // Relay mode: the description as last read, else the store's.
            if let Some(c) = self.cached_channel(conv) {
                return Ok(Some(c));
            }
            return match &self.store {
                Some(store) => Ok(store.channel(conv).await?),
                None => Ok(None),
            };
        }
        if let Some(c) = self.broker.conversation(conv).await? {
            if self.relay_configured() {
                self.remember_channel(&c);
            }
            return Ok(Some(c));
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(c) = store.channel(conv).await? else {
            return Ok(None);
        };
        match self.broker.create_channel(&c).await {
            Ok(()) | Err(BrokerError::AlreadyExists) => {
                tracing::info!(%conv, "channel restored into the broker from the store");
                Ok(Some(c))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The reserved-channel rule, for every transport: a wallet may not
    /// create a channel whose name matches a reserved pattern; an API key
    /// may create any.
    fn may_create(&self, id: &ConvId, creator: Creator) -> Result<()> {
        let Creator::Wallet(_) = creator else {
            return Ok(());
        };
        let name = id.channel_name().unwrap_or_default();
        match reserved_by(&self.cfg.reserved_channels, name) {
            Some(pattern) => Err(ChatError::Reserved {
                name: name.to_string(),
                pattern: pattern.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Create the channel `ch:<name>`, owned (and publishable) by `creator`;
    /// answers it as stored (the creator among the publishers).
    pub async fn create_channel(&self, creator: Creator, new: NewChannel) -> Result<Conversation> {
        let id =
            ConvId::channel(&new.name).map_err(|e| ChatError::invalid(format!("name: {e}")))?;
        self.may_create(&id, creator)?;
        let (mut publishers, mut members) = (new.publishers, new.members);
        for list in [&mut publishers, &mut members] {
            list.sort();
            list.dedup();
        }
        if publishers.len() > MAX_PUBLISHERS {
            return Err(ChatError::invalid(format!(
                "a channel has at most {MAX_PUBLISHERS} publishers besides its creator (got {})",
                publishers.len()
            )));
        }
        if members.len() > self.cfg.max_group_members {
            return Err(ChatError::invalid(format!(
                "a members-only channel has at most {} members (got {})",
                self.cfg.max_group_members,
                members.len()
            )));
        }
        let visibility = new.visibility.unwrap_or(Visibility::Public);
        if visibility == Visibility::Public && !members.is_empty() {
            return Err(ChatError::invalid(
                "members are only for \"visibility\": \"members\" (anyone may read a public channel)",
            ));
        }
        check_title(new.title.as_deref())?;
        let conv = Conversation {
            id,
            kind: ConvKind::Channel,
            title: new.title.filter(|t| !t.is_empty()),
            members,
            created_by: Some(creator.address()),
            created_at: now_ms(),
            publishers,
            visibility: Some(visibility),
        };
        self.store_channel(&conv).await?;
        // Read back: the creator is among the publishers.
        Ok(self.channel(&conv.id).await?.unwrap_or(conv))
    }

    /// The channel `id`, created as a public channel owned by `creator` when
    /// it does not exist yet (the Ably-compatible endpoints create channels
    /// on first use) and `creator` may create it.
    pub async fn channel_or_create(&self, id: &ConvId, creator: Creator) -> Result<Conversation> {
        if let Some(c) = self.channel(id).await? {
            return Ok(c);
        }
        self.may_create(id, creator)?;
        let conv = Conversation {
            id: id.clone(),
            kind: ConvKind::Channel,
            title: None,
            members: Vec::new(),
            created_by: Some(creator.address()),
            created_at: now_ms(),
            publishers: Vec::new(),
            visibility: Some(Visibility::Public),
        };
        match self.store_channel(&conv).await {
            // Created by a concurrent request: read theirs.
            Ok(()) | Err(ChatError::AlreadyExists) => {}
            Err(e) => return Err(e),
        }
        self.channel(id)
            .await?
            .ok_or_else(|| ChatError::Internal("channel vanished".into()))
    }

    /// In the store first (the source of truth, when configured), then in
    /// the broker, whose copy the send script checks.
    async fn store_channel(&self, conv: &Conversation) -> Result<()> {
        if let Some(store) = &self.store
            && !store.create_channel(conv).await?
        {
            return Err(ChatError::AlreadyExists);
        }
        Ok(self.broker.create_channel(conv).await?)
    }

    /// Start delivering `channel`'s messages to `handle`; the gateway
    /// subscribes to the channel's topic on its first local subscriber. The
    /// caller has checked the right to read.
    pub async fn join_channel(&self, channel: &ConvId, handle: &Arc<ConnHandle>) -> Result<()> {
        if self.hub.subscribe(channel, handle)
            && let Err(e) = self
                .broker
                .subscribe_channel(&self.cfg.gateway_id, channel)
                .await
        {
            self.hub.unsubscribe(channel, handle);
            return Err(e.into());
        }
        Ok(())
    }

    /// Stop delivering `channel` to `handle`; the gateway unsubscribes when
    /// it was the last local one.
    pub async fn leave_channel(&self, channel: &ConvId, handle: &Arc<ConnHandle>) {
        if !self.hub.unsubscribe(channel, handle) {
            return;
        }
        if let Err(e) = self
            .broker
            .unsubscribe_channel(&self.cfg.gateway_id, channel)
            .await
        {
            tracing::warn!(error = %e, %channel, "channel unsubscribe failed");
        }
        // A first subscriber may have come while the unsubscribe was on its
        // way and subscribed before it landed: subscribe again so the order
        // of the two broker calls cannot leave a subscriber without a feed.
        if self.hub.has_channel(channel)
            && let Err(e) = self
                .broker
                .subscribe_channel(&self.cfg.gateway_id, channel)
                .await
        {
            tracing::warn!(error = %e, %channel, "channel re-subscribe failed");
        }
    }
}
