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
}

/// Serve until SIGINT or SIGTERM, then drain.
pub async fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        listen,
        redis_url,
        secret_hex,
        ws_buffer,
        drain_seconds,
    } = args;
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
