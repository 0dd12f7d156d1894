//! `switchboard dev`: one gateway in this process, on the memory broker or on
//! Redis (plus PostgreSQL and an embedded worker with `--database-url`), until
//! Ctrl-C / SIGTERM, then a graceful drain. `switchboard-gateway` runs the same
//! code without the embedded worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use std::time::Duration;

use switchboard_core::broker::{
    BrokerConfig, ClusterRef, DynBroker, GatewayIdentity, MemoryBroker, RedisBroker,
};
use switchboard_core::store::partitions::PartitionPolicy;
use switchboard_core::store::{DynStore, PgStore};
use switchboard_gateway::relay::RelayFile;
use switchboard_gateway::{Gateway, GatewayConfig, RelayConfig, RelayConfigError};
use switchboard_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::write_private;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to serve HTTP and WebSocket on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Use Redis (redis://… or redis-cluster://…) instead of the in-memory broker
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    redis_url: Option<String>,
    /// Store history in PostgreSQL (postgres://…; needs --redis-url). `switchboard dev`
    /// also applies migrations and runs a worker in-process
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    database_url: Option<String>,
    /// Newest messages kept per conversation in the Redis log (older ones come from PostgreSQL)
    #[arg(long, default_value_t = 10_000)]
    log_max_len: usize,
    /// Days a message stays in the Redis log (0: no age limit)
    #[arg(long, default_value_t = 30)]
    log_max_age_days: u64,
    /// EIP-4361 domain sign-in messages must name
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Session token lifetime, e.g. 24h, 90m, 86400s (the operator sets it from
    /// spec.auth.sessionTtl)
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL", default_value = "24h",
          value_parser = parse_session_ttl)]
    session_ttl: Duration,
    /// Accepted chain id (repeatable)
    #[arg(long = "chain-id", default_values_t = [1u64])]
    chain_ids: Vec<u64>,
    /// Session-token secret file; created with 32 random bytes if missing
    #[arg(long)]
    token_secret_file: Option<PathBuf>,
    /// Pod name this gateway reports its live connections as (with --pod-namespace and
    /// --cluster; the operator sets all three through the downward API)
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Namespace of the pod and its ChatCluster, for connection reports
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Name of the ChatCluster this gateway belongs to, for connection reports
    #[arg(long, env = "SWITCHBOARD_CLUSTER")]
    cluster: Option<String>,
    /// Seconds between connection reports (each expires after three intervals)
    #[arg(long, env = "SWITCHBOARD_REPORT_INTERVAL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    report_interval_seconds: u64,
    /// Drain window on SIGTERM: sockets are closed (1012) in randomized batches over
    /// its first 80%, then the gateway waits for them until it ends (the operator
    /// sets it from spec.gateway.drain.timeoutSeconds)
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    drain_seconds: u64,
    /// Fallback relay configuration (the relay.json the operator mounts at
    /// /etc/switchboard/relay/relay.json); validated at start-up, a bad file stops the gateway
    #[arg(long, env = "SWITCHBOARD_RELAY_CONFIG")]
    relay_config: Option<PathBuf>,
    /// Relay API key (`name:secret` for Ably); without it, the variable the file's
    /// `apiKeyEnv` names is read
    #[arg(long, env = "SWITCHBOARD_RELAY_API_KEY", hide_env_values = true)]
    relay_api_key: Option<String>,
    /// API key (`keyName:keySecret`) of the Ably-compatible endpoints, allowed to
    /// publish to and read its channels (repeatable; the variable takes a comma list)
    #[arg(long = "api-key", env = "SWITCHBOARD_API_KEYS", value_delimiter = ',',
          hide_env_values = true, value_parser = parse_api_key)]
    api_keys: Vec<switchboard_gateway::keys::ApiKey>,
}

fn parse_api_key(s: &str) -> Result<switchboard_gateway::keys::ApiKey, String> {
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

/// The gateway's identity for connection reports: all three names, or none
/// (then the gateway does not report). Only some of them set is not an
/// error, since `POD_NAME` alone is common in pods that are no gateway, but
/// it is logged; a name that cannot be part of a report key is an error.
pub fn report_identity(
    pod: Option<&str>,
    namespace: Option<&str>,
    cluster: Option<&str>,
) -> anyhow::Result<Option<GatewayIdentity>> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    match (given(pod), given(namespace), given(cluster)) {
        (None, None, None) => Ok(None),
        (Some(pod), Some(namespace), Some(cluster)) => {
            let c = ClusterRef::new(namespace, cluster)
                .context("invalid --pod-namespace / --cluster for connection reports")?;
            let id = GatewayIdentity::new(c, pod)
                .context("invalid --pod-name for connection reports")?;
            Ok(Some(id))
        }
        (pod, namespace, cluster) => {
            let missing: Vec<&str> = [
                ("--pod-name/POD_NAME", pod),
                ("--pod-namespace/POD_NAMESPACE", namespace),
                ("--cluster/SWITCHBOARD_CLUSTER", cluster),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| n)
            .collect();
            tracing::warn!(
                missing = missing.join(", "),
                "connection reports off: the pod identity is incomplete"
            );
            Ok(None)
        }
    }
}

/// The fallback relay from `--relay-config FILE`, validated: a missing,
/// unreadable or invalid file is an error naming the file and the problem.
/// The API key is `--relay-api-key` / `SWITCHBOARD_RELAY_API_KEY`, else the
/// environment variable the file's `apiKeyEnv` names.
pub fn relay_config(
    file: Option<&Path>,
    api_key: Option<String>,
) -> anyhow::Result<Option<RelayConfig>> {
    let api_key = api_key.filter(|k| !k.trim().is_empty());
    let Some(path) = file else {
        if api_key.is_some() {
            tracing::warn!("a relay API key is set but no --relay-config: no relay is used");
        }
        return Ok(None);
    };
    let invalid = || format!("invalid relay config {}", path.display());
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read relay config {}", path.display()))?;
    let parsed: RelayFile = serde_json::from_str(&text)
        .map_err(RelayConfigError::from)
        .with_context(invalid)?;
    let api_key = api_key.or_else(|| {
        parsed
            .api_key_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok())
    });
    let relay = RelayConfig::from_file(parsed, api_key).with_context(invalid)?;
    Ok(Some(relay))
}

/// Environment variable holding the token secret when no file is given.
const SECRET_ENV: &str = "SWITCHBOARD_TOKEN_SECRET";

/// What the process runs besides the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `switchboard dev`: with a database, also migrations, a worker and
    /// partition maintenance, so one process is a complete server.
    AllInOne,
    /// `switchboard-gateway`: the gateway only.
    GatewayOnly,
}

pub async fn run(args: DevArgs, mode: Mode) -> anyhow::Result<()> {
    let token_secret = token_secret(args.token_secret_file.as_deref())?;
    let relay = relay_config(args.relay_config.as_deref(), args.relay_api_key.clone())?;
    let identity = report_identity(
        args.pod_name.as_deref(),
        args.pod_namespace.as_deref(),
        args.cluster.as_deref(),
    )?;
    let store = match &args.database_url {
        None => None,
        Some(url) => {
            if args.redis_url.is_none() {
                bail!(
                    "--database-url needs --redis-url: the worker reads the messages to store from Redis streams"
                );
            }
            let s = PgStore::connect(url, 8)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
            if mode == Mode::AllInOne {
                s.migrate()
                    .await
                    .context("cannot apply database migrations")?;
            }
            Some(s)
        }
    };
    let broker_cfg = BrokerConfig {
        // With a store, someone (the embedded or a separate worker) consumes
        // the persistence streams.
        persist: store.is_some(),
        // And a Redis that lost data is re-seeded from PostgreSQL.
        seed_from_store: store.is_some(),
        log_max_len: args.log_max_len.max(1),
        log_max_age: Duration::from_secs(args.log_max_age_days * 24 * 3600),
        ..BrokerConfig::default()
    };
    let (broker, mut engine): (DynBroker, String) = match &args.redis_url {
        Some(url) => {
            if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                bail!("--redis-url must start with redis:// or redis-cluster:// (got {url:?})");
            }
            let b = RedisBroker::connect(url, broker_cfg.clone())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            (Arc::new(b), format!("redis ({url})"))
        }
        None => (Arc::new(MemoryBroker::default()), "memory".into()),
    };

    let worker_stop = CancellationToken::new();
    let mut worker_task = None;
    if let (Some(store), Some(redis_url), Mode::AllInOne) = (&store, &args.redis_url, mode) {
        let cfg = WorkerConfig {
            shards: broker_cfg.shards,
            partitions: Some((PartitionPolicy::default(), Duration::from_secs(3600))),
            ..WorkerConfig::default()
        };
        let worker = Worker::connect(redis_url, store.clone(), cfg)
            .await
            .context("cannot start the embedded worker")?;
        let stop = worker_stop.clone();
        worker_task = Some(tokio::spawn(async move { worker.run(stop).await }));
        engine.push_str(", store postgres, embedded worker");
    } else if store.is_some() {
        engine.push_str(", store postgres");
    }

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let cfg = GatewayConfig {
        domain: args.domain.clone(),
        chain_ids: args.chain_ids.clone(),
        token_secret,
        identity,
        report_interval: Duration::from_secs(args.report_interval_seconds),
        drain_window: Duration::from_secs(args.drain_seconds),
        session_ttl: args.session_ttl,
        relay,
        api_keys: args.api_keys.clone(),
        ..GatewayConfig::default()
    };
    let store: Option<DynStore> = store.map(|s| Arc::new(s) as DynStore);
    let gateway = Gateway::start_with_store(cfg, broker, store, listener)
        .await
        .context("cannot start the gateway")?;
    let addr = gateway.local_addr();
    println!(
        "switchboard dev: http://{addr} (ws://{addr}/v1/ws), broker {engine}, domain {}, chain ids {:?}; Ctrl-C to stop",
        args.domain, args.chain_ids
    );
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    gateway.shutdown().await;
    // The worker finishes the batch in hand after the gateway stopped
    // producing, so what was sent before the drain is stored.
    worker_stop.cancel();
    if let Some(t) = worker_task {
        let _ = t.await;
    }
    Ok(())
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The HMAC secret for session tokens: from the file (created if missing),
/// else from the environment, else random for this run only.
fn token_secret(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = file {
        return match std::fs::read(path) {
            Ok(bytes) if bytes.is_empty() => bail!("token secret file {} is empty", path.display()),
            Ok(bytes) => {
                if bytes.len() < 32 {
                    tracing::warn!(file = %path.display(), "token secret is shorter than 32 bytes");
                }
                Ok(bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                write_private(path, &secret).with_context(|| {
                    format!("cannot create token secret file {}", path.display())
                })?;
                tracing::info!(file = %path.display(), "created a new token secret");
                Ok(secret.to_vec())
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read token secret file {}", path.display()))
            }
        };
    }
    match std::env::var(SECRET_ENV) {
        Ok(s) if !s.is_empty() => Ok(s.into_bytes()),
        _ => {
            tracing::info!(
                "random token secret: sessions will not survive a restart (use --token-secret-file or {SECRET_ENV})"
            );
            Ok(rand::random::<[u8; 32]>().to_vec())
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevArgs,
    }

    #[test]
    fn identity_needs_all_three_names() {
        assert_eq!(report_identity(None, None, None).unwrap(), None);
        assert_eq!(report_identity(Some(""), Some(" "), None).unwrap(), None);
        assert_eq!(report_identity(Some("gw-0"), None, None).unwrap(), None);
        assert_eq!(
            report_identity(Some("gw-0"), Some("chat"), None).unwrap(),
            None
        );
        let id = report_identity(Some("gw-0"), Some("chat"), Some("prod"))
            .unwrap()
            .unwrap();
        assert_eq!(id.to_string(), "chat/prod/gw-0");
        assert!(report_identity(Some("gw/0"), Some("chat"), Some("prod")).is_err());
        assert!(report_identity(Some("gw-0"), Some("chat"), Some("{prod}")).is_err());
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
}
