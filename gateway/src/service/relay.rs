//! Relay mode: the chat rules while Redis is unreachable and a fallback
//! relay is configured.
//!
//! - **When**: a send that finds Redis unavailable, or the watcher's probes
//!   ([`ChatService::relay_tick`]: two failed pings in a row), switch the
//!   gateway to relay mode. It stays there until Redis answers two probes
//!   in a row *and* every message held meanwhile got its seq.
//! - **Send**: membership is checked from what the gateway knows without
//!   Redis (a direct conversation names its two members; a group's members
//!   come from the members cache, kept even past its TTL; a channel's
//!   publishers from its description as last read, or the store). The message is held in the spool (bounded), published to the
//!   relay for the other gateways, answered `sent {relayed: true, seq: 0}`
//!   and delivered to local sockets as `msg {relayed: true, seq: 0}`.
//! - **Reconciliation**: held messages go through the normal send path in
//!   the order they were accepted, with their original ids (so a message
//!   Redis had after all is not stored twice), and fan out sequenced: the
//!   recipients, the sender's sockets included, get the `msg` with its seq
//!   and acknowledge it as usual. New sends keep going through the relay
//!   until the spool is empty, so a conversation's order is kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use sha3::{Digest, Sha3_256};
use switchboard_core::broker::{Routed, SendOutcome, SendRequest};
use switchboard_proto::frames::{ErrorCode, Message, ServerFrame};
use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::time::now_ms;

use super::{ChatError, ChatService, Engine, Result};
use crate::config::GatewayConfig;
use crate::relay::{
    Envelope, EnvelopeSealer, Held, RelayClient, RelayConfig, RelayError, Spool, channel_name,
};

/// Failed (or successful) probes in a row that switch relay mode on (off).
const PROBES_TO_SWITCH: u32 = 2;
/// A probe that takes longer than this failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The relay side of one gateway's chat service.
pub struct Relaying {
    pub(crate) client: Arc<RelayClient>,
    pub(crate) sealer: EnvelopeSealer,
    spool: Spool,
    /// Redis is considered unreachable.
    down: AtomicBool,
    failed_probes: AtomicU32,
    good_probes: AtomicU32,
    /// Ephemeral frames this gateway published through the relay, for
    /// their message ids (see [`Relaying::ephemeral_id`]).
    ephemeral: AtomicU64,
}

impl Relaying {
    pub fn new(relay: &RelayConfig, cfg: &GatewayConfig) -> Result<Self, RelayError> {
        let cluster = cfg.identity.as_ref().map(|i| i.cluster());
        Ok(Relaying {
            client: Arc::new(RelayClient::new(relay, channel_name(cluster))?),
            sealer: EnvelopeSealer::new(&cfg.token_secret),
            spool: Spool::new(cfg.relay_spool_max),
            down: AtomicBool::new(false),
            failed_probes: AtomicU32::new(0),
            good_probes: AtomicU32::new(0),
            ephemeral: AtomicU64::new(0),
        })
    }

    /// The relay message id of an ephemeral frame (typing, a receipt, a
    /// sequenced copy while replaying): unique per frame. The relay is
    /// idempotent by message id (Ably's and this project's alike), so two
    /// frames published in the same millisecond under a time-only id would
    /// lose the second.
    fn ephemeral_id(&self, gateway_id: &str) -> String {
        ephemeral_id(&self.ephemeral, gateway_id)
    }

    /// Sends go through the relay: Redis is down, or messages accepted
    /// while it was are still waiting for their seq.
    fn active(&self) -> bool {
        self.down.load(Ordering::Acquire) || !self.spool.is_empty()
    }
}

fn relay_unavailable(detail: impl Into<String>) -> ChatError {
    ChatError::Unavailable {
        what: Engine::Relay,
        detail: detail.into(),
    }
}

/// `<gateway>-<ms>-<n>`: `n` counts this gateway's ephemeral publishes, so
/// frames of one millisecond differ; the time keeps ids of a restarted
/// gateway (its counter at 0 again) apart from its earlier ones.
fn ephemeral_id(counter: &AtomicU64, gateway_id: &str) -> String {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    format!("{gateway_id}-{}-{n}", now_ms())
}

/// The relay message id of a held message: the same for every retry, so
/// the relay keeps one copy.
fn relay_message_id(req: &SendRequest) -> String {
    let mut h = Sha3_256::new();
    h.update(req.conv.as_str().as_bytes());
    h.update(b"\n");
    h.update(req.from.to_string().as_bytes());
    h.update(b"\n");
    h.update(req.id.as_str().as_bytes());
    hex::encode(&h.finalize()[..16])
}

impl ChatService {
    /// The relay's client, for the subscription task (`None` without a relay).
    pub fn relay_client(&self) -> Option<Arc<RelayClient>> {
        self.relay.as_ref().map(|r| r.client.clone())
    }

    /// Open an envelope read from the relay (`None` without a relay).
    pub fn open_envelope(
        &self,
        text: &str,
    ) -> Option<Result<Envelope, crate::relay::EnvelopeError>> {
        self.relay.as_ref().map(|r| r.sealer.open(text))
    }

    /// Whether relay mode considers Redis unreachable now (`/readyz`).
    pub fn redis_unreachable(&self) -> bool {
        self.broker_down()
    }

    /// Whether a fallback relay is configured.
    pub(super) fn relay_configured(&self) -> bool {
        self.relay.is_some()
    }

    /// Whether the gateway is in relay mode now.
    pub fn relay_mode(&self) -> bool {
        self.relay.as_ref().is_some_and(Relaying::active)
    }

    /// Redis is considered unreachable (relay mode on for that reason):
    /// calls that would only wait for Redis's timeout are answered at once.
    pub(super) fn broker_down(&self) -> bool {
        self.relay
            .as_ref()
            .is_some_and(|r| r.down.load(Ordering::Acquire))
    }

    /// The error of an operation that needs Redis, in relay mode.
    pub(super) fn broker_down_error() -> ChatError {
        ChatError::Unavailable {
            what: Engine::Broker,
            detail: "Redis is unreachable (relay mode)".into(),
        }
    }

    /// Route an ephemeral frame (typing, a receipt, an error notice) in
    /// relay mode: this gateway's share to its sockets, the rest through
    /// the relay, best effort.
    pub(super) async fn relay_route(&self, ev: Routed) {
        self.hub.deliver(&ev);
        let Some(r) = &self.relay else { return };
        let envelope = Envelope {
            origin: self.cfg.gateway_id.clone(),
            routed: ev,
        };
        let id = r.ephemeral_id(&self.cfg.gateway_id);
        let sent = match r.sealer.seal(&envelope) {
            Ok(text) => r
                .client
                .publish(&id, &text)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "an ephemeral frame was not relayed");
        }
    }

    /// Messages held now, waiting for Redis.
    pub fn relay_held(&self) -> usize {
        self.relay.as_ref().map_or(0, |r| r.spool.len())
    }

    fn set_mode_gauge(&self, r: &Relaying) {
        self.metrics.relay.mode.set(i64::from(r.active()));
        self.metrics.relay.spooled.set(r.spool.len() as i64);
    }

    /// Switch relay mode on (idempotent).
    pub(super) fn enter_relay_mode(&self, why: &str) {
        let Some(r) = &self.relay else { return };
        if !r.down.swap(true, Ordering::AcqRel) {
            r.good_probes.store(0, Ordering::Relaxed);
            tracing::warn!(reason = why, "Redis unreachable: relay mode on");
        }
        self.set_mode_gauge(r);
    }

    /// One probe of the watcher (every half second with a relay): ping
    /// Redis; switch relay mode on after [`PROBES_TO_SWITCH`] failures in a
    /// row; after as many successes, replay the held messages and switch it
    /// off once none is left.
    pub async fn relay_tick(&self) {
        let Some(r) = &self.relay else { return };
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.broker.ping()).await,
            Ok(Ok(()))
        );
        if !ok {
            r.good_probes.store(0, Ordering::Relaxed);
            if r.failed_probes.fetch_add(1, Ordering::Relaxed) + 1 >= PROBES_TO_SWITCH {
                self.enter_relay_mode("Redis did not answer the probes");
            }
            return;
        }
        r.failed_probes.store(0, Ordering::Relaxed);
        let good = r.good_probes.fetch_add(1, Ordering::Relaxed) + 1;
        if !r.active() || good < PROBES_TO_SWITCH {
            return;
        }
        match self.replay_held(r).await {
            Ok(n) => {
                if r.down.swap(false, Ordering::AcqRel) || n > 0 {
                    tracing::info!(replayed = n, "Redis answers again: relay mode off");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "replaying relayed messages stopped; retrying");
                r.good_probes.store(0, Ordering::Relaxed);
            }
        }
        self.set_mode_gauge(r);
    }

    /// Accept `req` in relay mode: check membership from what is known
    /// without Redis, hold it, publish it to the other gateways.
    pub(super) async fn relay_send(&self, req: SendRequest) -> Result<SendOutcome> {
        let Some(r) = &self.relay else {
            return Err(ChatError::Internal("relay_send without a relay".into()));
        };
        let members = if req.conv.kind() == ConvKind::Channel {
            // A channel fans out to its subscribers, not to members: check
            // the publisher against the description as last known.
            let Some(c) = self.channel(&req.conv).await? else {
                return Err(relay_unavailable(
                    "Redis is unreachable and this gateway does not know the channel; retry with the same id when it is back",
                ));
            };
            if !req.privileged && !c.can_publish(&req.from) {
                return Err(ChatError::NotPublisher);
            }
            Arc::new(Vec::new())
        } else {
            let members = self.members_without_broker(&req.conv)?;
            if !members.contains(&req.from) {
                return Err(ChatError::NotMember);
            }
            members
        };
        let held = Held {
            req,
            accepted_at: now_ms(),
            members,
        };
        match r.spool.push(held.clone()) {
            Ok(None) => {}
            // A retry of a message held already: the same answer again.
            Ok(Some(earlier)) => return Ok(relayed_outcome(&earlier, true)),
            Err(full) => {
                self.metrics.relay.spool_full.inc();
                tracing::warn!(error = %full, "relay spool full: send refused");
                return Err(relay_unavailable(
                    "Redis is unreachable and this gateway holds as many relayed messages as it may; retry with the same id later",
                ));
            }
        }
        self.set_mode_gauge(r);
        let out = relayed_outcome(&held, false);
        let envelope = Envelope {
            origin: self.cfg.gateway_id.clone(),
            routed: relayed_routed(&out, None),
        };
        let published = match r.sealer.seal(&envelope) {
            Ok(text) => r
                .client
                .publish(&relay_message_id(&held.req), &text)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = published {
            // Not relayed, so not accepted: the client retries.
            r.spool.withdraw(&held.req);
            self.set_mode_gauge(r);
            self.metrics.relay.publish_failures.inc();
            tracing::warn!(error = %e, "relay publish failed: send refused");
            return Err(relay_unavailable(
                "Redis and the fallback relay are both unreachable; retry with the same id",
            ));
        }
        self.metrics.relay.published.inc();
        Ok(out)
    }

    /// Members of `conv` without asking Redis: a direct conversation's from
    /// its id, a group's from the members cache however old (it was right
    /// when Redis last answered).
    fn members_without_broker(&self, conv: &ConvId) -> Result<Arc<Vec<Address>>> {
        match conv.kind() {
            ConvKind::Direct => conv
                .direct_members()
                .map(|m| Arc::new(m.to_vec()))
                .ok_or(ChatError::NotMember),
            ConvKind::Group => self.cached_members(conv).ok_or_else(|| {
                relay_unavailable(
                    "Redis is unreachable and this gateway does not know the group's members; retry with the same id when it is back",
                )
            }),
            // Checked by the caller against the channel's publishers.
            ConvKind::Channel => Ok(Arc::new(Vec::new())),
        }
    }

    /// Give the held messages their seqs through the normal send path, in
    /// order, and fan them out sequenced. Stops at the first `unavailable`
    /// (Redis went again): the rest stay held. Returns how many were
    /// replayed.
    async fn replay_held(&self, r: &Relaying) -> Result<usize> {
        let mut n = 0;
        while let Some(held) = r.spool.front() {
            let result = self.send_sequenced(held.req.clone()).await;
            match result {
                Ok(out) => {
                    r.spool.pop_front();
                    n += 1;
                    self.metrics.relay.replayed.inc();
                    // Also when Redis had it already (a send that timed out
                    // but was applied): its recipients got only the relayed
                    // copy, so the sequenced one goes out either way.
                    self.fan_out_sequenced(out, None).await;
                }
                Err(e @ ChatError::Unavailable { .. }) => {
                    self.set_mode_gauge(r);
                    return Err(e);
                }
                Err(e) => {
                    // Redis refuses it for good (e.g. the sender left the
                    // group meanwhile): tell the sender's sockets.
                    r.spool.pop_front();
                    self.metrics.relay.rejected.inc();
                    tracing::warn!(error = %e, conv = %held.req.conv, "a relayed message was refused when replayed");
                    let frame = ServerFrame::error(
                        ErrorCode::Unavailable,
                        format!(
                            "message {} relayed while Redis was down could not be stored: {e}",
                            held.req.id.as_str()
                        ),
                        Some(held.req.id.as_str().to_string()),
                    );
                    self.route(vec![held.req.from], frame.to_json(), None, None)
                        .await;
                }
            }
            self.set_mode_gauge(r);
        }
        Ok(n)
    }
}

/// A relayed message on its way: to the members' sockets, or for a channel
/// to its subscribers (seq 0: written as it comes, outside the channel's
/// seq order, and again with its seq later).
pub(super) fn relayed_routed(out: &SendOutcome, skip_conn: Option<String>) -> Routed {
    let m = &out.message;
    let is_channel = m.conv.kind() == ConvKind::Channel;
    Routed {
        users: if is_channel {
            Vec::new()
        } else {
            out.members.clone()
        },
        frame: ServerFrame::Msg(m.clone()).to_json().into(),
        ack: None,
        skip_conn,
        channel: is_channel.then(|| (m.conv.clone(), 0)),
        revoke: None,
    }
}

/// The answer to a relayed send: no seq yet, `relayed`.
fn relayed_outcome(h: &Held, duplicate: bool) -> SendOutcome {
    SendOutcome {
        message: Message {
            conv: h.req.conv.clone(),
            seq: 0,
            id: h.req.id.clone(),
            from: h.req.from,
            body: h.req.body.clone(),
            ts: h.accepted_at,
            relayed: true,
        },
        duplicate,
        members: h.members.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ephemeral_ids_differ_within_a_millisecond() {
        let counter = AtomicU64::new(0);
        let ids: HashSet<String> = (0..10_000)
            .map(|_| ephemeral_id(&counter, "gw-a"))
            .collect();
        assert_eq!(ids.len(), 10_000);
    }
}
