//! PostgreSQL children. Managed: a single-instance StatefulSet with one
//! volume, a headless Service and a generated Secret holding the password and
//! the URL. External: nothing; pods read the URL from the user's Secret.
//!
//! Managed PostgreSQL has no replica and no backups: it is for development
//! and staging clusters. Production uses `external`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction, PodSpec, PodTemplateSpec,
    Probe, Secret, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Ctx, Desired, Generated, container_security, env, env_secret, names, pod_security, resources,
    with_overrides,
};
use crate::crd::{ManagedPostgres, SecretKeyRef};

pub const COMPONENT: &str = "postgres";
pub const PORT: i32 = 5432;
/// Role and database the managed instance creates.
const USER: &str = "switchboard";
/// uid of the `postgres` user in the official image.
const UID: i64 = 999;
const DATA_DIR: &str = "/var/lib/postgresql/data";

pub fn build(ctx: &Ctx, generated: &Generated, out: &mut Desired) {
    let Some(managed) = &ctx.cluster.spec.postgres.managed else {
        return;
    };
    out.stateful_sets.push(stateful_set(ctx, managed));
    out.services.push(headless_service(ctx));
    out.generated_secrets
        .push(secret(ctx, &generated.postgres_password));
}

/// Where the database URL lives: the user's Secret, or ours for managed.
pub fn url_ref(ctx: &Ctx) -> SecretKeyRef {
    match &ctx.cluster.spec.postgres.external {
        Some(ext) => ext.secret_ref.clone(),
        None => SecretKeyRef {
            name: names::postgres(ctx.cluster),
            key: "url".into(),
        },
    }
}

/// `SWITCHBOARD_DATABASE_URL` for gateways and workers.
pub fn url_env(ctx: &Ctx) -> EnvVar {
    env_secret(switchboard_core::env::DATABASE_URL, &url_ref(ctx))
}

/// The generated credentials: `password` for the server, `url` for clients.
pub fn secret(ctx: &Ctx, password: &str) -> Secret {
    let url = format!(
        "postgres://{USER}:{password}@{}:{PORT}/{USER}",
        ctx.service_host(&names::postgres(ctx.cluster))
    );
    Secret {
        metadata: ctx.meta(names::postgres(ctx.cluster), COMPONENT),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                "password".to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
            ("url".to_string(), ByteString(url.into_bytes())),
        ])),
        ..Secret::default()
    }
}

fn stateful_set(ctx: &Ctx, managed: &ManagedPostgres) -> StatefulSet {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    };
    let ready_cmd = vec![
        "pg_isready".to_string(),
        "-U".to_string(),
        USER.to_string(),
        "-h".to_string(),
        "127.0.0.1".to_string(),
    ];
    let container = Container {
        name: COMPONENT.into(),
        image: Some(managed.image.clone()),
        env: Some(vec![
            env("POSTGRES_USER", USER),
            env("POSTGRES_DB", USER),
            env_secret(
                "POSTGRES_PASSWORD",
                &SecretKeyRef {
                    name: names::postgres(ctx.cluster),
                    key: "password".into(),
                },
            ),
            // A subdirectory: the volume's root may hold lost+found, which
            // initdb refuses.
            env("PGDATA", format!("{DATA_DIR}/pgdata")),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(ready_cmd),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("postgres".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        resources: Some(resources(&managed.resources, "250m", "512Mi", "1Gi")),
        security_context: Some(container_security()),
        // The root filesystem is read-only; PostgreSQL writes its data, its
        // socket and temporary files only to these.
        volume_mounts: Some(vec![
            mount("data", DATA_DIR),
            mount("run", "/var/run/postgresql"),
            mount("tmp", "/tmp"),
        ]),
        ..Container::default()
    };
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };

    StatefulSet {
        metadata: ctx.meta(names::postgres(ctx.cluster), COMPONENT),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names::postgres(ctx.cluster)),
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
                        volumes: Some(vec![empty("run"), empty("tmp")]),
                        security_context: Some(pod_security(UID)),
                        // Time for a clean shutdown checkpoint.
                        termination_grace_period_seconds: Some(60),
                        automount_service_account_token: Some(false),
                        ..PodSpec::default()
                    }),
                },
                &managed.pod,
            ),
            volume_claim_templates: Some(vec![super::redis::claim("data", &managed.storage)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn headless_service(ctx: &Ctx) -> Service {
    Service {
        metadata: ctx.meta(names::postgres(ctx.cluster), COMPONENT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(ctx.selector(COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: PORT,
                target_port: Some(IntOrString::String("postgres".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
