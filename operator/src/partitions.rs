//! The partition manager, a [`Manager`]: for each ChatCluster, apply the
//! database migrations and run [`partitions::maintain`] (create the next
//! partitions of `messages`, drop the expired) with the spec's
//! `postgres.partitioning` policy. Runs only on the leader, next to the
//! controller and the other managers, and stops with them
//! ([`crate::manager`]).
//!
//! Schedule: a cluster is maintained when the loop first sees it (so at
//! operator start), when its `postgres.partitioning` or its database URL
//! changes, and then every [`PartitionsConfig::interval`] (default one hour).
//! A failed run is retried after [`RETRY`] (or the interval, if shorter).
//! The runner looks for due clusters every [`POLL`] (or the interval, if
//! shorter), reading each cluster's database URL to see whether it changed. Maintenance is idempotent and takes an advisory lock in
//! PostgreSQL, so a worker or a `switchboard-worker partitions` cron job
//! running at the same time is harmless; the worker Deployments the operator
//! builds leave it to the operator (`--partition-maintenance-secs 0`).
//!
//! The time is read from [`PartitionsConfig::now`], so tests can move it.
//!
//! What it writes (server-side apply on the status subresource, field
//! manager [`FIELD_MANAGER`] = `switchboard-partitions`):
//! `status.postgres.{oldestPartition, newestPartition}` and the
//! `PartitionsReady` condition (True naming the range, False with the
//! error). The reconciler's status apply names neither (it owns only the
//! condition types in [`conditions::OWNED`], and `conditions` is a list map
//! keyed by `type`), so neither erases the other's. Every apply here names
//! all three, carrying the last known range over on failure.
//!
//! Errors (Secret missing, PostgreSQL unreachable, a failing statement) are
//! logged, counted (`switchboard_operator_partition_failures{reason}`) and
//! published as a Warning Event when they first appear, not on every retry.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use switchboard_core::store::partitions::{self, MaintenanceReport, PartitionPolicy};
use switchboard_core::store::{PgStore, Store, StoreError};
use time::OffsetDateTime;

use crate::build::{self, Ctx};
use crate::conditions::{self, Fresh};
use crate::crd::{ChatCluster, PartitionInterval, PartitioningSpec};
use crate::manager::{Context, Manager};
use crate::metrics::{ClusterLabel, Metrics, ReasonLabel};
use crate::status;

/// Field manager of everything the partition manager writes.
pub const FIELD_MANAGER: &str = "switchboard-partitions";
/// Default time between two maintenance runs of one cluster.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the runner looks for clusters that are due (new, changed, failed).
pub const POLL: Duration = Duration::from_secs(10);
/// Delay before retrying a failed run.
pub const RETRY: Duration = Duration::from_secs(60);
/// Connections per cluster pool: maintenance uses one at a time.
const POOL_SIZE: u32 = 2;

/// The clock maintenance runs against.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Schedule and clock of the partition manager.
#[derive(Clone)]
pub struct PartitionsConfig {
    /// Time between two runs for one cluster.
    pub interval: Duration,
    /// "Now" as maintenance sees it (UTC wall clock outside tests).
    pub now: Clock,
}

impl Default for PartitionsConfig {
    fn default() -> Self {
        PartitionsConfig {
            interval: DEFAULT_INTERVAL,
            now: Arc::new(OffsetDateTime::now_utc),
        }
    }
}

impl fmt::Debug for PartitionsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionsConfig")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Why one cluster's maintenance failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("PostgreSQL URL: {0}")]
    Url(String),
    #[error("migrations: {0}")]
    Migrate(StoreError),
    #[error("partition maintenance: {0}")]
    Maintain(StoreError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl Error {
    /// Short label for metrics and the Warning Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "PartitionsApiError",
            Error::Url(_) | Error::Build(_) => "PartitionsConfig",
            Error::Migrate(e) | Error::Maintain(e) if e.is_transient() => {
                "PartitionsDatabaseUnavailable"
            }
            Error::Migrate(_) => "PartitionsMigrationFailed",
            Error::Maintain(_) => "PartitionsMaintenanceFailed",
        }
    }
}

/// The partition policy of a spec.
pub fn policy(spec: &PartitioningSpec) -> PartitionPolicy {
    use partitions::PartitionInterval as I;
    PartitionPolicy {
        interval: match spec.interval {
            PartitionInterval::Daily => I::Day,
            PartitionInterval::Weekly => I::Week,
            PartitionInterval::Monthly => I::Month,
        },
        premake: u32::try_from(spec.premake).unwrap_or(0),
        retention: Duration::from_secs(
            u64::try_from(spec.retention_days).unwrap_or(1).max(1) * 24 * 3600,
        ),
        detach_only: false,
    }
}

/// What the manager keeps per ChatCluster between runs.
#[derive(Default)]
pub struct ClusterState {
    /// The pool, the URL it was opened with, and whether migrations ran on it.
    store: Option<(String, PgStore, bool)>,
    /// The partitioning spec and URL of the last run.
    last_spec: Option<(PartitioningSpec, String)>,
    /// The last run failed: a successful one announces the recovery.
    failing: bool,
}

/// The partition manager.
pub struct PartitionManager {
    cfg: PartitionsConfig,
}

impl PartitionManager {
    pub fn new(cfg: PartitionsConfig) -> Self {
        PartitionManager { cfg }
    }
}

impl Manager for PartitionManager {
    type State = ClusterState;
    type Error = Error;
    const NAME: &'static str = "partitions";
    const FIELD_MANAGER: &'static str = FIELD_MANAGER;
    const ACTION: &'static str = "MaintainPartitions";
    const LIST_FAILED: &'static str = "PartitionsApiError";

    fn tick(&self) -> Duration {
        POLL.min(self.cfg.interval)
    }

    /// Every active cluster has a database.
    fn in_scope(&self, _cluster: &ChatCluster) -> bool {
        true
    }

    fn failures(metrics: &Metrics) -> &Family<ReasonLabel, Counter> {
        &metrics.partition_failures
    }

    fn reason(error: &Error) -> &'static str {
        error.reason()
    }

    fn cluster_gauge(metrics: &Metrics) -> Option<&Family<ClusterLabel, Gauge>> {
        Some(&metrics.partitions_ready)
    }

    /// The URL is re-read on every wake-up: a changed Secret is a change.
    async fn changed(&self, cx: &Context, cluster: &ChatCluster, state: &ClusterState) -> bool {
        match database_url(cx, cluster).await {
            Ok(url) => state.last_spec != Some((cluster.spec.postgres.partitioning.clone(), url)),
            Err(_) => false,
        }
    }

    async fn pass(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        state: &mut ClusterState,
    ) -> Result<Duration, Error> {
        cx.metrics.partition_syncs.inc();
        let url = database_url(cx, cluster).await;
        // Recorded on failure too: the run is retried after RETRY, or at
        // once if the spec or the URL changes.
        state.last_spec = url
            .as_ref()
            .ok()
            .map(|u| (cluster.spec.postgres.partitioning.clone(), u.clone()));
        let report = self.maintain(cluster, &url?, state).await?;
        let recovered = std::mem::take(&mut state.failing);
        if !report.created.is_empty() || !report.removed.is_empty() || recovered {
            let note = format!(
                "created {:?}, removed {:?}; {}",
                report.created,
                report.removed,
                range_message(&report)
            );
            tracing::info!(%note, "partition maintenance");
            cx.events
                .normal(cluster, "PartitionsMaintained", &note)
                .await;
        }
        if let Err(e) = write_status(cx, cluster, Ok(&report)).await {
            tracing::warn!(error = %e, "partitions: cannot write status");
            cx.metrics
                .partition_failures
                .get_or_create(&ReasonLabel {
                    reason: "PartitionsApiError",
                })
                .inc();
        }
        Ok(self.cfg.interval)
    }

    /// `PartitionsReady` False with the error; retried after [`RETRY`].
    async fn failed(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        state: &mut ClusterState,
        error: &Error,
    ) -> Duration {
        state.failing = true;
        let msg = error.to_string();
        if let Err(e) = write_status(cx, cluster, Err((error.reason(), &msg))).await {
            tracing::debug!(error = %e, "partitions: cannot write status");
        }
        RETRY.min(self.cfg.interval)
    }

    async fn close(state: ClusterState) {
        if let Some((_, store, _)) = state.store {
            store.pool().close().await;
        }
    }
}

impl PartitionManager {
    /// Migrations, then maintenance, on the cluster's (cached) pool.
    async fn maintain(
        &self,
        cluster: &ChatCluster,
        url: &str,
        state: &mut ClusterState,
    ) -> Result<MaintenanceReport, Error> {
        if state.store.as_ref().is_some_and(|(u, _, _)| u != url)
            && let Some((_, old, _)) = state.store.take()
        {
            old.pool().close().await;
        }
        if state.store.is_none() {
            // Lazy: nothing connects until the first statement, which fails
            // after the pool's acquire timeout (5 s) if PostgreSQL is away.
            let store = PgStore::connect_lazy(url, POOL_SIZE)
                .map_err(|e| Error::Url(strip_url(&e.to_string(), url)))?;
            state.store = Some((url.to_string(), store, false));
        }
        let Some((_, store, migrated)) = state.store.as_mut() else {
            return Err(Error::Url("no pool".into()));
        };
        // Classifies "cannot connect" as unavailable (a migration error
        // would not say).
        store.ping().await.map_err(Error::Maintain)?;
        if !*migrated {
            // The same embedded migrations `switchboard-worker migrate` runs.
            store.migrate().await.map_err(Error::Migrate)?;
            *migrated = true;
        }
        let policy = policy(&cluster.spec.postgres.partitioning);
        partitions::maintain(store.pool(), &policy, (self.cfg.now)())
            .await
            .map_err(Error::Maintain)
    }
}

/// The URL the workers use: the external Secret's key, or the Secret the
/// reconciler generates for managed PostgreSQL.
async fn database_url(cx: &Context, cluster: &ChatCluster) -> Result<String, Error> {
    let ctx = Ctx::new(cluster)?;
    let r = build::postgres::url_ref(&ctx);
    crate::secrets::read_key(&cx.client, &ctx.namespace, &r)
        .await
        .map_err(|e| match e {
            crate::secrets::SecretError::Kube(e) => Error::Kube(e),
            crate::secrets::SecretError::Build(e) => Error::Build(e),
            crate::secrets::SecretError::Missing(m) => Error::Url(m),
        })
}

/// Applies `status.postgres.{oldest,newest}Partition` and `PartitionsReady`,
/// when they changed.
async fn write_status(
    cx: &Context,
    cluster: &ChatCluster,
    outcome: Result<&MaintenanceReport, (&str, &str)>,
) -> Result<(), status::Error> {
    let prev = cluster.status.clone().unwrap_or_default();
    let prev_pg = prev.postgres.clone().unwrap_or_default();
    let (oldest, newest, fresh) = match outcome {
        Ok(report) => (
            report.oldest().map(|p| p.name.clone()),
            report.newest().map(|p| p.name.clone()),
            if report.partitions.is_empty() {
                Fresh::new(
                    conditions::PARTITIONS_READY,
                    false,
                    "NoPartitions",
                    "messages has no partitions",
                )
            } else {
                Fresh::new(
                    conditions::PARTITIONS_READY,
                    true,
                    "PartitionsMaintained",
                    range_message(report),
                )
            },
        ),
        // Keep the last known range: leaving it out would delete it.
        Err((reason, msg)) => (
            prev_pg.oldest_partition.clone(),
            prev_pg.newest_partition.clone(),
            Fresh::new(conditions::PARTITIONS_READY, false, reason, msg),
        ),
    };
    // Set on every pass, written or not: a new leader starts with none.
    cx.metrics
        .partitions_ready
        .get_or_create(&ClusterLabel::of(cluster))
        .set(i64::from(fresh.status));
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let cond: Vec<Condition> = conditions::stamp(
        &prev.conditions,
        vec![fresh],
        cluster.metadata.generation,
        &now,
    );
    let prev_cond = prev
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::PARTITIONS_READY);
    if prev_pg.oldest_partition == oldest
        && prev_pg.newest_partition == newest
        && prev_cond == cond.first()
    {
        return Ok(());
    }
    cx.status
        .apply(
            cluster,
            &json!({
                "postgres": {"oldestPartition": oldest, "newestPartition": newest},
                "conditions": cond,
            }),
        )
        .await
}

/// "N partitions, messages_pA to messages_pB".
fn range_message(report: &MaintenanceReport) -> String {
    match (report.oldest(), report.newest()) {
        (Some(o), Some(n)) => format!(
            "{} partitions, {} to {}",
            report.partitions.len(),
            o.name,
            n.name
        ),
        _ => "no partitions".into(),
    }
}

/// Never repeat a URL's password in an error message: the URL is shown
/// redacted (core's one redaction function).
fn strip_url(msg: &str, url: &str) -> String {
    if url.is_empty() {
        msg.to_string()
    } else {
        msg.replace(url, &switchboard_core::redact_url(url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_follows_the_spec() {
        let p = policy(&PartitioningSpec {
            interval: PartitionInterval::Weekly,
            premake: 3,
            retention_days: 30,
        });
        assert_eq!(p.interval, partitions::PartitionInterval::Week);
        assert_eq!(p.premake, 3);
        assert_eq!(p.retention, Duration::from_secs(30 * 24 * 3600));
        assert!(!p.detach_only);
    }

    #[test]
    fn passwords_are_not_repeated_in_errors() {
        let url = "postgres://u:secret@h/db";
        assert_eq!(
            strip_url(&format!("bad {url} here"), url),
            "bad postgres://u:***@h/db here"
        );
    }
}
