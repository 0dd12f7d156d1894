//! Kubernetes Events about a ChatCluster, for the reconciler and the
//! leader's managers alike.
//!
//! Each writer has its own [`Events`]: the Events name its field manager as
//! the reporting controller, this replica as the instance, and its action
//! (`Reconcile`, `Scale`, ...), so `kubectl describe` tells who said what.
//! One [`Recorder`] per writer for the operator's lifetime: it caches and
//! aggregates repeated Events into series instead of creating one object
//! per failure.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::ChatCluster;

/// Longest note the API server accepts on an Event.
const NOTE_MAX_CHARS: usize = 1000;

/// The Events one writer publishes.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    action: &'static str,
}

impl Events {
    /// Events reported by `controller` (a field manager) from replica
    /// `instance`, with `action` as their action.
    pub fn new(
        client: Client,
        controller: &str,
        instance: Option<String>,
        action: &'static str,
    ) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance,
        };
        Events {
            recorder: Recorder::new(client, reporter),
            action,
        }
    }

    /// A Normal Event about `cluster`.
    pub async fn normal(&self, cluster: &ChatCluster, reason: &str, note: &str) {
        self.publish(cluster, EventType::Normal, reason, note, None)
            .await;
    }

    /// A Warning Event about `cluster`.
    pub async fn warning(&self, cluster: &ChatCluster, reason: &str, note: &str) {
        self.publish(cluster, EventType::Warning, reason, note, None)
            .await;
    }

    /// An Event about `cluster`, optionally naming a second object (the
    /// Deployment a scale changed). The note is cut to the 1 kB Events
    /// allow. A failure is logged only: Events are best effort, and a
    /// reconcile or a pass must not fail because one was not recorded.
    pub async fn publish(
        &self,
        cluster: &ChatCluster,
        type_: EventType,
        reason: &str,
        note: &str,
        secondary: Option<ObjectReference>,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(NOTE_MAX_CHARS).collect()),
            action: self.action.into(),
            secondary,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            tracing::debug!(error = %e, "could not publish an event");
        }
    }
}
