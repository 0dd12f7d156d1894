//! The local node (feature `node`, needs root): a pod built from a local OCI
//! archive runs, turns Ready through its readiness probe, its logs come
//! through the API server (the `kubectl logs` path: API server → kubelet),
//! a second pod reaches it through a ClusterIP Service (kube-proxy), more
//! reach it by the Service's name (the cluster DNS, CoreDNS), a claim
//! gets a volume a pod mounts (and loses it with the claim), and stopping
//! the node leaves nothing behind.
//!
//! Where the machine cannot run a node (`node::unsupported`), the test says
//! why and passes, unless `SWITCHBOARD_NODE_REQUIRED=1` (then it fails).
#![cfg(feature = "node")]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use switchboard_testkit::ControlPlane;
use switchboard_testkit::node::pods::{
    NETCHECK_IMAGE, import_netcheck, netcheck_server, pod_finished, pod_ready, wait_for_pod,
};
use switchboard_testkit::node::{self, Node};

fn pod(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
    }))
    .unwrap()
}

async fn wait_for(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    cond: fn(Option<&Pod>) -> bool,
    node: &Node,
) -> Pod {
    wait_for_pod(pods, name, what, cond, Duration::from_secs(120), node)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn nat_services() -> String {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "KUBE-SERVICES"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_runs_serves_through_a_service_and_the_node_cleans_up() {
    if let Some(why) = node::skip_reason().unwrap_or_else(|e| panic!("{e}")) {
        eprintln!("SKIPPED: this machine cannot run a local node: {why}");
        return;
    }
    // A node killed earlier with its clean-up is cleaned up before the
    // snapshot, not between it and the comparison.
    node::reclaim_dead_node().unwrap_or_else(|e| panic!("{e}"));
    let before = node::host_state();
    let cp =
        ControlPlane::start_with(node::control_plane_options()).unwrap_or_else(|e| panic!("{e}"));
    let n = Node::start(&cp).unwrap_or_else(|e| panic!("{e}"));

    // An image without a registry: the static netcheck binary, one layer.
    import_netcheck(&n).unwrap();

    let client = cp.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    // The server: scheduled by kube-scheduler (no nodeName), Ready once its
    // HTTP readiness probe answers.
    let server = netcheck_server("server", json!({ "app": "netcheck" })).unwrap();
    pods.create(&PostParams::default(), &server).await.unwrap();
    let ready = wait_for(&pods, "server", "Ready", pod_ready, &n).await;
    let status = ready.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        ready.spec.unwrap().node_name.as_deref(),
        Some(n.name()),
        "scheduled onto the local node"
    );
    let pod_ip = status.pod_ip.unwrap();
    assert!(
        pod_ip.starts_with("10.244.0."),
        "pod IP {pod_ip} from the bridge's subnet"
    );

    // kubectl logs: the API server asks the kubelet.
    let logs = pods.logs("server", &LogParams::default()).await.unwrap();
    assert!(logs.contains("netcheck listening on :8080"), "logs: {logs}");
    assert!(
        logs.contains("GET /ready"),
        "the probe's requests in the logs: {logs}"
    );

    // A ClusterIP Service in front of it, reached from a second pod once
    // kube-proxy has programmed it.
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "netcheck" },
        "spec": {
            "selector": { "app": "netcheck" },
            "ports": [{ "port": 80, "targetPort": 8080 }],
        },
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nat_services()
        .lines()
        .any(|l| l.contains(&format!("{cluster_ip}/32")) && l.contains("-j KUBE-SVC-"))
    {
        assert!(
            Instant::now() < deadline,
            "kube-proxy never programmed {cluster_ip}:\n{}\n{}",
            nat_services(),
            n.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reached from client pods: by the ClusterIP, then by the Service's
    // name, as an app names Redis or PostgreSQL: the short name through
    // the pod's search path (cluster DNS, then the Service), and the fully
    // qualified one.
    let clients = [
        ("client", format!("http://{cluster_ip}/via-service")),
        ("dns-short", "http://netcheck/via-dns-short".to_string()),
        (
            "dns-fqdn",
            format!(
                "http://netcheck.default.svc.{}/via-dns-fqdn",
                node::CLUSTER_DOMAIN
            ),
        ),
    ];
    for (name, url) in &clients {
        let client_pod = pod(
            name,
            json!({ "app": "client" }),
            json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "netcheck",
                    "image": NETCHECK_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["get", url],
                }],
            }),
        );
        pods.create(&PostParams::default(), &client_pod)
            .await
            .unwrap();
        let done = wait_for(&pods, name, "finished", pod_finished, &n).await;
        let client_logs = pods.logs(name, &LogParams::default()).await.unwrap();
        assert_eq!(
            done.status.unwrap().phase.as_deref(),
            Some("Succeeded"),
            "{name} logs: {client_logs}\n{}",
            n.log_tails()
        );
        assert_eq!(client_logs.trim(), "netcheck server");
    }
    let logs = pods.logs("server", &LogParams::default()).await.unwrap();
    for path in ["/via-service", "/via-dns-short", "/via-dns-fqdn"] {
        assert!(logs.contains(&format!("GET {path}")), "logs: {logs}");
    }

    // A claim of the default StorageClass gets a volume (as a StatefulSet's
    // do), a pod mounts it, and deleting the claim deletes the volume and
    // its data.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } },
        },
    }))
    .unwrap();
    let claim = claims.create(&PostParams::default(), &claim).await.unwrap();
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some(node::STORAGE_CLASS),
        "the default class is set on admission"
    );
    let bound = tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(
            claims.clone(),
            "data",
            |c: Option<&PersistentVolumeClaim>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.phase.as_deref())
                    == Some("Bound")
            },
        ),
    )
    .await;
    let volume_name = match bound {
        Ok(Ok(Some(c))) => c.spec.unwrap().volume_name.unwrap(),
        other => panic!(
            "claim not bound: {other:?}\n{:#?}\n{}",
            claims.get("data").await.ok().and_then(|c| c.status),
            n.log_tails()
        ),
    };
    let volume = volumes.get(&volume_name).await.unwrap();
    let host_dir = volume.spec.unwrap().host_path.unwrap().path;
    assert!(
        host_dir.starts_with(&n.dir().display().to_string()),
        "{host_dir} in the node's dir"
    );
    let mode = std::fs::metadata(&host_dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o777,
        "writable by any pod user"
    );
    let mounter = pod(
        "mounter",
        json!({ "app": "mounter" }),
        json!({
            "containers": [{
                "name": "netcheck",
                "image": NETCHECK_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["serve", ":8080"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
        }),
    );
    pods.create(&PostParams::default(), &mounter).await.unwrap();
    wait_for(&pods, "mounter", "Ready", pod_ready, &n).await;
    pods.delete("mounter", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while volumes.get_opt(&volume_name).await.unwrap().is_some() || Path::new(&host_dir).exists() {
        assert!(
            Instant::now() < deadline,
            "volume {volume_name} ({host_dir}) not deleted after its claim\n{}",
            n.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopping the node removes what it made on this machine.
    let (dir, bridge, cgroup) = (
        n.dir().to_path_buf(),
        n.bridge().to_string(),
        n.cgroup_root().to_string(),
    );
    drop(n);
    assert!(!dir.exists(), "{} removed", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_s = dir.display().to_string();
    assert!(
        !mounts.contains(&dir_s),
        "mounts left under {dir_s}:\n{mounts}"
    );
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} removed"
    );
    for h in ["memory", "cpu", "pids", "unified"] {
        let c = Path::new("/sys/fs/cgroup").join(h).join(&cgroup);
        assert!(!c.exists(), "{} removed", c.display());
    }
    assert_eq!(
        node::host_state(),
        before,
        "iptables chains, shim sockets and CNI results as before the node"
    );
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir_s))
        .collect();
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
}
