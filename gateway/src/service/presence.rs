//! Presence by heartbeat, and a connection's life in the registry. A user's
//! status is derived from `last_seen`: online (< `online_within`), away
//! (< `away_within`), offline otherwise. Transitions are pushed as
//! `presence` frames to the user's conversation peers: `online` when the
//! user's first socket anywhere opens; `away` and `offline` from timers
//! started when the user's last connection on a gateway closes, each
//! suppressed if the user came back in the meantime.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_core::broker::Routed;
use switchboard_proto::frames::{PresenceStatus, ServerFrame};
use switchboard_proto::ids::Address;
use switchboard_proto::time::now_ms;

use super::{ChatError, ChatService, Result};
use crate::config::GatewayConfig;
use crate::hub::{ConnHandle, SessionTimes};

/// Users one presence query may ask about.
pub const MAX_PRESENCE_USERS: usize = 100;

/// Status for a user last seen at `last_seen` (Unix ms; 0 = never).
pub fn status_for(cfg: &GatewayConfig, last_seen: u64, now: u64) -> PresenceStatus {
    if last_seen == 0 {
        return PresenceStatus::Offline;
    }
    let age = Duration::from_millis(now.saturating_sub(last_seen));
    if age < cfg.online_within {
        PresenceStatus::Online
    } else if age < cfg.away_within {
        PresenceStatus::Away
    } else {
        PresenceStatus::Offline
    }
}

/// What a connection means for presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A WebSocket: it heartbeats, so it keeps its user online and its
    /// opening announces them.
    Heartbeat,
    /// An SSE reader: it only listens, so it never made its user online by
    /// itself (but its closing still starts the away/offline timers).
    Listener,
}

impl ChatService {
    /// Register a new connection of `user` on this gateway: in the hub (its
    /// bounded queue), in the broker's registry when it is the user's first
    /// here, and for a [`Liveness::Heartbeat`] connection in presence.
    /// `session` is `None` for an API key's connection (no expiry); a
    /// session's connection is closed with 4001 when it expires or its
    /// user revokes it.
    pub async fn connect(
        &self,
        user: Address,
        session: Option<SessionTimes>,
        liveness: Liveness,
    ) -> Arc<ConnHandle> {
        let heartbeat = liveness == Liveness::Heartbeat;
        let was_connected = heartbeat && self.broker.is_connected(&user).await.unwrap_or(true);
        let (handle, first_here) = self.hub.add(user, self.cfg.send_queue, session);
        // A revocation that landed between the token check and this socket
        // joining the hub was not delivered to it: check once more.
        if let Some(s) = session
            && let Ok(Some(before)) = self.broker.sessions_revoked_before(&user).await
            && s.issued_at <= before
        {
            handle
                .close
                .close(switchboard_proto::frames::close::UNAUTHORIZED);
        }
        if first_here && let Err(e) = self.broker.register(&user, &self.cfg.gateway_id).await {
            tracing::warn!(error = %e, "registry update failed");
        }
        if heartbeat {
            let now = now_ms();
            self.touch(&user, now).await;
            if !was_connected && let Err(e) = self.announce(user, PresenceStatus::Online, now).await
            {
                tracing::debug!(error = %e, "presence announce failed");
            }
        }
        handle
    }

    /// The connection closed; it leaves the hub at once. When it was the
    /// user's last here, the returned work (for the caller to await or
    /// spawn) leaves the registry and starts the away/offline timers.
    pub fn disconnect(
        self: &Arc<Self>,
        user: Address,
        handle: &Arc<ConnHandle>,
        liveness: Liveness,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        if !self.hub.remove(&user, handle) {
            return None;
        }
        let chat = self.clone();
        Some(async move {
            if let Err(e) = chat.broker.unregister(&user, &chat.cfg.gateway_id).await {
                tracing::warn!(error = %e, "registry update failed");
            }
            // The user may have connected again here while the unregister
            // was on its way, and that connect's register may have landed
            // first: register again, so the order of the two broker calls
            // cannot leave a connected user unrouted.
            if chat.hub.has_user(&user)
                && let Err(e) = chat.broker.register(&user, &chat.cfg.gateway_id).await
            {
                tracing::warn!(error = %e, "registry update failed");
            }
            if liveness == Liveness::Heartbeat {
                chat.touch(&user, now_ms()).await;
            }
            chat.after_disconnect(user);
        })
    }

    /// Refresh this gateway's liveness in the broker. When the broker had
    /// lost it (Redis restarted empty, a failover to a replica that had not
    /// seen it, a flush), the registrations and channel subscriptions of
    /// the sockets here may be gone too: they are asserted again, so
    /// sockets that stayed open keep receiving. Returns whether it did.
    pub async fn refresh_liveness(&self) -> Result<bool> {
        if self.broker.gateway_alive(&self.cfg.gateway_id).await? {
            self.reassert_due.store(true, Ordering::SeqCst);
        }
        if !self.reassert_due.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let (users, channels) = (self.hub.users(), self.hub.channels());
        if users.is_empty() && channels.is_empty() {
            // Nothing here to lose (a first refresh, or an idle gateway).
            self.reassert_due.store(false, Ordering::SeqCst);
            return Ok(false);
        }
        tracing::warn!(
            users = users.len(),
            channels = channels.len(),
            "the broker did not know this gateway: registering its connections again"
        );
        self.metrics.reasserts.inc();
        for user in &users {
            self.broker.register(user, &self.cfg.gateway_id).await?;
        }
        for channel in &channels {
            self.broker
                .subscribe_channel(&self.cfg.gateway_id, channel)
                .await?;
        }
        self.reassert_due.store(false, Ordering::SeqCst);
        Ok(true)
    }

    /// Record that `user` was seen now. Best effort: presence is advisory.
    pub async fn touch(&self, user: &Address, now: u64) {
        // In relay mode last-seen times stand still (nothing to write them to).
        if self.broker_down() {
            return;
        }
        let _ = self.broker.touch(user, now).await;
    }

    /// The presence of `users` (1 to [`MAX_PRESENCE_USERS`], deduplicated),
    /// with their last-seen times (0 = never).
    pub async fn presence(
        &self,
        users: Vec<Address>,
    ) -> Result<Vec<(Address, PresenceStatus, u64)>> {
        let mut seen = std::collections::HashSet::with_capacity(users.len());
        let unique: Vec<Address> = users.into_iter().filter(|u| seen.insert(*u)).collect();
        if unique.is_empty() || unique.len() > MAX_PRESENCE_USERS {
            return Err(ChatError::invalid(format!(
                "users must list 1 to {MAX_PRESENCE_USERS} comma-separated addresses"
            )));
        }
        let seen = self.broker.last_seen(&unique).await?;
        let now = now_ms();
        Ok(unique
            .into_iter()
            .zip(seen)
            .map(|(u, t)| (u, status_for(&self.cfg, t, now), t))
            .collect())
    }

    /// Everyone who shares a conversation with `user`.
    async fn peers(&self, user: &Address) -> Result<Vec<Address>> {
        let mut out = BTreeSet::new();
        for conv in self.broker.user_conversations(user).await? {
            if let Some(m) = self.members(&conv).await? {
                out.extend(m.iter().copied());
            }
        }
        out.remove(user);
        Ok(out.into_iter().collect())
    }

    /// Push `user`'s status to their peers.
    async fn announce(&self, user: Address, status: PresenceStatus, last_seen: u64) -> Result<()> {
        let users = self.peers(&user).await?;
        if users.is_empty() {
            return Ok(());
        }
        let frame = ServerFrame::Presence {
            user,
            status,
            last_seen,
        };
        let ev = Routed {
            users,
            frame: frame.to_json().into(),
            ack: None,
            skip_conn: None,
            channel: None,
            revoke: None,
        };
        if let Some(mine) = self.broker.route_local(ev, &self.cfg.gateway_id).await? {
            self.hub.deliver(&mine);
        }
        Ok(())
    }

    /// The user's last connection on this gateway closed: announce `away`
    /// and then `offline` when the thresholds pass, unless they came back.
    fn after_disconnect(self: &Arc<Self>, user: Address) {
        let chat = self.clone();
        tokio::spawn(async move {
            let steps = [
                (chat.cfg.online_within, PresenceStatus::Away),
                (chat.cfg.away_within, PresenceStatus::Offline),
            ];
            for (threshold, status) in steps {
                let seen = match chat.broker.last_seen(&[user]).await {
                    Ok(v) => v.first().copied().unwrap_or(0),
                    Err(e) => {
                        tracing::debug!(error = %e, "presence check skipped");
                        return;
                    }
                };
                let due = Duration::from_millis(
                    seen.saturating_add(threshold.as_millis() as u64)
                        .saturating_sub(now_ms()),
                );
                tokio::select! {
                    _ = tokio::time::sleep(due) => {}
                    _ = chat.shutdown.cancelled() => return,
                }
                // Back on any gateway, or seen again since: no transition.
                if chat.hub.has_user(&user) || chat.broker.is_connected(&user).await.unwrap_or(true)
                {
                    return;
                }
                let now_seen = match chat.broker.last_seen(&[user]).await {
                    Ok(v) => v.first().copied().unwrap_or(0),
                    Err(_) => return,
                };
                if now_seen != seen {
                    return;
                }
                if let Err(e) = chat.announce(user, status, seen).await {
                    tracing::debug!(error = %e, "presence announce failed");
                }
            }
        });
    }
}
