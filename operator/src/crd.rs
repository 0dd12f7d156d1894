//! The `ChatCluster` custom resource (`switchboard.dev/v1alpha1`).
//!
//! Doc comments on every field become the `kubectl explain` text, so they are
//! written for platform teams. Cross-field rules live in CEL
//! (`x-kubernetes-validations`) so the API server refuses a bad manifest with a
//! message before the operator ever sees it; [`crate::validate`] repeats them
//! in Rust for clusters whose CRD is older than the operator.
//!
//! Defaults are serde defaults: schemars turns them into `default:` in the
//! schema, so the API server stores the complete spec and `kubectl get -o yaml`
//! shows what the operator actually runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Image used for gateways and workers when the spec names none. It carries
/// both binaries (`switchboard` and `switchboard-worker`).
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/switchboard-dev/switchboard:",
    env!("CARGO_PKG_VERSION")
);

/// A complete Switchboard chat backend: gateways, workers, Redis, PostgreSQL
/// and an optional fallback relay, reconciled by switchboard-operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    shortname = "cc",
    category = "switchboard",
    namespaced,
    status = "ChatClusterStatus",
    derive = "PartialEq",
    validation = Rule::new("size(self.metadata.name) <= 40").message("ChatCluster names are at most 40 characters (child names and pod labels append to them)"),
    doc = "A Switchboard chat backend: gateways, workers, Redis, PostgreSQL and a fallback relay, reconciled by switchboard-operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Every component is ready"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        description = "Why the cluster is or is not ready (the Ready condition reason)"
    ),
    printcolumn(
        name = "Gateways",
        type_ = "integer",
        json_path = ".status.gateway.readyReplicas",
        description = "Ready gateway pods"
    ),
    printcolumn(
        name = "Connections",
        type_ = "integer",
        json_path = ".status.gateway.connections",
        description = "Live client connections over all gateways"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterSpec {
    /// Sign-in settings shared by every gateway.
    pub auth: AuthSpec,
    /// The WebSocket/SSE/REST gateways clients connect to.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// The workers that persist messages from Redis streams into PostgreSQL.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// The broker: a Redis the operator runs (managed) or one you run (external).
    #[serde(default)]
    pub redis: RedisSpec,
    /// The message store: a PostgreSQL the operator runs (managed) or one you run (external).
    #[serde(default)]
    pub postgres: PostgresSpec,
    /// Relay gateways use for live delivery while Redis is unreachable. Omit to run without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_relay: Option<FallbackRelaySpec>,
    /// NetworkPolicies around the managed Redis and PostgreSQL.
    #[serde(default)]
    pub network_policies: NetworkPoliciesSpec,
    /// How the gateways and workers write their logs.
    #[serde(default)]
    pub logging: LoggingSpec,
    /// Prometheus and Grafana objects for this cluster.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

/// The monitoring bundle: a PodMonitor scraping the gateways' and workers'
/// metrics ports, a PrometheusRule with this cluster's alerts (both only
/// when the Prometheus Operator's `monitoring.coreos.com` CRDs are
/// installed; the `MonitoringReady` condition says when they are not) and a
/// Grafana dashboard ConfigMap labelled `grafana_dashboard: "1"`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `true` creates the bundle; `false` (the default) creates none and
    /// deletes what was created before.
    #[serde(default)]
    pub enabled: bool,
    /// Extra labels on the PodMonitor, the PrometheusRule and the dashboard
    /// ConfigMap, for a Prometheus whose selectors want them (e.g.
    /// `release: kube-prometheus-stack`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub labels: BTreeMap<String, String>,
    /// The 99th percentile of delivery latency (seq assigned to socket
    /// write) above which `SwitchboardDeliveryLatencyHigh` fires, in
    /// milliseconds.
    #[serde(default = "default_p99_target")]
    #[schemars(range(min = 1, max = 60000))]
    pub delivery_p99_target_millis: i32,
    /// Unpersisted stream entries above which a growing backlog fires
    /// `SwitchboardWorkerBacklogGrowing`.
    #[serde(default = "default_backlog_threshold")]
    #[schemars(range(min = 1, max = 100000000))]
    pub backlog_threshold: i32,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            enabled: false,
            labels: BTreeMap::new(),
            delivery_p99_target_millis: default_p99_target(),
            backlog_threshold: default_backlog_threshold(),
        }
    }
}

fn default_p99_target() -> i32 {
    500
}

fn default_backlog_threshold() -> i32 {
    10_000
}

/// What a component's pods get on top of what the operator builds. Set
/// fields replace the operator's defaults (`affinity`,
/// `topologySpreadConstraints`) or add to them (`labels`, `annotations`:
/// the operator's own keys win).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Secrets holding credentials for a private registry of the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node labels the pods must run on (e.g. `kubernetes.io/os: linux`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Replaces the operator's default affinity (gateways and Redis: one
    /// pod per node preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replaces the operator's default spread (gateways: across zones where
    /// nodes carry `topology.kubernetes.io/zone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra pod labels (at most 16); `app.kubernetes.io/*` set by the
    /// operator win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations (at most 16); the operator's own
    /// (`switchboard.dev/config-hash`) win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub annotations: BTreeMap<String, String>,
}

impl PodOverrides {
    pub fn is_empty(&self) -> bool {
        *self == PodOverrides::default()
    }
}

/// Log output of the gateway and worker pods (the operator's own is the
/// chart's `logFormat`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// `text` (human-readable lines) or `json` (one JSON object per line,
    /// for log collectors). Becomes `SWITCHBOARD_LOG_FORMAT` in the pods.
    #[serde(default)]
    pub format: LogFormat,
}

/// A log line format.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The binaries' own value for it (what their `--log-format` parses).
    pub fn to_core(self) -> switchboard_core::telemetry::LogFormat {
        match self {
            LogFormat::Text => switchboard_core::telemetry::LogFormat::Text,
            LogFormat::Json => switchboard_core::telemetry::LogFormat::Json,
        }
    }
}

/// NetworkPolicies the operator creates for the stores it runs: only this
/// cluster's gateway, worker (and, for Redis, the other Redis) pods and the
/// operator's own pods may connect to the managed Redis and PostgreSQL.
/// They need a network plugin that enforces NetworkPolicies; a store you
/// run (`external`) gets none.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPoliciesSpec {
    /// `false` creates none (and deletes those created before), e.g. when
    /// your own policies already cover the namespace.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for NetworkPoliciesSpec {
    fn default() -> Self {
        NetworkPoliciesSpec { enabled: true }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------- auth

/// Sign-In with Ethereum (EIP-4361) settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The EIP-4361 domain sign-in messages must name: the authority clients
    /// reach the gateways at, e.g. `chat.example.com` (with `:port` if not default).
    #[schemars(length(min = 1, max = 253))]
    pub domain: String,
    /// EIP-155 chain ids accepted in sign-in messages.
    #[serde(default = "default_chain_ids")]
    #[schemars(length(min = 1, max = 32))]
    pub chain_ids: Vec<i64>,
    /// Lifetime of a session token, as a Go duration (`24h`, `90m`).
    #[serde(default = "default_session_ttl")]
    pub session_ttl: kube::core::Duration,
}

fn default_chain_ids() -> Vec<i64> {
    vec![1]
}

fn default_session_ttl() -> kube::core::Duration {
    std::time::Duration::from_secs(24 * 3600).into()
}

// ---------------------------------------------------------------- gateway

/// Gateway Deployment, Service, scaling and draining.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Container image holding the `switchboard` binary.
    #[serde(default = "default_image")]
    pub image: String,
    /// Bounds for the number of gateway pods.
    #[serde(default = "default_gateway_replicas")]
    pub replicas: ReplicaRange,
    /// Who sets the gateway replica count within `replicas`.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,
    /// The Service in front of the gateways.
    #[serde(default)]
    pub service: ServiceSpec,
    /// CPU and memory for each gateway container. Defaults to 250m / 256Mi
    /// requested and a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How a gateway pod leaves: first unready, then sockets closed in batches.
    #[serde(default)]
    pub drain: DrainSpec,
    /// Secret key holding the API keys of the Ably-compatible endpoints
    /// (`keyName:keySecret` or `keyName:keySecret:channel|prefix*`, comma
    /// separated). Omit to accept no API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret_ref: Option<ApiKeySecretRef>,
    /// Channel name patterns only API keys may create; `*` matches any run
    /// of characters (`announcements:*`, `*-official`, `ops`). A wallet
    /// naming a matching channel that does not exist yet is refused. Each
    /// becomes a gateway `--reserved-channel`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(pattern(r"^[A-Za-z0-9_.:*-]{1,128}$")))]
    pub reserved_channels: Vec<String>,
    /// Which web pages on other origins may call the API from a browser.
    #[serde(default, skip_serializing_if = "CorsSpec::is_empty")]
    pub cors: CorsSpec,
    /// Scheduling and metadata of the pods (node selector, tolerations,
    /// affinity, spread, priority class, pull secrets, labels, annotations).
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

/// Cross-origin access (CORS) to the REST API, the SSE streams and the
/// Ably-compatible endpoints. Credentials (cookies) are never allowed: the
/// API takes bearer tokens.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// Origins of the pages allowed, as browsers send them:
    /// `scheme://host[:port]` with no path or trailing slash
    /// (`https://app.example.com`, `http://localhost:5173`), or `*` for any
    /// page. Empty (the default): no CORS headers, same-origin pages only.
    /// Each becomes a gateway `--cors-origin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 300)))]
    #[x_kube(validation = Rule::new(r"self.all(o, o == '*' || o.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://([a-zA-Z0-9_-]+([.][a-zA-Z0-9_-]+)*|\\[[0-9a-fA-F:.]+\\])(:[0-9]{1,5})?$'))").message("gateway.cors.allowedOrigins: each origin is scheme://host[:port] with no path or trailing slash (e.g. https://app.example.com), or *"))]
    pub allowed_origins: Vec<String>,
}

impl CorsSpec {
    pub fn is_empty(&self) -> bool {
        self.allowed_origins.is_empty()
    }
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            image: default_image(),
            replicas: default_gateway_replicas(),
            autoscaling: AutoscalingSpec::default(),
            service: ServiceSpec::default(),
            resources: None,
            drain: DrainSpec::default(),
            api_keys_secret_ref: None,
            reserved_channels: Vec::new(),
            cors: CorsSpec::default(),
            pod: PodOverrides::default(),
        }
    }
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_gateway_replicas() -> ReplicaRange {
    ReplicaRange { min: 2, max: 10 }
}

/// An inclusive range of pod counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must be less than or equal to replicas.max"))]
pub struct ReplicaRange {
    /// Fewest pods; also the count when autoscaling is disabled.
    #[schemars(range(min = 1))]
    pub min: i32,
    /// Most pods the autoscaler may run.
    #[schemars(range(min = 1))]
    pub max: i32,
}

/// Who scales the gateways.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// `operator`: switchboard-operator sizes the Deployment from live connection
    /// counts; `external`: something else (an HPA, KEDA) owns `replicas`;
    /// `disabled`: always `replicas.min` pods.
    #[serde(default)]
    pub mode: AutoscalingMode,
    /// Live connections one gateway pod should carry.
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1))]
    pub target_connections_per_replica: i32,
    /// Percent the load may drift from the target before replicas change.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: i32,
    /// Seconds the load must stay low before pods are removed.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            mode: AutoscalingMode::default(),
            target_connections_per_replica: default_target_connections(),
            tolerance_percent: default_tolerance(),
            scale_down_stabilization_seconds: default_stabilization(),
        }
    }
}

fn default_target_connections() -> i32 {
    10_000
}
fn default_tolerance() -> i32 {
    10
}
fn default_stabilization() -> i32 {
    300
}

/// Who owns the gateway Deployment's `replicas`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMode {
    /// switchboard-operator scales on live connections.
    #[default]
    Operator,
    /// Another controller (HPA, KEDA) scales; the operator never writes replicas.
    External,
    /// Fixed at `replicas.min`.
    Disabled,
}

/// The gateway Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP, NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on (forwarded to the gateways' 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra annotations, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

/// Kubernetes Service type.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Graceful shutdown of a gateway pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Seconds the pod sleeps in preStop so load balancers stop sending it new
    /// connections before it starts closing sockets.
    #[serde(default = "default_pre_stop")]
    #[schemars(range(min = 0, max = 300))]
    pub pre_stop_seconds: i32,
    /// Seconds the gateway may take to close its sockets after SIGTERM.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
}

impl Default for DrainSpec {
    fn default() -> Self {
        DrainSpec {
            pre_stop_seconds: default_pre_stop(),
            timeout_seconds: default_drain_timeout(),
        }
    }
}

fn default_pre_stop() -> i32 {
    5
}
fn default_drain_timeout() -> i32 {
    30
}

// ---------------------------------------------------------------- worker

/// Worker Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Container image holding the `switchboard-worker` binary.
    #[serde(default = "default_image")]
    pub image: String,
    /// Worker pods. They share the streams through a consumer group, so any
    /// number works; two survive a node loss.
    #[serde(default = "default_worker_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// CPU and memory for each worker container. Defaults to 100m / 128Mi
    /// requested and a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata of the pods (node selector, tolerations,
    /// affinity, spread, priority class, pull secrets, labels, annotations).
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        WorkerSpec {
            image: default_image(),
            replicas: default_worker_replicas(),
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn default_worker_replicas() -> i32 {
    2
}

// ---------------------------------------------------------------- redis

/// Exactly one of `managed` and `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of redis.managed and redis.external"))]
pub struct RedisSpec {
    /// A Redis StatefulSet run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,
    /// A Redis you run; the operator only passes its URL to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            managed: Some(ManagedRedis::default()),
            external: None,
        }
    }
}

/// A Redis run by the operator, with AOF persistence on a volume per pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'standalone' || self.shards >= 3").message("redis.managed.shards must be at least 3 in cluster mode"))]
pub struct ManagedRedis {
    /// `standalone`: one Redis pod. `cluster`: a Redis Cluster of `shards`
    /// primaries with `replicasPerShard` replicas each. Cannot be changed later.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("redis.managed.mode is immutable; create a new ChatCluster to change it"))]
    pub mode: RedisMode,
    /// Primaries in cluster mode (ignored in standalone mode). Cannot be
    /// changed later: resharding is not automated.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("redis.managed.shards is immutable; resharding is not automated"))]
    pub shards: i32,
    /// Replicas of each primary in cluster mode.
    #[serde(default = "default_replicas_per_shard")]
    #[schemars(range(min = 0, max = 5))]
    pub replicas_per_shard: i32,
    /// Redis image (7.0 or newer; sharded pub/sub is used on a cluster).
    #[serde(default = "default_redis_image")]
    pub image: String,
    /// Persistent volume of each Redis pod (holds the AOF).
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory for each Redis container. Defaults to 100m / 256Mi
    /// requested and a 1Gi memory limit. A memory limit is required: Redis's
    /// `maxmemory` is set to 70% of it (the rest is headroom for the AOF
    /// rewrite's copy-on-write and for client and replication buffers), and
    /// writes beyond it are refused (`noeviction`) instead of the pod being
    /// OOM-killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata of the pods (node selector, tolerations,
    /// affinity, spread, priority class, pull secrets, labels, annotations).
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

impl Default for ManagedRedis {
    fn default() -> Self {
        ManagedRedis {
            mode: RedisMode::default(),
            shards: default_shards(),
            replicas_per_shard: default_replicas_per_shard(),
            image: default_redis_image(),
            storage: StorageSpec::default(),
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn default_shards() -> i32 {
    3
}
fn default_replicas_per_shard() -> i32 {
    1
}
fn default_redis_image() -> String {
    "redis:7.4".into()
}

/// Redis topology.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis server.
    #[default]
    Standalone,
    /// Redis Cluster.
    Cluster,
}

/// A Redis you run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedis {
    /// Secret key holding the URL: `redis://…` or `redis-cluster://host:port?node=host:port…`.
    pub url_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the ChatCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret holding the URL.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

/// A PersistentVolumeClaim template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, a Kubernetes quantity (`10Gi`).
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass; empty uses the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

// ---------------------------------------------------------------- postgres

/// Exactly one of `managed` and `external`, plus the partition policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of postgres.managed and postgres.external"))]
pub struct PostgresSpec {
    /// A single-instance PostgreSQL StatefulSet run by the operator. For
    /// development and staging: it has no replica and no backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedPostgres>,
    /// A PostgreSQL you run (a managed cloud database, CloudNativePG, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalPostgres>,
    /// Time partitioning of the messages table.
    #[serde(default)]
    pub partitioning: PartitioningSpec,
}

impl Default for PostgresSpec {
    fn default() -> Self {
        PostgresSpec {
            managed: Some(ManagedPostgres::default()),
            external: None,
            partitioning: PartitioningSpec::default(),
        }
    }
}

/// The operator's single PostgreSQL pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedPostgres {
    /// PostgreSQL image (14 or newer).
    #[serde(default = "default_postgres_image")]
    pub image: String,
    /// The data volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory. Defaults to 250m / 512Mi requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling and metadata of the pods (node selector, tolerations,
    /// affinity, spread, priority class, pull secrets, labels, annotations).
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod: PodOverrides,
}

impl Default for ManagedPostgres {
    fn default() -> Self {
        ManagedPostgres {
            image: default_postgres_image(),
            storage: StorageSpec::default(),
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn default_postgres_image() -> String {
    "postgres:17".into()
}

/// A PostgreSQL you run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPostgres {
    /// Secret key holding `postgres://user:password@host:port/db`.
    pub secret_ref: SecretKeyRef,
}

/// How the messages table is partitioned and how long history is kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.retentionDays > (self.interval == 'daily' ? 1 : (self.interval == 'weekly' ? 7 : 31))").message("postgres.partitioning.retentionDays must be longer than one partition interval"))]
pub struct PartitioningSpec {
    /// Length of one partition.
    #[serde(default)]
    pub interval: PartitionInterval,
    /// Partitions created ahead of the current one.
    #[serde(default = "default_premake")]
    #[schemars(range(min = 1, max = 366))]
    pub premake: i32,
    /// Days of history kept; older partitions are dropped.
    #[serde(default = "default_retention_days")]
    #[schemars(range(min = 1))]
    pub retention_days: i32,
}

impl Default for PartitioningSpec {
    fn default() -> Self {
        PartitioningSpec {
            interval: PartitionInterval::default(),
            premake: default_premake(),
            retention_days: default_retention_days(),
        }
    }
}

fn default_premake() -> i32 {
    7
}
fn default_retention_days() -> i32 {
    90
}

/// Partition length.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum PartitionInterval {
    #[default]
    Daily,
    Weekly,
    Monthly,
}

impl PartitionInterval {
    /// The flag value `switchboard-worker --partition-interval` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionInterval::Daily => "daily",
            PartitionInterval::Weekly => "weekly",
            PartitionInterval::Monthly => "monthly",
        }
    }

    /// Longest length in days (a month counts as 31), for the retention check.
    pub fn max_days(self) -> i32 {
        match self {
            PartitionInterval::Daily => 1,
            PartitionInterval::Weekly => 7,
            PartitionInterval::Monthly => 31,
        }
    }
}

// ---------------------------------------------------------------- relay

/// The relay gateways publish to and subscribe from while Redis is down.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider != 'ably' || has(self.apiKeySecretRef)").message("fallbackRelay.apiKeySecretRef is required when provider is ably"))]
pub struct FallbackRelaySpec {
    /// `ably` (Ably's REST + SSE API) or `switchboard` (another Switchboard cluster).
    #[serde(default)]
    pub provider: RelayProvider,
    /// Primary relay hosts (`host` or `host:port`), tried first.
    #[schemars(length(min = 1, max = 16))]
    pub hosts: Vec<String>,
    /// Hosts tried in random order when the primary ones fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub fallback_hosts: Vec<String>,
    /// Secret key holding the relay API key (required for `ably`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<ApiKeySecretRef>,
    /// Reach the relay over HTTPS (default). `false` only for a plain-HTTP
    /// relay inside a trusted network (another Switchboard cluster's
    /// gateway Service).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub tls: bool,
}

/// A key of a Secret holding an API key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_api_key_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_api_key_key() -> String {
    "apiKey".into()
}

impl From<&ApiKeySecretRef> for SecretKeyRef {
    fn from(r: &ApiKeySecretRef) -> Self {
        SecretKeyRef {
            name: r.name.clone(),
            key: r.key.clone(),
        }
    }
}

/// Relay protocol provider.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum RelayProvider {
    #[default]
    Ably,
    Switchboard,
}

// ---------------------------------------------------------------- status

/// What the operator observed, written to the status subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, GatewayReady, RedisReady, PostgresReady,
    /// PartitionsReady, MonitoringReady, ReconciliationPaused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Gateway pods and load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// Worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<ComponentStatus>,
    /// Redis pods and slots (managed Redis only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,
    /// PostgreSQL pod (managed only) and partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStatus>,
}

/// Gateway pods, load and the autoscaler's last decision.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Pods of the gateway Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods passing /readyz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Live connections over all gateways (reported by the autoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Replicas the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

/// Pods of a Deployment or StatefulSet.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

/// Managed Redis pods and cluster slots.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Primaries (1 in standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,
    /// Redis pods wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Redis pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Hash slots assigned to primaries (16384 when the cluster is complete),
    /// as the least of every node's view. Cluster mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_assigned: Option<i32>,
    /// Where forming the Redis Cluster stands (cluster mode only): the
    /// operator meets the nodes, assigns slots and replicas, and heals a node
    /// that comes back empty, over the Redis protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<RedisClusterState>,
    /// What the last bootstrap found or did, or why it could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_message: Option<String>,
}

/// Where forming the managed Redis Cluster stands.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisClusterState {
    /// Not every Redis pod is ready yet; nothing is sent to Redis.
    WaitingForPods,
    /// The nodes answer but the cluster is not complete yet (gossip, slots
    /// or replicas still settling, or a node unreachable): retried shortly.
    Forming,
    /// Every node says `cluster_state:ok` and all 16384 slots are served.
    Ready,
    /// The bootstrap refuses to go on (e.g. two clusters would be merged, a
    /// node runs without `cluster-enabled`): needs a person.
    Failed,
}

/// Managed PostgreSQL pod and the partition range.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStatus {
    /// PostgreSQL pods wanted (managed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// PostgreSQL pods ready (managed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Oldest messages partition present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_partition: Option<String>,
    /// Newest messages partition present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_partition: Option<String>,
}
