//! `switchboard-node`: run the local control plane plus a one-node cluster
//! on this machine (pods really run), optionally with Switchboard's images
//! imported, then either run a command against it (the e2e suite) or stay in
//! the foreground until Ctrl-C / SIGTERM; then tear everything down. Needs
//! root.
//!
//! cargo run -p switchboard-testkit --features node --bin switchboard-node -- \
//!     [--kubeconfig PATH] [--images] [-- COMMAND ARGS...]

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use switchboard_testkit::ControlPlane;
use switchboard_testkit::node::{self, Node, images};
use tokio::signal::unix::{SignalKind, signal};

/// Start the local control plane (e2e/controlplane) and a node next to it
/// (e2e/node: kube-scheduler, containerd, kubelet, kube-proxy, CoreDNS).
/// With a COMMAND, run it with KUBECONFIG set and exit with its status;
/// without, keep running until Ctrl-C or SIGTERM. Nothing is left behind on
/// exit.
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
    /// from this machine's packages. COMMAND gets their names as
    /// E2E_DATA_IMAGE, E2E_OPERATOR_IMAGE, E2E_REDIS_IMAGE and
    /// E2E_POSTGRES_IMAGE, and the data plane tagged `<tag>-next` as
    /// E2E_DATA_IMAGE_NEXT (what e2e/suite.sh reads).
    #[arg(long)]
    images: bool,
    /// Run this against the cluster, then stop everything.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
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
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    eprintln!("starting the local control plane and node (built first if not cached)...");
    let mut cp =
        ControlPlane::start_with(node::control_plane_options()).map_err(|e| e.to_string())?;
    let mut n = Node::start(&cp).map_err(|e| e.to_string())?;
    let kubeconfig = match &args.kubeconfig {
        Some(path) => {
            cp.write_kubeconfig(path).map_err(|e| e.to_string())?;
            path.clone()
        }
        None => cp.kubeconfig_path().to_path_buf(),
    };
    println!("control plane ready at {}", cp.server_url());
    println!("node {} Ready (InternalIP {})", n.name(), n.ip());
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "logs:       {} and {}",
        cp.dir().display(),
        n.dir().display()
    );
    let mut env = vec![("KUBECONFIG".to_string(), kubeconfig.display().to_string())];
    if args.images {
        env.extend(import_images(&n)?);
    }

    let code = if args.command.is_empty() {
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
        wait_for_signal(&mut cp, &mut n)?
    } else {
        run_command(&args.command, &env, &mut cp, &mut n)?
    };
    eprintln!("stopping...");
    n.stop();
    cp.stop();
    Ok(code)
}

/// Builds and imports the four images; their names as the suite's env.
fn import_images(n: &Node) -> Result<Vec<(String, String)>, String> {
    let built =
        images::build_all(&images::workspace_bin_dir(), n.dir()).map_err(|e| e.to_string())?;
    for image in built.all() {
        n.import_image(&image.archive).map_err(|e| e.to_string())?;
        println!("image imported: {}", image.name);
    }
    // The data plane under a second name: "a new version" to roll to.
    let next = format!("{}-next", built.switchboard.name);
    n.tag_image(&built.switchboard.name, &next)
        .map_err(|e| e.to_string())?;
    println!("image tagged: {next}");
    let mut env: Vec<(String, String)> = [
        ("E2E_DATA_IMAGE", &built.switchboard),
        ("E2E_OPERATOR_IMAGE", &built.operator),
        ("E2E_REDIS_IMAGE", &built.redis),
        ("E2E_POSTGRES_IMAGE", &built.postgres),
    ]
    .into_iter()
    .map(|(var, image)| (var.to_string(), image.name.clone()))
    .collect();
    env.push(("E2E_DATA_IMAGE_NEXT".into(), next));
    Ok(env)
}

/// Runs `command` until it exits (its status is ours) or a component of the
/// cluster dies (then it is killed, and the logs' tails printed).
fn run_command(
    command: &[String],
    env: &[(String, String)],
    cp: &mut ControlPlane,
    n: &mut Node,
) -> Result<ExitCode, String> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .envs(env.iter().cloned())
        .spawn()
        .map_err(|e| format!("run {}: {e}", command[0]))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            if !status.success() {
                eprintln!(
                    "{} failed ({status}); the node's log tails:\n{}",
                    command[0],
                    n.log_tails()
                );
            }
            let code = status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1);
            return Ok(ExitCode::from(code));
        }
        if let Some(name) = cp.exited_component().or_else(|| n.exited_component()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{name} exited while {} ran; log tails:\n{}\n{}",
                command[0],
                cp.log_tails(),
                n.log_tails()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Until Ctrl-C or SIGTERM (success), or until a component dies (failure).
fn wait_for_signal(cp: &mut ControlPlane, n: &mut Node) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async {
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("listen for SIGTERM: {e}"))?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                _ = term.recv() => return Ok(ExitCode::SUCCESS),
                _ = tick.tick() => {
                    if let Some(name) = cp.exited_component().or_else(|| n.exited_component()) {
                        eprintln!("error: {name} exited; log tails:\n{}\n{}", cp.log_tails(), n.log_tails());
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
        }
    })
}
