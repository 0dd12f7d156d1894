//! `switchboard-worker`: `run` (consume the streams), `migrate` (apply the
//! schema) and `partitions` (one maintenance pass), for containers and cron.
//! The arguments are [`switchboard_worker::cli`], the commands
//! [`switchboard_worker::commands`].

use clap::Parser;
use switchboard_worker::cli::Cli;

/// mimalloc, as in every shipped binary (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init("info")?;
    switchboard_worker::commands::execute(cli.cmd).await?;
    Ok(())
}
