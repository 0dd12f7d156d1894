//! The fallback relay with PostgreSQL behind (issue 12): messages accepted
//! while Redis is down reach PostgreSQL exactly once, with unique seqs, after
//! Redis comes back empty (seeded again from the store, groups included);
//! the Rust SDK surfaces each message once although it arrives twice
//! (relayed, then sequenced).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use switchboard_client::{Client, ClientOptions, Event};
use switchboard_core::broker::{BrokerConfig, MemoryBroker, RedisBroker};
use switchboard_gateway::config::LimitsConfig;
use switchboard_gateway::{Gateway, GatewayConfig, RelayConfig};
use switchboard_proto::ids::{Address, ConvId, MsgId};
use switchboard_testkit::{Postgres, RedisServer, RedisServerOptions};
use switchboard_worker::Worker;
use tokio_util::sync::CancellationToken;

const RELAY_KEY: &str = "relay.key:relay-secret";

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn readyz(gw: &Gateway) -> String {
    match reqwest::get(format!("http://{}/readyz", gw.local_addr())).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn until_ready(gw: &Gateway, relay_mode: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = readyz(gw).await;
        let done = if relay_mode {
            body.contains("Redis unreachable")
        } else {
            body == "ready"
        };
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "readyz still says {body:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Message events on `client` until `quiet` passes without one; by id.
async fn surfaced(client: &mut Client, quiet: Duration) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    while let Ok(Some(ev)) = tokio::time::timeout(quiet, client.next_event()).await {
        if let Event::Message(m) = ev {
            out.entry(m.id.as_str().to_string())
                .or_default()
                .push(m.seq);
        }
    }
    out
}

async fn rows(store: &switchboard_core::store::PgStore, conv: &ConvId) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT seq, msg_id FROM messages WHERE conv_id = $1 ORDER BY seq")
        .bind(conv.as_str())
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_messages_reach_postgres_exactly_once_and_are_surfaced_once() {
    let mut redis = RedisServer::start_with(RedisServerOptions {
        persistence: false,
        ..Default::default()
    })
    .unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "relay").await;
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };

    let relay = Gateway::start(
        GatewayConfig {
            token_secret: b"the relay cluster's own secret".to_vec(),
            api_keys: vec![RELAY_KEY.parse().unwrap()],
            limits: LimitsConfig::off(),
            ..GatewayConfig::default()
        },
        Arc::new(MemoryBroker::default()),
        listener().await,
    )
    .await
    .unwrap();
    let file =
        json!({"hosts": [relay.local_addr().to_string()], "provider": "switchboard", "tls": false});
    let broker = Arc::new(
        RedisBroker::connect(
            &redis.url(),
            BrokerConfig {
                seed_from_store: true,
                ..broker_config()
            },
        )
        .await
        .unwrap(),
    );
    let gw = Gateway::start_with_store(
        GatewayConfig {
            relay: Some(RelayConfig::parse(&file.to_string(), Some(RELAY_KEY.into())).unwrap()),
            ..GatewayConfig::default()
        },
        broker,
        Some(Arc::new(store.clone())),
        listener().await,
    )
    .await
    .unwrap();
    let base = format!("http://{}", gw.local_addr());
    let token = |u: &Address| {
        gw.state()
            .chat
            .tokens
            .issue(u, Duration::from_secs(600), time::OffsetDateTime::now_utc())
            .0
    };
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let group: ConvId = {
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{base}/v1/conversations"))
            .bearer_auth(token(&a))
            .json(&json!({"kind": "group", "members": [b], "title": "t"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_str().unwrap().parse().unwrap()
    };
    let opts = || ClientOptions {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(300),
        send_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let mut ca = Client::connect_with_token(&base, &token(&a), opts())
        .await
        .unwrap();
    let mut cb = Client::connect_with_token(&base, &token(&b), opts())
        .await
        .unwrap();
    let id = |s: &str| -> MsgId { s.parse().unwrap() };

    // Before the outage: sequenced (and the gateway learns the group).
    assert_eq!(ca.send_with_id(&dm, id("m0"), "m0").await.unwrap().seq, 1);
    assert_eq!(
        ca.send_with_id(&group, id("g0"), "g0").await.unwrap().seq,
        1
    );
    drained(&streams, Duration::from_secs(20)).await;

    // Redis dies and comes back empty (no persistence).
    redis.kill9();
    until_ready(&gw, true).await;
    for (conv, m) in [(&dm, "m1"), (&dm, "m2"), (&group, "g1")] {
        let sent = ca.send_with_id(conv, id(m), m).await.unwrap();
        assert!(sent.relayed && sent.seq == 0, "{sent:?}");
    }
    redis.restart().unwrap();
    until_ready(&gw, false).await;
    drained(&streams, Duration::from_secs(20)).await;

    // PostgreSQL: each message once, unique seqs continuing above the
    // stored ones (the conversations were seeded from the store).
    let dm_rows = rows(&store, &dm).await;
    assert_eq!(dm_rows.len(), 3, "{dm_rows:?}");
    assert_eq!(dm_rows[0], (1, "m0".to_string()));
    let mut later: Vec<&str> = dm_rows[1..].iter().map(|(_, i)| i.as_str()).collect();
    later.sort();
    assert_eq!(later, ["m1", "m2"], "{dm_rows:?}");
    assert!(
        dm_rows[1].0 > 1 && dm_rows[2].0 > dm_rows[1].0,
        "{dm_rows:?}"
    );
    let g_rows = rows(&store, &group).await;
    let g_ids: Vec<&str> = g_rows.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(g_ids, ["g0", "g1"], "{g_rows:?}");

    // The recipient saw each message once: the relayed copy (seq 0) and
    // not the sequenced one after it. The sender saw none of its own.
    let got_b = surfaced(&mut cb, Duration::from_secs(2)).await;
    for m in ["m0", "g0"] {
        assert_eq!(got_b.get(m).map(Vec::len), Some(1), "{got_b:?}");
    }
    for m in ["m1", "m2", "g1"] {
        assert_eq!(got_b.get(m), Some(&vec![0]), "{m} once, relayed: {got_b:?}");
    }
    let got_a = surfaced(&mut ca, Duration::from_millis(500)).await;
    assert!(got_a.is_empty(), "the sender's own messages: {got_a:?}");

    ca.close().await;
    cb.close().await;
    gw.shutdown().await;
    relay.shutdown().await;
    stop.cancel();
    let _ = w.await;
}
