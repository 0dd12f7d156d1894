//! The autoscaler end to end: a local control plane (no scheduler, no
//! kubelet), the operator in this process with a short sync period, a real
//! redis-server as the ChatCluster's external Redis, real gateways (the
//! switchboard-gateway library) reporting as pods of the cluster, Pod objects
//! registered for them (Ready set through pods/status), and authenticated
//! WebSocket clients as the load.
//!
//! `cargo test -p switchboard-operator --features kube --test autoscale`

#![cfg(feature = "kube")]
// Helpers outside #[test] fns; a failed set-up should panic loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use switchboard_core::broker::{BrokerConfig, ClusterRef, GatewayIdentity, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_operator::ChatCluster;
use switchboard_operator::autoscale::POD_DELETION_COST;
use switchboard_operator::run::{RunConfig, run};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use switchboard_testkit::RedisServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const NS: &str = "apps";
const CLUSTER: &str = "chat";
const DEPLOYMENT: &str = "chat-gateway";
/// The operator's sync period in these tests.
const SYNC: Duration = Duration::from_secs(1);
/// How often the gateways report.
const REPORT: Duration = Duration::from_millis(500);
const SECRET: &[u8] = b"autoscale-test-secret-autoscale-";

async fn secret(client: &Client, name: &str, url: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"url": url},
    }))
    .unwrap();
    api.create(&PostParams::default(), &s)
        .await
        .expect("secret");
}

/// The operator in this process, leader-elected like in a cluster.
fn start_operator(client: &Client) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let cfg = RunConfig {
        autoscale_interval: SYNC,
        ..RunConfig::new("op-test", free_addr())
    };
    let handle = tokio::spawn({
        let client = client.clone();
        let token = token.clone();
        async move { run(client, cfg, token).await.expect("operator runs") }
    });
    (token, handle)
}

/// The `chatcluster-autoscale-local.yaml` example, in namespace `apps`,
/// named `chat`, with a test-short stabilization window.
fn cluster(window_seconds: i32) -> ChatCluster {
    let path = format!(
        "{}/../examples/chatcluster-autoscale-local.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut c: ChatCluster =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    c.metadata.name = Some(CLUSTER.into());
    c.metadata.namespace = Some(NS.into());
    let a = &mut c.spec.gateway.autoscaling;
    assert_eq!(a.target_connections_per_replica, 5);
    a.scale_down_stabilization_seconds = window_seconds;
    c
}

/// Everything a test needs: the control plane, Redis, the operator and a
/// `chat` ChatCluster whose gateway Deployment exists.
struct Env {
    _cp: switchboard_testkit::ControlPlane,
    client: Client,
    redis: RedisServer,
    stop: CancellationToken,
    operator: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn start(window_seconds: i32) -> Env {
        let (cp, client) = control_plane().await;
        install_crd(&client).await;
        namespace(&client, NS).await;
        let redis = RedisServer::start().expect("redis-server");
        secret(&client, "sb-redis", &redis.url()).await;
        // Nothing runs the gateways' pods: any URL will do.
        secret(
            &client,
            "sb-postgres",
            "postgres://unused@127.0.0.1:1/unused",
        )
        .await;
        let (stop, operator) = start_operator(&client);
        let api: Api<ChatCluster> = Api::namespaced(client.clone(), NS);
        api.patch(
            CLUSTER,
            &PatchParams::apply("switchboard-tests").force(),
            &Patch::Apply(&cluster(window_seconds)),
        )
        .await
        .expect("apply ChatCluster");
        let env = Env {
            _cp: cp,
            client,
            redis,
            stop,
            operator,
        };
        env.wait_replicas("the gateway Deployment at min (1)", |n| n == 1)
            .await;
        env
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn clusters(&self) -> Api<ChatCluster> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn replicas(&self) -> Option<i32> {
        self.deployments()
            .get_opt(DEPLOYMENT)
            .await
            .unwrap()
            .and_then(|d| d.spec?.replicas)
    }

    /// Waits until the Deployment's replicas satisfy `ok`; returns them and
    /// how long it took.
    async fn wait_replicas(&self, what: &str, ok: impl Fn(i32) -> bool) -> (i32, Duration) {
        let start = Instant::now();
        let n = eventually_within(what, WAIT, || async {
            self.replicas().await.filter(|n| ok(*n))
        })
        .await;
        (n, start.elapsed())
    }

    /// Asserts the replicas stay `n` for `d` (a negative check: nothing may
    /// happen, so it has to watch for a while).
    async fn hold_replicas(&self, n: i32, d: Duration, why: &str) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            assert_eq!(self.replicas().await, Some(n), "{why}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A Pod object named like a gateway pod of the cluster, Ready.
    async fn register_pod(&self, name: &str) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/name": "switchboard",
                    "app.kubernetes.io/instance": CLUSTER,
                    "app.kubernetes.io/component": "gateway",
                },
            },
            "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "gateway", "image": "switchboard:test"}],
            },
        }))
        .unwrap();
        let pods = self.pods();
        // The namespace's default ServiceAccount appears shortly after it.
        eventually_within(&format!("pod {name} created"), WAIT, || async {
            pods.create(&PostParams::default(), &pod).await.ok()
        })
        .await;
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("pod status");
    }

    async fn gateway_status(&self) -> switchboard_operator::crd::GatewayStatus {
        self.clusters()
            .get(CLUSTER)
            .await
            .unwrap()
            .status
            .and_then(|s| s.gateway)
            .unwrap_or_default()
    }

    /// The gateway status once it records a scale to `n`. The autoscaler
    /// applies replicas, publishes the Event, then writes its status: a
    /// watcher can see the new replicas before the status has the scale.
    async fn status_after_scale(&self, n: i32) -> switchboard_operator::crd::GatewayStatus {
        eventually_within(&format!("the scale to {n} in status"), WAIT, || async {
            let st = self.gateway_status().await;
            (st.desired_replicas == Some(n)).then_some(st)
        })
        .await
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.operator)
            .await
            .expect("operator stops")
            .unwrap();
    }
}

/// A gateway process reporting as pod `pod` of `apps/chat`.
async fn gateway(redis_url: &str, pod: &str) -> Gateway {
    let cluster = ClusterRef::new(NS, CLUSTER).unwrap();
    let cfg = GatewayConfig {
        identity: Some(GatewayIdentity::new(cluster, pod).unwrap()),
        report_interval: REPORT,
        token_secret: SECRET.to_vec(),
        ..GatewayConfig::default()
    };
    let broker = RedisBroker::connect(redis_url, BrokerConfig::default())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(cfg, Arc::new(broker), listener)
        .await
        .unwrap()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `n` authenticated WebSocket connections to `gw`, each a new user.
async fn connect(gw: &Gateway, n: usize) -> Vec<Ws> {
    let signer = TokenSigner::new(SECRET);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let user = Address(rand::random());
        let (token, _) = signer.issue(
            &user,
            Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        );
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", gw.local_addr()))
                .await
                .unwrap();
        ws.send(Message::text(
            json!({"type": "auth", "token": token}).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("a frame")
                .expect("open")
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_ne!(v["type"], "error", "{v}");
                if v["type"] == "ready" {
                    break;
                }
            }
        }
        out.push(ws);
    }
    out
}

async fn close(conns: Vec<Ws>) {
    for mut ws in conns {
        let _ = ws.close(None).await;
    }
}

/// Operator mode, all reports fresh: up at once when the load passes the
/// target, down only after the window and by one step, least loaded pods
/// marked for removal first; status, Event and field ownership as designed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_scales_with_connections() {
    const WINDOW: Duration = Duration::from_secs(8);
    let env = Env::start(WINDOW.as_secs() as i32).await;
    for pod in ["chat-gateway-a", "chat-gateway-b"] {
        env.register_pod(pod).await;
    }
    let url = env.redis.url();
    let (a, b) = (
        gateway(&url, "chat-gateway-a").await,
        gateway(&url, "chat-gateway-b").await,
    );

    // Idle: the autoscaler takes spec.replicas over at min and holds it.
    eventually_within("the autoscaler owns spec.replicas", WAIT, || async {
        let d = env.deployments().get(DEPLOYMENT).await.ok()?;
        switchboard_operator::policy::owns_replicas(&d).then_some(())
    })
    .await;
    eventually_within("status: 0 connections", WAIT, || async {
        (env.gateway_status().await.connections == Some(0)).then_some(())
    })
    .await;
    assert_eq!(env.replicas().await, Some(1));

    // 12 connections, target 5: ceil(12 / 5) = 3, at once.
    let mut on_a = connect(&a, 7).await;
    let on_b = connect(&b, 5).await;
    // (A report may catch the connections half open: 1 -> 2 -> 3 is fine.)
    let (n, took) = env.wait_replicas("scale up to 3", |n| n >= 3).await;
    assert_eq!(n, 3);
    println!("scale-up to 3 took {took:?} after the connections opened");
    // A report interval plus one sync period, with slack for a busy machine.
    assert!(took < REPORT + SYNC + Duration::from_secs(10), "{took:?}");
    let st = env.status_after_scale(3).await;
    assert_eq!(st.connections, Some(12));
    assert_eq!(st.desired_replicas, Some(3));
    assert!(st.last_scale_time.is_some());
    let reason = st.last_scale_reason.clone().unwrap();
    assert!(
        reason.starts_with("scale up") && reason.contains("-> 3"),
        "{reason}"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    eventually_within("a Scaled event", WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("Scaled")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(CLUSTER)
                    && e.type_.as_deref() == Some("Normal")
            })
            .map(|_| ())
    })
    .await;

    // A reconcile (a spec change) keeps the autoscaler's replicas and its
    // status fields: the two field managers do not erase each other.
    env.clusters()
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"worker": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    eventually_within("reconciled generation 2", WAIT, || async {
        let c = env.clusters().get(CLUSTER).await.ok()?;
        (c.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    let d = env.deployments().get(DEPLOYMENT).await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    let replica_owners: Vec<&str> = d
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec")?.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert_eq!(replica_owners, ["switchboard-autoscaler"]);
    let st = env.gateway_status().await;
    assert_eq!(st.connections, Some(12));
    assert_eq!(st.last_scale_reason.as_deref(), Some(reason.as_str()));
    assert!(
        st.replicas.is_some(),
        "the reconciler's fields are there too"
    );

    // The clients leave, but one on a: a carries 1, b 0.
    let keep = on_a.pop().unwrap();
    close(on_a).await;
    close(on_b).await;
    let left = Instant::now();
    let (n, took) = env
        .wait_replicas("scale down after the window", |n| n != 3)
        .await;
    println!("scale-down came {took:?} after the clients left (window {WINDOW:?})");
    // Not before the window, and by one step (1 pod per 60 s) only.
    // (The last high recommendation may predate `left` by a sync period
    // and a report interval.)
    assert!(left.elapsed() >= WINDOW - SYNC - REPORT, "{took:?}");
    assert_eq!(n, 2, "one step down");
    let pods = env.pods();
    let cost = |p: Pod| p.annotations().get(POD_DELETION_COST).cloned();
    assert_eq!(
        cost(pods.get("chat-gateway-a").await.unwrap()).as_deref(),
        Some("1")
    );
    assert_eq!(
        cost(pods.get("chat-gateway-b").await.unwrap()).as_deref(),
        Some("0")
    );
    let st = env.status_after_scale(2).await;
    let reason = st.last_scale_reason.unwrap();
    assert!(reason.starts_with("scale down 3 -> 2"), "{reason}");
    assert_eq!(st.connections, Some(1));
    // The next step waits out the scale-down period (60 s).
    env.hold_replicas(2, 4 * SYNC, "at most one step per period")
        .await;

    close(vec![keep]).await;
    a.shutdown().await;
    b.shutdown().await;
    env.stop().await;
}

/// Stale reports count as missing (never as load, never as a reason to
/// scale in), and in `external` mode the operator leaves replicas alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reports_and_external_mode() {
    const WINDOW: Duration = Duration::from_secs(2);
    let env = Env::start(WINDOW.as_secs() as i32).await;
    for pod in ["chat-gateway-a", "chat-gateway-b"] {
        env.register_pod(pod).await;
    }
    let url = env.redis.url();
    let a = gateway(&url, "chat-gateway-a").await;
    // Pod b's last report is a minute old (its gateway hung) but has not
    // expired from the hash: 1000 connections that must not count.
    let key = ClusterRef::new(NS, CLUSTER).unwrap().redis_key();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stale = format!("1000:{}:{}", now_ms - 60_000, now_ms + 600_000);
    env.redis
        .command(&["HSET", &key, "chat-gateway-b", &stale])
        .unwrap();
    eventually_within("status: a's 0 connections", WAIT, || async {
        (env.gateway_status().await.connections == Some(0)).then_some(())
    })
    .await;
    env.hold_replicas(1, 4 * SYNC, "a stale report is no load")
        .await;

    // Load on a: up, with b estimated at the target: ceil((12 + 5) / 5) = 4.
    let on_a = connect(&a, 12).await;
    let (n, _) = env.wait_replicas("scale up", |n| n != 1).await;
    assert_eq!(n, 4);
    assert_eq!(env.status_after_scale(4).await.connections, Some(12));
    // The load goes, but b's report is stale: no scale-in on partial data,
    // even long after the window.
    close(on_a).await;
    eventually_within("status: 0 connections again", WAIT, || async {
        (env.gateway_status().await.connections == Some(0)).then_some(())
    })
    .await;
    env.hold_replicas(4, WINDOW + 4 * SYNC, "b's report is stale")
        .await;
    // b reports again (0): now the scale-in may happen, one step.
    let b = gateway(&url, "chat-gateway-b").await;
    let (n, _) = env.wait_replicas("scale down", |n| n != 4).await;
    assert_eq!(n, 3);

    // External mode: an HPA owns replicas; the operator never writes them.
    env.clusters()
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gateway": {"autoscaling": {"mode": "external"}}}})),
        )
        .await
        .unwrap();
    eventually_within("reconciled the external mode", WAIT, || async {
        let c = env.clusters().get(CLUSTER).await.ok()?;
        (c.status?.observed_generation == c.metadata.generation).then_some(())
    })
    .await;
    let hpa = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT}, "spec": {"replicas": 5},
    });
    env.deployments()
        .patch(
            DEPLOYMENT,
            &PatchParams::apply("test-hpa").force(),
            &Patch::Apply(&hpa),
        )
        .await
        .unwrap();
    // Load that operator mode would scale on (ceil(12 / 5) = 3, not 5), and
    // a reconcile: replicas stay where the "HPA" put them.
    let on_b = connect(&b, 12).await;
    env.clusters()
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"worker": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    env.hold_replicas(5, 6 * SYNC, "external mode: replicas are the HPA's")
        .await;

    close(on_b).await;
    a.shutdown().await;
    b.shutdown().await;
    env.stop().await;
}
