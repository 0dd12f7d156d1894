//! Who may act on a ChatCluster and who owns which field: the small pure
//! rules the reconciler and the leader's managers share.
//!
//! They live here, next to nothing but the data they read (the cluster's
//! metadata, a Deployment's managed fields), so that the reconciler and the
//! managers both depend on them and never on each other.

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use crate::ChatCluster;

/// Annotation that stops the operator from changing a cluster's children.
pub const PAUSED_ANNOTATION: &str = "switchboard.dev/paused";

/// Field manager of everything the gateway autoscaler writes. Defined here
/// rather than in the autoscaler because the reconciler reads it too
/// ([`owns_replicas`]).
pub const AUTOSCALER_FIELD_MANAGER: &str = "switchboard-autoscaler";

/// Whether the cluster carries `switchboard.dev/paused: "true"`.
pub fn is_paused(cluster: &ChatCluster) -> bool {
    cluster
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whether a cluster is one the leader's managers act on at all: not being
/// deleted, not paused, and a spec that passes validation (an invalid one
/// waits for the reconciler's InvalidSpec).
pub fn active(cluster: &ChatCluster) -> bool {
    cluster.metadata.deletion_timestamp.is_none()
        && !is_paused(cluster)
        && crate::validate::validate(&cluster.name_any(), &cluster.spec).is_empty()
}

/// Whether the autoscaler owns the Deployment's `spec.replicas` (an `Apply`
/// entry of [`AUTOSCALER_FIELD_MANAGER`] naming the field in its managed
/// fields). The reconciler then leaves the field out of its own apply.
pub fn owns_replicas(deployment: &Deployment) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .any(|m| {
            m.manager.as_deref() == Some(AUTOSCALER_FIELD_MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.fields_v1
                    .as_ref()
                    .and_then(|f| f.0.get("f:spec"))
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
            entry(AUTOSCALER_FIELD_MANAGER, "Apply", replicas.clone()),
        ]))));
        // Someone else's, an Update by us (never made), or no replicas field.
        assert!(!owns_replicas(&deployment(json!([entry(
            "switchboard-operator",
            "Apply",
            replicas.clone()
        )]))));
        assert!(!owns_replicas(&deployment(json!([entry(
            AUTOSCALER_FIELD_MANAGER,
            "Update",
            replicas
        )]))));
        assert!(!owns_replicas(&deployment(json!([entry(
            AUTOSCALER_FIELD_MANAGER,
            "Apply",
            template
        )]))));
        assert!(!owns_replicas(&deployment(json!([]))));
    }
}
