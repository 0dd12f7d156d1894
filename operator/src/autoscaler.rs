//! The gateway autoscaler, a [`Manager`]: every sync period (default 15 s),
//! for each ChatCluster in `autoscaling.mode: operator`, read the gateways'
//! connection reports from the cluster's Redis, list the gateway pods, ask
//! [`crate::autoscale::decide`] and apply the answer. Runs only on the
//! leader, next to the controller, and stops with it ([`crate::manager`]).
//!
//! Ownership of what it writes (server-side apply, field manager
//! [`FIELD_MANAGER`] = `switchboard-autoscaler`):
//!
//! - the gateway Deployment's `spec.replicas`: taken over on the first sync
//!   of an `operator`-mode cluster (applied even when unchanged), after which
//!   the reconciler leaves the field out of its own apply (see
//!   `build::gateway::replicas`). In `external` mode nothing here runs, so an
//!   HPA or KEDA owns the field; in `disabled` mode the reconciler applies
//!   `min` with `force` and so takes the field back.
//! - `status.gateway.{connections, desiredReplicas, lastScaleTime,
//!   lastScaleReason}`: a status apply of its own. The reconciler's status
//!   apply (manager `switchboard-operator`) never names these fields, and SSA
//!   removes only fields the applying manager owned, so neither erases the
//!   other's. Every autoscaler status apply names all four (carrying the
//!   last scale over), or SSA would drop the ones it left out.
//! - `controller.kubernetes.io/pod-deletion-cost` on gateway pods: a merge
//!   patch (never creates a pod that just went away), just before a scale-in.
//!
//! Errors (Redis unreachable, a missing Secret) are logged, counted and
//! published as a Warning Event when they first appear (not on every sync);
//! the cluster's replicas are then left alone for that sync. Clusters are
//! synced one after the other; a Redis that does not answer costs a sync at
//! most the connect timeout. The reports are read with core's
//! [`ReportsReader`] (one connection and the one read script), kept per
//! cluster until the cluster leaves the scope or its Redis URL changes.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use switchboard_core::broker::reports::ReportsReader;
use switchboard_core::broker::{BrokerError, ClusterRef, RedisTarget};

use crate::autoscale::{self, Decision, Inputs, POD_DELETION_COST, Policy, Report};
use crate::build::{self, names};
use crate::crd::{AutoscalingMode, ChatCluster, GatewayStatus};
use crate::manager::{Context, Manager};
use crate::metrics::{DirectionLabel, Metrics, ReasonLabel};
use crate::{policy, status};

/// Field manager of everything the autoscaler writes.
pub const FIELD_MANAGER: &str = policy::AUTOSCALER_FIELD_MANAGER;
/// Default time between two syncs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait for a new Redis connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one cluster's sync failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Redis URL: {0}")]
    RedisUrl(String),
    #[error("cannot connect to Redis within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("cannot read connection reports: {0}")]
    Broker(#[from] BrokerError),
    #[error("cannot name the cluster's reports: {0}")]
    Identity(#[from] switchboard_core::broker::IdentityError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

impl From<status::Error> for Error {
    fn from(e: status::Error) -> Self {
        match e {
            status::Error::Kube(e) => Error::Kube(e),
            status::Error::NoNamespace => {
                Error::Build(build::BuildError::MissingMeta("metadata.namespace"))
            }
        }
    }
}

impl Error {
    /// Short label for metrics and the Warning Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "AutoscalerApiError",
            Error::RedisUrl(_) | Error::Identity(_) | Error::Build(_) => "AutoscalerConfig",
            Error::ConnectTimeout | Error::Broker(_) => "AutoscalerRedisUnavailable",
        }
    }
}

/// What the autoscaler keeps per ChatCluster between syncs.
#[derive(Default)]
pub struct ClusterState {
    /// The decision history ([`autoscale::State`]).
    history: autoscale::State,
    /// The reader of the cluster's Redis.
    reader: Option<Reader>,
}

/// A [`ReportsReader`], the URL it was opened with, and whether it is
/// connected.
struct Reader {
    target: RedisTarget,
    reader: ReportsReader,
    connected: bool,
}

/// The gateway autoscaler.
pub struct Autoscaler {
    interval: Duration,
}

impl Autoscaler {
    /// Syncs every cluster every `interval`.
    pub fn new(interval: Duration) -> Self {
        Autoscaler { interval }
    }
}

impl Manager for Autoscaler {
    type State = ClusterState;
    type Error = Error;
    const NAME: &'static str = "autoscaler";
    const FIELD_MANAGER: &'static str = FIELD_MANAGER;
    const ACTION: &'static str = "Scale";
    const LIST_FAILED: &'static str = "AutoscalerApiError";

    fn tick(&self) -> Duration {
        self.interval
    }

    /// Clusters in `autoscaling.mode: operator`.
    fn in_scope(&self, cluster: &ChatCluster) -> bool {
        cluster.spec.gateway.autoscaling.mode == AutoscalingMode::Operator
    }

    fn failures(metrics: &Metrics) -> &Family<ReasonLabel, Counter> {
        &metrics.autoscaler_failures
    }

    fn wakeups(metrics: &Metrics) -> Option<&Counter> {
        Some(&metrics.autoscaler_syncs)
    }

    fn reason(error: &Error) -> &'static str {
        error.reason()
    }

    async fn pass(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        state: &mut ClusterState,
    ) -> Result<Duration, Error> {
        sync(cx, cluster, state).await?;
        Ok(self.interval)
    }

    /// The replicas are left alone until the next sync.
    async fn failed(
        &self,
        _cx: &Context,
        _cluster: &ChatCluster,
        _state: &mut ClusterState,
        _error: &Error,
    ) -> Duration {
        self.interval
    }

    async fn close(state: ClusterState) {
        if let Some(r) = state.reader {
            r.reader.quit().await;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One sync of one cluster.
async fn sync(cx: &Context, cluster: &ChatCluster, state: &mut ClusterState) -> Result<(), Error> {
    let ns = cluster
        .namespace()
        .ok_or(build::BuildError::MissingMeta("metadata.namespace"))?;
    let name = cluster.name_any();
    let policy = Policy::from_spec(&cluster.spec.gateway);
    let deployments: Api<Deployment> = Api::namespaced(cx.client.clone(), &ns);
    let dep_name = names::gateway(cluster);
    // Not created yet: the reconciler will, with `min` replicas.
    let Some(deployment) = deployments.get_opt(&dep_name).await? else {
        return Ok(());
    };
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if selector.is_empty() {
        // Never list every pod of the namespace as "the gateways".
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(cx.client.clone(), &ns);
    let listed = pods.list(&ListParams::default().labels(&selector)).await?;
    let live: Vec<&Pod> = listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let live_names: Vec<String> = live.iter().map(|p| p.name_any()).collect();
    let ready_names: Vec<String> = live
        .iter()
        .filter(|p| ready(p))
        .map(|p| p.name_any())
        .collect();

    // Only ready pods' reports count: with none, Redis need not be asked
    // (a cluster whose Redis is still starting makes no noise).
    let (reports, read_at) = if ready_names.is_empty() {
        (Vec::new(), now_ms())
    } else {
        read_reports(cx, cluster, &ns, &name, state).await?
    };
    let inputs = Inputs {
        current,
        ready_pods: &ready_names,
        reports: &reports,
        read_at,
    };
    let decision = autoscale::decide(&mut state.history, &policy, &inputs, now_ms());
    tracing::debug!(%decision, "autoscaler decision");

    if decision.changes() {
        if decision.replicas < decision.current {
            let costs = autoscale::pod_deletion_costs(&policy, &live_names, &reports, read_at);
            set_deletion_costs(&pods, &live, &costs).await?;
        }
        apply_replicas(&deployments, &dep_name, decision.replicas).await?;
        let direction = if decision.replicas > decision.current {
            "up"
        } else {
            "down"
        };
        cx.metrics
            .autoscaler_scales
            .get_or_create(&DirectionLabel { direction })
            .inc();
        tracing::info!(%decision, "scaled the gateways");
        cx.events
            .publish(
                cluster,
                EventType::Normal,
                "Scaled",
                &decision.to_string(),
                Some(deployment.object_ref(&())),
            )
            .await;
    } else if !policy::owns_replicas(&deployment) {
        // Take the field over (same value), so the reconciler stops
        // applying it; see the module docs.
        apply_replicas(&deployments, &dep_name, decision.replicas).await?;
    }
    write_status(cx, cluster, &decision).await
}

/// The reports of the cluster's gateways, and the Redis clock.
async fn read_reports(
    cx: &Context,
    cluster: &ChatCluster,
    ns: &str,
    name: &str,
    state: &mut ClusterState,
) -> Result<(Vec<Report>, u64), Error> {
    let target = crate::secrets::redis_target(&cx.client, cluster)
        .await
        .map_err(|e| match e {
            crate::secrets::SecretError::Kube(e) => Error::Kube(e),
            crate::secrets::SecretError::Build(e) => Error::Build(e),
            crate::secrets::SecretError::Missing(m) => Error::RedisUrl(m),
        })?;
    let reader = match &mut state.reader {
        // A changed URL or password (a rotated Secret) connects anew.
        Some(r) if r.target == target => r,
        slot => {
            if let Some(old) = slot.take() {
                old.reader.quit().await;
            }
            // Kept in the state before connecting: a sync cut short (a lost
            // Lease) leaves it where closing the state quits it.
            slot.insert(Reader {
                reader: ReportsReader::for_target(&target)?,
                target,
                connected: false,
            })
        }
    };
    if !reader.connected {
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, reader.reader.connect()).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::ConnectTimeout),
        };
        if let Err(e) = connected {
            // A client whose first connection failed would keep retrying in
            // the background; the next sync starts over instead.
            if let Some(r) = state.reader.take() {
                r.reader.quit().await;
            }
            return Err(e);
        }
        reader.connected = true;
    }
    let got = reader.reader.read(&ClusterRef::new(ns, name)?).await?;
    let reports = got
        .reports
        .into_iter()
        .map(|r| Report {
            pod: r.pod,
            connections: r.connections,
            reported_at: r.reported_at,
        })
        .collect();
    Ok((reports, got.now))
}

/// Sets the deletion cost of each pod whose annotation differs. A pod that
/// went away meanwhile is skipped; any other failure stops the scale-in (the
/// ReplicaSet would pick pods blindly).
async fn set_deletion_costs(
    pods: &Api<Pod>,
    live: &[&Pod],
    costs: &BTreeMap<String, i32>,
) -> Result<(), Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    for pod in live {
        let name = pod.name_any();
        let Some(cost) = costs.get(&name) else {
            continue;
        };
        let value = cost.to_string();
        if pod.annotations().get(POD_DELETION_COST) == Some(&value) {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: value}}});
        match pods.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Server-side apply of `spec.replicas` alone, with our field manager.
/// `force`: the reconciler co-owned the field before the take-over, and an
/// HPA left over from `external` mode may own it.
async fn apply_replicas(
    deployments: &Api<Deployment>,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    deployments
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

/// Applies the autoscaler's four status fields, when they changed.
async fn write_status(
    cx: &Context,
    cluster: &ChatCluster,
    decision: &Decision,
) -> Result<(), Error> {
    let prev = cluster
        .status
        .as_ref()
        .and_then(|s| s.gateway.clone())
        .unwrap_or_default();
    let (last_scale_time, last_scale_reason) = if decision.changes() {
        (
            Some(Time(k8s_openapi::jiff::Timestamp::now())),
            Some(decision.to_string()),
        )
    } else {
        (prev.last_scale_time.clone(), prev.last_scale_reason.clone())
    };
    let mine = GatewayStatus {
        connections: Some(i64::try_from(decision.load.connections).unwrap_or(i64::MAX)),
        desired_replicas: Some(decision.replicas),
        last_scale_time,
        last_scale_reason,
        ..GatewayStatus::default()
    };
    if prev.connections == mine.connections
        && prev.desired_replicas == mine.desired_replicas
        && prev.last_scale_time == mine.last_scale_time
        && prev.last_scale_reason == mine.last_scale_reason
    {
        return Ok(());
    }
    cx.status.apply(cluster, &json!({"gateway": mine})).await?;
    Ok(())
}
