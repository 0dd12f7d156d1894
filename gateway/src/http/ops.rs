//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::problem::ApiError;
use crate::state::AppRef;

/// `GET /healthz`: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: not draining, and the broker answers.
pub async fn readyz(State(state): State<AppRef>) -> Result<&'static str, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("draining"));
    }
    // In relay mode the gateway still serves (messages go through the
    // relay), so it stays ready and says why it is degraded.
    if state.chat.relay_mode() {
        // From the probes' verdict, not another ping: a ping of a Redis
        // that is gone waits for the client's timeout.
        return Ok(if state.chat.redis_unreachable() {
            "ready (degraded: Redis unreachable, relay mode)"
        } else {
            "ready (degraded: replaying messages relayed while Redis was unreachable)"
        });
    }
    state.chat.ping().await?;
    Ok("ready")
}

/// `GET /metrics`: OpenMetrics text.
pub async fn metrics(State(state): State<AppRef>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
