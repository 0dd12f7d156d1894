//! The background side of relay mode (with a fallback relay configured):
//! the watcher that probes Redis and replays held messages when it is back
//! ([`crate::service::ChatService::relay_tick`]), and the subscription that
//! delivers the other gateways' relayed messages to this gateway's sockets.
//!
//! The subscription stays open whether or not this gateway is in relay
//! mode: another gateway of the cluster may lose Redis while this one still
//! reaches it, and its messages must still arrive here.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppRef;

/// How often the watcher probes Redis.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// First and longest wait before opening the subscription again.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(250);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);

/// The watcher and the subscription, or nothing without a relay.
pub fn spawn(state: &AppRef) -> Vec<JoinHandle<()>> {
    let Some(client) = state.chat.relay_client() else {
        return Vec::new();
    };
    let watcher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => state.chat.relay_tick().await,
                    _ = state.shutdown.cancelled() => return,
                }
            }
        })
    };
    let subscriber = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut wait = RESUBSCRIBE_MIN;
            loop {
                let opened = tokio::select! {
                    r = client.subscribe() => r,
                    _ = state.shutdown.cancelled() => return,
                };
                match opened {
                    Ok(mut sub) => {
                        wait = RESUBSCRIBE_MIN;
                        state.metrics.relay.subscribed.set(1);
                        tracing::info!(
                            host = sub.host(),
                            channel = client.channel(),
                            "subscribed to the fallback relay"
                        );
                        loop {
                            let next = tokio::select! {
                                n = sub.next() => n,
                                _ = state.shutdown.cancelled() => return,
                            };
                            match next {
                                Ok(text) => deliver(&state, &text),
                                Err(e) => {
                                    tracing::warn!(error = %e, "relay subscription ended; opening it again");
                                    break;
                                }
                            }
                        }
                        state.metrics.relay.subscribed.set(0);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot subscribe to the fallback relay")
                    }
                }
                // Jittered, so the gateways of a cluster do not return in step.
                let jitter = rand::random_range(0.5..1.0);
                tokio::select! {
                    _ = tokio::time::sleep(wait.mul_f64(jitter)) => {}
                    _ = state.shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(RESUBSCRIBE_MAX);
            }
        })
    };
    vec![watcher, subscriber]
}

/// One envelope from the relay: dropped unless sealed by this cluster;
/// this gateway's own (it delivered its share already) skipped; the rest
/// handed to the hub, which delivers to the local sockets of its users.
fn deliver(state: &AppRef, text: &str) {
    match state.chat.open_envelope(text) {
        Some(Ok(env)) if env.origin == state.cfg.gateway_id => {}
        Some(Ok(env)) => {
            state.metrics.relay.received.inc();
            state.hub.deliver(&env.routed);
        }
        Some(Err(e)) => {
            state.metrics.relay.refused.inc();
            tracing::warn!(error = %e, "relay event dropped");
        }
        None => {}
    }
}
