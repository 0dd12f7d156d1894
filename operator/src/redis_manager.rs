//! The Redis Cluster manager, a [`Manager`]: for each ChatCluster whose
//! managed Redis runs in cluster mode, form the cluster once its pods are
//! ready and keep it whole, with [`redis_cluster::bootstrap`] (`CLUSTER
//! MEET`, slot and replica assignment, healing a node that came back empty;
//! over the Redis protocol, no `pods/exec`). Runs only on the leader, next
//! to the controller, and stops with it ([`crate::manager`]).
//!
//! # Schedule
//!
//! A cluster is checked when the loop first sees it (operator start, new
//! ChatCluster), then every [`RedisConfig::interval`] (default 30 s) while it
//! is `Ready` or `Failed`, and every [`RedisConfig::retry`] (default 5 s)
//! while it is waiting for pods or forming.
//! On a formed, healthy cluster a check sends only reads (`CLUSTER MYID`,
//! `NODES`, `INFO` per node) and changes nothing. Clusters are checked
//! side by side, so one that takes the full converge timeout does not hold
//! up the others.
//!
//! # Steps of one check
//!
//! 1. The StatefulSet [`names::redis`] must exist with
//!    `shards × (1 + replicasPerShard)` replicas, all ready (`redis-cli ping`
//!    answers); until then the state is `WaitingForPods` and nothing is sent
//!    to Redis: a bootstrap needs every node to answer.
//! 2. The nodes are addressed by their stable DNS names
//!    `<name>-redis-<i>.<name>-redis.<namespace>.svc:6379` (the headless
//!    Service publishes not-ready pods too, and each node announces the same
//!    name with `cluster-announce-hostname`); pod `i` is node ordinal `i` of
//!    the [`redis_cluster::Layout`].
//! 3. [`redis_cluster::bootstrap`] forms or heals the cluster and reports.
//!
//! # What it writes
//!
//! Server-side apply on the status subresource with its own field manager
//! [`FIELD_MANAGER`] = `switchboard-redis`: `status.redis.{slotsAssigned,
//! clusterState, clusterMessage}`, only when one of them changed. The
//! reconciler's status apply never names these fields, and reads them back
//! to set `RedisReady` (ready pods *and* `clusterState: Ready`); a status
//! change wakes the controller, so `RedisReady` and `Ready` follow within a
//! reconcile. States: `WaitingForPods`, `Forming` (nodes answer, the cluster
//! is not complete yet, or a transient error: retried), `Ready` (every node
//! says `cluster_state:ok` and all 16384 slots are served by healthy nodes),
//! `Failed` (the bootstrap refuses to go on, e.g. it would merge two
//! clusters: needs a person; still retried, in case a person fixed it).
//!
//! Events: `RedisClusterBootstrapped` (Normal) when a run changed the
//! cluster, with its summary; `RedisClusterReady` when it becomes ready; a
//! Warning when an error first appears (not on every retry). Metrics:
//! `switchboard_operator_redis_bootstraps`, `…_redis_bootstrap_changes`,
//! `…_redis_bootstrap_failures{reason}`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;
use kube::api::Api;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;

use crate::build::{self, Ctx, names};
use crate::crd::{ChatCluster, ManagedRedis, RedisClusterState, RedisMode};
use crate::manager::{Context, Manager};
use crate::metrics::{ClusterLabel, Metrics, ReasonLabel};
use crate::redis_cluster::{self, BootstrapError, BootstrapOptions, BootstrapReport, NodeAddr};
use crate::status;

/// Field manager of everything the Redis Cluster manager writes.
pub const FIELD_MANAGER: &str = "switchboard-redis";
/// Default time between two checks of a ready cluster.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default time between two checks of a cluster that is not ready.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(5);

/// How the manager names node `ordinal` of a cluster.
pub type Addressing =
    Arc<dyn Fn(&ChatCluster, usize) -> Result<NodeAddr, build::BuildError> + Send + Sync>;

/// Schedule, timeouts and node addressing of the Redis Cluster manager.
#[derive(Clone)]
pub struct RedisConfig {
    /// Time between two checks of a ready cluster.
    pub interval: Duration,
    /// Time between two checks of a cluster that is not ready.
    pub retry: Duration,
    /// Timeouts of each bootstrap.
    pub bootstrap: BootstrapOptions,
    /// Node addresses: the pods' DNS names ([`pod_dns`]) outside tests.
    pub address: Addressing,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            interval: DEFAULT_INTERVAL,
            retry: DEFAULT_RETRY,
            bootstrap: BootstrapOptions::default(),
            address: Arc::new(pod_dns),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("interval", &self.interval)
            .field("retry", &self.retry)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

/// `<name>-redis-<ordinal>.<name>-redis.<namespace>.svc:6379`: the pod's
/// stable name behind the headless Service ([`build::redis::pod_host`]),
/// the same name the node announces to the cluster.
pub fn pod_dns(cluster: &ChatCluster, ordinal: usize) -> Result<NodeAddr, build::BuildError> {
    let ctx = Ctx::new(cluster)?;
    let port = u16::try_from(build::redis::PORT).unwrap_or(6379);
    Ok(NodeAddr::new(build::redis::pod_host(&ctx, ordinal), port))
}

/// The outcome of one check, as it goes to the status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    state: RedisClusterState,
    message: String,
    /// `None`: keep the last known count (nothing was read).
    slots_assigned: Option<u32>,
}

/// The Redis Cluster manager.
pub struct RedisManager {
    cfg: RedisConfig,
}

impl RedisManager {
    pub fn new(cfg: RedisConfig) -> Self {
        RedisManager { cfg }
    }
}

/// Clusters the manager acts on: managed Redis in cluster mode.
fn in_scope(cluster: &ChatCluster) -> bool {
    managed_cluster(cluster).is_some()
}

fn managed_cluster(cluster: &ChatCluster) -> Option<&ManagedRedis> {
    cluster
        .spec
        .redis
        .managed
        .as_ref()
        .filter(|m| m.mode == RedisMode::Cluster)
}

impl Manager for RedisManager {
    /// Nothing is kept between checks: each bootstrap connects afresh.
    type State = ();
    type Error = Error;
    const NAME: &'static str = "redis";
    const FIELD_MANAGER: &'static str = FIELD_MANAGER;
    const ACTION: &'static str = "BootstrapRedisCluster";
    const LIST_FAILED: &'static str = "RedisApiError";
    /// One cluster may take the whole converge timeout.
    const CONCURRENT: bool = true;

    fn tick(&self) -> Duration {
        self.cfg.retry.min(self.cfg.interval)
    }

    fn in_scope(&self, cluster: &ChatCluster) -> bool {
        in_scope(cluster)
    }

    fn failures(metrics: &Metrics) -> &Family<ReasonLabel, Counter> {
        &metrics.redis_bootstrap_failures
    }

    fn reason(error: &Error) -> &'static str {
        error.reason()
    }

    fn cluster_gauge(metrics: &Metrics) -> Option<&Family<ClusterLabel, Gauge>> {
        Some(&metrics.redis_cluster_ok)
    }

    /// One check: pods, bootstrap, status, events.
    async fn pass(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        _: &mut (),
    ) -> Result<Duration, Error> {
        let verdict = match self.bootstrap(cx, cluster).await? {
            Checked::Ran(report) => {
                cx.metrics.redis_bootstraps.inc();
                if report.changed() {
                    cx.metrics.redis_bootstrap_changes.inc();
                    cx.events
                        .normal(cluster, "RedisClusterBootstrapped", &report.summary())
                        .await;
                }
                verdict_of(cluster, &report)
            }
            Checked::Waiting { ready, replicas } => waiting(cluster, ready, replicas),
        };
        Ok(self.record(cx, cluster, &verdict).await)
    }

    /// `Forming` while the error may pass, `Failed` when it needs a person.
    async fn failed(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        _: &mut (),
        error: &Error,
    ) -> Duration {
        cx.metrics.redis_bootstraps.inc();
        let verdict = Verdict {
            state: if error.is_transient() {
                RedisClusterState::Forming
            } else {
                RedisClusterState::Failed
            },
            message: error.to_string(),
            slots_assigned: None,
        };
        self.record(cx, cluster, &verdict).await
    }
}

impl RedisManager {
    /// The bootstrap, if every pod is ready.
    async fn bootstrap(&self, cx: &Context, cluster: &ChatCluster) -> Result<Checked, Error> {
        let managed = managed_cluster(cluster).ok_or(Error::NotClusterMode)?;
        let want = build::redis::pod_count(managed);
        let (ready, replicas) = pods_ready(cx, cluster).await?;
        if replicas != want || ready < want {
            return Ok(Checked::Waiting { ready, replicas });
        }
        let nodes = (0..usize::try_from(want).unwrap_or(0))
            .map(|i| (self.cfg.address)(cluster, i))
            .collect::<Result<Vec<_>, _>>()?;
        let shards = usize::try_from(managed.shards).unwrap_or(0);
        let replicas = usize::try_from(managed.replicas_per_shard).unwrap_or(0);
        // The nodes require the password the reconciler generated.
        let ctx = Ctx::new(cluster)?;
        let password = crate::secrets::read_key(
            &cx.client,
            &ctx.namespace,
            &build::redis::password_ref(&ctx),
        )
        .await
        .map_err(|e| match e {
            crate::secrets::SecretError::Kube(e) => Error::from(e),
            crate::secrets::SecretError::Build(e) => Error::from(e),
            crate::secrets::SecretError::Missing(m) => Error::Password(m),
        })?;
        let opts = BootstrapOptions {
            password: Some(password),
            ..self.cfg.bootstrap.clone()
        };
        let report = redis_cluster::bootstrap(&nodes, shards, replicas, &opts).await?;
        Ok(Checked::Ran(report))
    }

    /// Announces a cluster that became ready, writes the verdict to the
    /// status and answers when to check again: settling states soon, a
    /// Ready cluster or one that needs a person (Failed) at the interval.
    async fn record(&self, cx: &Context, cluster: &ChatCluster, verdict: &Verdict) -> Duration {
        cx.metrics
            .redis_cluster_ok
            .get_or_create(&ClusterLabel::of(cluster))
            .set(i64::from(verdict.state == RedisClusterState::Ready));
        let was_ready = previous_state(cluster) == Some(RedisClusterState::Ready);
        if verdict.state == RedisClusterState::Ready && !was_ready {
            cx.events
                .normal(cluster, "RedisClusterReady", &verdict.message)
                .await;
        }
        if let Err(e) = write_status(cx, cluster, verdict).await {
            tracing::warn!(error = %e, "redis: cannot write status");
            cx.metrics
                .redis_bootstrap_failures
                .get_or_create(&ReasonLabel {
                    reason: "RedisApiError",
                })
                .inc();
        }
        match verdict.state {
            RedisClusterState::Ready | RedisClusterState::Failed => self.cfg.interval,
            RedisClusterState::WaitingForPods | RedisClusterState::Forming => self.cfg.retry,
        }
    }
}

/// `(ready, spec.replicas)` of the Redis StatefulSet (`(0, 0)` if absent).
async fn pods_ready(cx: &Context, cluster: &ChatCluster) -> Result<(i32, i32), Error> {
    let ns = cluster
        .namespace()
        .ok_or(build::BuildError::MissingMeta("metadata.namespace"))?;
    let sets: Api<StatefulSet> = Api::namespaced(cx.client.clone(), &ns);
    Ok(sets
        .get_opt(&names::redis(cluster))
        .await?
        .map_or((0, 0), |s| {
            (
                s.status.and_then(|s| s.ready_replicas).unwrap_or(0),
                s.spec.and_then(|s| s.replicas).unwrap_or(1),
            )
        }))
}

/// Applies `status.redis.{slotsAssigned, clusterState, clusterMessage}` when
/// one of them changed.
async fn write_status(
    cx: &Context,
    cluster: &ChatCluster,
    v: &Verdict,
) -> Result<(), status::Error> {
    let prev = cluster
        .status
        .as_ref()
        .and_then(|s| s.redis.clone())
        .unwrap_or_default();
    // Carry the last count over when nothing was read: leaving the field
    // out of the apply would delete it.
    let slots = v
        .slots_assigned
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
        .or(prev.slots_assigned);
    if prev.cluster_state == Some(v.state)
        && prev.cluster_message.as_deref() == Some(v.message.as_str())
        && prev.slots_assigned == slots
    {
        return Ok(());
    }
    let mut redis = json!({
        "clusterState": v.state,
        "clusterMessage": v.message,
    });
    if let Some(n) = slots {
        redis["slotsAssigned"] = json!(n);
    }
    cx.status.apply(cluster, &json!({ "redis": redis })).await
}

/// What one check did.
enum Checked {
    /// Not every pod is ready: nothing was sent to Redis.
    Waiting { ready: i32, replicas: i32 },
    /// The bootstrap ran.
    Ran(BootstrapReport),
}

/// Why one check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("redis.managed.mode is not cluster")]
    NotClusterMode,
    /// The generated password Secret is missing or unusable (the reconciler
    /// creates it; retried).
    #[error("the Redis password: {0}")]
    Password(String),
}

impl Error {
    /// Short label for metrics and the Warning Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "RedisApiError",
            Error::Build(_) | Error::NotClusterMode | Error::Password(_) => "RedisClusterConfig",
            Error::Bootstrap(e) if e.is_transient() => "RedisClusterUnavailable",
            Error::Bootstrap(_) => "RedisClusterBootstrapFailed",
        }
    }

    /// Whether retrying later may succeed without a spec change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Kube(_) | Error::Password(_) => true,
            Error::Bootstrap(e) => e.is_transient(),
            Error::Build(_) | Error::NotClusterMode => false,
        }
    }
}

fn previous_state(cluster: &ChatCluster) -> Option<RedisClusterState> {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.redis.as_ref())
        .and_then(|r| r.cluster_state)
}

/// `WaitingForPods`, naming how many are ready.
fn waiting(cluster: &ChatCluster, ready: i32, replicas: i32) -> Verdict {
    let want = managed_cluster(cluster).map_or(0, build::redis::pod_count);
    let message = if replicas == 0 {
        "no Redis StatefulSet yet".to_string()
    } else {
        format!("{ready}/{want} Redis pods ready; forming waits for all")
    };
    Verdict {
        state: RedisClusterState::WaitingForPods,
        message,
        slots_assigned: None,
    }
}

/// The verdict of a bootstrap that ran.
fn verdict_of(cluster: &ChatCluster, report: &BootstrapReport) -> Verdict {
    let (shards, per) =
        managed_cluster(cluster).map_or((0, 0), |m| (m.shards, m.replicas_per_shard));
    if report.ready {
        Verdict {
            state: RedisClusterState::Ready,
            message: format!(
                "all {} slots served by {shards} primaries with {per} replica(s) each",
                redis_cluster::SLOTS
            ),
            slots_assigned: Some(report.slots_assigned),
        }
    } else {
        Verdict {
            state: RedisClusterState::Forming,
            message: format!(
                "{}/{} slots served; {}",
                report.slots_served,
                redis_cluster::SLOTS,
                report
                    .not_ready_reason
                    .as_deref()
                    .unwrap_or("the cluster has not converged yet")
            ),
            slots_assigned: Some(report.slots_assigned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ChatCluster {
        let mut c: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": "chat", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "auth": {"domain": "chat.example.com"},
                "redis": {"managed": {"mode": "cluster", "shards": 3, "replicasPerShard": 1}},
                "postgres": {"external": {"secretRef": {"name": "pg", "key": "url"}}}
            }
        }))
        .unwrap();
        c.status = None;
        c
    }

    #[test]
    fn nodes_are_the_pods_stable_names() {
        let a = pod_dns(&cluster(), 4).unwrap();
        assert_eq!(a.to_string(), "chat-redis-4.chat-redis.team-a.svc:6379");
    }

    #[test]
    fn only_managed_cluster_mode_is_in_scope() {
        let mut c = cluster();
        assert!(in_scope(&c));
        c.spec.redis.managed.as_mut().unwrap().mode = RedisMode::Standalone;
        assert!(!in_scope(&c));
    }

    #[test]
    fn waiting_names_the_ready_pods() {
        let v = waiting(&cluster(), 4, 6);
        assert_eq!(v.state, RedisClusterState::WaitingForPods);
        assert_eq!(v.message, "4/6 Redis pods ready; forming waits for all");
        assert_eq!(
            waiting(&cluster(), 0, 0).message,
            "no Redis StatefulSet yet"
        );
    }

    #[test]
    fn a_ready_report_is_ready_with_a_stable_message() {
        let report = BootstrapReport {
            ready: true,
            slots_assigned: u32::from(redis_cluster::SLOTS),
            slots_served: u32::from(redis_cluster::SLOTS),
            ..BootstrapReport::default()
        };
        let v = verdict_of(&cluster(), &report);
        assert_eq!(v.state, RedisClusterState::Ready);
        assert_eq!(
            v.message,
            "all 16384 slots served by 3 primaries with 1 replica(s) each"
        );
        let forming = BootstrapReport {
            slots_served: 10923,
            slots_assigned: 10923,
            not_ready_reason: Some("node 10.0.0.3:6379 serves no slots".into()),
            ..BootstrapReport::default()
        };
        let v = verdict_of(&cluster(), &forming);
        assert_eq!(v.state, RedisClusterState::Forming);
        assert!(
            v.message.starts_with("10923/16384 slots served; node"),
            "{}",
            v.message
        );
    }
}
