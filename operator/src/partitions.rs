//! The partition manager: for each ChatCluster, apply the database migrations
//! and run [`partitions::maintain`] (create the next partitions of
//! `messages`, drop the expired) with the spec's `postgres.partitioning`
//! policy. Runs only on the leader, next to the controller and the
//! autoscaler, and stops with them.
//!
//! Schedule: a cluster is maintained when the loop first sees it (so at
//! operator start), when its `postgres.partitioning` or its database URL
//! changes, and then every [`PartitionsConfig::interval`] (default one hour).
//! A failed run is retried after [`RETRY`] (or the interval, if shorter).
//! The loop looks for due clusters every [`POLL`] (or the interval, if
//! shorter). Maintenance is idempotent and takes an advisory lock in
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
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_core::store::partitions::{self, MaintenanceReport, PartitionPolicy};
use switchboard_core::store::{PgStore, Store, StoreError};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::build::{self, Ctx};
use crate::conditions::{self, Fresh};
use crate::crd::{ChatCluster, PartitionInterval, PartitioningSpec};
use crate::metrics::{Metrics, ReasonLabel};
use crate::sweep::{self, Pass, Sweep};

/// Field manager of everything the partition manager writes.
pub const FIELD_MANAGER: &str = "switchboard-partitions";
/// Default time between two maintenance runs of one cluster.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the loop looks for clusters that are due (new, changed, failed).
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

/// What the manager keeps per ChatCluster (by uid) between runs.
struct Entry {
    /// The pool, the URL it was opened with, and whether migrations ran on it.
    store: Option<(String, PgStore, bool)>,
    /// The partitioning spec and URL of the last run.
    last_spec: Option<(PartitioningSpec, String)>,
    next_due: Instant,
    /// The last error, so a persisting one is announced once.
    last_error: Option<String>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            store: None,
            last_spec: None,
            next_due: Instant::now(),
            last_error: None,
        }
    }
}

impl sweep::Entry for Entry {
    async fn close(self) {
        if let Some((_, s, _)) = self.store {
            s.pool().close().await;
        }
    }
}

/// The partition manager's state.
pub struct PartitionManager {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    cfg: PartitionsConfig,
    clusters: Sweep<Entry>,
}

/// Runs the partition manager until `stop` resolves.
pub async fn run_partitions(
    client: Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    instance: Option<String>,
    cfg: PartitionsConfig,
    stop: impl Future<Output = ()>,
) {
    let poll = POLL.min(cfg.interval);
    let manager = PartitionManager::new(client, metrics, namespace, instance, cfg);
    sweep::run_every(manager, poll, stop).await;
    tracing::debug!("partition manager stopped");
}

impl Pass for PartitionManager {
    async fn pass(&mut self) {
        self.sync_all().await
    }
    async fn close(&mut self) {
        self.clusters.close().await
    }
}

impl PartitionManager {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        instance: Option<String>,
        cfg: PartitionsConfig,
    ) -> Self {
        PartitionManager {
            recorder: sweep::recorder(client.clone(), FIELD_MANAGER, instance),
            client,
            metrics,
            namespace,
            cfg,
            clusters: Sweep::default(),
        }
    }

    fn fail_metric(&self, reason: &'static str) {
        self.metrics
            .partition_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// One pass: every in-scope cluster that is due is maintained.
    pub async fn sync_all(&mut self) {
        let listed = self
            .clusters
            .list(&self.client, self.namespace.as_deref(), sweep::active)
            .await;
        let clusters = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "partitions: cannot list ChatClusters");
                self.fail_metric("PartitionsApiError");
                return;
            }
        };
        for (uid, cluster, mut entry) in clusters {
            // The URL is re-read on every pass: a changed Secret is a change.
            let url = self.database_url(&cluster).await;
            let spec_now = url
                .as_ref()
                .ok()
                .map(|u| (cluster.spec.postgres.partitioning.clone(), u.clone()));
            let changed = spec_now.is_some() && entry.last_spec != spec_now;
            if changed || Instant::now() >= entry.next_due {
                self.metrics.partition_syncs.inc();
                let result = match url {
                    Ok(u) => self.maintain_one(&cluster, &u, &mut entry).await,
                    Err(e) => Err(e),
                };
                self.finish(&cluster, &mut entry, spec_now, result).await;
            }
            self.clusters.put(uid, entry);
        }
    }

    /// Records the outcome of one run: status, events, schedule.
    async fn finish(
        &self,
        cluster: &ChatCluster,
        entry: &mut Entry,
        spec_now: Option<(PartitioningSpec, String)>,
        result: Result<MaintenanceReport, Error>,
    ) {
        let key = format!(
            "{}/{}",
            cluster.namespace().unwrap_or_default(),
            cluster.name_any()
        );
        match result {
            Ok(report) => {
                entry.last_spec = spec_now;
                entry.next_due = Instant::now() + self.cfg.interval;
                let recovered = entry.last_error.take().is_some();
                if !report.created.is_empty() || !report.removed.is_empty() || recovered {
                    let note = format!(
                        "created {:?}, removed {:?}; {}",
                        report.created,
                        report.removed,
                        range_message(&report)
                    );
                    tracing::info!(cluster = %key, %note, "partition maintenance");
                    self.event(cluster, EventType::Normal, "PartitionsMaintained", &note)
                        .await;
                }
                if let Err(e) = self.write_status(cluster, Ok(&report)).await {
                    tracing::warn!(cluster = %key, error = %e, "partitions: cannot write status");
                    self.fail_metric("PartitionsApiError");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(cluster = %key, error = %msg, "partition maintenance failed");
                self.fail_metric(e.reason());
                // Retry after RETRY, or at once if the spec or URL changes.
                entry.last_spec = spec_now;
                entry.next_due = Instant::now() + RETRY.min(self.cfg.interval);
                if entry.last_error.as_deref() != Some(msg.as_str()) {
                    self.event(cluster, EventType::Warning, e.reason(), &msg)
                        .await;
                }
                entry.last_error = Some(msg.clone());
                if let Err(e) = self.write_status(cluster, Err((e.reason(), &msg))).await {
                    tracing::debug!(cluster = %key, error = %e, "partitions: cannot write status");
                }
            }
        }
    }

    /// Migrations, then maintenance, on the cluster's (cached) pool.
    async fn maintain_one(
        &self,
        cluster: &ChatCluster,
        url: &str,
        entry: &mut Entry,
    ) -> Result<MaintenanceReport, Error> {
        if entry.store.as_ref().is_some_and(|(u, _, _)| u != url)
            && let Some((_, old, _)) = entry.store.take()
        {
            old.pool().close().await;
        }
        if entry.store.is_none() {
            // Lazy: nothing connects until the first statement, which fails
            // after the pool's acquire timeout (5 s) if PostgreSQL is away.
            let store = PgStore::connect_lazy(url, POOL_SIZE)
                .map_err(|e| Error::Url(strip_url(&e.to_string(), url)))?;
            entry.store = Some((url.to_string(), store, false));
        }
        let Some((_, store, migrated)) = entry.store.as_mut() else {
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

    /// The URL the workers use: the external Secret's key, or the Secret
    /// the reconciler generates for managed PostgreSQL.
    async fn database_url(&self, cluster: &ChatCluster) -> Result<String, Error> {
        let ctx = Ctx::new(cluster)?;
        let r = build::postgres::url_ref(&ctx);
        let ns = cluster
            .namespace()
            .ok_or(build::BuildError::MissingMeta("metadata.namespace"))?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let secret = secrets
            .get_opt(&r.name)
            .await?
            .ok_or_else(|| Error::Url(format!("Secret {:?} does not exist", r.name)))?;
        let bytes = secret
            .data
            .and_then(|mut d| d.remove(&r.key))
            .ok_or_else(|| Error::Url(format!("Secret {:?} has no key {:?}", r.name, r.key)))?;
        let url = String::from_utf8(bytes.0)
            .map_err(|_| Error::Url(format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key)))?;
        Ok(url.trim().to_string())
    }

    /// Applies `status.postgres.{oldest,newest}Partition` and
    /// `PartitionsReady`, when they changed.
    async fn write_status(
        &self,
        cluster: &ChatCluster,
        outcome: Result<&MaintenanceReport, (&str, &str)>,
    ) -> Result<(), kube::Error> {
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
        let ns = cluster.namespace().unwrap_or_default();
        let api: Api<ChatCluster> = Api::namespaced(self.client.clone(), &ns);
        let body = json!({
            "apiVersion": ChatCluster::api_version(&()),
            "kind": ChatCluster::kind(&()),
            "status": {
                "postgres": {"oldestPartition": oldest, "newestPartition": newest},
                "conditions": cond,
            },
        });
        api.patch_status(
            &cluster.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        Ok(())
    }

    async fn event(&self, cluster: &ChatCluster, type_: EventType, reason: &str, note: &str) {
        sweep::publish_event(
            &self.recorder,
            cluster,
            type_,
            reason,
            note,
            "MaintainPartitions",
            None,
        )
        .await
    }
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

/// Never repeat a URL (it may hold a password) in an error message.
fn strip_url(msg: &str, url: &str) -> String {
    if url.is_empty() {
        msg.to_string()
    } else {
        msg.replace(url, "<database URL>")
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
    fn urls_are_not_repeated_in_errors() {
        let url = "postgres://u:secret@h/db";
        assert_eq!(
            strip_url(&format!("bad {url} here"), url),
            "bad <database URL> here"
        );
    }
}
