//! Gateway children: Deployment, Service, PodDisruptionBudget, ConfigMap and
//! the session-key Secret.
//!
//! The pods are built to drain: a preStop sleep takes them out of the load
//! balancer before SIGTERM, the termination grace period covers the drain
//! timeout, and rolling updates never take a pod away before its replacement
//! is ready (maxUnavailable 0).

use std::collections::BTreeMap;
use switchboard_core::env;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec,
    Probe, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_HASH_ANNOTATION, Ctx, Desired, Generated, Observed, config_map_hash, container_security,
    env, env_secret, identity_env, names, pdb, pod_security, resources, spread_by_host,
    with_overrides,
};
use crate::crd::AutoscalingMode;

pub const COMPONENT: &str = "gateway";
/// Port the gateway serves HTTP and WebSocket on (the Service's target).
pub const HTTP_PORT: i32 = 8080;
/// Port of the gateway's `/metrics`: its own listener, not behind the
/// Service, for Prometheus to scrape the pods.
pub const METRICS_PORT: i32 = 9090;
/// Key of the token HMAC key in the Secret [`names::session_secret`].
pub const SESSION_KEY: &str = "token-secret";
const SESSION_DIR: &str = "/var/run/switchboard/session";
/// uid of the `nonroot` user in the Switchboard image.
const UID: i64 = 65532;
/// Seconds added to preStop + drain timeout for the process to exit.
const EXIT_MARGIN: i32 = 5;

pub fn build(ctx: &Ctx, observed: &Observed, generated: &Generated, out: &mut Desired) {
    let config = config_map(ctx);
    let relay = super::relay::config_map(ctx);
    let mut hashed = vec![&config];
    hashed.extend(relay.as_ref());
    let hash = config_map_hash(&hashed);
    out.deployments.push(deployment(ctx, observed, &hash));
    out.services.push(service(ctx));
    out.pdbs
        .push(pdb(ctx, names::gateway(ctx.cluster), COMPONENT));
    out.config_maps.push(config);
    out.generated_secrets
        .push(session_secret(ctx, &generated.session_key));
}

/// Settings the gateway reads from its environment (`envFrom`). Kept in a
/// ConfigMap so `kubectl get cm <cluster>-gateway -o yaml` shows what the
/// gateways run with.
pub fn config_map(ctx: &Ctx) -> ConfigMap {
    let spec = &ctx.cluster.spec;
    let chain_ids: Vec<String> = spec.auth.chain_ids.iter().map(|c| c.to_string()).collect();
    let mut data = BTreeMap::from([
        (env::DOMAIN.to_string(), spec.auth.domain.clone()),
        (env::CHAIN_IDS.to_string(), chain_ids.join(",")),
        (
            env::SESSION_TTL.to_string(),
            spec.auth.session_ttl.to_string(),
        ),
        (
            env::DRAIN_TIMEOUT_SECONDS.to_string(),
            spec.gateway.drain.timeout_seconds.to_string(),
        ),
        (
            env::TOKEN_SECRET_FILE.to_string(),
            format!("{SESSION_DIR}/{SESSION_KEY}"),
        ),
    ]);
    if spec.fallback_relay.is_some() {
        data.insert(
            env::RELAY_CONFIG.to_string(),
            format!("{}/{}", super::relay::MOUNT_DIR, super::relay::FILE),
        );
    }
    ConfigMap {
        metadata: ctx.meta(names::gateway(ctx.cluster), COMPONENT),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The session-token key, 32 random bytes. Generated once per cluster.
pub fn session_secret(ctx: &Ctx, key: &[u8]) -> Secret {
    Secret {
        metadata: ctx.meta(names::session_secret(ctx.cluster), COMPONENT),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SESSION_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Replica count to apply, by autoscaling mode. `None` leaves the field to
/// whoever else owns it (an HPA in `external` mode, the autoscaler in
/// `operator` mode).
///
/// `operator` mode and server-side apply: the autoscaler applies
/// `spec.replicas` with its own field manager (`switchboard-autoscaler`).
/// If the reconciler kept applying the value it observed, a reconcile that
/// read the Deployment just before a scale would force the old count back.
/// So the reconciler sets replicas (within the range) only until the
/// autoscaler has taken the field over (it does on its first sync), and then
/// leaves the field out: with the autoscaler still owning it, dropping it from
/// our apply only drops our co-ownership and the value stays. Until then the
/// reconciler still creates the Deployment with `min` and clamps it.
fn replicas(ctx: &Ctx, observed: &Observed) -> Option<i32> {
    let gw = &ctx.cluster.spec.gateway;
    let (min, max) = (gw.replicas.min, gw.replicas.max.max(gw.replicas.min));
    match gw.autoscaling.mode {
        AutoscalingMode::Disabled => Some(min),
        AutoscalingMode::Operator if observed.gateway_replicas_autoscaled => None,
        AutoscalingMode::Operator => Some(observed.gateway_replicas.unwrap_or(min).clamp(min, max)),
        AutoscalingMode::External => None,
    }
}

pub fn deployment(ctx: &Ctx, observed: &Observed, config_hash: &str) -> Deployment {
    let spec = &ctx.cluster.spec;
    let gw = &spec.gateway;
    let drain = &gw.drain;

    // The gateway alone: workers run in their own Deployment.
    let mut args = vec![
        "--listen".to_string(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--metrics-listen".to_string(),
        format!("0.0.0.0:{METRICS_PORT}"),
        "--domain".to_string(),
        format!("$({})", env::DOMAIN),
        "--token-secret-file".to_string(),
        format!("$({})", env::TOKEN_SECRET_FILE),
    ];
    for id in &spec.auth.chain_ids {
        args.push("--chain-id".into());
        args.push(id.to_string());
    }
    for pattern in &gw.reserved_channels {
        args.push("--reserved-channel".into());
        args.push(pattern.clone());
    }
    for origin in &gw.cors.allowed_origins {
        args.push("--cors-origin".into());
        args.push(origin.clone());
    }

    let mut env_vars = identity_env(ctx);
    env_vars.extend(super::redis::client_env(ctx));
    env_vars.push(super::postgres::url_env(ctx));
    if let Some(key) = spec
        .fallback_relay
        .as_ref()
        .and_then(|r| r.api_key_secret_ref.as_ref())
    {
        env_vars.push(env_secret(env::RELAY_API_KEY, &key.into()));
    }
    if let Some(keys) = &spec.gateway.api_keys_secret_ref {
        env_vars.push(env_secret(env::API_KEYS, &keys.into()));
    }
    env_vars.push(env(env::LOG, "info"));
    env_vars.push(env(env::LOG_FORMAT, spec.logging.format.to_core().as_str()));

    let mut mounts = vec![
        VolumeMount {
            name: "session".into(),
            mount_path: SESSION_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "session".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::session_secret(ctx.cluster)),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if spec.fallback_relay.is_some() {
        mounts.push(VolumeMount {
            name: "relay".into(),
            mount_path: super::relay::MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "relay".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::relay(ctx.cluster),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }

    let container = Container {
        name: COMPONENT.into(),
        image: Some(gw.image.clone()),
        command: Some(vec!["switchboard-gateway".into()]),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(super::METRICS_PORT_NAME.into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env_vars),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names::gateway(ctx.cluster),
                ..ConfigMapEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        // Ready only while Redis answers and the gateway is not draining.
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        // Alive as long as the process serves HTTP; Redis trouble must not
        // restart gateways (they would all restart at once).
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        startup_probe: Some(super::startup_probe("http")),
        lifecycle: Some(Lifecycle {
            // Sleep before SIGTERM so endpoints controllers and load
            // balancers drop the pod while it still serves. The sleep action
            // needs no shell in the image.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(drain.pre_stop_seconds),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(resources(&gw.resources, "250m", "256Mi", "512Mi")),
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(pod_security(UID)),
        termination_grace_period_seconds: Some(i64::from(
            drain.pre_stop_seconds + drain.timeout_seconds + EXIT_MARGIN,
        )),
        // One gateway per node and an even spread over zones, preferred.
        affinity: Some(spread_by_host(ctx, COMPONENT)),
        topology_spread_constraints: Some(vec![spread_by_zone(ctx)]),
        // Gateways need no API access.
        automount_service_account_token: Some(false),
        ..PodSpec::default()
    };

    Deployment {
        metadata: ctx.meta(names::gateway(ctx.cluster), COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: replicas(ctx, observed),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(COMPONENT)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: with_overrides(
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(ctx.labels(COMPONENT)),
                        annotations: Some(BTreeMap::from([(
                            CONFIG_HASH_ANNOTATION.to_string(),
                            config_hash.to_string(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                &gw.pod,
            ),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    super::http_get_probe(path, "http", period, failures)
}

/// Spread the gateways across zones, so a zone outage drops as few
/// sockets as possible. `ScheduleAnyway`: nodes without
/// `topology.kubernetes.io/zone` (a single-zone or bare-metal cluster) still
/// take pods.
fn spread_by_zone(ctx: &Ctx) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(ctx.selector(COMPONENT)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }
}

pub fn service(ctx: &Ctx) -> Service {
    let svc = &ctx.cluster.spec.gateway.service;
    let mut metadata = ctx.meta(names::gateway(ctx.cluster), COMPONENT);
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(ctx.selector(COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: svc.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;

    fn cluster(mode: &str) -> ChatCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "c", "namespace": "n", "uid": "u"},
            "spec": {"auth": {"domain": "d"},
                     "gateway": {"replicas": {"min": 2, "max": 5}, "autoscaling": {"mode": mode}}}
        }))
        .unwrap()
    }

    #[test]
    fn replicas_follow_the_autoscaling_mode() {
        let c = cluster("operator");
        let ctx = Ctx::new(&c).unwrap();
        // The operator keeps what the autoscaler chose, within the range.
        let seen = |n: Option<i32>| Observed {
            gateway_replicas: n,
            gateway_replicas_autoscaled: false,
            ..Observed::default()
        };
        assert_eq!(replicas(&ctx, &seen(None)), Some(2));
        assert_eq!(replicas(&ctx, &seen(Some(4))), Some(4));
        assert_eq!(replicas(&ctx, &seen(Some(9))), Some(5));
        assert_eq!(replicas(&ctx, &seen(Some(1))), Some(2));
        // Once the autoscaler owns the field, the reconciler stays out of it.
        let owned = Observed {
            gateway_replicas: Some(4),
            gateway_replicas_autoscaled: true,
            ..Observed::default()
        };
        assert_eq!(replicas(&ctx, &owned), None);
        let c = cluster("disabled");
        assert_eq!(replicas(&Ctx::new(&c).unwrap(), &owned), Some(2));
        // External: never written, an HPA owns it.
        let c = cluster("external");
        assert_eq!(replicas(&Ctx::new(&c).unwrap(), &seen(Some(4))), None);
    }

    #[test]
    fn grace_period_covers_the_drain() {
        let c = cluster("operator");
        let d = deployment(&Ctx::new(&c).unwrap(), &Observed::default(), "h");
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(5 + 30 + 5));
    }
}
