//! Sync beyond the conversation log: a client that was offline longer than
//! the Redis log reaches back gets everything from PostgreSQL, in order, over
//! the documented WebSocket protocol.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_core::broker::{DynBroker, RedisBroker};
use switchboard_core::store::DynStore;
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_proto::ids::{Address, ConvId, MsgId};
use switchboard_testkit::{Postgres, RedisServer};
use switchboard_worker::Worker;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_util::sync::CancellationToken;

async fn gateway(broker: DynBroker, store: Option<DynStore>) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = GatewayConfig {
        sync_limit: 25,
        ..GatewayConfig::default()
    };
    Gateway::start_with_store(cfg, broker, store, listener)
        .await
        .unwrap()
}

/// Sign `user` in with a token from the gateway's own signer, send
/// `sync {conv, after}`, and collect the replayed seqs and the `synced` frame.
async fn sync(gw: &Gateway, user: Address, conv: &ConvId, after: u64) -> (Vec<u64>, Value) {
    let (token, _) = gw.state().chat.tokens.issue(
        &user,
        Duration::from_secs(60),
        time::OffsetDateTime::now_utc(),
    );
    let url = format!("ws://{}/v1/ws", gw.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMsg::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(WsMsg::text(
        json!({"type": "sync", "conv": conv, "after": after}).to_string(),
    ))
    .await
    .unwrap();
    let mut seqs = vec![];
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no frame within 5 s")
            .unwrap()
            .unwrap();
        let WsMsg::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str().unwrap() {
            "msg" => {
                assert_eq!(v["body"]["i"], v["seq"], "{v}");
                seqs.push(v["seq"].as_u64().unwrap());
            }
            "synced" => return (seqs, v),
            "ready" | "presence" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
}

#[tokio::test]
async fn offline_past_the_log_syncs_from_postgres_in_order() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "sync").await;
    let broker = Arc::new(
        RedisBroker::connect(&redis.url(), broker_config())
            .await
            .unwrap(),
    );
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };

    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let mut sent = Sent::new();
    for i in 1..=60 {
        send(
            &broker,
            &mut sent,
            &dm,
            a,
            &MsgId::random(),
            &format!(r#"{{"i":{i}}}"#),
        )
        .await
        .unwrap();
    }
    drained(&streams, Duration::from_secs(20)).await;
    // The log keeps only the newest 10 (exact trim, as if capped long ago).
    let shard = switchboard_core::broker::shard_of(&dm, SHARDS);
    let log = format!("sb:{{{shard}}}:c:{dm}:log");
    redis
        .command(&["XTRIM", &log, "MAXLEN", "=", "10"])
        .unwrap();

    let with_store = gateway(broker.clone(), Some(Arc::new(store.clone()))).await;
    // Pages of `sync_limit` (25): the client syncs again from the last seq.
    let (p1, s1) = sync(&with_store, b, &dm, 0).await;
    assert_eq!(p1, (1..=25).collect::<Vec<_>>());
    assert_eq!(
        (s1["recovered"].as_bool(), s1["last_seq"].as_u64()),
        (Some(true), Some(60))
    );
    let (p2, _) = sync(&with_store, b, &dm, 25).await;
    assert_eq!(p2, (26..=50).collect::<Vec<_>>());
    // The last page straddles the store and the log (50 → 51..60 from the log).
    let (p3, s3) = sync(&with_store, b, &dm, 45).await;
    assert_eq!(p3, (46..=60).collect::<Vec<_>>());
    assert_eq!(s3["recovered"], true);

    // The same request without a store can only offer the log, and says so.
    let log_only = gateway(broker.clone(), None).await;
    let (p, s) = sync(&log_only, b, &dm, 0).await;
    assert_eq!(p, (51..=60).collect::<Vec<_>>());
    assert_eq!(s["recovered"], false);

    // A non-member gets the same refusal as for a conversation that does not exist.
    let outsider = addr();
    let (token, _) = with_store.state().chat.tokens.issue(
        &outsider,
        Duration::from_secs(60),
        time::OffsetDateTime::now_utc(),
    );
    let url = format!("ws://{}/v1/ws", with_store.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMsg::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(WsMsg::text(
        json!({"type": "sync", "conv": dm, "after": 0}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let Some(Ok(WsMsg::Text(t))) = ws.next().await else {
            panic!("closed")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["type"] == "error" {
            assert_eq!(v["code"], "forbidden", "{v}");
            break;
        }
        assert_ne!(v["type"], "msg", "{v}");
    }

    with_store.shutdown().await;
    log_only.shutdown().await;
    stop.cancel();
    w.await.unwrap();
}

/// Redis loses everything (restarted without persistence): the next send
/// seeds the conversation from PostgreSQL, so seqs continue above the stored
/// ones in a new epoch, and a client syncing from scratch gets the stored
/// history and the new messages as one run.
#[tokio::test]
async fn redis_data_loss_starts_a_new_epoch_above_the_stored_seqs() {
    let mut redis =
        switchboard_testkit::RedisServer::start_with(switchboard_testkit::RedisServerOptions {
            persistence: false,
            ..Default::default()
        })
        .unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "epoch").await;
    let cfg = switchboard_core::broker::BrokerConfig {
        seed_from_store: true,
        ..broker_config()
    };
    let broker = Arc::new(RedisBroker::connect(&redis.url(), cfg).await.unwrap());
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let gw = gateway(broker.clone(), Some(Arc::new(store.clone()))).await;
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();

    // Sends go through the gateway's seeding path (the first one seeds).
    let send_ws = |i: u64| send_as(&gw, a, &dm, format!("m{i}"), json!({"i": i}));
    for i in 1..=5 {
        assert_eq!(send_ws(i).await, i);
    }
    drained(&streams, Duration::from_secs(20)).await;
    let (seqs, before) = sync(&gw, b, &dm, 0).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let epoch1 = before["epoch"].as_u64().unwrap();
    assert!(epoch1 > 0, "{before}");

    redis.kill9();
    redis.restart().unwrap();
    // Retry like a client until the broker reconnected; seq continues at 6.
    let mut seq = 0;
    for _ in 0..100 {
        seq = send_ws(6).await;
        if seq > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seq, 6,
        "seq restarted instead of continuing above the stored 5"
    );
    assert_eq!(send_ws(7).await, 7);
    let (seqs, after) = sync(&gw, b, &dm, 0).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(after["recovered"], true);
    assert_eq!(after["epoch_base"], 5);
    assert!(after["epoch"].as_u64().unwrap() > epoch1, "{after}");
    drained(&streams, Duration::from_secs(20)).await;
    let stored: Vec<(i64,)> = sqlx::query_as("SELECT seq FROM messages ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );

    gw.shutdown().await;
    stop.cancel();
    w.await.unwrap();
}

/// Send `{"type":"send"}` as `from` through `gw`; the `sent` seq, or 0 for
/// an error answer (Redis coming back).
async fn send_as(gw: &Gateway, from: Address, conv: &ConvId, id: String, body: Value) -> u64 {
    let (token, _) = gw.state().chat.tokens.issue(
        &from,
        Duration::from_secs(60),
        time::OffsetDateTime::now_utc(),
    );
    let url = format!("ws://{}/v1/ws", gw.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMsg::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    let frame = json!({"type": "send", "conv": conv, "id": id, "body": body});
    ws.send(WsMsg::text(frame.to_string())).await.unwrap();
    loop {
        let Some(Ok(WsMsg::Text(t))) = ws.next().await else {
            panic!("closed")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str().unwrap() {
            "sent" => return v["seq"].as_u64().unwrap(),
            "error" => return 0,
            _ => {}
        }
    }
}

/// Every `(seq, id)` a `sync` from 0 replays (in pages), and the last
/// `synced` frame.
async fn replay_ids(gw: &Gateway, user: Address, conv: &ConvId) -> (Vec<(u64, String)>, Value) {
    let (token, _) = gw.state().chat.tokens.issue(
        &user,
        Duration::from_secs(60),
        time::OffsetDateTime::now_utc(),
    );
    let url = format!("ws://{}/v1/ws", gw.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(WsMsg::text(
        json!({"type": "auth", "token": token}).to_string(),
    ))
    .await
    .unwrap();
    let mut got: Vec<(u64, String)> = vec![];
    loop {
        let after = got.last().map_or(0, |(s, _)| *s);
        ws.send(WsMsg::text(
            json!({"type": "sync", "conv": conv, "after": after}).to_string(),
        ))
        .await
        .unwrap();
        let synced = loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("no frame within 5 s")
                .unwrap()
                .unwrap();
            let WsMsg::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["type"].as_str().unwrap() {
                "msg" => got.push((
                    v["seq"].as_u64().unwrap(),
                    v["id"].as_str().unwrap().to_owned(),
                )),
                "synced" => break v,
                _ => {}
            }
        };
        let last = got.last().map_or(0, |(s, _)| *s);
        if last >= synced["last_seq"].as_u64().unwrap() || last == after {
            return (got, synced);
        }
    }
}

/// Redis restored to an older snapshot (as an AOF `everysec` crash or an
/// async failover does on a smaller scale): its seq counter is below seqs
/// the worker already stored. New messages are first given those seqs; the
/// worker finds each conflict, and the message gets a new seq above every
/// stored one. Every message is then in history exactly once, under one
/// seq, the stored ones unchanged, and clients see a new epoch. (Before,
/// PostgreSQL stored a second row under a taken seq, which clients dropped
/// as seen and history replay cut at.)
#[tokio::test]
async fn a_counter_that_went_back_never_reuses_a_stored_seq() {
    let mut redis =
        switchboard_testkit::RedisServer::start_with(switchboard_testkit::RedisServerOptions {
            persistence: false,
            ..Default::default()
        })
        .unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "rollback").await;
    let cfg = switchboard_core::broker::BrokerConfig {
        seed_from_store: true,
        ..broker_config()
    };
    let broker = Arc::new(RedisBroker::connect(&redis.url(), cfg).await.unwrap());
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let metrics = worker.metrics();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let gw = gateway(broker.clone(), Some(Arc::new(store.clone()))).await;
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();

    for i in 1..=5 {
        assert_eq!(
            send_as(&gw, a, &dm, format!("m{i}"), json!({"id": format!("m{i}")})).await,
            i
        );
    }
    drained(&streams, Duration::from_secs(20)).await;
    redis.command(&["SAVE"]).unwrap();
    for i in 6..=10 {
        assert_eq!(
            send_as(&gw, a, &dm, format!("m{i}"), json!({"id": format!("m{i}")})).await,
            i
        );
    }
    drained(&streams, Duration::from_secs(20)).await;
    let (_, before) = replay_ids(&gw, b, &dm).await;

    // Back to the snapshot: the counter says 5, the store has 1..=10.
    redis.kill9();
    redis.restart().unwrap();
    let mut given = vec![];
    for i in 11..=15 {
        let id = format!("n{i}");
        let mut seq = 0;
        for _ in 0..100 {
            seq = send_as(&gw, b, &dm, id.clone(), json!({"id": id})).await;
            if seq > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        given.push(seq);
    }
    // The counter went back: the first new message got a stored seq. (The
    // worker repairs while the sends go on, so later ones may already get
    // seqs above the stored ones.)
    assert_eq!(given[0], 6, "the counter did go back: {given:?}");
    let conflicted = given.iter().filter(|s| **s <= 10).count() as u64;
    drained(&streams, Duration::from_secs(20)).await;
    // The conflicts were repaired, and their new entries stored too.
    drained(&streams, Duration::from_secs(20)).await;

    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, msg_id FROM messages WHERE conv_id = $1 ORDER BY seq")
            .bind(dm.as_str())
            .fetch_all(store.pool())
            .await
            .unwrap();
    // m1..m10 keep their seqs; n11..n15 are 11..15, each exactly once (in
    // the order the repairs and the later sends happened), a message that
    // was not given a stored seq under the one it was given.
    let stored: Vec<(i64, String)> = (1..=10).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(rows[..10], stored[..], "stored seqs kept: {rows:?}");
    let mut moved: Vec<&str> = rows[10..].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        rows[10..].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (11..=15).collect::<Vec<i64>>(),
        "{rows:?}"
    );
    moved.sort();
    assert_eq!(moved, ["n11", "n12", "n13", "n14", "n15"], "{rows:?}");
    for (i, seq) in (11..=15).zip(&given) {
        if *seq > 10 {
            assert!(rows.contains(&(*seq as i64, format!("n{i}"))), "{rows:?}");
        }
    }
    assert_eq!(metrics.resequenced.get(), conflicted);
    let want = rows.clone();

    // Clients replay the same, in a new epoch whose base is below the
    // seqs that were given twice.
    let (got, after) = replay_ids(&gw, b, &dm).await;
    let want: Vec<(u64, String)> = want.into_iter().map(|(s, id)| (s as u64, id)).collect();
    assert_eq!(got, want);
    assert_eq!(after["recovered"], true, "{after}");
    assert!(
        after["epoch"].as_u64().unwrap() > before["epoch"].as_u64().unwrap(),
        "{before} {after}"
    );
    assert!(after["epoch_base"].as_u64().unwrap() <= 5, "{after}");
    // The sender's retry of a repaired message answers its new seq.
    let n11 = rows.iter().find(|(_, id)| id == "n11").unwrap().0 as u64;
    assert_eq!(
        send_as(&gw, b, &dm, "n11".into(), json!({"id": "n11"})).await,
        n11
    );

    gw.shutdown().await;
    stop.cancel();
    w.await.unwrap();
}
