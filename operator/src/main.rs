//! `switchboard-operator`: `run` the controller, or print the `crd`.
//! Signal handling and the runtime live here; the flags are
//! [`switchboard_operator::cli`], everything else is the library.

use std::process::ExitCode;

use clap::Parser;
use switchboard_operator::cli::{Cli, Cmd, RunArgs};
use tokio_util::sync::CancellationToken;

/// mimalloc, as in every shipped binary (docs/architecture.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crd(args) => {
            let yaml = if args.helm_template {
                switchboard_operator::crd_chart_template().map_err(|e| e.to_string())
            } else {
                switchboard_operator::crd_yaml().map_err(|e| e.to_string())
            };
            match yaml {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot render the CRD: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run(args) => {
            if let Err(e) = cli.log.init("info") {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (set KUBECONFIG or run in a pod)")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    switchboard_operator::run::run(client, args.into_config(), shutdown).await?;
    Ok(())
}

/// Cancels `token` on SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
    token.cancel();
}
