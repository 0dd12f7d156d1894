//! NetworkPolicies around the stores the operator runs: only this cluster's
//! gateway and worker pods, the operator's own pods and (for Redis) the
//! other Redis pods may connect to the managed Redis and PostgreSQL. A Redis
//! password is still required (see [`super::redis`]); the policies keep
//! every other pod from even reaching the port.
//!
//! Ingress only, and only for the stores' pods: the gateways' own traffic
//! is the platform's business. Nothing is built with
//! `spec.networkPolicies.enabled: false`, or for a store that is
//! `external`.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Ctx, Desired, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, Observed, names};

/// `app.kubernetes.io/name` of the operator's pods (the Helm chart's).
pub const OPERATOR_NAME_LABEL: &str = "switchboard-operator";
/// The label every namespace carries with its name (Kubernetes 1.22+).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn build(ctx: &Ctx, observed: &Observed, out: &mut Desired) {
    let spec = &ctx.cluster.spec;
    if !spec.network_policies.enabled {
        return;
    }
    let clients = [super::gateway::COMPONENT, super::worker::COMPONENT];
    if spec.redis.managed.is_some() {
        // Gateways, workers and the operator on the client port; the other
        // Redis pods on every port (replication, and the cluster bus on
        // port + 10000).
        out.network_policies.push(policy(
            ctx,
            names::redis(ctx.cluster),
            super::redis::COMPONENT,
            vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![own_pods(ctx, &clients), operator_pods(observed)]),
                    ports: Some(vec![tcp(super::redis::PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![own_pods(ctx, &[super::redis::COMPONENT])]),
                    ports: None,
                },
            ],
        ));
    }
    if spec.postgres.managed.is_some() {
        // Gateways (history), workers, and the operator (migrations and
        // partition maintenance).
        out.network_policies.push(policy(
            ctx,
            names::postgres(ctx.cluster),
            super::postgres::COMPONENT,
            vec![NetworkPolicyIngressRule {
                from: Some(vec![own_pods(ctx, &clients), operator_pods(observed)]),
                ports: Some(vec![tcp(super::postgres::PORT)]),
            }],
        ));
    }
}

fn policy(
    ctx: &Ctx,
    name: String,
    component: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ctx.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Pods of this ChatCluster with one of `components`, in its namespace.
fn own_pods(ctx: &Ctx, components: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (LABEL_NAME.to_string(), "switchboard".to_string()),
                (LABEL_INSTANCE.to_string(), ctx.name.clone()),
            ])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.into(),
                operator: "In".into(),
                values: Some(components.iter().map(|c| c.to_string()).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods: in its namespace when known, else in any.
fn operator_pods(observed: &Observed) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: observed
                .operator_namespace
                .as_ref()
                .map(|ns| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.clone())])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                LABEL_NAME.to_string(),
                OPERATOR_NAME_LABEL.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;

    fn cluster(extra: serde_json::Value) -> ChatCluster {
        let mut spec = serde_json::json!({"auth": {"domain": "d"}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "c", "namespace": "n", "uid": "u"},
            "spec": spec
        }))
        .unwrap()
    }

    fn built(c: &ChatCluster, observed: &Observed) -> Vec<NetworkPolicy> {
        let mut out = Desired::default();
        build(&Ctx::new(c).unwrap(), observed, &mut out);
        out.network_policies
    }

    #[test]
    fn the_operator_is_matched_in_its_own_namespace() {
        let c = cluster(serde_json::json!({}));
        let seen = Observed {
            operator_namespace: Some("switchboard-system".into()),
            ..Observed::default()
        };
        let policies = built(&c, &seen);
        assert_eq!(policies.len(), 2);
        for p in &policies {
            let rule = &p.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
            let op = &rule.from.as_ref().unwrap()[1];
            let ns = op.namespace_selector.as_ref().unwrap();
            assert_eq!(
                ns.match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL],
                "switchboard-system"
            );
        }
    }

    #[test]
    fn opted_out_or_external_stores_get_no_policy() {
        let off = cluster(serde_json::json!({"networkPolicies": {"enabled": false}}));
        assert!(built(&off, &Observed::default()).is_empty());
        let external = cluster(serde_json::json!({
            "redis": {"external": {"urlSecretRef": {"name": "r"}}},
            "postgres": {"external": {"secretRef": {"name": "p"}}}
        }));
        assert!(built(&external, &Observed::default()).is_empty());
    }
}
