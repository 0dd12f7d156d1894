//! Redis children. Managed: StatefulSet (standalone or cluster mode, one PVC
//! per pod, AOF on), headless Service, ConfigMap, PodDisruptionBudget and the
//! generated password Secret. External: nothing; the pods read the URL from
//! the user's Secret.
//!
//! In cluster mode the StatefulSet only starts the nodes; assigning slots and
//! replicas is a data-plane step over the Redis protocol, not an object.
//!
//! # Authentication and memory
//!
//! A managed Redis requires a password: the Secret [`names::redis_secret`]
//! (generated once, never rotated by the operator) holds it as `password`
//! and as the config lines `requirepass`/`masterauth` (`auth.conf`, so a
//! cluster's replicas authenticate to their primaries), mounted into the
//! pods and included by `redis.conf`. The ConfigMap, the pod spec and the
//! process's command line never contain it. Gateways and workers get the
//! URL (no password) and [`switchboard_core::env::REDIS_PASSWORD`] from the
//! Secret; `redis-cli` in the readiness probe reads `REDISCLI_AUTH`.
//!
//! `maxmemory` is [`MAXMEMORY_PERCENT`] of the container's memory limit with
//! `maxmemory-policy noeviction`: a full Redis refuses writes (clients get
//! `unavailable`) instead of being OOM-killed and losing what the AOF has
//! not written yet.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_HASH_ANNOTATION, Ctx, Desired, Generated, config_map_hash, container_security, env,
    env_field, env_secret, names, pdb, pod_security, quantity_bytes, resources, spread_by_host,
    with_overrides,
};
use crate::crd::{ManagedRedis, RedisMode, SecretKeyRef, StorageSpec};

pub const COMPONENT: &str = "redis";
pub const PORT: i32 = 6379;
/// uid of the `redis` user in the official image.
const UID: i64 = 999;
/// Keys of the Secret [`names::redis_secret`]: the password, and the
/// `redis.conf` lines that set it.
pub const PASSWORD_KEY: &str = "password";
pub const AUTH_CONF_KEY: &str = "auth.conf";
/// Where the Secret is mounted in Redis pods (`redis.conf` includes
/// [`AUTH_CONF_KEY`] from here).
const AUTH_DIR: &str = "/etc/redis/auth";
/// `maxmemory` as a share of the container's memory limit.
pub const MAXMEMORY_PERCENT: u64 = 70;
/// The default container resources of a Redis pod.
const DEFAULT_CPU: &str = "100m";
const DEFAULT_MEMORY: &str = "256Mi";
const DEFAULT_LIMIT: &str = "1Gi";

pub fn build(ctx: &Ctx, generated: &Generated, out: &mut Desired) {
    let Some(managed) = &ctx.cluster.spec.redis.managed else {
        return;
    };
    let config = config_map(ctx, managed);
    let hash = config_map_hash(&[&config]);
    out.stateful_sets.push(stateful_set(ctx, managed, &hash));
    out.services.push(headless_service(ctx));
    out.pdbs
        .push(pdb(ctx, names::redis(ctx.cluster), COMPONENT));
    out.config_maps.push(config);
    out.generated_secrets
        .push(secret(ctx, &generated.redis_password));
}

/// The generated password Secret: `password` for clients, `auth.conf` for
/// the servers.
pub fn secret(ctx: &Ctx, password: &str) -> Secret {
    let conf = format!("requirepass {password}\nmasterauth {password}\n");
    Secret {
        metadata: ctx.meta(names::redis_secret(ctx.cluster), COMPONENT),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                PASSWORD_KEY.to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
            (AUTH_CONF_KEY.to_string(), ByteString(conf.into_bytes())),
        ])),
        ..Secret::default()
    }
}

/// Where a managed Redis's password is: the Secret's `password` key.
pub fn password_ref(ctx: &Ctx) -> SecretKeyRef {
    SecretKeyRef {
        name: names::redis_secret(ctx.cluster),
        key: PASSWORD_KEY.into(),
    }
}

/// `maxmemory` in bytes: [`MAXMEMORY_PERCENT`] of the Redis container's
/// memory limit. An error names the problem (no limit, not a quantity);
/// [`crate::validate`] reports it as an invalid spec.
pub fn maxmemory(managed: &ManagedRedis) -> Result<u64, String> {
    let res = resources(
        &managed.resources,
        DEFAULT_CPU,
        DEFAULT_MEMORY,
        DEFAULT_LIMIT,
    );
    let limit = res.limits.as_ref().and_then(|l| l.get("memory")).ok_or(
        "redis.managed.resources.limits.memory: required (Redis's maxmemory is set below it)",
    )?;
    let bytes = quantity_bytes(&limit.0).ok_or_else(|| {
        format!(
            "redis.managed.resources.limits.memory: {:?} is not a quantity like 1Gi",
            limit.0
        )
    })?;
    let max = bytes / 100 * MAXMEMORY_PERCENT;
    if max < 16 << 20 {
        return Err(format!(
            "redis.managed.resources.limits.memory: {:?} is too small (at least 23Mi: Redis needs room besides the data)",
            limit.0
        ));
    }
    Ok(max)
}

/// Redis pods: one standalone, or every primary and replica of the cluster.
pub fn pod_count(managed: &ManagedRedis) -> i32 {
    match managed.mode {
        RedisMode::Standalone => 1,
        RedisMode::Cluster => managed.shards * (1 + managed.replicas_per_shard),
    }
}

/// `SWITCHBOARD_REDIS_URL` for gateways and workers, and for a managed
/// Redis `SWITCHBOARD_REDIS_PASSWORD` from its Secret (the URL names no
/// password; an external Redis's URL carries its own).
pub fn client_env(ctx: &Ctx) -> Vec<EnvVar> {
    use switchboard_core::env::{REDIS_PASSWORD, REDIS_URL};
    let redis = &ctx.cluster.spec.redis;
    match (&redis.managed, &redis.external) {
        (_, Some(ext)) => vec![env_secret(REDIS_URL, &ext.url_secret_ref)],
        (Some(managed), None) => vec![
            env(REDIS_URL, managed_url(ctx, managed)),
            env_secret(REDIS_PASSWORD, &password_ref(ctx)),
        ],
        // Validation refuses a spec without either; an empty URL makes the
        // pods fail loudly rather than guess.
        (None, None) => vec![env(REDIS_URL, "")],
    }
}

/// URL of the managed Redis: the first pod for standalone, every pod as a
/// seed node for cluster (the client discovers the topology from any of them).
pub fn managed_url(ctx: &Ctx, managed: &ManagedRedis) -> String {
    let host = |i: usize| format!("{}:{PORT}", pod_host(ctx, i));
    match managed.mode {
        RedisMode::Standalone => format!("redis://{}", host(0)),
        RedisMode::Cluster => {
            let seeds: Vec<String> = (1..usize::try_from(pod_count(managed)).unwrap_or(0))
                .map(|i| format!("node={}", host(i)))
                .collect();
            format!("redis-cluster://{}?{}", host(0), seeds.join("&"))
        }
    }
}

/// `<name>-redis-<ordinal>.<name>-redis.<namespace>.svc`: pod `ordinal`'s
/// stable DNS name under the headless Service, the name each cluster-mode
/// node announces (`--cluster-announce-hostname`).
pub fn pod_host(ctx: &Ctx, ordinal: usize) -> String {
    format!(
        "{}.{}",
        names::redis_pod(ctx.cluster, ordinal),
        ctx.service_host(&names::redis(ctx.cluster))
    )
}

fn config_map(ctx: &Ctx, managed: &ManagedRedis) -> ConfigMap {
    // AOF with fsync every second: a `sent` survives a Redis restart, and at
    // most a second of writes is at risk on a node crash.
    // The password comes from the Secret's `auth.conf`; protected mode
    // stays on, so a server that somehow started without one would still
    // refuse every non-local client.
    let mut conf = format!(
        "port 6379\n\
         bind * -::*\n\
         protected-mode yes\n\
         include {AUTH_DIR}/{AUTH_CONF_KEY}\n\
         dir /data\n\
         appendonly yes\n\
         appendfsync everysec\n"
    );
    // Validation refuses a spec without a usable memory limit.
    if let Ok(max) = maxmemory(managed) {
        conf.push_str(&format!("maxmemory {max}\n"));
    }
    conf.push_str("maxmemory-policy noeviction\n");
    if managed.mode == RedisMode::Cluster {
        conf.push_str(
            "cluster-enabled yes\n\
             cluster-config-file /data/nodes.conf\n\
             cluster-node-timeout 5000\n\
             cluster-preferred-endpoint-type hostname\n",
        );
    }
    ConfigMap {
        metadata: ctx.meta(names::redis(ctx.cluster), COMPONENT),
        data: Some(BTreeMap::from([("redis.conf".to_string(), conf)])),
        ..ConfigMap::default()
    }
}

fn stateful_set(ctx: &Ctx, managed: &ManagedRedis, config_hash: &str) -> StatefulSet {
    let mut args = vec!["/etc/redis/redis.conf".to_string()];
    if managed.mode == RedisMode::Cluster {
        // Nodes announce stable DNS names, so a restarted pod with a new IP
        // keeps its place in the cluster.
        args.push("--cluster-announce-hostname".into());
        args.push(format!(
            "$(POD_NAME).{}",
            ctx.service_host(&names::redis(ctx.cluster))
        ));
    }
    let container = Container {
        name: COMPONENT.into(),
        image: Some(managed.image.clone()),
        command: Some(vec!["redis-server".into()]),
        args: Some(args),
        env: Some(vec![
            env_field(switchboard_core::env::POD_NAME, "metadata.name"),
            // For `redis-cli` (the readiness probe, `kubectl exec`).
            env_secret("REDISCLI_AUTH", &password_ref(ctx)),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["redis-cli".into(), "ping".into()]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        resources: Some(resources(
            &managed.resources,
            DEFAULT_CPU,
            DEFAULT_MEMORY,
            DEFAULT_LIMIT,
        )),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/redis".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "auth".into(),
                mount_path: AUTH_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    StatefulSet {
        metadata: ctx.meta(names::redis(ctx.cluster), COMPONENT),
        spec: Some(StatefulSetSpec {
            replicas: Some(pod_count(managed)),
            service_name: Some(names::redis(ctx.cluster)),
            // Cluster nodes must all be up to be joined; nothing is gained
            // by starting them one by one.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(ctx.selector(COMPONENT)),
                ..LabelSelector::default()
            },
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
                    spec: Some(PodSpec {
                        containers: vec![container],
                        volumes: Some(vec![
                            Volume {
                                name: "config".into(),
                                config_map: Some(ConfigMapVolumeSource {
                                    name: names::redis(ctx.cluster),
                                    ..ConfigMapVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                            // Readable by the redis group (fsGroup) only.
                            Volume {
                                name: "auth".into(),
                                secret: Some(SecretVolumeSource {
                                    secret_name: Some(names::redis_secret(ctx.cluster)),
                                    default_mode: Some(0o440),
                                    ..SecretVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                        ]),
                        security_context: Some(pod_security(UID)),
                        // One Redis pod per node preferred: a primary and
                        // its replicas (and two primaries) do not share a
                        // node when there are nodes enough.
                        affinity: Some(spread_by_host(ctx, COMPONENT)),
                        automount_service_account_token: Some(false),
                        ..PodSpec::default()
                    }),
                },
                &managed.pod,
            ),
            volume_claim_templates: Some(vec![claim("data", &managed.storage)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// A PVC template. Claims outlive the StatefulSet (the default retention
/// policy): deleting a ChatCluster never deletes data by surprise.
pub fn claim(name: &str, storage: &StorageSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Headless: clients address pods by name. Not-ready pods are published too,
/// because cluster bootstrap has to reach nodes before they are ready.
fn headless_service(ctx: &Ctx) -> Service {
    Service {
        metadata: ctx.meta(names::redis(ctx.cluster), COMPONENT),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(ctx.selector(COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: PORT,
                target_port: Some(IntOrString::String("redis".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
