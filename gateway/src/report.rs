//! Connection reports for the operator's autoscaler: while the gateway knows
//! its `ChatCluster` identity ([`GatewayConfig::identity`]), it writes its
//! live connection count (authenticated sockets) to the broker every
//! `report_interval`, with a TTL of [`REPORT_TTL_FACTOR`] intervals, so the
//! report of a gateway that dies vanishes on its own. When the gateway starts
//! draining it withdraws the report at once: its sockets are moving to other
//! gateways, and counting them on both sides would look like a load spike.
//!
//! [`GatewayConfig::identity`]: crate::GatewayConfig::identity

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::config::REPORT_TTL_FACTOR;
use crate::state::AppRef;

/// Shortest accepted interval (tests use a few hundred ms).
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Start reporting, if the gateway has an identity. The task reports at once,
/// then every interval, and ends after withdrawing the report when the
/// gateway's shutdown token is cancelled.
pub(crate) fn spawn(state: AppRef) -> Option<JoinHandle<()>> {
    let id = state.cfg.identity.clone()?;
    let period = state.cfg.report_interval.max(MIN_INTERVAL);
    let ttl = period.saturating_mul(REPORT_TTL_FACTOR);
    tracing::info!(pod = %id, every = ?period, "reporting live connections for the autoscaler");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => break,
            }
            // Not raced against shutdown: a write cut off mid-flight could
            // still land after the withdrawal below and outlive the pod.
            let count = state.hub.connection_count() as u64;
            match state
                .chat
                .broker()
                .report_connections(&id, count, ttl)
                .await
            {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(pod = %id, "connection reports work again");
                }
                Ok(()) => {}
                Err(e) => {
                    failing = true;
                    tracing::warn!(pod = %id, error = %e, "cannot report live connections");
                }
            }
        }
        match state.chat.broker().withdraw_report(&id).await {
            Ok(()) => tracing::info!(pod = %id, "connection report withdrawn"),
            Err(e) => tracing::warn!(
                pod = %id,
                error = %e,
                "cannot withdraw the connection report; it expires on its own"
            ),
        }
    }))
}
