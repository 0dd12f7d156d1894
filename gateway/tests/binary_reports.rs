//! The `switchboard-gateway` binary started by hand with the identity
//! variables the operator sets (`POD_NAME`, `POD_NAMESPACE`,
//! `SWITCHBOARD_CLUSTER`) reports its connections as that pod, and withdraws
//! the report on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{free_addr, gateway_command};
use switchboard_core::broker::{Broker, BrokerConfig, ClusterRef, RedisBroker};
use switchboard_core::env;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn gateway_reports_as_its_pod() {
    let redis = switchboard_testkit::RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway_command(free_addr(), &redis.url(), &dir.path().join("secret"))
        .args(["--report-interval-seconds", "1"])
        .env(env::POD_NAME, "chat-gateway-5f7c9-x2x4q")
        .env(env::POD_NAMESPACE, "team-a")
        .env(env::CLUSTER, "chat")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = RedisBroker::connect(&redis.url(), BrokerConfig::default())
        .await
        .unwrap();
    let cluster = ClusterRef::new("team-a", "chat").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = broker.connection_reports(&cluster).await.unwrap();
        if let [r] = got.reports.as_slice() {
            assert_eq!(r.pod, "chat-gateway-5f7c9-x2x4q");
            assert_eq!(r.connections, 0);
            break;
        }
        assert!(Instant::now() < deadline, "no report: {got:?}");
        sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: the drain withdraws the report before the process exits.
    let pid = gw.id().unwrap().to_string();
    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let status = timeout(WAIT, gw.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let got = broker.connection_reports(&cluster).await.unwrap();
    assert!(got.reports.is_empty(), "{got:?}");
}
