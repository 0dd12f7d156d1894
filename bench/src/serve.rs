//! `switchboard-bench serve`: one gateway, the child process the scenarios
//! start (so its memory and CPU are its own).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use switchboard_core::broker::{BrokerConfig, DynBroker, MemoryBroker, RedisBroker};
use switchboard_gateway::config::LimitsConfig;
use switchboard_gateway::{Gateway, GatewayConfig};

// The `serve` subcommand's flags.
#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    redis_url: Option<String>,
    #[arg(long)]
    secret_hex: String,
    /// WebSocket read/write buffer per socket (default: the gateway's).
    #[arg(long)]
    ws_buffer: Option<usize>,
    /// Drain window on shutdown (default: the gateway's, 10 s).
    #[arg(long)]
    drain_seconds: Option<f64>,
    /// API keys of the Ably-compatible endpoints (the relay scenario's relay).
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Fallback relay file, as the gateway binary takes it.
    #[arg(long)]
    relay_config: Option<std::path::PathBuf>,
    #[arg(long)]
    relay_api_key: Option<String>,
}

/// Serve until SIGINT or SIGTERM, then drain.
pub async fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        listen,
        redis_url,
        secret_hex,
        ws_buffer,
        drain_seconds,
        api_keys,
        relay_config,
        relay_api_key,
    } = args;
    let api_keys = api_keys
        .iter()
        .map(|k| k.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("--api-key must be keyName:keySecret"))?;
    let relay = switchboard_gateway::launch::relay_config(relay_config.as_deref(), relay_api_key)?;
    let broker: DynBroker = match redis_url {
        Some(url) => Arc::new(RedisBroker::connect(&url, BrokerConfig::default()).await?),
        None => Arc::new(MemoryBroker::default()),
    };
    let cfg = GatewayConfig {
        token_secret: decode_hex(&secret_hex)?,
        // The load generator sends far faster per socket than a person.
        send_rate: 100_000,
        send_burst: 100_000,
        frame_rate: 100_000,
        frame_burst: 100_000,
        // Thousands of sockets and users from one address: the flood limits
        // would refuse the load generator itself (the `flood` scenario runs
        // the shipped binary with its defaults instead).
        limits: LimitsConfig::off(),
        api_keys,
        relay,
        ..GatewayConfig::default()
    };
    let cfg = match ws_buffer {
        Some(n) => GatewayConfig {
            ws_read_buffer: n,
            ws_write_buffer: n,
            ..cfg
        },
        None => cfg,
    };
    let cfg = match drain_seconds {
        Some(s) => GatewayConfig {
            drain_window: Duration::from_secs_f64(s),
            ..cfg
        },
        None => cfg,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let gw = Gateway::start(cfg, broker, listener).await?;
    // SIGINT (the scenarios' Drop) or SIGTERM (what Kubernetes sends; the
    // drain scenario): both drain.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    gw.shutdown().await;
    Ok(())
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16).context("bad hex"))
        .collect()
}
