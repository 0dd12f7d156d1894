//! The monitoring bundle (`spec.monitoring`): a PodMonitor over the
//! gateways' and workers' metrics ports, a PrometheusRule with the
//! cluster's alerts, and a Grafana dashboard ConfigMap.
//!
//! The rules and the dashboard have one source, the files under
//! `operator/monitoring/` (compiled in here): the operator renders them per
//! cluster, the chart's PrometheusRule for the operator's own alerts is
//! generated from the same directory ([`operator_rules_chart_template`]),
//! and `operator/tests/monitoring.rs` runs `promtool` on the rendered rules
//! and checks every metric they and the dashboard name against the binaries'
//! `/metrics`.
//!
//! PodMonitor and PrometheusRule are Prometheus Operator kinds
//! (`monitoring.coreos.com/v1`) with no Rust types here: they are built as
//! [`DynamicObject`]s, and the reconciler applies them only when discovery
//! shows the CRDs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{BuildError, Ctx, Desired, fnv1a, names};
use crate::crd::MonitoringSpec;

pub const COMPONENT: &str = "monitoring";
/// The alerts of one ChatCluster, with placeholders ([`cluster_rules`]).
pub const CLUSTER_RULES: &str = include_str!("../../monitoring/cluster-rules.yaml");
/// The alerts about the operator itself (the chart's PrometheusRule).
pub const OPERATOR_RULES: &str = include_str!("../../monitoring/operator-rules.yaml");
/// The Grafana dashboard of one ChatCluster, with placeholders
/// ([`dashboard`]).
pub const DASHBOARD: &str = include_str!("../../monitoring/dashboard.json");
/// The API group of the Prometheus Operator's kinds.
pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";
/// The label (and value) Grafana's dashboard sidecar loads ConfigMaps by.
pub const DASHBOARD_LABEL: (&str, &str) = ("grafana_dashboard", "1");
/// Key of the dashboard in its ConfigMap.
pub const DASHBOARD_KEY: &str = "switchboard.json";
/// Target label the PodMonitor gives every series: the ChatCluster's name
/// (next to Prometheus's own `namespace` and `pod`).
pub const CLUSTER_LABEL: &str = "chatcluster";
pub use super::METRICS_PORT_NAME;

/// `PodMonitor` (`monitoring.coreos.com/v1`).
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "PodMonitor"),
        "podmonitors",
    )
}

/// `PrometheusRule` (`monitoring.coreos.com/v1`).
pub fn prometheus_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "PrometheusRule"),
        "prometheusrules",
    )
}

/// The kinds the bundle needs from [`GROUP`], as discovery names them.
pub const REQUIRED_RESOURCES: [&str; 2] = ["podmonitors", "prometheusrules"];

pub fn build(ctx: &Ctx, out: &mut Desired) -> Result<(), BuildError> {
    // The workers' metrics behind a Service: for scrapers that discover
    // Services rather than pods, and a stable name to port-forward to.
    out.services.push(worker_service(ctx));
    let spec = &ctx.cluster.spec.monitoring;
    if !spec.enabled {
        return Ok(());
    }
    out.config_maps.push(dashboard_config_map(ctx));
    out.monitoring.push(pod_monitor(ctx));
    out.monitoring.push(prometheus_rule(ctx)?);
    Ok(())
}

/// `<cluster>-worker`: ClusterIP over the workers' metrics port.
pub fn worker_service(ctx: &Ctx) -> Service {
    let component = super::worker::COMPONENT;
    Service {
        metadata: ctx.meta(names::worker(ctx.cluster), component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(ctx.selector(component)),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.into()),
                port: super::worker::HTTP_PORT,
                target_port: Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        METRICS_PORT_NAME.into(),
                    ),
                ),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Our labels plus the spec's extra ones (ours win on a clash: pruning and
/// selectors rely on them).
fn labels(ctx: &Ctx) -> BTreeMap<String, String> {
    let mut l = ctx.cluster.spec.monitoring.labels.clone();
    l.extend(ctx.labels(COMPONENT));
    l
}

fn dynamic(ctx: &Ctx, resource: &ApiResource, data: serde_json::Value) -> DynamicObject {
    let mut obj = DynamicObject::new(&names::monitoring(ctx.cluster), resource).data(data);
    obj.metadata = ctx.meta(names::monitoring(ctx.cluster), COMPONENT);
    obj.metadata.labels = Some(labels(ctx));
    obj
}

/// Scrapes `/metrics` on the `metrics` port of this cluster's gateway and
/// worker pods, labelling every series `chatcluster` and `component`.
pub fn pod_monitor(ctx: &Ctx) -> DynamicObject {
    let mut selector = ctx.selector("");
    selector.remove(super::LABEL_COMPONENT);
    let data = json!({
        "spec": {
            "selector": {
                "matchLabels": selector,
                "matchExpressions": [{
                    "key": super::LABEL_COMPONENT,
                    "operator": "In",
                    "values": [super::gateway::COMPONENT, super::worker::COMPONENT],
                }],
            },
            "namespaceSelector": {"matchNames": [ctx.namespace]},
            "podMetricsEndpoints": [{
                "port": METRICS_PORT_NAME,
                "path": "/metrics",
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                        "targetLabel": CLUSTER_LABEL,
                    },
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                        "targetLabel": "component",
                    },
                ],
            }],
        }
    });
    dynamic(ctx, &pod_monitor_resource(), data)
}

/// The cluster's alerts ([`CLUSTER_RULES`] rendered).
pub fn prometheus_rule(ctx: &Ctx) -> Result<DynamicObject, BuildError> {
    let text = cluster_rules(&ctx.namespace, &ctx.name, &ctx.cluster.spec.monitoring);
    let spec: serde_json::Value = serde_norway::from_str(&text)
        .map_err(|e| BuildError::Template("cluster-rules.yaml", e.to_string()))?;
    Ok(dynamic(
        ctx,
        &prometheus_rule_resource(),
        json!({ "spec": spec }),
    ))
}

/// The dashboard ConfigMap Grafana's sidecar picks up.
pub fn dashboard_config_map(ctx: &Ctx) -> ConfigMap {
    let mut metadata = ctx.meta(names::dashboard(ctx.cluster), COMPONENT);
    let mut l = labels(ctx);
    l.insert(DASHBOARD_LABEL.0.into(), DASHBOARD_LABEL.1.into());
    metadata.labels = Some(l);
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            DASHBOARD_KEY.to_string(),
            dashboard(&ctx.namespace, &ctx.name),
        )])),
        ..ConfigMap::default()
    }
}

/// [`CLUSTER_RULES`] for the ChatCluster `namespace/cluster`: a
/// Prometheus rule file (`groups:`), what a PrometheusRule's `spec` holds.
pub fn cluster_rules(namespace: &str, cluster: &str, spec: &MonitoringSpec) -> String {
    // Integer milliseconds as seconds, exactly (500 -> 0.5, 1000 -> 1).
    let ms = spec.delivery_p99_target_millis.max(1);
    let p99 = if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
            .trim_end_matches('0')
            .to_string()
    };
    fill(
        CLUSTER_RULES,
        &[
            ("__NAMESPACE__", namespace),
            ("__CLUSTER__", cluster),
            ("__P99_SECONDS__", &p99),
            ("__BACKLOG__", &spec.backlog_threshold.to_string()),
        ],
    )
}

/// [`DASHBOARD`] for the ChatCluster `namespace/cluster`, with a uid of its
/// own (Grafana's limit is 40 characters).
pub fn dashboard(namespace: &str, cluster: &str) -> String {
    let uid = format!("switchboard-{}", fnv1a(&[namespace, cluster]));
    fill(
        DASHBOARD,
        &[
            ("__NAMESPACE__", namespace),
            ("__CLUSTER__", cluster),
            ("__UID__", &uid),
        ],
    )
}

/// Names and namespaces are DNS labels (the API server checks), so they
/// need no quoting in PromQL strings, YAML or JSON.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |s, (k, v)| s.replace(k, v))
}

/// The chart's `templates/prometheusrule.yaml`: [`OPERATOR_RULES`] in a
/// PrometheusRule, rendered with `prometheusRule.enabled`. Prometheus's own
/// `{{ }}` (alert templates) are escaped so Helm leaves them alone.
pub fn operator_rules_chart_template() -> String {
    let body: String = OPERATOR_RULES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
        .replace("{{", "\u{0}L")
        .replace("}}", "\u{0}R")
        .replace("\u{0}L", "{{ \"{{\" }}")
        .replace("\u{0}R", "{{ \"}}\" }}");
    format!(
        "{{{{- /* Generated from operator/monitoring/operator-rules.yaml; do not edit. */}}}}\n\
         {{{{- /* Regenerate: UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test monitoring */}}}}\n\
         {{{{- if .Values.prometheusRule.enabled }}}}\n\
         apiVersion: {GROUP}/{VERSION}\n\
         kind: PrometheusRule\n\
         metadata:\n  \
           name: {{{{ include \"switchboard-operator.fullname\" . }}}}\n  \
           namespace: {{{{ .Release.Namespace }}}}\n  \
           labels:\n    \
             {{{{- merge (include \"switchboard-operator.labels\" . | fromYaml) .Values.prometheusRule.labels | toYaml | nindent 4 }}}}\n\
         spec:\n\
         {body}\
         {{{{- end }}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_target_in_seconds() {
        let spec = |ms| MonitoringSpec {
            delivery_p99_target_millis: ms,
            ..MonitoringSpec::default()
        };
        for (ms, want) in [
            (500, "> 0.5\n"),
            (1000, "> 1\n"),
            (1, "> 0.001\n"),
            (2250, "> 2.25\n"),
        ] {
            let text = cluster_rules("n", "c", &spec(ms));
            assert!(text.contains(want), "{ms}: {text}");
        }
    }

    #[test]
    fn no_placeholder_is_left() {
        let text = cluster_rules("n", "c", &MonitoringSpec::default()) + &dashboard("n", "c");
        assert!(!text.contains("__"), "{text}");
    }
}
