//! `switchboard-controlplane`: run the local Kubernetes control plane in the
//! foreground until Ctrl-C / SIGTERM.
//!
//! cargo run -p switchboard-testkit --features kube --bin switchboard-controlplane -- [--kubeconfig PATH]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchboard_testkit::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

/// Start etcd, kube-apiserver and kube-controller-manager (built by
/// e2e/controlplane/build.sh, or from SWITCHBOARD_K8S_BIN_DIR) and keep them
/// running until Ctrl-C or SIGTERM. Everything lives in a temp dir that is
/// removed on exit.
#[derive(Parser)]
#[command(name = "switchboard-controlplane")]
struct Args {
    /// Also write the admin kubeconfig here (left in place on exit).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!("starting the local control plane (built first if not cached: ~10 min once)...");
    let mut cp = match ControlPlane::start() {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kubeconfig = match &args.kubeconfig {
        Some(path) => match cp.write_kubeconfig(path) {
            Ok(()) => path.clone(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => cp.kubeconfig_path().to_path_buf(),
    };
    println!("control plane ready at {}", cp.server_url());
    println!("kubeconfig: {}", kubeconfig.display());
    println!("logs:       {}", cp.dir().display());
    println!();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    println!();
    println!("(no kubelet: pods are scheduled nowhere.) Ctrl-C stops everything.");

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: listen for SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
                _ = term.recv() => break ExitCode::SUCCESS,
                _ = tick.tick() => {
                    if let Some(name) = cp.exited_component() {
                        eprintln!("error: {name} exited; log tails:\n{}", cp.log_tails());
                        break ExitCode::FAILURE;
                    }
                }
            }
        }
    });
    eprintln!("stopping...");
    cp.stop();
    code
}
