//! Prometheus metrics served on `/metrics` (text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Batch failure kinds (`batch_failures{kind}`): `transient` (the database
/// is unavailable; retried with backoff), `rejected` (the data was refused;
/// entries retried alone), `unreadable` (an entry that does not decode).
pub const FAILURE_TRANSIENT: &str = "transient";
pub const FAILURE_REJECTED: &str = "rejected";
pub const FAILURE_UNREADABLE: &str = "unreadable";

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    /// Messages newly stored.
    pub messages: Counter,
    /// Stream entries whose message was already stored (redelivery).
    pub duplicates: Counter,
    /// Watermark entries applied.
    pub watermarks: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Failed batch writes by kind (`transient`: database unavailable, retried
    /// with backoff; `rejected`: the data was refused, entries retried alone).
    pub failures: Family<KindLabel, Counter>,
    /// Messages whose seq the store already held for another message (the
    /// broker's counter went back), given a new seq.
    pub resequenced: Counter,
    /// Entries moved to a dead-letter stream.
    pub dead_letters: Counter,
    /// Stale entries of other (or this) consumers taken over.
    pub claimed: Counter,
    /// Seconds to write and commit one batch.
    pub batch_seconds: Histogram,
    /// Entries in the streams not yet persisted (pending + unread), sampled.
    pub backlog: Gauge,
    /// Entries waiting in the dead-letter streams, sampled.
    pub dead_letter_size: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard_worker");
        let m = Metrics {
            messages: Counter::default(),
            duplicates: Counter::default(),
            watermarks: Counter::default(),
            batches: Counter::default(),
            failures: Family::default(),
            dead_letters: Counter::default(),
            resequenced: Counter::default(),
            claimed: Counter::default(),
            batch_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            backlog: Gauge::default(),
            dead_letter_size: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("messages", "Messages stored", m.messages.clone());
        registry.register(
            "duplicates",
            "Redelivered message entries that were already stored",
            m.duplicates.clone(),
        );
        registry.register(
            "watermarks",
            "Watermark entries applied",
            m.watermarks.clone(),
        );
        registry.register("batches", "Batches committed", m.batches.clone());
        registry.register(
            "batch_failures",
            "Failed batch writes by kind",
            m.failures.clone(),
        );
        registry.register(
            "resequenced",
            "Messages given a new seq because the store held another message under theirs (Redis lost writes)",
            m.resequenced.clone(),
        );
        registry.register(
            "dead_letters",
            "Entries moved to a dead-letter stream",
            m.dead_letters.clone(),
        );
        registry.register(
            "claimed",
            "Stale pending entries taken over",
            m.claimed.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time to write and commit one batch",
            m.batch_seconds.clone(),
        );
        registry.register(
            "backlog",
            "Stream entries not yet persisted (pending + unread)",
            m.backlog.clone(),
        );
        registry.register(
            "dead_letter_size",
            "Entries waiting in the dead-letter streams",
            m.dead_letter_size.clone(),
        );
        // Each kind is exported at 0 from the start, so a first failure is
        // an increase a `rate()` sees and dashboards find the series.
        for kind in [FAILURE_TRANSIENT, FAILURE_REJECTED, FAILURE_UNREADABLE] {
            let _ = m.failures.get_or_create(&KindLabel { kind });
        }
        Metrics { registry, ..m }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        switchboard_core::telemetry::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
