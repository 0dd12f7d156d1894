//! One loop shape for the leader's managers: the gateway autoscaler
//! ([`crate::autoscaler`]), the partition manager ([`crate::partitions`]) and
//! the Redis Cluster manager ([`crate::redis_manager`]).
//!
//! A manager says what it does for one ChatCluster ([`Manager::pass`]) and
//! when it wants to do it again; [`run`] does the rest, the same way for all
//! three:
//!
//! - **Schedule.** The runner wakes every [`Manager::tick`], lists the
//!   ChatClusters (of the watched namespace, or all) and runs the pass of
//!   each cluster in scope whose time has come. A pass answers when the next
//!   one is due, measured from the wake-up that started it; a cluster seen for
//!   the first time is due at once, and [`Manager::changed`] can make one due
//!   early. Due clusters run one after the other, or side by side when
//!   [`Manager::CONCURRENT`].
//! - **Scope.** A cluster is in scope when it is active (not being deleted,
//!   not paused, a valid spec: [`policy::active`]) and
//!   [`Manager::in_scope`] accepts it.
//! - **Per-cluster state.** The runner keeps each cluster's
//!   [`Manager::State`] (a Redis connection, a database pool, the
//!   autoscaler's history) by uid, and closes it as soon as the cluster is
//!   gone or out of scope, so no connection outlives its cluster.
//! - **Failures.** A failed pass is counted by reason, logged, and announced
//!   as a Warning Event when its message is new (not on every retry); then
//!   [`Manager::failed`] records it (in the status, for the managers that
//!   report there) and says when to retry.
//! - **Stopping.** The runner stops when its token is cancelled: on shutdown,
//!   and when this replica loses the leader Lease ([`crate::run`] cancels the
//!   leader term's token). It stops between passes or in the middle of one
//!   (every pass is safe to cut short and run again), then closes every
//!   state, so a later leader term starts from nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ChatCluster;
use crate::events::Events;
use crate::metrics::{ClusterLabel, Metrics, ReasonLabel};
use crate::policy;
use crate::status::StatusWriter;

/// The shortest tick the runner accepts, so a zero interval cannot spin.
const MIN_TICK: Duration = Duration::from_millis(100);

/// What a manager's passes use: the API client, the metrics, and the
/// manager's own Events and status writer (both under its field manager).
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub events: Events,
    pub status: StatusWriter,
}

/// What every manager of one leader term is started with.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// This replica's identity, for the Events.
    pub instance: Option<String>,
}

/// A loop the leader runs next to the controller; see the module docs.
pub trait Manager: Send + Sync {
    /// What the manager keeps per ChatCluster between passes.
    type State: Default + Send;
    /// Why a pass over one cluster failed.
    type Error: std::error::Error + Send + Sync;

    /// Name in logs.
    const NAME: &'static str;
    /// Field manager of everything the manager writes, and the controller
    /// its Events name.
    const FIELD_MANAGER: &'static str;
    /// The action of its Events.
    const ACTION: &'static str;
    /// Failure reason counted when the ChatClusters cannot be listed.
    const LIST_FAILED: &'static str;
    /// Whether due clusters run side by side (a slow one does not hold up
    /// the others) rather than one after the other.
    const CONCURRENT: bool = false;

    /// Time between two wake-ups of the runner.
    fn tick(&self) -> Duration;

    /// Whether the manager acts on this (active) cluster.
    fn in_scope(&self, cluster: &ChatCluster) -> bool;

    /// The counter of failed passes, by reason.
    fn failures(metrics: &Metrics) -> &Family<ReasonLabel, Counter>;

    /// A counter of wake-ups, if the manager exports one.
    fn wakeups(_metrics: &Metrics) -> Option<&Counter> {
        None
    }

    /// Short label of an error: the metric's `reason` and the Warning
    /// Event's reason.
    fn reason(error: &Self::Error) -> &'static str;

    /// Whether a cluster whose time has not come must run now anyway (the
    /// partition manager: its partitioning or its database URL changed).
    fn changed(
        &self,
        _cx: &Context,
        _cluster: &ChatCluster,
        _state: &Self::State,
    ) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// One pass over one cluster. `Ok(after)`: the next pass is due `after`
    /// the wake-up that started this one.
    fn pass(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<Duration, Self::Error>> + Send;

    /// After a failed pass, which the runner has counted, logged and
    /// announced: record it where the manager reports (its status fields)
    /// and answer when to retry.
    fn failed(
        &self,
        cx: &Context,
        cluster: &ChatCluster,
        state: &mut Self::State,
        error: &Self::Error,
    ) -> impl Future<Output = Duration> + Send;

    /// The per-cluster series the manager exports, if any: the runner
    /// removes a cluster's when it leaves the scope or the runner stops (a
    /// replica that is no longer leader exports none).
    fn cluster_gauge(_metrics: &Metrics) -> Option<&Family<ClusterLabel, Gauge>> {
        None
    }

    /// Releases a cluster's state: the cluster left the scope, or the
    /// runner stops.
    fn close(_state: Self::State) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// One cluster as the runner tracks it.
struct Tracked<S> {
    state: S,
    /// `None`: due at the next wake-up.
    due: Option<Instant>,
    /// The last error's message, so a persisting one is announced once.
    last_error: Option<String>,
    /// Its labels in [`Manager::cluster_gauge`].
    label: ClusterLabel,
}

impl<S: Default> Tracked<S> {
    fn new(label: ClusterLabel) -> Self {
        Tracked {
            state: S::default(),
            due: None,
            last_error: None,
            label,
        }
    }
}

/// Drops a cluster the runner no longer tracks: its series, its state.
async fn release<M: Manager>(cx: &Context, tracked: Tracked<M::State>) {
    if let Some(gauge) = M::cluster_gauge(&cx.metrics) {
        gauge.remove(&tracked.label);
    }
    M::close(tracked.state).await;
}

/// Runs `manager` until `stop` is cancelled; see the module docs.
pub async fn run<M: Manager>(manager: M, shared: Shared, stop: CancellationToken) {
    let cx = Context {
        events: Events::new(
            shared.client.clone(),
            M::FIELD_MANAGER,
            shared.instance.clone(),
            M::ACTION,
        ),
        status: StatusWriter::new(shared.client.clone(), M::FIELD_MANAGER),
        client: shared.client,
        metrics: shared.metrics,
    };
    let namespace = shared.namespace;
    let mut clusters: HashMap<String, Tracked<M::State>> = HashMap::new();
    // Start to start; a wake-up that overruns delays the next instead of
    // piling up.
    let mut tick = tokio::time::interval(manager.tick().max(MIN_TICK));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = tokio::select! {
            () = stop.cancelled() => break,
            at = tick.tick() => at,
        };
        // Boxed: a pass is a deep stack of futures (a Redis Cluster
        // bootstrap most of all), and unboxed it makes the type of every
        // future that awaits the runner too deep for rustc's layout queries.
        let wake = Box::pin(wake(&manager, &cx, namespace.as_deref(), &mut clusters, at));
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake => {}
        }
    }
    for (_, tracked) in clusters.drain() {
        release::<M>(&cx, tracked).await;
    }
    tracing::debug!(manager = M::NAME, "stopped");
}

/// One wake-up: list, drop what left the scope, run what is due.
async fn wake<M: Manager>(
    manager: &M,
    cx: &Context,
    namespace: Option<&str>,
    clusters: &mut HashMap<String, Tracked<M::State>>,
    at: Instant,
) {
    if let Some(wakeups) = M::wakeups(&cx.metrics) {
        wakeups.inc();
    }
    let api: Api<ChatCluster> = match namespace {
        Some(ns) => Api::namespaced(cx.client.clone(), ns),
        None => Api::all(cx.client.clone()),
    };
    let listed = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(manager = M::NAME, error = %e, "cannot list ChatClusters");
            M::failures(&cx.metrics)
                .get_or_create(&ReasonLabel {
                    reason: M::LIST_FAILED,
                })
                .inc();
            return;
        }
    };
    // In scope, by uid, with the position the list gave it (passes run in
    // list order).
    let scope: HashMap<String, (usize, ChatCluster)> = listed
        .into_iter()
        .filter(|c| policy::active(c) && manager.in_scope(c))
        .enumerate()
        .filter_map(|(i, c)| Some((c.uid()?, (i, c))))
        .collect();
    let gone: Vec<String> = clusters
        .keys()
        .filter(|uid| !scope.contains_key(*uid))
        .cloned()
        .collect();
    for uid in gone {
        if let Some(tracked) = clusters.remove(&uid) {
            release::<M>(cx, tracked).await;
        }
    }
    for (uid, (_, cluster)) in &scope {
        clusters
            .entry(uid.clone())
            .or_insert_with(|| Tracked::new(ClusterLabel::of(cluster)));
    }
    let mut work: Vec<(usize, &ChatCluster, &mut Tracked<M::State>)> = clusters
        .iter_mut()
        .filter_map(|(uid, t)| scope.get(uid).map(|(i, c)| (*i, c, t)))
        .collect();
    work.sort_by_key(|(i, _, _)| *i);
    let passes = work
        .into_iter()
        .map(|(_, cluster, tracked)| one(manager, cx, cluster, tracked, at));
    if M::CONCURRENT {
        join_all(passes).await;
    } else {
        for pass in passes {
            pass.await;
        }
    }
}

/// One cluster at one wake-up: the pass if it is due, its failure handling,
/// the next due time.
async fn one<M: Manager>(
    manager: &M,
    cx: &Context,
    cluster: &ChatCluster,
    tracked: &mut Tracked<M::State>,
    at: Instant,
) {
    let due = tracked.due.is_none_or(|due| at >= due)
        || manager.changed(cx, cluster, &tracked.state).await;
    if !due {
        return;
    }
    let key = format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
    // Everything the pass logs (a bootstrap's commands too) names the cluster.
    let span = tracing::info_span!("manager", manager = M::NAME, cluster = %key);
    let after = async {
        match manager.pass(cx, cluster, &mut tracked.state).await {
            Ok(after) => {
                tracked.last_error = None;
                after
            }
            Err(e) => {
                let reason = M::reason(&e);
                let msg = e.to_string();
                M::failures(&cx.metrics)
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                if tracked.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "pass failed");
                    cx.events.warning(cluster, reason, &msg).await;
                } else {
                    tracing::debug!(error = %msg, "pass still failing");
                }
                tracked.last_error = Some(msg);
                manager.failed(cx, cluster, &mut tracked.state, &e).await
            }
        }
    }
    .instrument(span)
    .await;
    tracked.due = Some(at + after);
}
