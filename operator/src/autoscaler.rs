//! The gateway autoscaler's loop: every sync period (default 15 s), for each
//! ChatCluster in `autoscaling.mode: operator`, read the gateways' connection
//! reports from the cluster's Redis, list the gateway pods, ask
//! [`crate::autoscale::decide`] and apply the answer. Runs only on the leader,
//! next to the controller, and stops with it.
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
//! most the connect timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_core::broker::{Broker, BrokerConfig, BrokerError, ClusterRef, RedisBroker};

use crate::autoscale::{self, Decision, Inputs, POD_DELETION_COST, Policy, Report, State};
use crate::build::{self, Ctx};
use crate::crd::{AutoscalingMode, ChatCluster, GatewayStatus};
use crate::metrics::{DirectionLabel, Metrics, ReasonLabel};
use crate::sweep::{self, Pass, Sweep};

/// Field manager of everything the autoscaler writes.
pub const FIELD_MANAGER: &str = "switchboard-autoscaler";
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

/// Whether the autoscaler owns the Deployment's `spec.replicas` (an `Apply`
/// entry of [`FIELD_MANAGER`] naming the field in its managed fields).
pub fn owns_replicas(deployment: &Deployment) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.fields_v1
                    .as_ref()
                    .and_then(|f| f.0.get("f:spec"))
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
        })
}

/// What the autoscaler keeps per ChatCluster (by uid) between syncs.
#[derive(Default)]
struct Entry {
    state: State,
    /// The cluster's Redis, and the URL it was opened with.
    broker: Option<(String, RedisBroker)>,
    /// The last error, so a persisting one is announced once.
    last_error: Option<String>,
}

impl sweep::Entry for Entry {
    async fn close(mut self) {
        if let Some((_, b)) = self.broker.take() {
            b.quit().await;
        }
    }
}

/// An entry dropped without `close` (a pass cut short by a lost Lease or a
/// shutdown) still stops its Redis client: a dropped `RedisBroker` would
/// otherwise keep reconnecting in the background.
impl Drop for Entry {
    fn drop(&mut self) {
        if let Some((_, b)) = self.broker.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move { b.quit().await });
        }
    }
}

/// The autoscaler's state: one [`Entry`] per cluster in operator mode.
pub struct Autoscaler {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    clusters: Sweep<Entry>,
}

/// Runs the autoscaler every `interval` until `stop` resolves.
pub async fn run_autoscaler(
    client: Client,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    instance: Option<String>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let scaler = Autoscaler::new(client, metrics, namespace, instance);
    sweep::run_every(scaler, interval, stop).await;
    tracing::debug!("autoscaler stopped");
}

impl Pass for Autoscaler {
    async fn pass(&mut self) {
        self.sync_all().await
    }
    async fn close(&mut self) {
        self.clusters.close().await
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

impl Autoscaler {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        instance: Option<String>,
    ) -> Self {
        Autoscaler {
            recorder: sweep::recorder(client.clone(), FIELD_MANAGER, instance),
            client,
            metrics,
            namespace,
            clusters: Sweep::default(),
        }
    }

    /// One pass over every ChatCluster.
    pub async fn sync_all(&mut self) {
        self.metrics.autoscaler_syncs.inc();
        let listed = self
            .clusters
            .list(&self.client, self.namespace.as_deref(), in_scope)
            .await;
        let clusters = match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "autoscaler: cannot list ChatClusters");
                self.metrics
                    .autoscaler_failures
                    .get_or_create(&ReasonLabel {
                        reason: "AutoscalerApiError",
                    })
                    .inc();
                return;
            }
        };
        for (uid, cluster, mut entry) in clusters {
            match self.sync_one(&cluster, &mut entry).await {
                Ok(()) => entry.last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    tracing::warn!(
                        cluster = %format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any()),
                        error = %msg,
                        "autoscaler sync failed"
                    );
                    self.metrics
                        .autoscaler_failures
                        .get_or_create(&ReasonLabel { reason: e.reason() })
                        .inc();
                    if entry.last_error.as_deref() != Some(msg.as_str()) {
                        self.event(&cluster, EventType::Warning, e.reason(), &msg, None)
                            .await;
                    }
                    entry.last_error = Some(msg);
                }
            }
            self.clusters.put(uid, entry);
        }
    }

    async fn sync_one(&self, cluster: &ChatCluster, entry: &mut Entry) -> Result<(), Error> {
        let ns = cluster
            .namespace()
            .ok_or(build::BuildError::MissingMeta("metadata.namespace"))?;
        let name = cluster.name_any();
        let policy = Policy::from_spec(&cluster.spec.gateway);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let dep_name = format!("{name}-{}", build::gateway::COMPONENT);
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
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
            self.read_reports(cluster, &ns, &name, entry).await?
        };
        let inputs = Inputs {
            current,
            ready_pods: &ready_names,
            reports: &reports,
            read_at,
        };
        let decision = autoscale::decide(&mut entry.state, &policy, &inputs, now_ms());
        tracing::debug!(cluster = %format!("{ns}/{name}"), %decision, "autoscaler decision");

        if decision.changes() {
            if decision.replicas < decision.current {
                let costs = autoscale::pod_deletion_costs(&policy, &live_names, &reports, read_at);
                self.set_deletion_costs(&pods, &live, &costs).await?;
            }
            self.apply_replicas(&deployments, &dep_name, decision.replicas)
                .await?;
            let direction = if decision.replicas > decision.current {
                "up"
            } else {
                "down"
            };
            self.metrics
                .autoscaler_scales
                .get_or_create(&DirectionLabel { direction })
                .inc();
            tracing::info!(cluster = %format!("{ns}/{name}"), %decision, "scaled the gateways");
            self.event(
                cluster,
                EventType::Normal,
                "Scaled",
                &decision.to_string(),
                Some(deployment.object_ref(&())),
            )
            .await;
        } else if !owns_replicas(&deployment) {
            // Take the field over (same value), so the reconciler stops
            // applying it; see the module docs.
            self.apply_replicas(&deployments, &dep_name, decision.replicas)
                .await?;
        }
        self.write_status(cluster, &ns, &decision).await
    }

    /// The reports of the cluster's gateways, and the broker's clock.
    async fn read_reports(
        &self,
        cluster: &ChatCluster,
        ns: &str,
        name: &str,
        entry: &mut Entry,
    ) -> Result<(Vec<Report>, u64), Error> {
        let url = self.redis_url(cluster, ns).await?;
        if entry.broker.as_ref().is_some_and(|(u, _)| *u != url)
            && let Some((_, old)) = entry.broker.take()
        {
            old.quit().await;
        }
        let broker = match &entry.broker {
            Some((_, b)) => b.clone(),
            None => {
                let b = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    RedisBroker::connect(&url, BrokerConfig::default()),
                )
                .await
                .map_err(|_| Error::ConnectTimeout)??;
                entry.broker = Some((url, b.clone()));
                b
            }
        };
        let got = broker
            .connection_reports(&ClusterRef::new(ns, name)?)
            .await?;
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

    /// The Redis URL the gateways use: the external Secret's key, or the
    /// managed Redis the reconciler builds.
    async fn redis_url(&self, cluster: &ChatCluster, ns: &str) -> Result<String, Error> {
        let redis = &cluster.spec.redis;
        match (&redis.managed, &redis.external) {
            (_, Some(ext)) => {
                let r = &ext.url_secret_ref;
                let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                let secret = secrets.get_opt(&r.name).await?.ok_or_else(|| {
                    Error::RedisUrl(format!("Secret {:?} does not exist", r.name))
                })?;
                let bytes = secret
                    .data
                    .and_then(|mut d| d.remove(&r.key))
                    .ok_or_else(|| {
                        Error::RedisUrl(format!("Secret {:?} has no key {:?}", r.name, r.key))
                    })?;
                let url = String::from_utf8(bytes.0).map_err(|_| {
                    Error::RedisUrl(format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key))
                })?;
                Ok(url.trim().to_string())
            }
            (Some(managed), None) => Ok(build::redis::managed_url(&Ctx::new(cluster)?, managed)),
            (None, None) => Err(Error::RedisUrl("the spec names no Redis".into())),
        }
    }

    /// Sets the deletion cost of each pod whose annotation differs. A pod
    /// that went away meanwhile is skipped; any other failure stops the
    /// scale-in (the ReplicaSet would pick pods blindly).
    async fn set_deletion_costs(
        &self,
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
    /// `force`: the reconciler co-owned the field before the take-over, and
    /// an HPA left over from `external` mode may own it.
    async fn apply_replicas(
        &self,
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
        &self,
        cluster: &ChatCluster,
        ns: &str,
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
        let api: Api<ChatCluster> = Api::namespaced(self.client.clone(), ns);
        let body = json!({
            "apiVersion": ChatCluster::api_version(&()),
            "kind": ChatCluster::kind(&()),
            "status": {"gateway": mine},
        });
        api.patch_status(
            &cluster.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        Ok(())
    }

    async fn event(
        &self,
        cluster: &ChatCluster,
        type_: EventType,
        reason: &str,
        note: &str,
        secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
    ) {
        sweep::publish_event(
            &self.recorder,
            cluster,
            type_,
            reason,
            note,
            "Scale",
            secondary,
        )
        .await
    }
}

/// Clusters the autoscaler acts on: operator mode, not being deleted, not
/// paused, with a spec the reconciler accepts.
fn in_scope(cluster: &ChatCluster) -> bool {
    cluster.spec.gateway.autoscaling.mode == AutoscalingMode::Operator && sweep::active(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(managed: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "chat-gateway", "managedFields": managed},
        }))
        .unwrap_or_default()
    }

    #[test]
    fn replicas_ownership_is_read_from_managed_fields() {
        let entry = |manager: &str, operation: &str, fields: serde_json::Value| {
            json!({"manager": manager, "operation": operation,
                   "fieldsType": "FieldsV1", "fieldsV1": fields})
        };
        let replicas = json!({"f:spec": {"f:replicas": {}}});
        let template = json!({"f:spec": {"f:template": {}}});
        assert!(owns_replicas(&deployment(json!([
            entry("switchboard-operator", "Apply", template.clone()),
            entry(FIELD_MANAGER, "Apply", replicas.clone()),
        ]))));
        // Someone else's, an Update by us (never made), or no replicas field.
        assert!(!owns_replicas(&deployment(json!([entry(
            "switchboard-operator",
            "Apply",
            replicas.clone()
        )]))));
        assert!(!owns_replicas(&deployment(json!([entry(
            FIELD_MANAGER,
            "Update",
            replicas
        )]))));
        assert!(!owns_replicas(&deployment(json!([entry(
            FIELD_MANAGER,
            "Apply",
            template
        )]))));
        assert!(!owns_replicas(&deployment(json!([]))));
    }
}
