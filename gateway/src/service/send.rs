//! A message's write path. The broker's send is one atomic step (dedupe,
//! membership or publisher check, next seq, log, persistence stream); with a
//! store configured the broker refuses a conversation it holds no state for
//! (new, or Redis lost its data), and the service seeds it from the store —
//! the seq continues above what is stored, a new epoch begins, a group gets
//! its members back — and sends again. Then the message fans out: to the
//! members' connections, or once to a channel's topic.

use std::sync::Arc;

use switchboard_core::broker::{BrokerError, Routed, SendOutcome, SendRequest};
use switchboard_proto::frames::{Message, ServerFrame};
use switchboard_proto::ids::ConvKind;
use switchboard_proto::model::Conversation;

use super::{ChatError, ChatService, Result};
use crate::hub::ConnHandle;

impl ChatService {
    /// Store `req` (exactly once per `(conv, id)`): the outcome carries the
    /// seq, or the original one for a repeated id (`duplicate`). Nothing is
    /// delivered yet: the caller answers its client first, then calls
    /// [`ChatService::fan_out`], so a sender sees `sent` before its other
    /// devices see the `msg`.
    ///
    /// With a fallback relay, a send in relay mode (or one that finds Redis
    /// unreachable) is accepted through the relay instead: the outcome's
    /// message is `relayed`, without a seq yet (see `service::relay`).
    pub async fn send(&self, req: SendRequest) -> Result<SendOutcome> {
        if self.relay.is_none() {
            return self.send_sequenced(req).await;
        }
        if self.relay_mode() {
            return self.relay_send(req).await;
        }
        let copy = req.clone();
        match self.send_sequenced(req).await {
            Err(ChatError::Unavailable {
                what: super::Engine::Broker,
                detail,
            }) => {
                self.enter_relay_mode(&detail);
                self.relay_send(copy).await
            }
            other => other,
        }
    }

    /// The normal write path: the broker's atomic send, seeding the
    /// conversation from the store when the broker lost it.
    pub(super) async fn send_sequenced(&self, req: SendRequest) -> Result<SendOutcome> {
        let out = self.send_to_broker(req).await?;
        // Keep the group's members at hand for relay mode (a send gets them
        // from the broker's atomic check anyway).
        if self.relay.is_some() && out.message.conv.kind() == ConvKind::Group {
            self.remember_members(&out.message.conv, &out.members);
        }
        Ok(out)
    }

    async fn send_to_broker(&self, req: SendRequest) -> Result<SendOutcome> {
        let req = match self.broker.send(req).await {
            Err(BrokerError::Unseeded(req)) => *req,
            other => return Ok(other?),
        };
        let Some(store) = &self.store else {
            // Seeding is only switched on together with a store.
            return Err(ChatError::Internal(
                "broker asks for seeding but no store is configured".into(),
            ));
        };
        let last_seq = store.last_seq(&req.conv).await?;
        let group = match req.conv.kind() {
            ConvKind::Direct => None,
            // A channel's description comes back from the store first (the
            // send script checks its publishers); the seed gives its counter.
            ConvKind::Channel => {
                if self.channel(&req.conv).await?.is_none() {
                    return Err(ChatError::NotMember);
                }
                None
            }
            ConvKind::Group => {
                let Some(members) = store.members(&req.conv).await? else {
                    return Err(ChatError::NotMember);
                };
                Some(Conversation {
                    id: req.conv.clone(),
                    kind: ConvKind::Group,
                    title: None,
                    members: members.into_iter().map(|m| m.user).collect(),
                    created_by: None,
                    created_at: 0,
                    publishers: Vec::new(),
                    visibility: None,
                })
            }
        };
        let epoch = self
            .broker
            .seed(&req.conv, last_seq, group.as_ref())
            .await?;
        tracing::info!(conv = %req.conv, last_seq, epoch, "seeded conversation from the store");
        self.invalidate_members(&req.conv);
        match self.broker.send(req).await {
            // Seeded a moment ago: a second miss means Redis is flapping.
            Err(BrokerError::Unseeded(_)) => Err(ChatError::Unavailable {
                what: super::Engine::Broker,
                detail: "conversation state vanished right after seeding".into(),
            }),
            other => Ok(other?),
        }
    }

    /// Deliver a newly stored message: to every member's connections but
    /// `skip` (the sending socket, which got `sent`), or, for a channel, once
    /// to its topic for every gateway with a subscriber. A duplicate is not
    /// delivered again (its recipients had it, or catch up by `sync`).
    ///
    /// A relayed message (relay mode) goes to this gateway's sockets only:
    /// the other gateways got it through the relay already.
    pub async fn fan_out(&self, out: SendOutcome, skip: Option<&Arc<ConnHandle>>) {
        if out.duplicate {
            return;
        }
        if out.message.relayed {
            let ev = super::relay::relayed_routed(&out, skip.map(|h| self.hub.conn_name(h)));
            self.hub.deliver(&ev);
            return;
        }
        self.fan_out_sequenced(out, skip).await;
    }

    /// Deliver a sequenced message, even one the broker had already
    /// (replaying relayed messages: their recipients had only the relayed
    /// copy).
    pub(super) async fn fan_out_sequenced(&self, out: SendOutcome, skip: Option<&Arc<ConnHandle>>) {
        self.metrics.messages_in.inc();
        let m = out.message;
        if m.conv.kind() == ConvKind::Channel {
            self.publish_channel(m).await;
        } else {
            let ack = Some((m.conv.clone(), m.seq));
            let frame = ServerFrame::Msg(m).to_json();
            self.route(out.members, frame, ack, skip).await;
        }
    }

    /// Fan a channel message out to every gateway with a subscriber.
    /// Failures are logged: the message is durable and subscribers catch up.
    async fn publish_channel(&self, m: Message) {
        let channel = Some((m.conv.clone(), m.seq));
        let ev = Routed {
            users: Vec::new(),
            frame: ServerFrame::Msg(m).to_json().into(),
            ack: None,
            skip_conn: None,
            channel,
            revoke: None,
        };
        if let Err(e) = self.broker.publish_channel(ev).await {
            tracing::warn!(error = %e, "channel fan-out failed; subscribers will catch up");
        }
    }
}
