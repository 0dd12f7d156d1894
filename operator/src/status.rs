//! The one way the operator writes a ChatCluster's status: a server-side
//! apply of the status subresource.
//!
//! Four writers share the status, each with its own field manager: the
//! reconciler (`switchboard-operator`: counts and its conditions), the
//! autoscaler (`switchboard-autoscaler`: `status.gateway.{connections,
//! desiredReplicas, lastScale*}`), the partition manager
//! (`switchboard-partitions`: the partition range and `PartitionsReady`)
//! and the Redis Cluster manager (`switchboard-redis`: `status.redis.{slotsAssigned,
//! clusterState, clusterMessage}`). Server-side apply removes only fields
//! the applying manager owned and stopped naming, so none of them erases
//! another's fields; each must name all of its own fields on every apply.
//! `conditions` is a list map keyed by `type`, so condition entries have
//! owners too.

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use crate::ChatCluster;

/// Why a status apply failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ChatCluster has no namespace")]
    NoNamespace,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Applies status fields as one field manager.
#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
    field_manager: &'static str,
}

impl StatusWriter {
    pub fn new(client: Client, field_manager: &'static str) -> Self {
        StatusWriter {
            client,
            field_manager,
        }
    }

    /// Server-side apply of `{"status": fields}` to `cluster`'s status
    /// subresource. `fields` must name every status field this manager owns
    /// (see the module docs). `force`: a field a person edited is taken
    /// back, as the operator is the source of truth for the status.
    pub async fn apply(&self, cluster: &ChatCluster, fields: &impl Serialize) -> Result<(), Error> {
        let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
        let api: Api<ChatCluster> = Api::namespaced(self.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": ChatCluster::api_version(&()),
            "kind": ChatCluster::kind(&()),
            "status": fields,
        });
        api.patch_status(
            &cluster.name_any(),
            &PatchParams::apply(self.field_manager).force(),
            &Patch::Apply(&body),
        )
        .await?;
        Ok(())
    }
}
