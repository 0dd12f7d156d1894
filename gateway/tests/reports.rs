//! Connection reports for the autoscaler, on every engine: gateways with a
//! `ChatCluster` identity report their live (authenticated) sockets; the
//! count follows opens and closes; a drained gateway withdraws its report at
//! once and a killed one's report vanishes after its TTL.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchboard_core::broker::{ClusterRef, DynBroker, GatewayIdentity, MemoryBroker, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const INTERVAL: Duration = Duration::from_millis(300);
/// Three intervals (`REPORT_TTL_FACTOR`).
const TTL: Duration = Duration::from_millis(900);

fn reporting(cluster: &ClusterRef, pod: &str) -> GatewayConfig {
    GatewayConfig {
        identity: Some(GatewayIdentity::new(cluster.clone(), pod).unwrap()),
        report_interval: INTERVAL,
        ..fast_config()
    }
}

fn random_cluster() -> ClusterRef {
    ClusterRef::new(format!("ns-{:08x}", rand::random::<u32>()), "chat").unwrap()
}

/// `(pod, connections)` of every report of `cluster`.
async fn reports(broker: &DynBroker, cluster: &ClusterRef) -> Vec<(String, u64)> {
    let got = broker.connection_reports(cluster).await.unwrap();
    for r in &got.reports {
        assert!(r.reported_at <= got.now, "{r:?} is from the future");
        assert!(
            got.now - r.reported_at <= TTL.as_millis() as u64,
            "{r:?} outlived its TTL (now {})",
            got.now
        );
    }
    got.reports
        .into_iter()
        .map(|r| (r.pod, r.connections))
        .collect()
}

/// Poll until the reports equal `want` (reports move once per interval).
async fn wait_reports(broker: &DynBroker, cluster: &ClusterRef, want: &[(&str, u64)]) {
    let want: Vec<(String, u64)> = want.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = reports(broker, cluster).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reports {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway on a runtime of its own, like a separate process: dropping it
/// shuts the runtime down at once — no drain, no withdrawal — like kill -9.
struct Killable {
    rt: Option<Runtime>,
    gw: Option<Gateway>,
}

impl Killable {
    async fn start(backend: &Backend, cfg: GatewayConfig) -> Killable {
        enum Source {
            Memory(MemoryBroker),
            Url(String),
        }
        let source = match backend {
            Backend::Memory(m) => Source::Memory(m.clone()),
            Backend::Redis(r) => Source::Url(r.url()),
            Backend::Cluster(c) => Source::Url(c.url()),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let gw = rt
            .spawn(async move {
                let broker: DynBroker = match source {
                    Source::Memory(m) => Arc::new(m),
                    Source::Url(url) => Arc::new(
                        RedisBroker::connect(&url, Default::default())
                            .await
                            .unwrap(),
                    ),
                };
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                Gateway::start(cfg, broker, listener).await.unwrap()
            })
            .await
            .unwrap();
        Killable {
            rt: Some(rt),
            gw: Some(gw),
        }
    }

    fn gateway(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Allowed in async context, unlike dropping the runtime.
            rt.shutdown_background();
        }
        self.gw = None;
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two gateway pods of one cluster: reports per pod follow the sockets
/// (unauthenticated ones do not count), a killed pod's report vanishes
/// after the TTL without touching the other's, and a drained pod withdraws
/// its own at once.
async fn reports_follow_connections(backend: Backend) {
    let cluster = random_cluster();
    let reader = backend.broker().await;
    let mut a = Killable::start(&backend, reporting(&cluster, "chat-gateway-a")).await;
    let b = start_gateway(&backend, reporting(&cluster, "chat-gateway-b")).await;
    // Another cluster's gateway, and one without identity: neither shows up.
    let other = random_cluster();
    let c = start_gateway(&backend, reporting(&other, "chat-gateway-a")).await;
    let anonymous = start_gateway(&backend, fast_config()).await;
    // The first report goes out at start.
    wait_reports(
        &reader,
        &cluster,
        &[("chat-gateway-a", 0), ("chat-gateway-b", 0)],
    )
    .await;

    let (u, v) = (Wallet::random(), Wallet::random());
    let tu = login(&http(a.gateway()), &u).await;
    let tv = login(&http(&b), &v).await;
    let mut on_a = vec![];
    for _ in 0..3 {
        on_a.push(Ws::connect(a.gateway(), &tu).await);
    }
    let on_b = [
        Ws::connect(&b, &tv).await,
        Ws::connect(&b, &tu).await, // a second device of the same user
    ];
    let _pending = Ws::open(&b).await; // not authenticated: not a connection yet
    let _elsewhere = Ws::connect(&anonymous, &tu).await;
    let _other_cluster = Ws::connect(&c, &tv).await;
    wait_reports(
        &reader,
        &cluster,
        &[("chat-gateway-a", 3), ("chat-gateway-b", 2)],
    )
    .await;
    wait_reports(&reader, &other, &[("chat-gateway-a", 1)]).await;

    // Closing sockets lowers the count with the next report.
    let mut gone = on_a.pop().unwrap();
    gone.inner.close(None).await.unwrap();
    drop(gone);
    wait_reports(
        &reader,
        &cluster,
        &[("chat-gateway-a", 2), ("chat-gateway-b", 2)],
    )
    .await;

    // Killed: the report stays until its TTL runs out, then vanishes.
    a.kill();
    let killed_at = Instant::now();
    let left = reports(&reader, &cluster).await;
    assert!(
        left.contains(&("chat-gateway-a".to_string(), 2)),
        "a killed gateway's report expires, it is not withdrawn: {left:?}"
    );
    wait_reports(&reader, &cluster, &[("chat-gateway-b", 2)]).await;
    assert!(
        killed_at.elapsed() < TTL + Duration::from_millis(1500),
        "the report outlived its TTL by far: {:?}",
        killed_at.elapsed()
    );

    // Drained: withdrawn at once, before any TTL.
    b.shutdown().await;
    assert_eq!(reports(&reader, &cluster).await, []);
    drop(on_b);
    c.shutdown().await;
    assert_eq!(reports(&reader, &other).await, []);
    anonymous.shutdown().await;
}

macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod memory { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::memory()).await } )* }
        mod redis { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::redis()).await } )* }
        mod cluster { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::cluster()).await } )* }
    };
}

on_every_engine!(reports_follow_connections);
