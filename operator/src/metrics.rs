//! Prometheus metrics served on `/metrics` (OpenMetrics text), prefix
//! `switchboard_operator_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One ChatCluster. Not `namespace`: the scrape of the operator sets that
/// to the operator's own namespace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster_namespace: String,
    pub chatcluster: String,
}

impl ClusterLabel {
    pub fn of(cluster: &crate::ChatCluster) -> Self {
        use kube::ResourceExt;
        ClusterLabel {
            cluster_namespace: cluster.namespace().unwrap_or_default(),
            chatcluster: cluster.name_any(),
        }
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, successful or not.
    pub reconciles: Counter,
    /// Reconciles that returned an error, by error kind.
    pub failures: Family<ReasonLabel, Counter>,
    /// Seconds one reconcile took.
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Autoscaler passes over the ChatClusters.
    pub autoscaler_syncs: Counter,
    /// Replica changes the autoscaler made, by direction (`up`, `down`).
    pub autoscaler_scales: Family<DirectionLabel, Counter>,
    /// Autoscaler syncs of one cluster that failed, by error kind.
    pub autoscaler_failures: Family<ReasonLabel, Counter>,
    /// Partition maintenance runs of one cluster, successful or not.
    pub partition_syncs: Counter,
    /// Partition maintenance runs (or status writes) that failed, by reason.
    pub partition_failures: Family<ReasonLabel, Counter>,
    /// Redis Cluster bootstrap runs of one cluster, successful or not.
    pub redis_bootstraps: Counter,
    /// Redis Cluster bootstrap runs that changed the cluster (met nodes,
    /// assigned slots or replicas, forgot or replaced a node).
    pub redis_bootstrap_changes: Counter,
    /// Redis Cluster bootstrap runs (or status writes) that failed, by reason.
    pub redis_bootstrap_failures: Family<ReasonLabel, Counter>,
    /// Per ChatCluster with partition maintenance: 1 while `PartitionsReady`
    /// is true, 0 while false. Exported by the leader only (a cluster's
    /// series goes when the cluster does, or when leadership is lost).
    pub partitions_ready: Family<ClusterLabel, Gauge>,
    /// Per ChatCluster with a managed Redis Cluster: 1 while the last check
    /// found it ready (every slot served, the nodes agreeing), else 0.
    /// Leader only, like `partitions_ready`.
    pub redis_cluster_ok: Family<ClusterLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        // 5 ms … 10 s: a reconcile is a handful of API round trips.
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let leader = Gauge::default();
        let autoscaler_syncs = Counter::default();
        let autoscaler_scales = Family::<DirectionLabel, Counter>::default();
        let autoscaler_failures = Family::<ReasonLabel, Counter>::default();
        let partition_syncs = Counter::default();
        let partition_failures = Family::<ReasonLabel, Counter>::default();
        let redis_bootstraps = Counter::default();
        let redis_bootstrap_changes = Counter::default();
        let redis_bootstrap_failures = Family::<ReasonLabel, Counter>::default();
        let partitions_ready = Family::<ClusterLabel, Gauge>::default();
        let redis_cluster_ok = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "reconciles",
            "ChatCluster reconciles run",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "ChatCluster reconciles that failed, by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one ChatCluster reconcile took",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "autoscaler_syncs",
            "Autoscaler passes over the ChatClusters",
            autoscaler_syncs.clone(),
        );
        registry.register(
            "autoscaler_scales",
            "Gateway replica changes made by the autoscaler, by direction",
            autoscaler_scales.clone(),
        );
        registry.register(
            "autoscaler_failures",
            "Autoscaler syncs of one ChatCluster that failed, by reason",
            autoscaler_failures.clone(),
        );
        registry.register(
            "partition_syncs",
            "Partition maintenance runs of one ChatCluster",
            partition_syncs.clone(),
        );
        registry.register(
            "partition_failures",
            "Partition maintenance runs of one ChatCluster that failed, by reason",
            partition_failures.clone(),
        );
        registry.register(
            "redis_bootstraps",
            "Redis Cluster bootstrap runs of one ChatCluster",
            redis_bootstraps.clone(),
        );
        registry.register(
            "redis_bootstrap_changes",
            "Redis Cluster bootstrap runs that changed the cluster",
            redis_bootstrap_changes.clone(),
        );
        registry.register(
            "redis_bootstrap_failures",
            "Redis Cluster bootstrap runs of one ChatCluster that failed, by reason",
            redis_bootstrap_failures.clone(),
        );
        registry.register(
            "partitions_ready",
            "1 while the ChatCluster's PartitionsReady condition is true, else 0 (leader only)",
            partitions_ready.clone(),
        );
        registry.register(
            "redis_cluster_ok",
            "1 while the ChatCluster's managed Redis Cluster is ready, else 0 (leader only)",
            redis_cluster_ok.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            autoscaler_syncs,
            autoscaler_scales,
            autoscaler_failures,
            partition_syncs,
            partition_failures,
            redis_bootstraps,
            redis_bootstrap_changes,
            redis_bootstrap_failures,
            partitions_ready,
            redis_cluster_ok,
        }
    }

    pub fn failure(&self, reason: &'static str) {
        self.failures.get_or_create(&ReasonLabel { reason }).inc();
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
