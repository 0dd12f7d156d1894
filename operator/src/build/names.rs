//! The names of a ChatCluster's children, `<cluster>-<component>`.
//!
//! The builders name what they create with these functions, and the
//! reconciler and the leader's managers find those objects with the same
//! functions, so a reader can never look for a child under a name the
//! builders stopped using.

use kube::ResourceExt;

use crate::ChatCluster;

fn child(cluster: &ChatCluster, suffix: &str) -> String {
    format!("{}-{suffix}", cluster.name_any())
}

/// The gateways' Deployment, Service, ConfigMap and PodDisruptionBudget.
pub fn gateway(cluster: &ChatCluster) -> String {
    child(cluster, "gateway")
}

/// The generated Secret holding the session-token key.
pub fn session_secret(cluster: &ChatCluster) -> String {
    child(cluster, "session")
}

/// The workers' Deployment and PodDisruptionBudget.
pub fn worker(cluster: &ChatCluster) -> String {
    child(cluster, "worker")
}

/// The managed Redis: StatefulSet, headless Service, ConfigMap,
/// PodDisruptionBudget and NetworkPolicy (the generated Secret too:
/// [`redis_secret`]).
pub fn redis(cluster: &ChatCluster) -> String {
    child(cluster, "redis")
}

/// The generated Secret holding the managed Redis's password (`password`)
/// and the configuration lines that set it (`auth.conf`).
pub fn redis_secret(cluster: &ChatCluster) -> String {
    redis(cluster)
}

/// Pod `ordinal` of the managed Redis StatefulSet.
pub fn redis_pod(cluster: &ChatCluster, ordinal: usize) -> String {
    format!("{}-{ordinal}", redis(cluster))
}

/// The managed PostgreSQL: StatefulSet, headless Service, NetworkPolicy and
/// the generated Secret with its password and URL.
pub fn postgres(cluster: &ChatCluster) -> String {
    child(cluster, "postgres")
}

/// Every Secret the operator may generate for `cluster` (which of them
/// exist depends on the spec): what pruning looks up by name.
pub fn generated_secrets(cluster: &ChatCluster) -> [String; 3] {
    [
        session_secret(cluster),
        redis_secret(cluster),
        postgres(cluster),
    ]
}

/// The fallback relay's ConfigMap.
pub fn relay(cluster: &ChatCluster) -> String {
    child(cluster, "relay")
}

/// The monitoring bundle's PodMonitor and PrometheusRule.
pub fn monitoring(cluster: &ChatCluster) -> String {
    child(cluster, "monitoring")
}

/// The Grafana dashboard ConfigMap.
pub fn dashboard(cluster: &ChatCluster) -> String {
    child(cluster, "dashboard")
}
