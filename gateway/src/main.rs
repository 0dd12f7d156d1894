//! `switchboard-gateway`: the gateway process of a deployment (the worker
//! runs as its own process, `switchboard-worker run`). Flags: [`GatewayArgs`].

use std::process::ExitCode;

use clap::Parser;
use switchboard_gateway::args::GatewayArgs;
use switchboard_gateway::launch;

#[derive(Parser)]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard WebSocket/REST gateway"
)]
struct Cli {
    #[command(flatten)]
    args: GatewayArgs,
    #[command(flatten)]
    log: switchboard_core::telemetry::LogArgs,
}

async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let cfg = launch::config(&args)?;
    let engines = launch::connect(&args, false).await?;
    launch::serve(&args, cfg, engines, "switchboard-gateway").await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.log.init("info") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
