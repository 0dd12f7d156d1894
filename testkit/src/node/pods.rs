//! Pods on a [`Node`], for tests: a wait that fails with what is needed to
//! see why (the pod's status, its containers' logs, the node components'
//! log tails), and the `netcheck` image and server pod the node's own
//! tests run.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use kube::runtime::wait::await_condition;

use super::{ImageFile, Node, write_image_archive};
use crate::TestkitError;

/// The image of the static `netcheck` binary (`e2e/node/cmd/netcheck`),
/// imported by [`import_netcheck`].
pub const NETCHECK_IMAGE: &str = "switchboard.local/netcheck:test";

/// Imports [`NETCHECK_IMAGE`] into `node`: one layer, no registry.
pub fn import_netcheck(node: &Node) -> Result<(), TestkitError> {
    let archive = node.dir().join("netcheck.oci.tar");
    write_image_archive(
        &archive,
        NETCHECK_IMAGE,
        &[ImageFile {
            path: "/netcheck".into(),
            source: node.bin_dir().join("netcheck"),
            mode: 0o755,
        }],
        &["/netcheck"],
    )?;
    node.import_image(&archive)
}

/// A pod named `name` with `labels` serving HTTP on :8080 with netcheck,
/// Ready once its HTTP readiness probe (from the kubelet, through the pod
/// network) answers; scheduled by kube-scheduler (no nodeName).
pub fn netcheck_server(name: &str, labels: serde_json::Value) -> Result<Pod, TestkitError> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "containers": [{
                "name": "netcheck",
                "image": NETCHECK_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["serve", ":8080"],
                "ports": [{ "containerPort": 8080 }],
                "readinessProbe": {
                    "httpGet": { "path": "/ready", "port": 8080 },
                    "periodSeconds": 1,
                },
            }],
        },
    }))
    .map_err(|e| TestkitError::Other(format!("netcheck server pod: {e}")))
}

/// Whether the pod has condition Ready=True.
pub fn pod_ready(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod is in phase Succeeded or Failed.
pub fn pod_finished(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
}

/// Waits up to `timeout` until `cond` holds for pod `name`; else an error
/// saying it is not `what`, with [`pod_report`].
pub async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    cond: fn(Option<&Pod>) -> bool,
    timeout: Duration,
    node: &Node,
) -> Result<Pod, TestkitError> {
    let waited = tokio::time::timeout(timeout, await_condition(pods.clone(), name, cond)).await;
    match waited {
        Ok(Ok(Some(p))) => Ok(p),
        other => Err(TestkitError::Other(format!(
            "pod {name} not {what} within {} s: {other:?}\n{}",
            timeout.as_secs(),
            pod_report(pods, name, node).await
        ))),
    }
}

/// The pod's status, the logs of each of its containers (the current run
/// and, after a restart, the previous one), and the node's log tails.
pub async fn pod_report(pods: &Api<Pod>, name: &str, node: &Node) -> String {
    let pod = pods.get(name).await;
    let mut out = match &pod {
        Ok(p) => format!("status of {name}: {:#?}\n", p.status),
        Err(e) => format!("get pod {name}: {e}\n"),
    };
    let containers: Vec<String> = pod
        .ok()
        .and_then(|p| p.spec)
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    for c in containers {
        for previous in [false, true] {
            let params = LogParams {
                container: Some(c.clone()),
                previous,
                tail_lines: Some(50),
                ..LogParams::default()
            };
            match pods.logs(name, &params).await {
                Ok(logs) => {
                    let which = if previous { "previous run" } else { "logs" };
                    out.push_str(&format!("--- {name}/{c} {which}\n{logs}\n"));
                }
                Err(e) if !previous => out.push_str(&format!("--- {name}/{c} logs: {e}\n")),
                Err(_) => {}
            }
        }
    }
    out.push_str(&node.log_tails());
    out
}
