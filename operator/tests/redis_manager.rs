//! The Redis Cluster manager end to end: a local control plane (no kubelet:
//! the Redis StatefulSet's ready count is set through its status
//! subresource, as the StatefulSet controller would), the operator in this
//! process, and six real `redis-server --cluster-enabled yes` processes
//! standing in for the pods (the operator's node addressing maps pod `i`
//! to the i-th process). The ChatCluster asks for managed Redis in cluster
//! mode, 3 shards × (1 + 1).
//!
//! `cargo test -p switchboard-operator --features kube --test redis_manager`

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_operator::ChatCluster;
use switchboard_operator::build::BuildError;
use switchboard_operator::crd::{RedisClusterState, RedisStatus};
use switchboard_operator::redis_cluster::{BootstrapOptions, NodeAddr};
use switchboard_operator::redis_manager::RedisConfig;
use switchboard_operator::run::{RunConfig, run};
use switchboard_testkit::{RedisServer, RedisServerOptions};
use tokio_util::sync::CancellationToken;

/// Namespace of the cluster whose nodes are real cluster-mode servers.
const GOOD: &str = "good";
/// Namespace of a cluster whose "nodes" run without `cluster-enabled`.
const BAD: &str = "bad";

fn chat_cluster(ns: &str, shards: i32, replicas: i32) -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": "chat", "namespace": ns},
        "spec": {
            "auth": {"domain": "chat.example.com"},
            "gateway": {"autoscaling": {"mode": "disabled"}, "replicas": {"min": 1, "max": 1}},
            "redis": {"managed": {"mode": "cluster", "shards": shards, "replicasPerShard": replicas}},
            "postgres": {"external": {"secretRef": {"name": "pg", "key": "url"}}},
        }
    }))
    .unwrap()
}

async fn postgres_secret(client: &Client, ns: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pg"},
        // Nothing connects in this test (partition maintenance fails quietly).
        "stringData": {"url": "postgres://unused@127.0.0.1:1/unused"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &s).await.unwrap();
}

type Ports = Arc<Mutex<HashMap<String, Vec<u16>>>>;

/// Pod `i` of a namespace's cluster is the i-th server's port there (filled
/// in once the servers run: they need the generated password first).
fn addressing(ports: Ports) -> switchboard_operator::redis_manager::Addressing {
    Arc::new(move |cluster: &ChatCluster, i: usize| {
        let ns = cluster.namespace().unwrap_or_default();
        let port = ports
            .lock()
            .unwrap()
            .get(&ns)
            .and_then(|p| p.get(i))
            .copied()
            .ok_or(BuildError::MissingMeta("no test node for this ordinal"))?;
        Ok(NodeAddr::new("127.0.0.1", port))
    })
}

/// The password the reconciler generated for the namespace's managed Redis
/// (Secret `chat-redis`, key `password`).
async fn generated_password(client: &Client, ns: &str) -> String {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{ns}: Secret chat-redis generated"), || async {
        let s = api.get_opt("chat-redis").await.unwrap()?;
        let bytes = s.data?.remove("password")?;
        String::from_utf8(bytes.0).ok()
    })
    .await
}

async fn redis_status(client: &Client, ns: &str) -> Option<RedisStatus> {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    api.get("chat").await.ok()?.status?.redis
}

async fn condition(client: &Client, ns: &str, type_: &str) -> Option<(String, String, String)> {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    let c = api.get("chat").await.ok()?.status?.conditions;
    c.into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

/// What a kubelet would do once the pods pass their readiness probe: the
/// control plane's StatefulSet controller creates the pods (Parallel
/// policy), nothing runs them, so each is marked Running and Ready through
/// pods/status; the StatefulSet controller then counts them ready.
async fn set_ready(client: &Client, ns: &str, pods: usize) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for i in 0..pods {
        let name = format!("chat-redis-{i}");
        eventually(&format!("{ns}: pod {name} created"), || async {
            api.get_opt(&name).await.unwrap()
        })
        .await;
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let want = i32::try_from(pods).unwrap();
    eventually(
        &format!("{ns}: StatefulSet readyReplicas {pods}"),
        || async {
            let s = sets.get_opt("chat-redis").await.unwrap()?;
            (s.status?.ready_replicas? == want).then_some(())
        },
    )
    .await;
}

/// The notes of the Events with `reason`, one per publication (the
/// recorder folds repeats of the same note into a series with a count).
async fn events(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .flat_map(|e| {
            let times = e.series.as_ref().map_or(1, |s| s.count.max(1));
            let note = e.note.unwrap_or_default();
            (0..times).map(move |_| note.clone())
        })
        .collect()
}

fn cluster_info(node: &RedisServer, key: &str) -> String {
    node.command(&["CLUSTER", "INFO"])
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}:"))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_forms_reports_and_heals_a_managed_redis_cluster() {
    // `RUST_LOG=switchboard_operator=debug` shows every bootstrap step.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    for ns in [GOOD, BAD] {
        namespace(&client, ns).await;
        postgres_secret(&client, ns).await;
    }
    let ports = Ports::default();

    let stop = CancellationToken::new();
    let metrics_addr = free_addr();
    let cfg = RunConfig {
        redis: RedisConfig {
            interval: Duration::from_secs(1),
            retry: Duration::from_millis(300),
            bootstrap: BootstrapOptions {
                converge_timeout: Duration::from_secs(30),
                failover_grace: Duration::from_secs(5),
                poll_interval: Duration::from_millis(50),
                ..BootstrapOptions::default()
            },
            address: addressing(ports.clone()),
        },
        ..RunConfig::new("op-redis", metrics_addr)
    };
    let operator = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { run(client, cfg, stop).await.expect("operator runs") }
    });

    for (ns, shards, replicas) in [(GOOD, 3, 1), (BAD, 3, 0)] {
        let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
        api.patch(
            "chat",
            &PatchParams::apply("switchboard-tests").force(),
            &Patch::Apply(&chat_cluster(ns, shards, replicas)),
        )
        .await
        .unwrap();
    }

    // The servers require the password the reconciler generated, as the
    // managed pods do (auth.conf from the Secret): the manager must read it
    // and authenticate every connection.
    let good_pw = generated_password(&client, GOOD).await;
    let bad_pw = generated_password(&client, BAD).await;
    assert_ne!(good_pw, bad_pw, "one password per ChatCluster");
    let mut nodes: Vec<RedisServer> = (0..6)
        .map(|_| {
            let opts = RedisServerOptions::cluster_node()
                .unwrap()
                .with_password(&good_pw);
            RedisServer::start_with(opts).expect("redis-server in cluster mode")
        })
        .collect();
    // Plain servers: CLUSTER commands fail with "cluster support disabled".
    let plain: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(RedisServerOptions::default().with_password(&bad_pw)).unwrap()
        })
        .collect();
    ports.lock().unwrap().extend([
        (GOOD.to_string(), nodes.iter().map(|n| n.port()).collect()),
        (BAD.to_string(), plain.iter().map(|n| n.port()).collect()),
    ]);

    // 1. Pods not ready (before that: no StatefulSet yet): the manager
    // waits and sends nothing to Redis.
    eventually("WaitingForPods with 0/6 pods ready", || async {
        redis_status(&client, GOOD).await.filter(|r| {
            r.cluster_state == Some(RedisClusterState::WaitingForPods)
                && r.cluster_message.as_deref()
                    == Some("0/6 Redis pods ready; forming waits for all")
        })
    })
    .await;
    let (status, reason, _) = condition(&client, GOOD, "RedisReady").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ReplicasNotReady")
    );
    assert_eq!(
        cluster_info(&nodes[0], "cluster_known_nodes"),
        "1",
        "nothing was met yet"
    );

    // 2. All six ready: the cluster forms; status and RedisReady follow.
    set_ready(&client, GOOD, 6).await;
    let formed = eventually("clusterState Ready", || async {
        redis_status(&client, GOOD)
            .await
            .filter(|r| r.cluster_state == Some(RedisClusterState::Ready))
    })
    .await;
    assert_eq!(formed.slots_assigned, Some(16384));
    // The alert's gauge follows the verdict (set before the status write).
    let ok = |ns: &str, v: u8| {
        format!(
            "switchboard_operator_redis_cluster_ok{{cluster_namespace=\"{ns}\",chatcluster=\"chat\"}} {v}\n"
        )
    };
    let text = scrape(metrics_addr).await;
    assert!(text.contains(&ok(GOOD, 1)), "{text}");
    assert_eq!(
        formed.cluster_message.as_deref(),
        Some("all 16384 slots served by 3 primaries with 1 replica(s) each")
    );
    for n in &nodes {
        assert_eq!(cluster_info(n, "cluster_state"), "ok", "{}", n.addr());
        assert_eq!(cluster_info(n, "cluster_known_nodes"), "6", "{}", n.addr());
    }
    let (status, reason, message) = eventually("RedisReady True", || async {
        condition(&client, GOOD, "RedisReady")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "ClusterReady");
    assert!(
        message.starts_with("6/6 redis pods ready; all 16384 slots"),
        "{message}"
    );
    assert_eq!(status, "True");
    let bootstrapped = eventually("a RedisClusterBootstrapped event", || async {
        let e = events(&client, GOOD, "RedisClusterBootstrapped").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(bootstrapped[0].contains("met"), "{bootstrapped:?}");
    eventually("a RedisClusterReady event", || async {
        (!events(&client, GOOD, "RedisClusterReady").await.is_empty()).then_some(())
    })
    .await;

    // 3. Re-checks of a formed cluster change nothing: no second
    // bootstrap event over several check intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        events(&client, GOOD, "RedisClusterBootstrapped")
            .await
            .len(),
        1,
        "a formed cluster is left alone"
    );

    // 4. A node loses its data and comes back empty: the manager heals it
    // back into its shard (ordinal 4 is the replica of shard 1).
    nodes[4].wipe_and_restart().expect("restart node 4 empty");
    eventually("node 4 rejoined", || async {
        (cluster_info(&nodes[4], "cluster_known_nodes") == "6"
            && cluster_info(&nodes[4], "cluster_state") == "ok")
            .then_some(())
    })
    .await;
    let healed = eventually("a second RedisClusterBootstrapped event", || async {
        let e = events(&client, GOOD, "RedisClusterBootstrapped").await;
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert!(
        healed
            .iter()
            .any(|n| n.contains("forgotten") || n.contains("replica")),
        "{healed:?}"
    );
    let after = redis_status(&client, GOOD).await.unwrap();
    assert_eq!(after.slots_assigned, Some(16384));

    // 5. Nodes without cluster support: Failed, a Warning naming the cause,
    // RedisReady False with the manager's message.
    set_ready(&client, BAD, 3).await;
    let failed = eventually("clusterState Failed", || async {
        redis_status(&client, BAD)
            .await
            .filter(|r| r.cluster_state == Some(RedisClusterState::Failed))
    })
    .await;
    let msg = failed.cluster_message.unwrap_or_default();
    assert!(msg.contains("does not run in cluster mode"), "{msg}");
    let text = scrape(metrics_addr).await;
    assert!(text.contains(&ok(BAD, 0)), "{text}");
    let warned = eventually("a RedisClusterBootstrapFailed warning", || async {
        let e = events(&client, BAD, "RedisClusterBootstrapFailed").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(warned[0].contains("cluster-enabled yes"), "{warned:?}");
    let (status, _, message) = eventually("RedisReady False with the cause", || async {
        condition(&client, BAD, "RedisReady")
            .await
            .filter(|(_, r, m)| {
                r == "ClusterNotReady" && m.contains("does not run in cluster mode")
            })
    })
    .await;
    assert_eq!(status, "False");
    assert!(message.starts_with("3/3 redis pods ready; "), "{message}");
    // Announced once, not on every retry.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&client, BAD, "RedisClusterBootstrapFailed")
            .await
            .len(),
        1
    );

    stop.cancel();
    operator.await.unwrap();
}
