//! From parsed arguments to a serving gateway, for the `switchboard-gateway`
//! binary and `switchboard dev`: the engines (memory or Redis broker,
//! optional PostgreSQL store), the configuration (token secret, relay file,
//! pod identity), then serve until Ctrl-C / SIGTERM and drain.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_core::broker::{
    BrokerConfig, ClusterRef, DynBroker, GatewayIdentity, MemoryBroker, RedisBroker, RedisTarget,
};
use switchboard_core::redact_url as redact;
use switchboard_core::startup::STARTUP_WAIT;
use switchboard_core::store::{DynStore, PgStore};
use tokio::net::TcpListener;

use crate::args::GatewayArgs;
use crate::relay::RelayFile;
use crate::{Gateway, GatewayConfig, RelayConfig, RelayConfigError};

/// Environment variable holding the token secret when no file is given.
const SECRET_ENV: &str = "SWITCHBOARD_TOKEN_SECRET";

/// The engines a gateway runs on.
pub struct Engines {
    pub broker: DynBroker,
    pub broker_config: BrokerConfig,
    pub store: Option<PgStore>,
    /// What runs, for the start-up line (URLs without passwords).
    pub describe: String,
}

/// Connect the broker (and the store, with `--database-url`); `migrate`
/// applies the schema first (`switchboard dev`; deployments leave it to the
/// worker).
pub async fn connect(args: &GatewayArgs, migrate: bool) -> anyhow::Result<Engines> {
    let store = match &args.database_url {
        None => None,
        Some(url) => {
            if args.redis_url.is_none() {
                bail!(
                    "--database-url needs --redis-url: the worker reads the messages to store from Redis streams"
                );
            }
            let s = PgStore::connect_within(url, 8, STARTUP_WAIT)
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
            if migrate {
                s.migrate()
                    .await
                    .context("cannot apply database migrations")?;
            }
            Some(s)
        }
    };
    let broker_config = BrokerConfig {
        // With a store, someone (the embedded or a separate worker) consumes
        // the persistence streams.
        persist: store.is_some(),
        // And a Redis that lost data is re-seeded from PostgreSQL.
        seed_from_store: store.is_some(),
        log_max_len: args.log_max_len.max(1),
        log_max_age: Duration::from_secs(args.log_max_age_days * 24 * 3600),
        persist_backlog_max: args.persist_backlog_max,
        ..BrokerConfig::default()
    };
    let (broker, mut describe): (DynBroker, String) = match &args.redis_url {
        Some(url) => {
            if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                bail!(
                    "--redis-url must start with redis:// or redis-cluster:// (got {:?})",
                    redact(url)
                );
            }
            let target = RedisTarget::new(url.as_str(), args.redis_password.clone());
            let b = RedisBroker::connect_within(&target, broker_config.clone(), STARTUP_WAIT)
                .await
                .with_context(|| format!("cannot connect to Redis at {target}"))?;
            (Arc::new(b), format!("redis ({target})"))
        }
        None => (Arc::new(MemoryBroker::default()), "memory".into()),
    };
    if store.is_some() {
        describe.push_str(", store postgres");
    }
    Ok(Engines {
        broker,
        broker_config,
        store,
        describe,
    })
}

/// The gateway's configuration from its arguments: token secret, relay,
/// pod identity and the knobs the flags set.
pub fn config(args: &GatewayArgs) -> anyhow::Result<GatewayConfig> {
    switchboard_core::cors::check_count(&args.cors_origins).context("--cors-origin")?;
    Ok(GatewayConfig {
        domain: args.domain.clone(),
        chain_ids: args.chain_ids.clone(),
        token_secret: token_secret(args.token_secret_file.as_deref())?,
        identity: report_identity(
            args.pod_name.as_deref(),
            args.pod_namespace.as_deref(),
            args.cluster.as_deref(),
        )?,
        report_interval: Duration::from_secs(args.report_interval_seconds),
        drain_window: Duration::from_secs(args.drain_seconds),
        session_ttl: args.session_ttl,
        relay: relay_config(args.relay_config.as_deref(), args.relay_api_key.clone())?,
        relay_spool_max: args.relay_spool_max.max(1),
        api_keys: args.api_keys.clone(),
        metrics_listen: args.metrics_listen.clone(),
        reserved_channels: args.reserved_channels.clone(),
        limits: args.limits(),
        cors_origins: args.cors_origins.clone(),
        ..GatewayConfig::default()
    })
}

/// Serve on `args.listen` until Ctrl-C / SIGTERM, then drain. `banner` names
/// the command in the start-up line.
pub async fn serve(
    args: &GatewayArgs,
    cfg: GatewayConfig,
    engines: Engines,
    banner: &str,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let store: Option<DynStore> = engines.store.map(|s| Arc::new(s) as DynStore);
    let gateway = Gateway::start_with_store(cfg, engines.broker, store, listener)
        .await
        .context("cannot start the gateway")?;
    let addr = gateway.local_addr();
    println!(
        "{banner}: http://{addr} (ws://{addr}/v1/ws), metrics http://{}/metrics, broker {}, domain {}, chain ids {:?}; Ctrl-C to stop",
        gateway.metrics_addr(),
        engines.describe,
        args.domain,
        args.chain_ids
    );
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    gateway.shutdown().await;
    Ok(())
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

/// Write `data` to `path` readable by the owner only (0600, its directory
/// 0700 when created): token secrets, wallet keys.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
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
}
