//! Prometheus metrics served on `/metrics` (text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::relay::{RelayConfig, join_hosts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Authenticated connections open now: WebSockets and SSE streams.
    pub connections: Gauge,
    /// Of those, SSE streams (`GET /v1/conversations/{id}/events`).
    pub sse_streams: Gauge,
    /// `send` frames accepted (new messages, not duplicates).
    pub messages_in: Counter,
    /// `msg` frames written to sockets, first attempts only.
    pub messages_out: Counter,
    /// `msg` frames written again because no `ack` came in time.
    pub retries: Counter,
    /// Deliveries abandoned after the last retry (the client catches up by sync).
    pub retries_exhausted: Counter,
    /// Times the broker had lost this gateway and its registrations were
    /// asserted again.
    pub reasserts: Counter,
    /// Seconds from seq assignment to the first write to the recipient's socket.
    pub delivery_latency: Histogram,
    /// Errors answered to clients, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Sockets closed for not reading fast enough.
    pub slow_consumers: Counter,
    /// Requests and connections refused by a flood limit, by limit
    /// (`crate::limits::Limit::as_str`).
    pub refusals: Family<LimitLabel, Counter>,
    /// Sign-in signatures recovered (secp256k1 public-key recovery, the
    /// expensive step of `POST /v1/auth/verify`).
    pub signature_recoveries: Counter,
    /// The fallback relay at work (all zero without one).
    pub relay: RelayMetrics,
}

/// What relay mode does (`relay_*`).
#[derive(Default)]
pub struct RelayMetrics {
    /// 1 while this gateway relays (Redis unreachable, or messages accepted
    /// meanwhile still waiting for their seq).
    pub mode: Gauge,
    /// 1 while the subscription to the relay is open.
    pub subscribed: Gauge,
    /// Messages accepted in relay mode and published to the relay.
    pub published: Counter,
    /// Publishes the relay did not take (the send was refused as unavailable).
    pub publish_failures: Counter,
    /// Envelopes from other gateways delivered to local sockets.
    pub received: Counter,
    /// Envelopes read from the relay and dropped: not sealed by this
    /// cluster, malformed or too large.
    pub refused: Counter,
    /// Messages held now, waiting for Redis.
    pub spooled: Gauge,
    /// Held messages given their seq once Redis answered again.
    pub replayed: Counter,
    /// Held messages Redis refused when they were replayed (the sender is
    /// told with an error frame).
    pub rejected: Counter,
    /// Sends refused because the spool was full.
    pub spool_full: Counter,
}

impl RelayMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "relay_mode",
            "1 while the gateway relays: Redis unreachable, or relayed messages still waiting for their seq",
            self.mode.clone(),
        );
        r.register(
            "relay_subscribed",
            "1 while the subscription to the fallback relay is open",
            self.subscribed.clone(),
        );
        r.register(
            "relay_published",
            "Messages accepted in relay mode and published to the relay",
            self.published.clone(),
        );
        r.register(
            "relay_publish_failures",
            "Relay publishes that failed (the send was answered unavailable)",
            self.publish_failures.clone(),
        );
        r.register(
            "relay_received",
            "Relayed events from other gateways delivered to local sockets",
            self.received.clone(),
        );
        r.register(
            "relay_envelopes_refused",
            "Relay events dropped: not sealed by this cluster, malformed or too large",
            self.refused.clone(),
        );
        r.register(
            "relay_spooled",
            "Messages held by this gateway waiting for Redis to sequence them",
            self.spooled.clone(),
        );
        r.register(
            "relay_replayed",
            "Held messages sequenced through Redis once it answered again",
            self.replayed.clone(),
        );
        r.register(
            "relay_rejected",
            "Held messages Redis refused when replayed (senders get an error frame)",
            self.rejected.clone(),
        );
        r.register(
            "relay_spool_full",
            "Sends refused in relay mode because the spool was full",
            self.spool_full.clone(),
        );
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard_gateway");
        let connections = Gauge::default();
        let sse_streams = Gauge::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let retries = Counter::default();
        let retries_exhausted = Counter::default();
        let reasserts = Counter::default();
        // 0.5 ms … ~4 s: loopback deliveries sit at the low end, retries at the top.
        let delivery_latency = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let errors = Family::<CodeLabel, Counter>::default();
        let slow_consumers = Counter::default();
        let refusals = Family::<LimitLabel, Counter>::default();
        let signature_recoveries = Counter::default();
        registry.register(
            "connections",
            "Open authenticated connections (WebSockets and SSE streams)",
            connections.clone(),
        );
        registry.register(
            "sse_streams",
            "Open SSE streams (also counted in connections)",
            sse_streams.clone(),
        );
        registry.register(
            "messages_in",
            "Messages accepted from senders",
            messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages delivered to sockets (first attempts)",
            messages_out.clone(),
        );
        registry.register(
            "delivery_retries",
            "Messages resent for lack of an ack",
            retries.clone(),
        );
        registry.register(
            "delivery_retries_exhausted",
            "Deliveries given up after the last retry",
            retries_exhausted.clone(),
        );
        registry.register(
            "registrations_reasserted",
            "Times the broker had lost this gateway (Redis restarted empty, a failover, a flush) and its connections were registered again",
            reasserts.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Seq assignment to socket write",
            delivery_latency.clone(),
        );
        registry.register(
            "errors",
            "Errors answered to clients by code",
            errors.clone(),
        );
        registry.register(
            "slow_consumers",
            "Sockets closed because their send queue filled",
            slow_consumers.clone(),
        );
        registry.register(
            "refusals",
            "Requests and connections refused by a flood limit, by limit",
            refusals.clone(),
        );
        registry.register(
            "signature_recoveries",
            "Sign-in signatures recovered (after the nonce and the rate limits admitted them)",
            signature_recoveries.clone(),
        );
        let relay = RelayMetrics::default();
        relay.register(&mut registry);
        Metrics {
            relay,
            registry,
            connections,
            sse_streams,
            messages_in,
            messages_out,
            retries,
            retries_exhausted,
            reasserts,
            delivery_latency,
            errors,
            slow_consumers,
            refusals,
            signature_recoveries,
        }
    }

    /// Export the async runtime's worker threads
    /// (`switchboard_gateway_runtime_worker_threads`; fixed for the process
    /// lifetime: `--worker-threads`, or the CPUs the process may use). 0
    /// outside a runtime.
    pub fn describe_runtime(&mut self) {
        let workers = Gauge::<i64>::default();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            workers.set(i64::try_from(rt.metrics().num_workers()).unwrap_or(i64::MAX));
        }
        self.registry.register(
            "runtime_worker_threads",
            "Worker threads of the gateway's async runtime",
            workers,
        );
    }

    /// Export the fallback relay configuration (read-only, fixed for the
    /// process lifetime): `switchboard_gateway_relay_configured` 0 or 1 and,
    /// with a relay, `switchboard_gateway_relay_info{provider,hosts,fallback_hosts}`.
    /// Never the key.
    pub fn describe_relay(&mut self, relay: Option<&RelayConfig>) {
        let configured = Gauge::<i64>::default();
        configured.set(i64::from(relay.is_some()));
        self.registry.register(
            "relay_configured",
            "1 if a fallback relay is configured (validated at start-up), else 0",
            configured,
        );
        if let Some(r) = relay {
            let labels = vec![
                ("provider".to_string(), r.provider().to_string()),
                ("hosts".to_string(), join_hosts(r.hosts())),
                ("fallback_hosts".to_string(), join_hosts(r.fallback_hosts())),
            ];
            self.registry
                .register("relay", "The configured fallback relay", Info::new(labels));
        }
    }

    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn refusal(&self, limit: &'static str) {
        self.refusals.get_or_create(&LimitLabel { limit }).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        switchboard_core::telemetry::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
