//! A node killed together with its clean-up process (`kill -9` of the
//! whole process tree: a CI runner's timeout, an ended session) leaves its
//! bridge, with the pod subnet's address, and its mounts, cgroups and
//! iptables chains on the machine. The next node to start runs that
//! clean-up itself: its own pods are reachable from the host (a readiness
//! probe through the pod network passes), and once it stops nothing of
//! either node is left.
//!
//! Where the machine cannot run a node the test says why and passes,
//! unless `SWITCHBOARD_NODE_REQUIRED=1`.
#![cfg(feature = "node")]
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Config};
use serde_json::json;
use switchboard_testkit::ControlPlane;
use switchboard_testkit::node::pods::{import_netcheck, netcheck_server, pod_ready, wait_for_pod};
use switchboard_testkit::node::{self, Node, PAUSE_IMAGE};

/// `pid` and every process below it (by parent pid), in no order.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // After the command name: state, then the parent pid.
        if let Some(ppid) = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
        {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children.get(&tree[i]).into_iter().flatten());
        i += 1;
    }
    tree
}

/// Whether `pid` runs (a zombie, dead but not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X" | "x"))
    })
}

/// Sends `sig` to each of `pids`. Some may be gone by then (kubelet and
/// kube-proxy run short-lived `iptables` and `mount` processes), so a
/// failure for one is not an error.
fn signal(sig: &str, pids: &[u32]) {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .unwrap();
}

/// Stops `pid`'s process tree: again while a process forked before its
/// parent stopped shows up. Returns the stopped tree.
fn stop_tree(pid: u32) -> Vec<u32> {
    let mut tree = process_tree(pid);
    loop {
        signal("STOP", &tree);
        let now = process_tree(pid);
        if now.iter().all(|p| tree.contains(p)) {
            return tree;
        }
        tree = now;
    }
}

/// A node in a `switchboard-node` process of its own, with a command that
/// keeps it up. When the test fails before it kills it, only that process
/// is killed: its clean-up process then runs as usual.
struct NodeProcess(Child);

impl NodeProcess {
    /// Starts it with `TMPDIR` = `tmp` and its admin kubeconfig written to
    /// `kubeconfig`, and waits until it is up.
    fn start(tmp: &Path, kubeconfig: &Path) -> NodeProcess {
        let mut p = NodeProcess(
            Command::new(env!("CARGO_BIN_EXE_switchboard-node"))
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--", "sh", "-c", "echo up; exec sleep 900"])
                .env("TMPDIR", tmp)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = p.0.stdout.take().unwrap();
        let (up_tx, up_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "up" {
                    let _ = up_tx.send(());
                }
            }
        });
        assert!(
            up_rx.recv_timeout(Duration::from_secs(600)).is_ok(),
            "the node process was not up within 600 s"
        );
        p
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The machine's node record (documented in docs/operations.md): the
/// owner's pid first.
const LOCK_FILE: &str = "/run/switchboard-node.pid";

fn bridges(state: &[String]) -> HashSet<String> {
    state
        .iter()
        .filter_map(|s| s.strip_prefix("bridge "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_with_its_clean_up_is_cleaned_up_by_the_next_one() {
    if let Some(why) = node::skip_reason().unwrap_or_else(|e| panic!("{e}")) {
        eprintln!("SKIPPED: this machine cannot run a local node: {why}");
        return;
    }
    // A node killed earlier with its clean-up is cleaned up before the
    // snapshot, not between it and the comparison.
    node::reclaim_dead_node().unwrap_or_else(|e| panic!("{e}"));
    let before = node::host_state();

    // The first node, in a process of its own. Its temp dirs (the control
    // plane's and the node's) go under ours, so what the kill leaves on
    // disk goes with it.
    let tmp = tempfile::tempdir().unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    let mut first = NodeProcess::start(tmp.path(), &kubeconfig);

    // A pod on it: a sandbox on the bridge (the pod subnet's gateway
    // address), its netns and rootfs mounts, CNI results, a cgroup.
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    let pause: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "pause" },
        "spec": { "containers": [{
            "name": "pause",
            "image": PAUSE_IMAGE,
            "imagePullPolicy": "Never",
        }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pause).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(120),
        await_condition(pods.clone(), "pause", pod_ready),
    )
    .await
    .unwrap_or_else(|_| panic!("pod pause on the first node not Ready within 120 s"))
    .unwrap();
    let with_first = node::host_state();
    let first_bridges: HashSet<String> = bridges(&with_first)
        .difference(&bridges(&before))
        .cloned()
        .collect();
    assert_eq!(
        first_bridges.len(),
        1,
        "the first node's bridge: {with_first:#?}"
    );

    // Everything the first node's process started, its clean-up process
    // included, stopped first (so none runs on another's death), then
    // killed. containerd's shims are not below it (they re-parent) and
    // stay, as they may after any crash.
    let tree = stop_tree(first.0.id());
    assert!(tree.len() > 5, "the first node's processes: {tree:?}");
    signal("KILL", &tree);
    first.0.wait().unwrap();
    let left = node::host_state();
    for b in &first_bridges {
        assert!(
            left.contains(&format!("bridge {b}")),
            "the kill left the first node's bridge {b}: {left:#?}"
        );
    }
    assert!(
        left.iter().any(|s| s.starts_with("mount ")),
        "the kill left the first node's mounts: {left:#?}"
    );

    // The next node: it runs the dead one's clean-up, then its pods get a
    // network the host reaches.
    let cp =
        ControlPlane::start_with(node::control_plane_options()).unwrap_or_else(|e| panic!("{e}"));
    let n = Node::start(&cp).unwrap_or_else(|e| panic!("{e}"));
    for b in &first_bridges {
        assert!(
            !Path::new("/sys/class/net").join(b).exists(),
            "the next node removed the dead one's bridge {b}"
        );
    }
    import_netcheck(&n).unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client().await.unwrap(), "default");
    let server = netcheck_server("server", json!({ "app": "netcheck" })).unwrap();
    pods.create(&PostParams::default(), &server).await.unwrap();
    wait_for_pod(
        &pods,
        "server",
        "Ready",
        pod_ready,
        Duration::from_secs(120),
        &n,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    drop(n);

    // A node whose process dies without stopping it (an abort) while its
    // clean-up process lives on, slow: the next node waits for that
    // clean-up instead of running one beside it, and the dead node's
    // clean-up, finishing later, leaves the next node's record of the
    // machine in place.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut third = NodeProcess::start(tmp2.path(), &tmp2.path().join("kubeconfig"));
    let (clean_up, rest): (Vec<u32>, Vec<u32>) =
        stop_tree(third.0.id()).into_iter().partition(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| a == b"switchboard-node-teardown")
            })
        });
    assert_eq!(clean_up.len(), 1, "the node process's clean-up process");
    // The clean-up starts at the end of its stdin, a pipe from the node's
    // process: a second writer of that pipe, opened through /proc, holds it
    // back for as long as the test likes. (Holding it stopped would not
    // do: once its parent dies, the kernel resumes a stopped process in an
    // orphaned process group.)
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/0", clean_up[0]))
        .unwrap();
    // Everything else of it dies (its command too: it holds this test's
    // stderr).
    signal("KILL", &rest);
    third.0.wait().unwrap();
    signal("CONT", &clean_up);
    let me = std::process::id().to_string();
    let recorded_owner = || {
        std::fs::read_to_string(LOCK_FILE)
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
    };
    let (n, taken_early) = std::thread::scope(|s| {
        let next = s.spawn(|| Node::start(&cp));
        // Held 5 s (a node starting without waiting for the clean-up
        // records itself within about a second), then let go.
        let held = Instant::now() + Duration::from_secs(5);
        let mut taken_early = false;
        while Instant::now() < held && !taken_early {
            taken_early = recorded_owner().as_deref() == Some(me.as_str());
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(holder);
        (next.join().unwrap(), taken_early)
    });
    let n = n.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !taken_early,
        "the next node took the machine while the dead node's clean-up was held"
    );
    assert_eq!(
        recorded_owner().as_deref(),
        Some(me.as_str()),
        "{LOCK_FILE} records the next node once the dead one's clean-up has finished"
    );
    assert!(
        !alive(clean_up[0]),
        "the dead node's clean-up had finished when the next node started"
    );
    drop(n);
    drop(cp);
    assert_eq!(
        node::host_state(),
        before,
        "nothing of any of the nodes is left on the machine"
    );
}
