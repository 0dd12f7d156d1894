//! Router, start-up and graceful drain of one gateway instance.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use switchboard_core::broker::{BrokerError, DynBroker};
use switchboard_core::store::DynStore;
use switchboard_proto::frames::close;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::GatewayConfig;
use crate::http::problem::ApiError;
use crate::http::{ops, params};
use crate::openapi::Surface;
use crate::relay::{RelayConfig, join_hosts};
use crate::state::{AppRef, AppState};
use crate::{admit, api, cors, limits, report};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot attach to the broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("fallback relay: {0}")]
    Relay(#[from] crate::relay::RelayError),
}

/// The internal listener's router: `/metrics` (and `/healthz`), kept off
/// the public port.
pub fn metrics_router(state: AppRef) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .with_state(state)
}

/// The HTTP router, for embedding or for in-process tests. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the limits count
/// the peer address (without it, every client counts as `0.0.0.0`).
pub fn router(state: AppRef) -> Router {
    // Every endpoint comes from `api`'s table, which the OpenAPI document
    // is built from too. Probes stay outside the limits: kubelets and
    // scrapers poll them.
    let ops = api::router_of(Surface::Probe);
    let native = api::router_of(Surface::Native)
        .route_layer(from_fn_with_state(state.clone(), admit::native));
    // The Ably-compatible subset (see `ably`).
    let ably =
        api::router_of(Surface::Ably).route_layer(from_fn_with_state(state.clone(), admit::ably));
    // Fixed files (the dev server's browser chat), outside the API limits
    // like the probes: a page load is a handful of GETs.
    let mut files = Router::new();
    for f in &state.cfg.static_files {
        let (content_type, body) = (f.content_type, f.body);
        files = files.route(
            f.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    body,
                )
            }),
        );
    }
    let app = Router::new()
        .merge(ops)
        .merge(files)
        .merge(native)
        .merge(ably)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        // Every body is bounded before it is read (413 past it); the Ably
        // publish route sets its own, larger limit above.
        .layer(DefaultBodyLimit::max(params::MAX_BODY_BYTES));
    // CORS outside the admission (a 429 carries its headers), preflights
    // admitted in front of it (see `cors`).
    let app = match cors::Allowed::new(&state.cfg.cors_origins) {
        None => app,
        Some(allowed) => app.layer(allowed.layer()).layer(from_fn_with_state(
            (state.clone(), allowed),
            admit::preflight,
        )),
    };
    app.with_state(state)
}

/// What relay is configured, at start-up; never the key.
fn log_relay(relay: Option<&RelayConfig>) {
    match relay {
        Some(r) => tracing::info!(
            provider = %r.provider(),
            hosts = %join_hosts(r.hosts()),
            fallback_hosts = %join_hosts(r.fallback_hosts()),
            api_key = if r.api_key().is_some() { "set" } else { "none" },
            "fallback relay configured: messages go through it while Redis is unreachable"
        ),
        None => tracing::info!("no fallback relay configured"),
    }
}

/// A running gateway.
pub struct Gateway {
    state: AppRef,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Connection reports (with an identity only); ends by itself on drain.
    reporter: Option<JoinHandle<()>>,
}

/// How long a drain waits past its window for closing sockets to finish
/// their close handshake. The operator's termination grace period is
/// preStop + drain timeout + 5 s, so this fits inside it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl Gateway {
    /// Attach to the broker and serve on `listener` until [`Gateway::shutdown`].
    pub async fn start(
        cfg: GatewayConfig,
        broker: DynBroker,
        listener: TcpListener,
    ) -> Result<Gateway, GatewayError> {
        Self::start_with_store(cfg, broker, None, listener).await
    }

    /// Like [`Gateway::start`], with a durable store for history beyond the
    /// broker's log.
    pub async fn start_with_store(
        cfg: GatewayConfig,
        broker: DynBroker,
        store: Option<DynStore>,
        listener: TcpListener,
    ) -> Result<Gateway, GatewayError> {
        let addr = listener.local_addr()?;
        let metrics_listener = TcpListener::bind(&cfg.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        let mut events = broker.attach(&cfg.gateway_id).await?;
        let state = AppState::new(cfg, broker, store)?;

        let dispatcher = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    state.hub.deliver(&ev);
                }
            })
        };
        let liveness = {
            let state = state.clone();
            tokio::spawn(async move {
                let period = state.cfg.liveness_interval.max(Duration::from_millis(100));
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = state.shutdown.cancelled() => return,
                    }
                    if let Err(e) = state.chat.refresh_liveness().await {
                        tracing::warn!(error = %e, "liveness refresh failed");
                    }
                }
            })
        };
        // Sessions end on time: once a second, connections whose token
        // expired are closed with 4001 (the client signs in again).
        let expiry = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = state.shutdown.cancelled() => return,
                    }
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let closed = state.hub.close_expired(now);
                    if closed > 0 {
                        tracing::debug!(closed, "closed connections whose session expired");
                    }
                }
            })
        };
        let server = {
            let app = router(state.clone());
            let stop = state.shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        };
        // Serves through the drain (scrapes see it), until the gateway stops.
        let metrics = {
            let app = metrics_router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(metrics_listener, app).await {
                    tracing::error!(error = %e, "metrics server failed");
                }
            })
        };
        let pruner = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(limits::PRUNE_EVERY);
                loop {
                    tokio::select! {
                        _ = tick.tick() => state.limits.prune(),
                        _ = state.shutdown.cancelled() => return,
                    }
                }
            })
        };
        tracing::info!(%addr, %metrics_addr, gateway = %state.cfg.gateway_id, "gateway listening");
        log_relay(state.cfg.relay.as_ref());
        let ack_flusher = state.chat.spawn_ack_flusher();
        let relay_tasks = crate::degraded::spawn(&state);
        let reporter = report::spawn(state.clone());
        Ok(Gateway {
            state,
            addr,
            metrics_addr,
            server,
            background: [dispatcher, liveness, expiry, metrics, pruner, ack_flusher]
                .into_iter()
                .chain(relay_tasks)
                .collect(),
            reporter,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served ([`GatewayConfig::metrics_listen`]).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn state(&self) -> &AppRef {
        &self.state
    }

    /// Drain: turn unready, withdraw the connection report, stop accepting,
    /// close the sockets with 1012 in randomized batches over most of
    /// [`GatewayConfig::drain_window`] so clients reconnect elsewhere (and
    /// resync) as a trickle rather than a herd, wait for them until the
    /// window ends plus [`CLOSE_GRACE`] for the last close handshakes, then
    /// stop.
    pub async fn shutdown(self) {
        let started = tokio::time::Instant::now();
        let window = self.state.cfg.drain_window;
        let open = self.state.hub.connection_count();
        self.state.shutdown.cancel();
        tracing::info!(sockets = open, ?window, "draining");
        self.state
            .hub
            .close_spread(close::GOING_AWAY, window.mul_f64(0.8))
            .await;
        // The last batches need a moment to say goodbye: a socket still
        // open when the process exits gets a reset instead of its 1012
        // (seen in the 10,000-socket drain bench with a 1 s window).
        let deadline = started + window.max(Duration::from_secs(1)) + CLOSE_GRACE;
        while self.state.hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.hub.connection_count();
        tracing::info!(
            sockets = open,
            still_open = left,
            took_ms = started.elapsed().as_millis() as u64,
            "drained"
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        // Acks of the sockets that just closed: their watermarks and
        // receipts, before the flusher stops with the other tasks.
        self.state.chat.flush_delivered().await;
        if let Some(r) = self.reporter {
            // It withdrew the report when the drain began; this only waits
            // for a slow broker, briefly.
            if tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .is_err()
            {
                tracing::warn!("connection report withdrawal still pending at exit");
            }
        }
        for t in self.background {
            t.abort();
        }
        tracing::info!(gateway = %self.state.cfg.gateway_id, "gateway stopped");
    }
}
