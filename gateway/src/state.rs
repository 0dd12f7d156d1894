//! Shared state of one gateway instance, handed to every transport.

use std::sync::Arc;

use switchboard_core::broker::DynBroker;
use switchboard_core::store::DynStore;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::relay::RelayError;
use crate::service::ChatService;

/// What the transports share: axum handlers take it as `State<AppRef>`.
pub type AppRef = Arc<AppState>;

pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    /// Every chat rule and engine call goes through it.
    pub chat: Arc<ChatService>,
    /// This gateway's open connections and their bounded queues.
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Flood limits: REST rates and connection caps.
    pub limits: Arc<Limits>,
    /// Cancelled when the gateway starts draining.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(
        cfg: GatewayConfig,
        broker: DynBroker,
        store: Option<DynStore>,
    ) -> Result<AppRef, RelayError> {
        let mut metrics = Metrics::new();
        metrics.describe_relay(cfg.relay.as_ref());
        metrics.describe_runtime();
        let metrics = Arc::new(metrics);
        let limits = Arc::new(Limits::new(cfg.limits.clone(), metrics.clone()));
        let cfg = Arc::new(cfg);
        let hub = Arc::new(Hub::new(cfg.gateway_id.clone(), metrics.clone()));
        let shutdown = CancellationToken::new();
        let chat = Arc::new(ChatService::new(
            cfg.clone(),
            broker,
            store,
            hub.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?);
        Ok(Arc::new(AppState {
            cfg,
            chat,
            hub,
            metrics,
            limits,
            shutdown,
        }))
    }
}
