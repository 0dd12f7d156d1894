//! `switchboard-node`: run the local control plane plus a one-node cluster
//! on this machine (pods really run) in the foreground until Ctrl-C /
//! SIGTERM, then tear everything down. Needs root.
//!
//! cargo run -p switchboard-testkit --features node --bin switchboard-node -- [--kubeconfig PATH] [--images]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchboard_testkit::ControlPlane;
use switchboard_testkit::node::{self, Node, images};
use tokio::signal::unix::{SignalKind, signal};

/// Start the local control plane (e2e/controlplane) and a node next to it
/// (e2e/node: kube-scheduler, containerd, kubelet, kube-proxy) and keep them
/// running until Ctrl-C or SIGTERM. Nothing is left behind on exit.
#[derive(Parser)]
#[command(name = "switchboard-node")]
struct Args {
    /// Also write the admin kubeconfig here (left in place on exit).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only check that this machine can run a node: print what is missing
    /// and exit 1, or print "ok" and exit 0.
    #[arg(long)]
    check: bool,
    /// Also build the operator's pods' images and import them: the data
    /// plane and the operator from SWITCHBOARD_E2E_BIN_DIR (default: the
    /// workspace's target/debug; `cargo build` first), Redis and PostgreSQL
    /// from this machine's packages.
    #[arg(long)]
    images: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(why) = node::unsupported() {
        if args.check {
            println!("{why}");
        } else {
            eprintln!("error: this machine cannot run a local node: {why}");
        }
        return ExitCode::FAILURE;
    }
    if args.check {
        println!("ok");
        return ExitCode::SUCCESS;
    }
    eprintln!("starting the local control plane and node (built first if not cached)...");
    let cp = match ControlPlane::start_with(node::control_plane_options()) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut n = match Node::start(&cp) {
        Ok(n) => n,
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
    if args.images {
        let built = images::build_all(&images::workspace_bin_dir(), n.dir()).and_then(|b| {
            b.all()
                .iter()
                .try_for_each(|i| n.import_image(&i.archive))
                .map(|()| b)
        });
        match built {
            Ok(b) => {
                for i in b.all() {
                    println!("image imported: {}", i.name);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("control plane ready at {}", cp.server_url());
    println!("node {} Ready (InternalIP {})", n.name(), n.ip());
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "logs:       {} and {}",
        cp.dir().display(),
        n.dir().display()
    );
    println!();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes");
    println!();
    println!(
        "Images come from OCI archives: {}/ctr --address {}/containerd.sock -n {} images import FILE",
        n.bin_dir().display(),
        n.dir().display(),
        node::CRI_NAMESPACE
    );
    println!("Ctrl-C stops everything.");

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
    let mut cp = cp;
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
                    if let Some(name) = cp.exited_component().or_else(|| n.exited_component()) {
                        eprintln!("error: {name} exited; log tails:\n{}\n{}", cp.log_tails(), n.log_tails());
                        break ExitCode::FAILURE;
                    }
                }
            }
        }
    });
    eprintln!("stopping...");
    n.stop();
    cp.stop();
    code
}
