//! `switchboard dev`: one gateway in this process, on the memory broker or on
//! Redis, until Ctrl-C / SIGTERM, then a graceful drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use switchboard_core::broker::{BrokerConfig, DynBroker, MemoryBroker, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;

use crate::store::write_private;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to serve HTTP and WebSocket on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Use Redis (redis://… or redis-cluster://…) instead of the in-memory broker
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    redis_url: Option<String>,
    /// EIP-4361 domain sign-in messages must name
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Accepted chain id (repeatable)
    #[arg(long = "chain-id", default_values_t = [1u64])]
    chain_ids: Vec<u64>,
    /// Session-token secret file; created with 32 random bytes if missing
    #[arg(long)]
    token_secret_file: Option<PathBuf>,
}

/// Environment variable holding the token secret when no file is given.
const SECRET_ENV: &str = "SWITCHBOARD_TOKEN_SECRET";

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let token_secret = token_secret(args.token_secret_file.as_deref())?;
    let (broker, engine): (DynBroker, String) = match &args.redis_url {
        Some(url) => {
            if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                bail!("--redis-url must start with redis:// or redis-cluster:// (got {url:?})");
            }
            let b = RedisBroker::connect(url, BrokerConfig::default())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            (Arc::new(b), format!("redis ({url})"))
        }
        None => (Arc::new(MemoryBroker::default()), "memory".into()),
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let cfg = GatewayConfig {
        domain: args.domain.clone(),
        chain_ids: args.chain_ids.clone(),
        token_secret,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(cfg, broker, listener)
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
    Ok(())
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
