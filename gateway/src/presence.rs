//! Presence by heartbeat. A user's status is derived from `last_seen`:
//! online (< `online_within`), away (< `away_within`), offline otherwise.
//! Transitions are pushed as `presence` frames to the user's conversation peers:
//! `online` when the user's first socket anywhere opens; `away` and `offline`
//! from timers started when the user's last socket on a gateway closes, each
//! suppressed if the user reconnected in the meantime.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::broker::{BrokerError, Routed};
use switchboard_core::ids::Address;
use switchboard_core::protocol::{PresenceStatus, ServerFrame};
use switchboard_core::time::now_ms;

use crate::config::GatewayConfig;
use crate::state::AppState;

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

/// Everyone who shares a conversation with `user`.
async fn peers(state: &AppState, user: &Address) -> Result<Vec<Address>, BrokerError> {
    let mut out = BTreeSet::new();
    for conv in state.broker.user_conversations(user).await? {
        if let Some(m) = state.members(&conv).await? {
            out.extend(m.iter().copied());
        }
    }
    out.remove(user);
    Ok(out.into_iter().collect())
}

/// Push `user`'s status to their peers.
pub async fn announce(
    state: &AppState,
    user: Address,
    status: PresenceStatus,
    last_seen: u64,
) -> Result<(), BrokerError> {
    let users = peers(state, &user).await?;
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
    };
    if let Some(mine) = state.broker.route_local(ev, &state.cfg.gateway_id).await? {
        state.hub.deliver(&mine);
    }
    Ok(())
}

/// The user's last socket on this gateway closed: announce `away` and then
/// `offline` when the thresholds pass, unless they came back.
pub fn after_disconnect(state: Arc<AppState>, user: Address) {
    tokio::spawn(async move {
        let steps = [
            (state.cfg.online_within, PresenceStatus::Away),
            (state.cfg.away_within, PresenceStatus::Offline),
        ];
        for (threshold, status) in steps {
            let seen = match state.broker.last_seen(&[user]).await {
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
                _ = state.shutdown.cancelled() => return,
            }
            // Back on any gateway, or seen again since: no transition.
            if state.hub.has_user(&user) || state.broker.is_connected(&user).await.unwrap_or(true) {
                return;
            }
            let now_seen = match state.broker.last_seen(&[user]).await {
                Ok(v) => v.first().copied().unwrap_or(0),
                Err(_) => return,
            };
            if now_seen != seen {
                return;
            }
            if let Err(e) = announce(&state, user, status, seen).await {
                tracing::debug!(error = %e, "presence announce failed");
            }
        }
    });
}
