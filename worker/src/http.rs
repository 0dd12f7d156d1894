//! `/metrics`, `/healthz` (the process runs) and `/readyz` (Redis and
//! PostgreSQL answer) for probes and scraping.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use switchboard_core::store::DynStore;

use crate::metrics::Metrics;
use crate::streams::Streams;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub streams: Arc<Streams>,
    pub store: DynStore,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if let Err(e) = s.streams.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}"));
    }
    if let Err(e) = s.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("postgres: {e}"));
    }
    (StatusCode::OK, "ready".to_string())
}
