//! What the leader's periodic loops share: the autoscaler, the partition
//! manager and the Redis Cluster manager each keep a little state per
//! ChatCluster (a Redis connection, a database pool, a schedule) and, on
//! every pass, list the ChatClusters they are responsible for.
//!
//! [`Sweep`] is that per-cluster state, keyed by uid: a pass lists the
//! clusters in scope and the entries of clusters that are gone (deleted,
//! paused, switched to another mode) are closed and dropped, so a
//! connection or pool never outlives its cluster. [`run_every`] is the loop
//! around the passes, which stops between or in the middle of a pass.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::ChatCluster;

/// Per-cluster state of a loop. `close` releases what it holds.
pub trait Entry: Default + Send {
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// One loop's entries, by ChatCluster uid.
pub struct Sweep<E> {
    entries: HashMap<String, E>,
}

impl<E> Default for Sweep<E> {
    fn default() -> Self {
        Sweep {
            entries: HashMap::new(),
        }
    }
}

impl<E: Entry> Sweep<E> {
    /// Lists the ChatClusters (of `namespace`, or all) that `in_scope`
    /// accepts, closes the entries of every other cluster, and hands out
    /// each listed cluster with its entry (new ones start from `Default`).
    /// Give the entries back with [`put`](Self::put) after the pass.
    pub async fn list(
        &mut self,
        client: &Client,
        namespace: Option<&str>,
        in_scope: impl Fn(&ChatCluster) -> bool,
    ) -> Result<Vec<(String, ChatCluster, E)>, kube::Error> {
        let api: Api<ChatCluster> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let listed = api.list(&ListParams::default()).await?.items;
        let mut out = Vec::new();
        for cluster in listed.into_iter().filter(|c| in_scope(c)) {
            let Some(uid) = cluster.uid() else { continue };
            let entry = self.entries.remove(&uid).unwrap_or_default();
            out.push((uid, cluster, entry));
        }
        // What is left belongs to clusters that are gone or out of scope.
        for (_, entry) in self.entries.drain() {
            entry.close().await;
        }
        Ok(out)
    }

    /// Keeps `entry` for the cluster `uid` until the next pass.
    pub fn put(&mut self, uid: String, entry: E) {
        self.entries.insert(uid, entry);
    }

    /// Closes every entry (the loop is stopping).
    pub async fn close(&mut self) {
        for (_, entry) in self.entries.drain() {
            entry.close().await;
        }
    }
}

/// Whether a cluster is one the leader's loops act on at all: not being
/// deleted, not paused (`switchboard.dev/paused`), and a spec that passes
/// validation (an invalid one waits for the reconciler's InvalidSpec).
pub fn active(cluster: &ChatCluster) -> bool {
    cluster.metadata.deletion_timestamp.is_none()
        && !crate::reconcile::is_paused(cluster)
        && crate::validate::validate(&cluster.name_any(), &cluster.spec).is_empty()
}

/// The Event recorder of a loop: Events name `field_manager` as their
/// controller and this replica as the instance.
pub fn recorder(client: Client, field_manager: &str, instance: Option<String>) -> Recorder {
    let reporter = Reporter {
        controller: field_manager.into(),
        instance,
    };
    Recorder::new(client, reporter)
}

/// Publish an Event about `cluster` (the note capped at the 1 kB Events
/// allow). A failure is logged only: Events are best effort.
pub async fn publish_event(
    recorder: &Recorder,
    cluster: &ChatCluster,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
    secondary: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary,
    };
    if let Err(e) = recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::debug!(error = %e, "could not publish an event");
    }
}

/// A loop the leader runs next to the controller.
pub trait Pass: Send {
    /// One pass over the clusters.
    fn pass(&mut self) -> impl Future<Output = ()> + Send;
    /// Release everything (the loop stopped).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs `work.pass()` every `period` (measured start to start; a pass that
/// overruns delays the next instead of piling up) until `stop` resolves,
/// then closes it. `stop` interrupts a pass in the middle: every pass is
/// written to be safe to cut short and run again.
pub async fn run_every(mut work: impl Pass, period: Duration, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = work.pass() => {}
        }
    }
    work.close().await;
}
