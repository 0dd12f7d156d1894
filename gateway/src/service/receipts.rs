//! Watermarks and the frames that announce them: a member's delivered and
//! read marks only move forward, and each move goes to every member's
//! devices as one `receipt`. Typing indicators go to the other members;
//! they are ephemeral and never stored.

use std::sync::Arc;

use switchboard_core::broker::Mark;
use switchboard_proto::frames::ServerFrame;
use switchboard_proto::ids::{Address, ConvId};

use super::{ChatService, Result};
use crate::hub::ConnHandle;

impl ChatService {
    /// Raise `user`'s `mark` in `conv` to `seq` and, when it moved, send the
    /// receipt to every member's devices but `skip` (the connection that
    /// asked). The caller has checked membership.
    pub async fn mark(
        &self,
        conv: &ConvId,
        user: Address,
        mark: Mark,
        seq: u64,
        skip: Option<&Arc<ConnHandle>>,
    ) -> Result<()> {
        if self.broker_down() {
            return Err(Self::broker_down_error());
        }
        let Some(w) = self.broker.mark(conv, &user, mark, seq).await? else {
            return Ok(());
        };
        let Some(members) = self.members(conv).await? else {
            return Ok(());
        };
        let frame = ServerFrame::Receipt {
            conv: conv.clone(),
            user,
            delivered: w.delivered,
            read: w.read,
        }
        .to_json();
        self.route(members.as_ref().clone(), frame, None, skip)
            .await;
        Ok(())
    }

    /// Tell the other members of `conv` that `user` is typing. Best effort:
    /// a failed look-up drops the indicator. The caller has checked
    /// membership and throttles.
    pub async fn typing(&self, conv: ConvId, user: Address) {
        let Ok(Some(members)) = self.members(&conv).await else {
            return;
        };
        let others: Vec<Address> = members.iter().copied().filter(|m| *m != user).collect();
        let frame = ServerFrame::Typing { conv, user }.to_json();
        self.route(others, frame, None, None).await;
    }
}
