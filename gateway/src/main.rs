//! `switchboard-gateway`: the gateway process of a deployment (the worker
//! runs as its own process, `switchboard-worker run`). Flags: [`GatewayCli`].

use std::process::ExitCode;

use clap::Parser;
use switchboard_gateway::args::{GatewayArgs, GatewayCli};
use switchboard_gateway::launch;

/// mimalloc instead of glibc malloc, as in every shipped binary: allocation was 13 % of the gateway's
/// CPU per delivery (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let cfg = launch::config(&args)?;
    let engines = launch::connect(&args, false).await?;
    launch::serve(&args, cfg, engines, "switchboard-gateway").await
}

fn main() -> ExitCode {
    let cli = GatewayCli::parse();
    if let Err(e) = cli.log.init("info") {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = cli.worker_threads {
        runtime.worker_threads(n.get());
    }
    let result = runtime
        .build()
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
