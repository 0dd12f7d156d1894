//! The ChatCluster reconciler: the kube-runtime `Controller` and the one
//! function it calls per cluster.
//!
//! Pipeline: paused? → validate → build (pure, see [`crate::build`]) →
//! server-side apply → create missing generated secrets → prune orphans →
//! observe → status. Every step is idempotent, so the controller may run it
//! as often as it likes; an unchanged cluster produces no writes at all.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{try_join, try_join_all};
use futures_util::{StreamExt, try_join};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::FIELD_MANAGER;
use crate::build::{self, Desired, Generated, Observed, names};
use crate::conditions::{self, ClusterView, Component, Fresh, Monitoring, Observation, Pods};
use crate::crd::{
    ChatCluster, ChatClusterStatus, ComponentStatus, GatewayStatus, PostgresStatus,
    RedisClusterState, RedisMode, RedisStatus,
};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::policy;
use crate::status::{self, StatusWriter};
use crate::validate::validate;

/// Re-check a converged cluster this often even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-check a cluster whose pods are still starting.
const PROGRESS_POLL: Duration = Duration::from_secs(30);
/// Backoff of a failing cluster: 5 s doubling to 5 min.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why a reconcile failed. All of these are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error("ChatCluster has no namespace")]
    NoNamespace,
}

impl From<status::Error> for Error {
    fn from(e: status::Error) -> Self {
        match e {
            status::Error::NoNamespace => Error::NoNamespace,
            status::Error::Kube(e) => Error::Kube(e),
        }
    }
}

impl Error {
    /// Short label for metrics and the Degraded condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "Rejected",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Error::Kube(_) => "ApiError",
            Error::Build(_) | Error::NoNamespace => "BadObject",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// The reconciler's Events (one recorder for every reconcile, so
    /// repeats aggregate into series).
    pub events: Events,
    /// The reconciler's status writes (field manager `switchboard-operator`).
    pub status: StatusWriter,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The operator's own namespace, for the NetworkPolicies
    /// ([`Observed::operator_namespace`]).
    operator_namespace: Option<String>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        Context {
            events: Events::new(client.clone(), FIELD_MANAGER, instance, "Reconcile"),
            status: StatusWriter::new(client.clone(), FIELD_MANAGER),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            operator_namespace: None,
        }
    }

    /// The namespace the operator's pods run in; see
    /// [`Observed::operator_namespace`].
    pub fn with_operator_namespace(mut self, namespace: Option<String>) -> Self {
        self.operator_namespace = namespace;
        self
    }

    fn failure_count(&self, key: &str, bump: bool) -> u32 {
        let mut map = match self.failures.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if bump {
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            map.remove(key);
            0
        }
    }
}

fn key(cluster: &ChatCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// The controller: watches ChatClusters (in `namespace`, or all) and every
/// child kind, and reconciles until `shutdown` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Children are watched by label so the caches hold only our objects.
    // Secrets are not watched at all: the operator reads, creates and
    // deletes them by name only, so its RBAC needs no `list`/`watch` on
    // Secrets (which would let it read every Secret it may list). A deleted
    // generated Secret comes back with the next reconcile (at the latest
    // the periodic resync).
    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        build::LABEL_MANAGED_BY,
        FIELD_MANAGER
    ));
    Controller::new(
        api::<ChatCluster>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<Deployment>(&client, &namespace), children.clone())
    .owns(api::<StatefulSet>(&client, &namespace), children.clone())
    .owns(api::<Service>(&client, &namespace), children.clone())
    .owns(api::<ConfigMap>(&client, &namespace), children.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, &namespace),
        children.clone(),
    )
    .owns(api::<NetworkPolicy>(&client, &namespace), children)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
        }
    })
    .await;
}

/// One reconcile, with metrics, events and the Degraded condition on failure.
pub async fn reconcile(cluster: Arc<ChatCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.failure_count(&key(&cluster), false);
        }
        Err(e) => {
            tracing::warn!(cluster = %key(&cluster), error = %e, "reconcile failed");
            ctx.metrics.failure(e.reason());
            ctx.events
                .warning(&cluster, e.reason(), &e.to_string())
                .await;
            // Best effort: if the API is down this fails too, and the error
            // above is what counts.
            let previous = current_conditions(&cluster);
            let fresh = conditions::failed(&previous, e.reason(), &e.to_string());
            let status = ChatClusterStatus {
                conditions: stamp(&cluster, fresh),
                ..owned_part(&cluster)
            };
            if let Err(e) = ctx.status.apply(&cluster, &status).await {
                tracing::debug!(error = %e, "could not record the failure in status");
            }
        }
    }
    result
}

/// Requeue a failed cluster with exponential backoff and jitter, so a broken
/// API server is not hammered and many clusters do not retry in lockstep.
pub fn error_policy(cluster: Arc<ChatCluster>, _err: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.failure_count(&key(&cluster), true);
    Action::requeue(backoff(n))
}

/// Delay before retry number `n` (1-based): 5 s, 10 s, 20 s … 5 min, ±10%.
pub fn backoff(n: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let base = exp.min(BACKOFF_MAX);
    let jitter_ms = (base.as_millis() as u64 / 10).max(1);
    let offset = rand::random::<u64>() % (2 * jitter_ms);
    (base + Duration::from_millis(offset)).saturating_sub(Duration::from_millis(jitter_ms))
}

async fn reconcile_inner(cluster: &ChatCluster, ctx: &Context) -> Result<Action, Error> {
    if cluster.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    let previous = current_conditions(cluster);

    if policy::is_paused(cluster) {
        let status = ChatClusterStatus {
            conditions: stamp(cluster, conditions::paused(&previous)),
            ..owned_part(cluster)
        };
        ctx.status.apply(cluster, &status).await?;
        // The annotation's removal is a change to the object, which wakes us.
        return Ok(Action::await_change());
    }

    let problems = validate(&name, &cluster.spec);
    if !problems.is_empty() {
        let msg = problems.join("; ");
        // Only announce the problem once per generation, not on every resync.
        let already = previous.iter().any(|c| {
            c.type_ == conditions::DEGRADED
                && c.reason == "InvalidSpec"
                && c.observed_generation == cluster.metadata.generation
        });
        if !already {
            ctx.events.warning(cluster, "InvalidSpec", &msg).await;
        }
        let status = ChatClusterStatus {
            observed_generation: cluster.metadata.generation,
            conditions: stamp(cluster, conditions::invalid(&previous, &problems)),
            ..owned_part(cluster)
        };
        ctx.status.apply(cluster, &status).await?;
        // Waiting is right: only a spec change can fix it.
        return Ok(Action::await_change());
    }

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let gateway = deployments.get_opt(&names::gateway(cluster)).await?;
    let observed = Observed {
        gateway_replicas_autoscaled: gateway.as_ref().is_some_and(policy::owns_replicas),
        gateway_replicas: gateway.and_then(|d| d.spec.and_then(|s| s.replicas)),
        operator_namespace: ctx.operator_namespace.clone(),
    };
    let desired = build::desired(cluster, &observed, &Generated::random())?;

    // Which Prometheus Operator kinds exist is asked on every reconcile (one
    // discovery call): CRDs installed later are picked up at the next one.
    let missing = missing_monitoring_resources(&ctx.client).await?;
    apply_all(&ctx.client, &ns, &desired).await?;
    if missing.is_empty() {
        apply_monitoring(&ctx.client, &ns, &desired).await?;
    }
    prune(&ctx.client, &ns, cluster, &desired, missing.is_empty()).await?;

    let (mut obs, status) = observe(&ctx.client, &ns, cluster).await?;
    obs.monitoring = match (cluster.spec.monitoring.enabled, missing.is_empty()) {
        (false, _) => Monitoring::Disabled,
        (true, true) => Monitoring::Applied,
        (true, false) => Monitoring::CrdsMissing(missing),
    };
    let fresh = conditions::healthy(&obs);
    let ready = fresh
        .iter()
        .any(|c| c.type_ == conditions::READY && c.status);
    let status = ChatClusterStatus {
        observed_generation: cluster.metadata.generation,
        conditions: stamp(cluster, fresh),
        ..status
    };
    ctx.status.apply(cluster, &status).await?;
    Ok(Action::requeue(if ready { RESYNC } else { PROGRESS_POLL }))
}

impl Generated {
    /// Fresh random material; used only for secrets that do not exist yet.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let pw: [u8; 24] = rand::random();
        let redis: [u8; 32] = rand::random();
        Generated {
            session_key: key.to_vec(),
            postgres_password: hex(&pw),
            redis_password: hex(&redis),
        }
    }
}

/// The status fields this reconciler owns, as last written. Re-applied
/// unchanged when a reconcile cannot observe (paused, invalid, failed):
/// leaving them out of a server-side apply would delete them.
fn owned_part(cluster: &ChatCluster) -> ChatClusterStatus {
    let prev = cluster.status.clone().unwrap_or_default();
    ChatClusterStatus {
        observed_generation: prev.observed_generation,
        conditions: Vec::new(),
        gateway: prev.gateway.map(|g| GatewayStatus {
            replicas: g.replicas,
            ready_replicas: g.ready_replicas,
            ..GatewayStatus::default()
        }),
        worker: prev.worker,
        // The Redis Cluster manager's fields are its own.
        redis: prev.redis.map(|r| RedisStatus {
            slots_assigned: None,
            cluster_state: None,
            cluster_message: None,
            ..r
        }),
        postgres: prev.postgres.map(|p| PostgresStatus {
            replicas: p.replicas,
            ready_replicas: p.ready_replicas,
            ..PostgresStatus::default()
        }),
    }
}

fn current_conditions(
    cluster: &ChatCluster,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    cluster
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

fn stamp(
    cluster: &ChatCluster,
    fresh: Vec<Fresh>,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    conditions::stamp(
        &current_conditions(cluster),
        fresh,
        cluster.metadata.generation,
        &now,
    )
}

/// Server-side apply with our field manager. `force` takes over fields
/// another manager (a `kubectl edit`) changed: the ChatCluster is the source
/// of truth for every field we set. Fields we do not set stay with whoever
/// set them.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?;
    Ok(())
}

async fn apply_all(client: &Client, ns: &str, d: &Desired) -> Result<(), Error> {
    // In steps: configuration and secrets, then services, then workloads,
    // then their disruption budgets, so pods find what they mount. Within a
    // step the writes are independent and go out together: a reconcile costs
    // four API round trips of latency instead of one per child.
    try_join(
        try_join_all(d.config_maps.iter().map(|o| apply(client, ns, o))),
        try_join_all(
            d.generated_secrets
                .iter()
                .map(|o| create_if_missing(client, ns, o)),
        ),
    )
    .await?;
    try_join_all(d.services.iter().map(|o| apply(client, ns, o))).await?;
    try_join(
        try_join_all(d.stateful_sets.iter().map(|o| apply(client, ns, o))),
        try_join_all(d.deployments.iter().map(|o| apply(client, ns, o))),
    )
    .await?;
    try_join(
        try_join_all(d.pdbs.iter().map(|o| apply(client, ns, o))),
        try_join_all(d.network_policies.iter().map(|o| apply(client, ns, o))),
    )
    .await?;
    Ok(())
}

/// The resources of [`build::monitoring::REQUIRED_RESOURCES`] the API
/// server does not serve (all of them when the group is not there at all).
async fn missing_monitoring_resources(client: &Client) -> Result<Vec<String>, Error> {
    use build::monitoring::{GROUP, REQUIRED_RESOURCES, VERSION};
    let served = match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => list.resources.into_iter().map(|r| r.name).collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(REQUIRED_RESOURCES
        .iter()
        .filter(|r| !served.iter().any(|s| s == *r))
        .map(|r| r.to_string())
        .collect())
}

/// The resource of a monitoring object (PodMonitor or PrometheusRule).
fn monitoring_resource(obj: &DynamicObject) -> ApiResource {
    match obj.types.as_ref().map(|t| t.kind.as_str()) {
        Some("PodMonitor") => build::monitoring::pod_monitor_resource(),
        _ => build::monitoring::prometheus_rule_resource(),
    }
}

/// PodMonitor and PrometheusRule, after the workloads they watch.
async fn apply_monitoring(client: &Client, ns: &str, d: &Desired) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    try_join_all(d.monitoring.iter().map(|obj| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &monitoring_resource(obj));
        let params = params.clone();
        async move {
            api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
                .await
                .map(|_| ())
        }
    }))
    .await?;
    Ok(())
}

/// Generated secrets are created once and never rewritten: a re-reconcile
/// must not rotate the session key (that would log every user out) or the
/// database password (the data directory keeps the old one).
async fn create_if_missing(client: &Client, ns: &str, secret: &Secret) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    if api.get_metadata_opt(&secret.name_any()).await?.is_some() {
        return Ok(());
    }
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(()),
        // Another writer won the race; theirs is as good as ours.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes children of this cluster that the spec no longer asks for (a
/// component switched off, managed → external). Only objects carrying our
/// labels AND a controller reference to this very cluster are candidates.
async fn prune(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    d: &Desired,
    monitoring_served: bool,
) -> Result<(), Error> {
    let keep: BTreeSet<(&'static str, String)> = d.names().into_iter().collect();
    let uid = cluster.uid().unwrap_or_default();
    let selector = build::children_selector(&cluster.name_any());
    // Six independent list (and rarely delete) calls, issued together.
    try_join!(
        prune_kind::<Deployment>(client, ns, &uid, &selector, &keep),
        prune_kind::<StatefulSet>(client, ns, &uid, &selector, &keep),
        prune_kind::<Service>(client, ns, &uid, &selector, &keep),
        prune_kind::<ConfigMap>(client, ns, &uid, &selector, &keep),
        prune_kind::<PodDisruptionBudget>(client, ns, &uid, &selector, &keep),
        prune_kind::<NetworkPolicy>(client, ns, &uid, &selector, &keep),
        prune_secrets(client, ns, cluster, &uid, &keep),
    )?;
    if monitoring_served {
        try_join(
            prune_dynamic(
                client,
                ns,
                &build::monitoring::pod_monitor_resource(),
                &uid,
                &selector,
                &keep,
            ),
            prune_dynamic(
                client,
                ns,
                &build::monitoring::prometheus_rule_resource(),
                &uid,
                &selector,
                &keep,
            ),
        )
        .await?;
    }
    Ok(())
}

/// [`prune_kind`] for a kind without Rust types (the monitoring bundle's).
async fn prune_dynamic(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    uid: &str,
    selector: &str,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    for obj in list.items {
        let name = obj.name_any();
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        let wanted = keep.iter().any(|(k, n)| *k == resource.kind && *n == name);
        if ours && !wanted {
            tracing::info!(kind = %resource.kind, %name, "deleting a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Generated Secrets the spec no longer asks for (the managed Redis's or
/// PostgreSQL's, after a switch to external), by name: the names the
/// builders can give them, so no `list` of Secrets is needed. Deleted only
/// when this cluster is their controller.
async fn prune_secrets(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
    uid: &str,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in names::generated_secrets(cluster) {
        if keep.iter().any(|(k, n)| *k == "Secret" && *n == name) {
            continue;
        }
        let Some(obj) = api.get_metadata_opt(&name).await? else {
            continue;
        };
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        if ours {
            tracing::info!(kind = "Secret", %name, "deleting a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn prune_kind<K>(
    client: &Client,
    ns: &str,
    uid: &str,
    selector: &str,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let kind = K::kind(&());
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await?;
    for obj in list.items {
        let name = obj.name_any();
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        let wanted = keep.iter().any(|(k, n)| *k == kind && *n == name);
        if ours && !wanted {
            tracing::info!(%kind, %name, "deleting a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Reads the workloads' status: conditions input plus per-component counts.
async fn observe(
    client: &Client,
    ns: &str,
    cluster: &ChatCluster,
) -> Result<(Observation, ChatClusterStatus), Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);

    let deployment_pods = |d: Option<Deployment>| -> Option<Pods> {
        d.map(|d| Pods {
            desired: d.spec.and_then(|s| s.replicas).unwrap_or(1),
            ready: d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
        })
    };
    let set_pods = |s: Option<StatefulSet>| -> Option<Pods> {
        s.map(|s| Pods {
            desired: s.spec.and_then(|s| s.replicas).unwrap_or(1),
            ready: s.status.and_then(|s| s.ready_replicas).unwrap_or(0),
        })
    };
    let as_component = |p: Option<Pods>| p.map_or(Component::Missing, Component::Running);

    let spec = &cluster.spec;
    // A managed store's StatefulSet (`None`: the store is external).
    let managed_set = |managed: bool, set_name: String| {
        let sets = sets.clone();
        async move {
            if managed {
                sets.get_opt(&set_name).await.map(Some)
            } else {
                Ok(None)
            }
        }
    };
    // Independent reads, issued together.
    let (gateway_name, worker_name) = (names::gateway(cluster), names::worker(cluster));
    let (gateway, worker, redis, postgres) = try_join!(
        deployments.get_opt(&gateway_name),
        deployments.get_opt(&worker_name),
        managed_set(spec.redis.managed.is_some(), names::redis(cluster)),
        managed_set(spec.postgres.managed.is_some(), names::postgres(cluster)),
    )?;
    let gateway = deployment_pods(gateway);
    let worker = deployment_pods(worker);
    let redis = redis.map(set_pods);
    let postgres = postgres.map(set_pods);

    let redis_component = match (redis, &spec.redis.managed) {
        (None, _) => Component::External,
        // Ready pods are not a cluster yet: the Redis Cluster manager's
        // verdict (its part of the status) decides with them.
        (Some(Some(pods)), Some(m)) if m.mode == RedisMode::Cluster => {
            Component::Cluster(pods, cluster_view(cluster))
        }
        (Some(pods), _) => as_component(pods),
    };
    let obs = Observation {
        gateway: as_component(gateway),
        worker: as_component(worker),
        redis: redis_component,
        postgres: postgres.map_or(Component::External, as_component),
        monitoring: Monitoring::Disabled,
    };
    let counts = |p: Option<Pods>| ComponentStatus {
        replicas: p.map(|p| p.desired),
        ready_replicas: p.map(|p| p.ready),
    };
    let status = ChatClusterStatus {
        gateway: Some(GatewayStatus {
            replicas: gateway.map(|p| p.desired),
            ready_replicas: gateway.map(|p| p.ready),
            ..GatewayStatus::default()
        }),
        worker: Some(counts(worker)),
        redis: spec.redis.managed.as_ref().map(|m| RedisStatus {
            shards: Some(match m.mode {
                RedisMode::Standalone => 1,
                RedisMode::Cluster => m.shards,
            }),
            replicas: redis.flatten().map(|p| p.desired),
            ready_replicas: redis.flatten().map(|p| p.ready),
            ..RedisStatus::default()
        }),
        postgres: spec.postgres.managed.as_ref().map(|_| PostgresStatus {
            replicas: postgres.flatten().map(|p| p.desired),
            ready_replicas: postgres.flatten().map(|p| p.ready),
            ..PostgresStatus::default()
        }),
        ..ChatClusterStatus::default()
    };
    Ok((obs, status))
}

/// The Redis Cluster manager's last verdict, from its part of the status.
fn cluster_view(cluster: &ChatCluster) -> ClusterView {
    let redis = cluster.status.as_ref().and_then(|s| s.redis.as_ref());
    ClusterView {
        ready: redis.and_then(|r| r.cluster_state) == Some(RedisClusterState::Ready),
        message: redis
            .and_then(|r| r.cluster_message.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        for (n, secs) in [(1, 5), (2, 10), (3, 20), (7, 300), (40, 300)] {
            let d = backoff(n);
            let want = Duration::from_secs(secs);
            assert!(d >= want - want / 10 && d <= want + want / 10, "{n}: {d:?}");
        }
    }
}
