//! The gateway's command line: every flag of `switchboard-gateway` (and of
//! `switchboard dev`, which adds an embedded worker). Flags the operator
//! sets through the environment name their variable with the constants in
//! `switchboard_core::env`, the names the operator writes; the operator's
//! contract test parses the Deployments it builds with this parser.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use switchboard_core::cors::CorsOrigin;
use switchboard_core::env;
use switchboard_core::reserved::ReservedPattern;

use crate::config::LimitsConfig;
use crate::keys::ApiKey;

/// The `switchboard-gateway` command line: the gateway's flags and the
/// logging flags every binary takes. In the library so the operator's
/// contract test parses what the operator writes with it.
#[derive(clap::Parser, Debug)]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard WebSocket/REST gateway"
)]
pub struct GatewayCli {
    /// Runtime worker threads [default: the CPUs this process may use,
    /// which counts a container's CPU limit; or TOKIO_WORKER_THREADS].
    /// Fewer threads cost less CPU per message at moderate load (fewer
    /// cross-thread wake-ups; docs/benchmarks.md); scale out with replicas
    #[arg(long)]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    pub args: GatewayArgs,
    #[command(flatten)]
    pub log: switchboard_core::telemetry::LogArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to serve HTTP and WebSocket on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Address to serve /metrics on: its own listener, never the public one
    /// (default: a free local port, printed at start-up)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_listen: String,
    /// Use Redis (redis://… or redis-cluster://…) instead of the in-memory broker
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis password, if the URL names none (the operator sets it from the
    /// managed Redis's Secret)
    #[arg(long, env = env::REDIS_PASSWORD, hide_env_values = true, requires = "redis_url")]
    pub redis_password: Option<String>,
    /// Store history in PostgreSQL (postgres://…; needs --redis-url). `switchboard dev`
    /// also applies migrations and runs a worker in-process
    #[arg(long, env = env::DATABASE_URL, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Newest messages kept per conversation in the Redis log (older ones come from PostgreSQL)
    #[arg(long, default_value_t = 10_000)]
    pub log_max_len: usize,
    /// Days a message stays in the Redis log (0: no age limit)
    #[arg(long, default_value_t = 30)]
    pub log_max_age_days: u64,
    /// With PostgreSQL: entries a shard's persistence stream may hold before
    /// new messages are refused as `unavailable` (the worker is down or far
    /// behind); 0: no cap
    #[arg(long, default_value_t = 100_000)]
    pub persist_backlog_max: usize,
    /// With a fallback relay: messages this gateway may hold while Redis is
    /// unreachable (relayed, waiting for their seq) before it refuses sends
    #[arg(long, default_value_t = 10_000)]
    pub relay_spool_max: usize,
    /// EIP-4361 domain sign-in messages must name
    #[arg(long, env = env::DOMAIN, default_value = "localhost")]
    pub domain: String,
    /// Session token lifetime, e.g. 24h, 90m, 86400s (the operator sets it from
    /// spec.auth.sessionTtl)
    #[arg(long, env = env::SESSION_TTL, default_value = "24h",
          value_parser = parse_session_ttl)]
    pub session_ttl: Duration,
    /// Accepted chain id (repeatable; the variable takes a comma list)
    #[arg(long = "chain-id", env = env::CHAIN_IDS, value_delimiter = ',',
          default_values_t = [1u64])]
    pub chain_ids: Vec<u64>,
    /// Session-token secret file; created with 32 random bytes if missing
    #[arg(long, env = env::TOKEN_SECRET_FILE)]
    pub token_secret_file: Option<PathBuf>,
    /// Pod name this gateway reports its live connections as (with --pod-namespace and
    /// --cluster; the operator sets all three through the downward API)
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// Namespace of the pod and its ChatCluster, for connection reports
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// Name of the ChatCluster this gateway belongs to, for connection reports
    #[arg(long, env = env::CLUSTER)]
    pub cluster: Option<String>,
    /// Seconds between connection reports (each expires after three intervals)
    #[arg(long, env = env::REPORT_INTERVAL_SECONDS, default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub report_interval_seconds: u64,
    /// Drain window on SIGTERM: sockets are closed (1012) in randomized batches over
    /// its first 80%, then the gateway waits for them until it ends (the operator
    /// sets it from spec.gateway.drain.timeoutSeconds)
    #[arg(long, env = env::DRAIN_TIMEOUT_SECONDS, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_seconds: u64,
    /// Fallback relay configuration (the relay.json the operator mounts at
    /// /etc/switchboard/relay/relay.json); validated at start-up, a bad file stops the gateway
    #[arg(long, env = env::RELAY_CONFIG)]
    pub relay_config: Option<PathBuf>,
    /// Relay API key (`name:secret` for Ably); without it, the variable the file's
    /// `apiKeyEnv` names is read
    #[arg(long, env = env::RELAY_API_KEY, hide_env_values = true)]
    pub relay_api_key: Option<String>,
    /// API key (`keyName:keySecret`) of the Ably-compatible endpoints, allowed to
    /// publish to and read its channels (repeatable; the variable takes a comma list)
    #[arg(long = "api-key", env = env::API_KEYS, value_delimiter = ',',
          hide_env_values = true, value_parser = parse_api_key)]
    pub api_keys: Vec<ApiKey>,
    /// Reserved channel pattern (`*` matches any run of characters, e.g.
    /// `announcements:*`): only API keys may create a matching channel, a
    /// wallet is refused (repeatable; the variable takes a comma list)
    #[arg(long = "reserved-channel", env = env::RESERVED_CHANNELS, value_delimiter = ',',
          value_parser = parse_reserved)]
    pub reserved_channels: Vec<ReservedPattern>,
    /// Origin of a web page allowed to call the REST API, the SSE streams and
    /// the Ably-compatible endpoints from a browser (CORS): `scheme://host[:port]`,
    /// or `*` for any page (repeatable, at most 32; the variable takes a comma
    /// list). Without it no CORS headers are sent, so browsers allow same-origin
    /// pages only. Credentials (cookies) are never allowed: the API takes bearer tokens
    #[arg(long = "cors-origin", env = env::CORS_ORIGINS, value_delimiter = ',',
          value_parser = parse_cors_origin)]
    pub cors_origins: Vec<CorsOrigin>,
    /// REST requests per second per client address (every route but /healthz,
    /// /readyz and /metrics, sign-in and the requests opening WebSockets and SSE
    /// streams included; fractions allowed; 0: no limit)
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate)]
    pub rest_rate: f64,
    /// Burst of REST requests per client address above --rest-rate
    #[arg(long, default_value_t = 100)]
    pub rest_burst: u32,
    /// REST requests per second per signed-in user (requests carrying a valid
    /// session token; fractions allowed; 0: no limit)
    #[arg(long, default_value_t = 10.0, value_parser = parse_rate)]
    pub user_rest_rate: f64,
    /// Burst of REST requests per user above --user-rest-rate
    #[arg(long, default_value_t = 50)]
    pub user_rest_burst: u32,
    /// Open connections (WebSockets and SSE streams) per client address (0: no limit)
    #[arg(long, default_value_t = 100)]
    pub max_connections_per_address: usize,
    /// Open connections per user on this gateway (0: no limit)
    #[arg(long, default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// Open connections on this gateway in all (0: no limit)
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// A proxy (CIDR or address) whose X-Forwarded-For is believed: the client is
    /// then the right-most forwarded address that is not a trusted proxy
    /// (repeatable; without it the socket's peer address is the client)
    #[arg(long = "trusted-proxy", value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,
}

fn parse_cors_origin(s: &str) -> Result<CorsOrigin, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_reserved(s: &str) -> Result<ReservedPattern, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Requests per second: a finite number, 0 or more.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s} is not a rate (requests per second, e.g. 20 or 0.5)"
        )),
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`, a /32 or /128).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s} is neither a CIDR (10.0.0.0/8) nor an IP address"))
}

impl GatewayArgs {
    /// The flood limits these flags set.
    pub fn limits(&self) -> LimitsConfig {
        LimitsConfig {
            rest_rate: self.rest_rate,
            rest_burst: self.rest_burst,
            user_rest_rate: self.user_rest_rate,
            user_rest_burst: self.user_rest_burst,
            conns_per_addr: self.max_connections_per_address,
            conns_per_user: self.max_connections_per_user,
            max_conns: self.max_connections,
            trusted_proxies: self.trusted_proxies.clone(),
            ..LimitsConfig::default()
        }
    }
}

fn parse_api_key(s: &str) -> Result<ApiKey, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// A session lifetime: a human duration of at least one minute.
fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected e.g. 24h, 90m or 86400s)"))?;
    if d < Duration::from_secs(60) {
        return Err(format!("{s} is shorter than one minute"));
    }
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    #[test]
    fn identity_flags_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--pod-name",
            "p",
            "--pod-namespace",
            "n",
            "--cluster",
            "c",
            "--report-interval-seconds",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.args.pod_name.as_deref(), Some("p"));
        assert_eq!(cli.args.pod_namespace.as_deref(), Some("n"));
        assert_eq!(cli.args.cluster.as_deref(), Some("c"));
        assert_eq!(cli.args.report_interval_seconds, 2);
        assert!(Cli::try_parse_from(["x", "--report-interval-seconds", "0"]).is_err());
    }

    #[test]
    fn session_ttl_takes_what_the_operator_writes() {
        let ttl = |v: &str| {
            Cli::try_parse_from(["x", "--session-ttl", v]).map(|c| c.args.session_ttl.as_secs())
        };
        // kube's Duration prints whole seconds like this (golden files: 86400s).
        assert_eq!(ttl("86400s").unwrap(), 86_400);
        assert_eq!(ttl("12h").unwrap(), 43_200);
        assert_eq!(ttl("1h 30m").unwrap(), 5_400);
        assert_eq!(
            Cli::try_parse_from(["x"])
                .unwrap()
                .args
                .session_ttl
                .as_secs(),
            86_400
        );
        let err = ttl("soon").unwrap_err().to_string();
        assert!(err.contains("expected e.g. 24h"), "{err}");
        assert!(ttl("30s").is_err());
    }

    #[test]
    fn reserved_channels_repeat_and_are_checked() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(argv).map(|c| {
                c.args
                    .reserved_channels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            })
        };
        assert!(parse(&["x"]).unwrap().is_empty());
        assert_eq!(
            parse(&[
                "x",
                "--reserved-channel",
                "announcements:*",
                "--reserved-channel",
                "ops,*-official"
            ])
            .unwrap(),
            ["announcements:*", "ops", "*-official"]
        );
        let err = parse(&["x", "--reserved-channel", "bad name"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[A-Za-z0-9_.:-]"), "{err}");
    }

    #[test]
    fn cors_origins_repeat_and_are_checked() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(argv).map(|c| {
                c.args
                    .cors_origins
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            })
        };
        assert!(parse(&["x"]).unwrap().is_empty());
        assert_eq!(
            parse(&[
                "x",
                "--cors-origin",
                "https://App.example.com:443",
                "--cors-origin",
                "http://localhost:5173,*"
            ])
            .unwrap(),
            ["https://app.example.com", "http://localhost:5173", "*"]
        );
        let err = parse(&["x", "--cors-origin", "https://example.com/"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("trailing slash"), "{err}");
        // The list is bounded where the configuration is built.
        let many: Vec<String> = (0..33).map(|i| format!("https://a{i}.example")).collect();
        let args = Cli::try_parse_from(["x", "--cors-origin", &many.join(",")])
            .unwrap()
            .args;
        let err = format!("{:#}", crate::launch::config(&args).unwrap_err());
        assert!(err.contains("33 CORS origins given; at most 32"), "{err}");
    }

    #[test]
    fn chain_ids_repeat() {
        let ids = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().args.chain_ids;
        assert_eq!(ids(&["x"]), vec![1]);
        assert_eq!(
            ids(&["x", "--chain-id", "1", "--chain-id", "137"]),
            vec![1, 137]
        );
        assert_eq!(ids(&["x", "--chain-id", "5,10"]), vec![5, 10]);
    }

    #[test]
    fn limit_flags_default_to_the_config_and_proxies_repeat() {
        let args = Cli::try_parse_from(["x"]).unwrap().args;
        let (flags, config) = (args.limits(), LimitsConfig::default());
        assert_eq!(
            (flags.rest_rate, flags.rest_burst, flags.user_rest_rate),
            (config.rest_rate, config.rest_burst, config.user_rest_rate)
        );
        assert_eq!(
            (flags.user_rest_burst, flags.conns_per_addr),
            (config.user_rest_burst, config.conns_per_addr)
        );
        assert_eq!(
            (flags.conns_per_user, flags.max_conns),
            (config.conns_per_user, config.max_conns)
        );
        assert!(flags.trusted_proxies.is_empty());
        let args = Cli::try_parse_from([
            "x",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "192.168.1.7",
            "--max-connections-per-address",
            "0",
        ])
        .unwrap()
        .args;
        let limits = args.limits();
        assert_eq!(
            limits.trusted_proxies,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.168.1.7/32".parse().unwrap()
            ]
        );
        assert_eq!(limits.conns_per_addr, 0);
        assert!(Cli::try_parse_from(["x", "--trusted-proxy", "lb"]).is_err());
        assert!(Cli::try_parse_from(["x", "--rest-rate", "-1"]).is_err());
        let half = Cli::try_parse_from(["x", "--rest-rate", "0.5"])
            .unwrap()
            .args;
        assert_eq!(half.limits().rest_rate, 0.5);
    }
}
