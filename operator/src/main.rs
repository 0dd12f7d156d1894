//! `switchboard-operator`: `run` the controller, or print the `crd`.
//! Parsing and signal handling live here; everything else is the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard_operator::run::{RunConfig, run};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchboard-operator",
    version,
    about = "Kubernetes operator for Switchboard ChatClusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reconcile ChatClusters (KUBECONFIG, or the in-cluster service account)
    Run(RunArgs),
    /// Print the ChatCluster CustomResourceDefinition as YAML
    Crd,
}

#[derive(Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces)
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address for /metrics and /healthz
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Run without leader election (only safe with a single replica)
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace)
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease
    #[arg(long, default_value = "switchboard-operator")]
    lease_name: String,
    /// This replica's identity (default: the pod name, else a random one)
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds between two autoscaler syncs (`autoscaling.mode: operator`)
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    autoscale_interval_seconds: u64,
    /// Seconds between two partition maintenance runs of one ChatCluster
    /// (migrations, premake, retention)
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    partition_interval_seconds: u64,
    /// Seconds between two checks of a formed managed Redis Cluster (one
    /// that is not ready yet is checked every 5 s)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    redis_check_interval_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crd => match switchboard_operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt().with_env_filter(filter).init();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_cmd(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run_cmd(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (set KUBECONFIG or run in a pod)")?;
    let identity = args.identity.unwrap_or_else(|| {
        let id: [u8; 4] = rand::random();
        format!(
            "switchboard-operator-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    });
    let cfg = RunConfig {
        namespace: args.namespace,
        listen: args.listen,
        leader_election: !args.no_leader_election,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        autoscale_interval: std::time::Duration::from_secs(args.autoscale_interval_seconds),
        partitions: switchboard_operator::partitions::PartitionsConfig {
            interval: std::time::Duration::from_secs(args.partition_interval_seconds),
            ..Default::default()
        },
        redis: switchboard_operator::redis_manager::RedisConfig {
            interval: std::time::Duration::from_secs(args.redis_check_interval_seconds),
            ..Default::default()
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    run(client, cfg, shutdown).await?;
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
