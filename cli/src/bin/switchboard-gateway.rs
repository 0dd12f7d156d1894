//! `switchboard-gateway`: the gateway process of a deployment. Same flags as
//! `switchboard dev`; the worker runs as its own process
//! (`switchboard-worker run`), so none is embedded here.

use std::process::ExitCode;

use clap::Parser;
use switchboard_cli::dev::{self, DevArgs, Mode};

#[derive(Parser)]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard WebSocket/REST gateway"
)]
struct Cli {
    #[command(flatten)]
    args: DevArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(dev::run(cli.args, Mode::GatewayOnly)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
