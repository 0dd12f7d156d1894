//! Worker children: Deployment and PodDisruptionBudget (the Service over
//! their metrics port is built with the monitoring bundle, in
//! `monitoring.rs`).
//!
//! Workers share the persistence streams through one consumer group, so they
//! are a plain Deployment: any pod can die, its pending entries are claimed
//! by another. Each pod applies migrations at start (sqlx takes an advisory
//! lock, so concurrent starts are safe). Partition maintenance is the
//! operator's ([`crate::partitions`]), so the workers' own is off.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, PodSpec, PodTemplateSpec, Probe, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{
    Ctx, Desired, container_security, env, names, pdb, pod_name_env, pod_security, resources,
    with_overrides,
};

pub const COMPONENT: &str = "worker";
/// Port of the worker's /metrics, /healthz and /readyz (named `metrics`; it
/// carries no client traffic).
pub const HTTP_PORT: i32 = 9091;
const UID: i64 = 65532;

pub fn build(ctx: &Ctx, out: &mut Desired) {
    out.deployments.push(deployment(ctx));
    out.pdbs
        .push(pdb(ctx, names::worker(ctx.cluster), COMPONENT));
}

pub fn deployment(ctx: &Ctx) -> Deployment {
    let spec = &ctx.cluster.spec;
    let args = vec![
        "run".to_string(),
        "--migrate".to_string(),
        "--listen".to_string(),
        format!("0.0.0.0:{HTTP_PORT}"),
        // The operator maintains partitions (0 is also the worker's
        // default; explicit so a changed default cannot start a second one).
        "--partition-maintenance-secs".to_string(),
        "0".to_string(),
    ];
    // The worker names its stream consumer after its pod; it reads nothing
    // else of the pod identity (the contract test checks what it reads).
    let mut env_vars = vec![pod_name_env()];
    env_vars.extend(super::redis::client_env(ctx));
    env_vars.push(super::postgres::url_env(ctx));
    env_vars.push(env(switchboard_core::env::LOG, "info"));
    env_vars.push(env(
        switchboard_core::env::LOG_FORMAT,
        spec.logging.format.to_core().as_str(),
    ));

    let container = Container {
        name: COMPONENT.into(),
        image: Some(spec.worker.image.clone()),
        command: Some(vec!["switchboard-worker".into()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(super::METRICS_PORT_NAME.into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env_vars),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        startup_probe: Some(super::startup_probe(super::METRICS_PORT_NAME)),
        resources: Some(resources(&spec.worker.resources, "100m", "128Mi", "256Mi")),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    Deployment {
        metadata: ctx.meta(names::worker(ctx.cluster), COMPONENT),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.worker.replicas),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(COMPONENT)),
                ..LabelSelector::default()
            },
            template: with_overrides(
                PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(ctx.labels(COMPONENT)),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        volumes: Some(vec![Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        }]),
                        security_context: Some(pod_security(UID)),
                        // A batch in flight is one transaction; 30 s covers it.
                        termination_grace_period_seconds: Some(30),
                        automount_service_account_token: Some(false),
                        ..PodSpec::default()
                    }),
                },
                &spec.worker.pod,
            ),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn probe(path: &str, period: i32) -> Probe {
    super::http_get_probe(path, super::METRICS_PORT_NAME, period, 3)
}
