//! A Redis that requires a password (`requirepass`, and `masterauth` on a
//! cluster's replicas), as the operator's managed Redis does: the broker and
//! the reports reader work with the password — given apart from the URL or
//! inside it — on a standalone server and on a Redis Cluster, and without it
//! (or with a wrong one) fail with a clear `unavailable` error that never
//! shows the password.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::broker::{
    Broker, BrokerConfig, BrokerError, ClusterRef, GatewayIdentity, RedisBroker, RedisTarget,
    Routed, SendRequest, reports::ReportsReader,
};
use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::model::Conversation;
use switchboard_testkit::{RedisCluster, RedisServer, RedisServerOptions};
use tokio::time::timeout;

const PASSWORD: &str = "d0f1c2e3b4a5968778695a4b3c2d1e0f";

fn with_password(url: &str) -> RedisTarget {
    RedisTarget::new(url, Some(PASSWORD.to_string()))
}

/// `redis://host…` → `redis://:PASSWORD@host…` (same for `redis-cluster://`).
fn url_with_password(url: &str) -> String {
    url.replacen("://", &format!("://:{PASSWORD}@"), 1)
}

/// A group send and its routed fan-out over pub/sub: the command pool and
/// the subscriber connection both authenticate.
async fn works(target: RedisTarget) {
    let b = RedisBroker::connect_to(&target, BrokerConfig::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
    let (x, y) = (Address(rand::random()), Address(rand::random()));
    let conv = Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: Some("t".into()),
        members: vec![x, y],
        created_by: Some(x),
        created_at: 1,
        publishers: Vec::new(),
        visibility: None,
    };
    b.create_group(&conv).await.unwrap();
    let sent = b
        .send(SendRequest {
            conv: conv.id.clone(),
            id: "00000000-0000-4000-8000-000000000001".parse().unwrap(),
            from: x,
            body: RawValue::from_string("{\"t\":\"hi\"}".into()).unwrap(),
            privileged: false,
        })
        .await
        .unwrap();
    assert_eq!(sent.message.seq, 1);

    let gw = format!("gw-{:08x}", rand::random::<u32>());
    let mut rx = b.attach(&gw).await.unwrap();
    b.gateway_alive(&gw).await.unwrap();
    b.register(&y, &gw).await.unwrap();
    b.route(Routed {
        users: vec![y],
        frame: Arc::from("{\"type\":\"msg\"}"),
        ack: None,
        skip_conn: None,
        channel: None,
        revoke: None,
    })
    .await
    .unwrap();
    let got = timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("routed within 5 s")
        .expect("feed open");
    assert_eq!(got.users, vec![y]);

    // The operator's reader of connection reports, on the same target.
    let id = GatewayIdentity::new(ClusterRef::new("ns", "chat").unwrap(), "gw-0").unwrap();
    b.report_connections(&id, 4, Duration::from_secs(30))
        .await
        .unwrap();
    let reader = ReportsReader::for_target(&target).unwrap();
    reader.connect().await.unwrap();
    let got = reader.read(id.cluster()).await.unwrap();
    assert_eq!(got.total(), 4);
    reader.quit().await;
    b.quit().await;
}

/// Without the password, or with a wrong one: `unavailable`, saying why,
/// and the password given is nowhere in the message.
async fn refused(target: RedisTarget, wrong: Option<&str>) {
    let shown = target.to_string();
    let err = match RedisBroker::connect_to(&target, BrokerConfig::default()).await {
        Err(e) => e,
        Ok(b) => {
            // fred may connect lazily: then the first command fails.
            let e = b.ping().await.expect_err("a command without the password");
            b.quit().await;
            e
        }
    };
    let msg = err.to_string();
    assert!(
        matches!(err, BrokerError::Unavailable(_)),
        "{shown}: {err:?}"
    );
    let upper = msg.to_ascii_uppercase();
    assert!(
        upper.contains("NOAUTH") || upper.contains("WRONGPASS") || upper.contains("AUTH"),
        "{shown}: the error does not say authentication failed: {msg}"
    );
    if let Some(wrong) = wrong {
        assert!(!msg.contains(wrong), "{msg}");
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!format!("{target:?}").contains(wrong));
    }
    assert!(!msg.contains(PASSWORD), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_needs_the_password() {
    let server = RedisServer::start_with(
        RedisServerOptions {
            persistence: false,
            ..RedisServerOptions::default()
        }
        .with_password(PASSWORD),
    )
    .unwrap();
    let url = server.url();
    works(with_password(&url)).await;
    works(RedisTarget::from(url_with_password(&url))).await;
    refused(RedisTarget::from(&url), None).await;
    let wrong = "not-the-password-7f3a";
    refused(RedisTarget::new(&url, Some(wrong.into())), Some(wrong)).await;
    let in_url = url.replacen("://", &format!("://:{wrong}@"), 1);
    refused(RedisTarget::from(in_url), Some(wrong)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_needs_the_password_on_every_node() {
    // Replicas too: they authenticate to their primary with masterauth.
    let cluster = RedisCluster::start_with_password(3, 1, Some(PASSWORD)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for node in cluster.nodes() {
        loop {
            let info = node.command(&["INFO", "replication"]).unwrap();
            if !info.contains("role:slave") || info.contains("master_link_status:up") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} never synced with its primary: {info}",
                node.addr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let url = cluster.url();
    works(with_password(&url)).await;
    works(RedisTarget::from(url_with_password(&url))).await;
    refused(RedisTarget::from(&url), None).await;
    let wrong = "not-the-password-7f3a";
    refused(RedisTarget::new(&url, Some(wrong.into())), Some(wrong)).await;
}
