//! Environment variables one binary writes and another reads: the operator
//! puts them into the gateway and worker Deployments (directly, from
//! Secrets, through the downward API, or in the gateway's ConfigMap), and
//! the binaries' command-line parsers read them (`#[arg(env = ...)]`). One
//! name, one constant: the operator's contract test parses the Deployments
//! it builds with the binaries' real parsers, so a variable one side writes
//! and the other does not accept fails a test.

/// Redis URL (`redis://…` or `redis-cluster://…`): gateway and worker.
pub const REDIS_URL: &str = "SWITCHBOARD_REDIS_URL";
/// Redis password, apart from the URL (the operator fills it from the
/// Secret it generates for a managed Redis): gateway and worker. The URL
/// then names no password; see `switchboard_core::broker::RedisTarget`.
pub const REDIS_PASSWORD: &str = "SWITCHBOARD_REDIS_PASSWORD";
/// PostgreSQL URL: gateway and worker.
pub const DATABASE_URL: &str = "SWITCHBOARD_DATABASE_URL";
/// EIP-4361 domain sign-in messages must name: gateway.
pub const DOMAIN: &str = "SWITCHBOARD_DOMAIN";
/// Accepted chain ids, comma-separated: gateway.
pub const CHAIN_IDS: &str = "SWITCHBOARD_CHAIN_IDS";
/// Session token lifetime (`24h`, `90m`, `86400s`): gateway.
pub const SESSION_TTL: &str = "SWITCHBOARD_SESSION_TTL";
/// File holding the session-token HMAC key: gateway.
pub const TOKEN_SECRET_FILE: &str = "SWITCHBOARD_TOKEN_SECRET_FILE";
/// Drain window on SIGTERM, seconds: gateway.
pub const DRAIN_TIMEOUT_SECONDS: &str = "SWITCHBOARD_DRAIN_TIMEOUT_SECONDS";
/// Seconds between connection reports: gateway.
pub const REPORT_INTERVAL_SECONDS: &str = "SWITCHBOARD_REPORT_INTERVAL_SECONDS";
/// Path of the fallback relay's `relay.json`: gateway.
pub const RELAY_CONFIG: &str = "SWITCHBOARD_RELAY_CONFIG";
/// The fallback relay's API key: gateway (see [`crate::relay::API_KEY_ENV`],
/// the same name, which the relay file may point elsewhere).
pub const RELAY_API_KEY: &str = crate::relay::API_KEY_ENV;
/// API keys of the Ably-compatible endpoints, comma-separated: gateway.
pub const API_KEYS: &str = "SWITCHBOARD_API_KEYS";
/// Reserved channel patterns (only API keys create matching channels),
/// comma-separated: gateway.
pub const RESERVED_CHANNELS: &str = "SWITCHBOARD_RESERVED_CHANNELS";
/// Origins of the web pages allowed to call the API (CORS),
/// comma-separated: gateway (see [`crate::cors`]).
pub const CORS_ORIGINS: &str = "SWITCHBOARD_CORS_ORIGINS";
/// The ChatCluster a pod belongs to: gateway (connection reports).
pub const CLUSTER: &str = "SWITCHBOARD_CLUSTER";
/// The pod's name (downward API): gateway (connection reports), worker
/// (its consumer name in the streams' group), operator (its Lease identity).
pub const POD_NAME: &str = "POD_NAME";
/// The pod's namespace (downward API): gateway (connection reports),
/// operator.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// The log filter (`tracing-subscriber`'s `EnvFilter`): every binary. Not a
/// command-line argument; read by the logger.
pub const LOG: &str = "RUST_LOG";
/// The log line format, `text` or `json`: every binary's `--log-format`
/// ([`crate::telemetry::LogArgs`]); the operator's chart sets the flag.
pub const LOG_FORMAT: &str = "SWITCHBOARD_LOG_FORMAT";
