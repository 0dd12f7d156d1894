//! Desired children of a `ChatCluster`, as pure functions.
//!
//! Nothing here talks to the API server: the reconciler hands in the cluster
//! plus the few facts only the server knows ([`Observed`]) and applies what
//! comes back. That keeps every builder golden-testable from a YAML fixture
//! (`operator/tests/golden.rs`), and makes "what would the operator create?"
//! a question a unit test can answer.
//!
//! One module per component; this file holds what they share: names, labels,
//! owner references and the hardened pod/container defaults.

pub mod gateway;
pub mod monitoring;
pub mod names;
pub mod network;
pub mod postgres;
pub mod redis;
pub mod relay;
pub mod worker;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ChatCluster, PodOverrides, SecretKeyRef};

/// Label keys (the `app.kubernetes.io` recommended set).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation on pod templates: a hash of the configuration the pods read at
/// start, so a configuration change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/config-hash";

/// Name of the container port of the gateways' and workers' `/metrics`
/// (the PodMonitor scrapes it; it carries no client traffic).
pub const METRICS_PORT_NAME: &str = "metrics";

/// Everything the builders need that is not in the spec. The reconciler reads
/// these from the API server; tests write them down.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `spec.replicas` of the existing gateway Deployment, if there is one:
    /// in `operator` autoscaling mode the operator keeps it (clamped to the
    /// spec's range) instead of resetting it on every reconcile.
    pub gateway_replicas: Option<i32>,
    /// The autoscaler (field manager
    /// [`crate::autoscaler::FIELD_MANAGER`]) owns the gateway Deployment's
    /// `spec.replicas`. In `operator` mode the reconciler then leaves the field
    /// out of its apply, so the two never write it concurrently; see
    /// `gateway::replicas`.
    pub gateway_replicas_autoscaled: bool,
    /// The namespace the operator's own pods run in (`POD_NAMESPACE`): the
    /// NetworkPolicies let its pods reach the managed Redis and PostgreSQL
    /// from there. `None` (an operator outside the cluster): its pods are
    /// matched by label in any namespace.
    pub operator_namespace: Option<String>,
}

/// Material for the secrets the operator generates once. The reconciler fills
/// it with fresh random values only for secrets that do not exist yet.
#[derive(Debug, Clone)]
pub struct Generated {
    /// HMAC key of session tokens (raw bytes; the gateway reads the file).
    pub session_key: Vec<u8>,
    /// Password of the managed PostgreSQL's `switchboard` role (URL-safe).
    pub postgres_password: String,
    /// Password of the managed Redis (`requirepass`, and `masterauth` on a
    /// Redis Cluster; hex, so it needs no quoting in a config file or URL).
    pub redis_password: String,
}

/// The complete desired state of one ChatCluster.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// PodMonitor and PrometheusRule (`monitoring.coreos.com`), applied only
    /// when the API server serves those kinds.
    pub monitoring: Vec<kube::api::DynamicObject>,
    /// Created when missing and never updated afterwards: their values are
    /// random and rotating them would log everyone out / lock the workers out.
    pub generated_secrets: Vec<Secret>,
}

impl Desired {
    /// `(kind, name)` of every object, sorted: what pruning keeps.
    pub fn names(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        out.extend(
            self.deployments
                .iter()
                .map(|o| ("Deployment", o.name_any())),
        );
        out.extend(
            self.stateful_sets
                .iter()
                .map(|o| ("StatefulSet", o.name_any())),
        );
        out.extend(self.services.iter().map(|o| ("Service", o.name_any())));
        out.extend(self.config_maps.iter().map(|o| ("ConfigMap", o.name_any())));
        out.extend(
            self.pdbs
                .iter()
                .map(|o| ("PodDisruptionBudget", o.name_any())),
        );
        out.extend(
            self.network_policies
                .iter()
                .map(|o| ("NetworkPolicy", o.name_any())),
        );
        out.extend(self.monitoring.iter().map(|o| {
            let kind = match o.types.as_ref().map(|t| t.kind.as_str()) {
                Some("PodMonitor") => "PodMonitor",
                _ => "PrometheusRule",
            };
            (kind, o.name_any())
        }));
        out.extend(
            self.generated_secrets
                .iter()
                .map(|o| ("Secret", o.name_any())),
        );
        out.sort();
        out
    }
}

/// Why desired state could not be built. Only malformed objects get here
/// (the API server fills uid and namespace on anything it stored).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("ChatCluster has no {0} (was it read from the API server?)")]
    MissingMeta(&'static str),
    /// An embedded monitoring source does not parse once rendered (a bug
    /// the monitoring tests catch before a release).
    #[error("the embedded {0} does not parse once rendered: {1}")]
    Template(&'static str, String),
}

/// Builds every child for `cluster`.
pub fn desired(
    cluster: &ChatCluster,
    observed: &Observed,
    generated: &Generated,
) -> Result<Desired, BuildError> {
    let ctx = Ctx::new(cluster)?;
    let mut out = Desired::default();
    gateway::build(&ctx, observed, generated, &mut out);
    worker::build(&ctx, &mut out);
    redis::build(&ctx, generated, &mut out);
    postgres::build(&ctx, generated, &mut out);
    relay::build(&ctx, &mut out);
    network::build(&ctx, observed, &mut out);
    monitoring::build(&ctx, &mut out)?;
    Ok(out)
}

/// The cluster plus the metadata every builder stamps on its objects.
pub struct Ctx<'a> {
    pub cluster: &'a ChatCluster,
    pub name: String,
    pub namespace: String,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

impl<'a> Ctx<'a> {
    pub fn new(cluster: &'a ChatCluster) -> Result<Self, BuildError> {
        let namespace = cluster
            .namespace()
            .ok_or(BuildError::MissingMeta("metadata.namespace"))?;
        // controller=true: `owns()` maps child events back to this cluster and
        // garbage collection removes the children with it. No
        // blockOwnerDeletion: it would need update rights on the
        // chatclusters/finalizers subresource for no benefit here.
        let owner = cluster
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMeta("metadata.uid"))?;
        Ok(Ctx {
            cluster,
            name: cluster.name_any(),
            namespace,
            owner,
        })
    }

    /// Labels that select a component's pods. They never change, because a
    /// Deployment's selector is immutable.
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), "switchboard".to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
            (LABEL_COMPONENT.to_string(), component.to_string()),
        ])
    }

    /// Selector labels plus `managed-by`, which pruning lists by.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut l = self.selector(component);
        l.insert(
            LABEL_MANAGED_BY.to_string(),
            crate::FIELD_MANAGER.to_string(),
        );
        l
    }

    /// Metadata of a child: name (one of [`names`]), namespace, labels,
    /// controller owner reference.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// DNS name of the Service `service` (one of [`names`]) of this cluster.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }
}

/// Label selector matching the `app.kubernetes.io/managed-by` and `instance`
/// labels of every child of the cluster named `name`.
pub fn children_selector(name: &str) -> String {
    format!(
        "{LABEL_MANAGED_BY}={},{LABEL_INSTANCE}={name}",
        crate::FIELD_MANAGER
    )
}

/// A PDB that lets one pod go at a time. `maxUnavailable: 1` rather than
/// `minAvailable`, so a one-replica component never blocks a node drain.
fn pdb(ctx: &Ctx, name: String, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Puts a component's [`PodOverrides`] on the pod template the builder
/// made: scheduling fields replace the builder's (defaults such as the
/// gateways' spread), labels and annotations add to its own, which win (the
/// selector and the config hash must stay).
fn with_overrides(mut template: PodTemplateSpec, o: &PodOverrides) -> PodTemplateSpec {
    let meta = template.metadata.get_or_insert_default();
    if !o.labels.is_empty() {
        let mut labels = o.labels.clone();
        labels.extend(meta.labels.take().unwrap_or_default());
        meta.labels = Some(labels);
    }
    if !o.annotations.is_empty() {
        let mut annotations = o.annotations.clone();
        annotations.extend(meta.annotations.take().unwrap_or_default());
        meta.annotations = Some(annotations);
    }
    if let Some(pod) = template.spec.as_mut() {
        if !o.image_pull_secrets.is_empty() {
            pod.image_pull_secrets = Some(o.image_pull_secrets.clone());
        }
        if !o.node_selector.is_empty() {
            pod.node_selector = Some(o.node_selector.clone());
        }
        if !o.tolerations.is_empty() {
            pod.tolerations = Some(o.tolerations.clone());
        }
        if let Some(affinity) = &o.affinity {
            pod.affinity = Some(affinity.clone());
        }
        if !o.topology_spread_constraints.is_empty() {
            pod.topology_spread_constraints = Some(o.topology_spread_constraints.clone());
        }
        if let Some(class) = &o.priority_class_name {
            pod.priority_class_name = Some(class.clone());
        }
    }
    template
}

/// Prefer one pod of `component` per node (`kubernetes.io/hostname`):
/// "preferred", so a small cluster still schedules every replica.
fn spread_by_host(ctx: &Ctx, component: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(ctx.selector(component)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// Pod security context for our own images: a fixed non-root uid, and the
/// runtime's default seccomp profile.
fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// An HTTP GET probe of `path` on the container port named `port`.
fn http_get_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The startup probe of gateways and workers: `/healthz` every 2 s for as
/// long as the binaries wait for PostgreSQL and Redis at start
/// ([`switchboard_core::startup::STARTUP_WAIT`]) plus 30 s. Liveness
/// applies only once it passed, so a pod waiting for its database is not
/// restarted (nor is one whose database never comes: it exits by itself).
fn startup_probe(port: &str) -> Probe {
    const PERIOD: u64 = 2;
    let budget = switchboard_core::startup::STARTUP_WAIT.as_secs() + 30;
    let failures = i32::try_from(budget.div_ceil(PERIOD)).unwrap_or(i32::MAX);
    http_get_probe("/healthz", port, PERIOD as i32, failures)
}

/// Container security context: read-only root, no privilege escalation, no
/// capabilities. Writable paths are emptyDirs or volumes.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// `spec` resources, or requests of `cpu`/`memory` and a memory limit of
/// `limit` (no CPU limit: throttling hurts latency more than it protects).
fn resources(
    spec: &Option<ResourceRequirements>,
    cpu: &str,
    memory: &str,
    limit: &str,
) -> ResourceRequirements {
    spec.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(limit.into()),
        )])),
        ..ResourceRequirements::default()
    })
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A gateway's identity for its connection reports: which pod of which
/// ChatCluster it is.
fn identity_env(ctx: &Ctx) -> Vec<EnvVar> {
    vec![
        pod_name_env(),
        env_field(switchboard_core::env::POD_NAMESPACE, "metadata.namespace"),
        env(switchboard_core::env::CLUSTER, ctx.name.clone()),
    ]
}

/// The pod's name (downward API): a gateway's report key, a worker's
/// consumer name in the streams' group.
fn pod_name_env() -> EnvVar {
    env_field(switchboard_core::env::POD_NAME, "metadata.name")
}

/// Bytes of a Kubernetes quantity (`1Gi`, `512Mi`, `1e9`, `1.5G`), rounded
/// down; `None` if it is not one.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let bytes = (number * scale).floor();
    // `as` saturates; the range check keeps absurd values out.
    (0.0..9.0e18).contains(&bytes).then_some(bytes as u64)
}

/// FNV-1a, 64 bit. The config hash must not change between Rust releases
/// (std's `DefaultHasher` may), or an operator upgrade would roll every pod.
fn fnv1a(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Hash of a ConfigMap's data, for [`CONFIG_HASH_ANNOTATION`].
fn config_map_hash(cms: &[&ConfigMap]) -> String {
    let mut parts = Vec::new();
    for cm in cms {
        if let Some(data) = &cm.data {
            for (k, v) in data {
                parts.push(k.as_str());
                parts.push(v.as_str());
            }
        }
    }
    fnv1a(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("256Mi"), Some(256 << 20));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1000"), Some(1000));
        for bad in ["", "Gi", "1GB", "-1Gi", "1.2.3", "1e"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn fnv_is_stable() {
        // Pinned: changing it would restart every gateway on upgrade.
        assert_eq!(fnv1a(&["a", "b"]), fnv1a(&["a", "b"]));
        assert_ne!(fnv1a(&["ab", ""]), fnv1a(&["a", "b"]));
        assert_eq!(fnv1a(&[]), "cbf29ce484222325");
    }
}
