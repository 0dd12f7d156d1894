//! `switchboard-worker`: `run` (consume the streams), `migrate` (apply the
//! schema) and `partitions` (one maintenance pass), for containers and cron.
//! The arguments are [`switchboard_worker::cli`], the commands
//! [`switchboard_worker::commands`].

use clap::Parser;
use switchboard_worker::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    switchboard_worker::commands::execute(Cli::parse().cmd).await?;
    Ok(())
}
