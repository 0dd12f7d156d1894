//! The fallback relay (issue 12): two gateways on one real Redis, a third
//! Switchboard gateway as their relay (its Ably-compatible API, an API key).
//! Redis is killed mid-conversation: messages keep flowing between the
//! gateways through the relay (`relayed`, no seq), then Redis comes back
//! (with its data, or empty) and every message accepted meanwhile is
//! sequenced exactly once and delivered again with its seq.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::relay::*;
use common::*;
use serde_json::json;
use switchboard_gateway::{GatewayConfig, RelayConfig};
use switchboard_proto::ids::ConvId;

async fn chat_through_an_outage(keep_data: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let relay = start_relay().await;
    let relay_addr = relay.local_addr().to_string();
    let mut backend = Backend::redis();
    let gw1 = start_gateway(&backend, relayed_config(&relay_addr)).await;
    let gw2 = start_gateway(&backend, relayed_config(&relay_addr)).await;
    for gw in [&gw1, &gw2] {
        until(
            "the relay subscription",
            Duration::from_secs(10),
            || async { metric(gw, "relay_subscribed").await == 1 },
        )
        .await;
    }

    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw1), &a).await;
    let tb = login(&http(&gw2), &b).await;
    let dm = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let group = create_group(&http(&gw1), &ta, &[b.addr]).await;
    // A public channel a created (so gw1 knows its publishers), b follows.
    let name = format!("news-{}", rand::random::<u32>());
    let r = reqwest::Client::new()
        .post(format!("{}/v1/channels", http(&gw1)))
        .bearer_auth(&ta)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let channel = format!("ch:{name}");
    let mut wa = Ws::connect(&gw1, &ta).await;
    let mut wb = Ws::connect(&gw2, &tb).await;
    wb.send(json!({"type":"subscribe","channel":&channel}))
        .await;
    next_of(&mut wb, "subscribed", Duration::from_secs(5)).await;
    // Created after the sockets opened (their presence announcements walk
    // the members of every group they are in) and never used: gw1 has no
    // member list for it when Redis goes.
    let quiet_group = create_group(&http(&gw1), &ta, &[b.addr]).await;

    // Before: normal, sequenced delivery (and gw1 learns the group's members).
    for (conv, id) in [(&dm, "before"), (&group, "g-before")] {
        wa.send(json!({"type":"send","conv":conv,"id":id,"body":id}))
            .await;
        assert!(
            next_of(&mut wa, "sent", Duration::from_secs(5)).await["seq"]
                .as_u64()
                .unwrap()
                > 0
        );
    }
    msgs(&mut wb, &["before", "g-before"], false).await;

    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };
    if keep_data {
        redis.command(&["SAVE"]).unwrap();
    }
    redis.kill9();
    for gw in [&gw1, &gw2] {
        until("relay mode", Duration::from_secs(10), || {
            relay_mode(gw, true)
        })
        .await;
    }

    // During: both directions, a direct conversation and a group.
    for (conv, id) in [(&dm, "r1"), (&dm, "r2"), (&group, "g1"), (&channel, "c1")] {
        wa.send(json!({"type":"send","conv":conv,"id":id,"body":id}))
            .await;
        let sent = next_of(&mut wa, "sent", Duration::from_secs(5)).await;
        assert_eq!(
            (&sent["id"], &sent["relayed"], &sent["seq"]),
            (&json!(id), &json!(true), &json!(0)),
            "{sent}"
        );
    }
    // A retry of a relayed id is answered the same and relayed once.
    wa.send(json!({"type":"send","conv":&dm,"id":"r2","body":"r2"}))
        .await;
    assert_eq!(
        next_of(&mut wa, "sent", Duration::from_secs(5)).await["relayed"],
        true
    );
    let got = msgs(&mut wb, &["r1", "r2", "g1", "c1"], true).await;
    assert_eq!(got["c1"]["conv"], json!(channel));
    assert_eq!(got["r1"]["from"], json!(a.addr.to_string()));
    wb.send(json!({"type":"send","conv":&dm,"id":"r3","body":"r3"}))
        .await;
    assert_eq!(
        next_of(&mut wb, "sent", Duration::from_secs(5)).await["relayed"],
        true
    );
    msgs(&mut wa, &["r3"], true).await;
    // A group this gateway never used is refused with a clear error.
    wa.send(json!({"type":"send","conv":&quiet_group,"id":"g-unknown","body":"x"}))
        .await;
    let err = next_of(&mut wa, "error", Duration::from_secs(5)).await;
    assert_eq!(err["code"], "unavailable", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("group's members"),
        "{err}"
    );
    assert!(metric(&gw1, "relay_published").await >= 4);
    assert!(metric(&gw2, "relay_received").await >= 4);
    assert_eq!(metric(&gw1, "relay_spooled").await, 4);

    // After: Redis back; every relayed message gets its seq, once.
    if keep_data {
        redis.restart().unwrap();
    } else {
        redis.wipe_and_restart().unwrap();
    }
    for gw in [&gw1, &gw2] {
        until("relay mode off", Duration::from_secs(20), || {
            relay_mode(gw, false)
        })
        .await;
    }
    if keep_data {
        let seq_b = msgs(&mut wb, &["r1", "r2", "g1", "c1"], false).await;
        assert!(seq_b["c1"]["seq"].as_u64().unwrap() > 0);
        let seq_a = msgs(&mut wa, &["r3", "r1", "r2", "g1"], false).await;
        assert_eq!(seq_a["r1"]["seq"], seq_b["r1"]["seq"]);
        assert_eq!(metric(&gw1, "relay_replayed").await, 4);
    } else {
        // Redis came back empty and no PostgreSQL holds the group and the
        // channel: they are gone, so their relayed messages cannot be
        // stored. The sender is told (an error frame naming each), nothing
        // is dropped silently.
        let seq_b = msgs(&mut wb, &["r1", "r2"], false).await;
        let mut errors = Vec::new();
        let seq_a = msgs_and_errors(&mut wa, &["r3", "r1", "r2"], false, &mut errors).await;
        while errors.len() < 2 {
            errors.push(next_of(&mut wa, "error", Duration::from_secs(10)).await);
        }
        let mut refs: Vec<&str> = errors.iter().map(|e| e["ref"].as_str().unwrap()).collect();
        refs.sort();
        assert_eq!(refs, ["c1", "g1"], "{errors:?}");
        for err in &errors {
            let text = err["message"].as_str().unwrap();
            assert!(text.contains("could not be stored"), "{err}");
        }
        assert_eq!(seq_a["r1"]["seq"], seq_b["r1"]["seq"]);
        assert_eq!(metric(&gw1, "relay_replayed").await, 2);
        assert_eq!(metric(&gw1, "relay_rejected").await, 2);
    }
    assert_eq!(metric(&gw2, "relay_replayed").await, 1);
    assert_eq!(metric(&gw1, "relay_spooled").await, 0);

    let dm_history = history(&gw1, &ta, &dm).await;
    let ids: Vec<&str> = dm_history.iter().map(|(i, _)| i.as_str()).collect();
    let expected: &[&str] = if keep_data {
        &["before", "r1", "r2", "r3"]
    } else {
        // Redis restarted empty and no store holds older history: the
        // conversation starts again with what was relayed.
        &["r1", "r2", "r3"]
    };
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{dm_history:?}");
    let mut seqs: Vec<u64> = dm_history.iter().map(|(_, s)| *s).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), dm_history.len(), "seqs unique: {dm_history:?}");
    // Order within a gateway is kept: r1 before r2.
    let pos = |id: &str| ids.iter().position(|i| *i == id).unwrap();
    assert!(pos("r1") < pos("r2"), "{dm_history:?}");

    // Normal delivery again, sequenced.
    wa.send(json!({"type":"send","conv":&dm,"id":"after","body":"after"}))
        .await;
    assert!(
        next_of(&mut wa, "sent", Duration::from_secs(5)).await["seq"]
            .as_u64()
            .unwrap()
            > 0
    );
    msgs(&mut wb, &["after"], false).await;

    gw1.shutdown().await;
    gw2.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_flows_through_the_relay_while_redis_is_down() {
    chat_through_an_outage(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_flows_through_the_relay_when_redis_comes_back_empty() {
    chat_through_an_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_relay_down_too_sends_are_refused_and_nothing_is_kept() {
    // A relay address where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let mut backend = Backend::redis();
    let gw = start_gateway(&backend, relayed_config(&dead_addr)).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw), &a).await;
    let dm = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let mut wa = Ws::connect(&gw, &ta).await;

    let Backend::Redis(server) = &mut backend else {
        unreachable!()
    };
    server.kill9();
    until("relay mode", Duration::from_secs(10), || {
        relay_mode(&gw, true)
    })
    .await;
    wa.send(json!({"type":"send","conv":&dm,"id":"lost-1","body":"x"}))
        .await;
    let err = next_of(&mut wa, "error", Duration::from_secs(15)).await;
    assert_eq!(
        (&err["code"], &err["ref"]),
        (&json!("unavailable"), &json!("lost-1")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("relay"), "{err}");
    assert_eq!(metric(&gw, "relay_spooled").await, 0);
    assert!(metric(&gw, "relay_publish_failures").await >= 1);

    server.restart().unwrap();
    until("relay mode off", Duration::from_secs(20), || {
        relay_mode(&gw, false)
    })
    .await;
    assert!(history(&gw, &ta, &dm).await.is_empty());
    gw.shutdown().await;
}

/// Redis going down and up three times in a row: every message is relayed
/// while it is down, sequenced once after each return, never twice, and
/// neither gateway stays in relay mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_redis_loses_and_repeats_nothing() {
    let relay = start_relay().await;
    let relay_addr = relay.local_addr().to_string();
    let mut backend = Backend::redis();
    let gw1 = start_gateway(&backend, relayed_config(&relay_addr)).await;
    let gw2 = start_gateway(&backend, relayed_config(&relay_addr)).await;
    for gw in [&gw1, &gw2] {
        until(
            "the relay subscription",
            Duration::from_secs(10),
            || async { metric(gw, "relay_subscribed").await == 1 },
        )
        .await;
    }
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw1), &a).await;
    let tb = login(&http(&gw2), &b).await;
    let dm = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let mut wa = Ws::connect(&gw1, &ta).await;
    let mut wb = Ws::connect(&gw2, &tb).await;
    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };

    let mut all = Vec::new();
    let mut sequenced_seqs = Vec::new();
    for round in 0..3 {
        redis.command(&["SAVE"]).unwrap();
        redis.kill9();
        for gw in [&gw1, &gw2] {
            until("relay mode", Duration::from_secs(10), || {
                relay_mode(gw, true)
            })
            .await;
        }
        let ids = [format!("f{round}-1"), format!("f{round}-2")];
        for id in &ids {
            wa.send(json!({"type":"send","conv":&dm,"id":id,"body":id}))
                .await;
            let sent = next_of(&mut wa, "sent", Duration::from_secs(5)).await;
            assert_eq!(sent["relayed"], true, "{sent}");
        }
        let want: Vec<&str> = ids.iter().map(String::as_str).collect();
        msgs(&mut wb, &want, true).await;
        redis.restart().unwrap();
        for gw in [&gw1, &gw2] {
            until("relay mode off", Duration::from_secs(20), || {
                relay_mode(gw, false)
            })
            .await;
        }
        let got = msgs(&mut wb, &want, false).await;
        sequenced_seqs.extend(got.values().map(|m| m["seq"].as_u64().unwrap()));
        all.extend(ids);
    }
    for gw in [&gw1, &gw2] {
        assert_eq!(metric(gw, "relay_mode").await, 0);
        assert_eq!(metric(gw, "relay_spooled").await, 0);
    }
    assert_eq!(metric(&gw1, "relay_replayed").await, 6);
    // No message is sequenced twice (msgs() fails on a second seq for an id within a
    // round; across rounds the seqs are all different).
    let mut seqs = sequenced_seqs.clone();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 6, "{sequenced_seqs:?}");
    let history = history(&gw1, &ta, &dm).await;
    let mut ids: Vec<String> = history.iter().map(|(i, _)| i.clone()).collect();
    ids.sort();
    all.sort();
    assert_eq!(ids, all, "{history:?}");

    gw1.shutdown().await;
    gw2.shutdown().await;
    relay.shutdown().await;
}

/// `provider: ably` speaks the same REST publish and SSE subscribe (the
/// local Switchboard stands in for Ably, whose servers are unreachable
/// here); a dead primary host is skipped for the fallback hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ably_relay_is_reached_through_its_fallback_hosts() {
    let relay = start_relay().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let file = json!({
        "provider": "ably",
        "hosts": [dead_addr],
        "fallbackHosts": [relay.local_addr().to_string()],
        "tls": false,
    });
    let cfg = || GatewayConfig {
        relay: Some(RelayConfig::parse(&file.to_string(), Some(RELAY_KEY.into())).unwrap()),
        ..fast_config()
    };
    let mut backend = Backend::redis();
    let gw1 = start_gateway(&backend, cfg()).await;
    let gw2 = start_gateway(&backend, cfg()).await;
    for gw in [&gw1, &gw2] {
        until(
            "the relay subscription",
            Duration::from_secs(10),
            || async { metric(gw, "relay_subscribed").await == 1 },
        )
        .await;
    }
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw1), &a).await;
    let tb = login(&http(&gw2), &b).await;
    let dm = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let mut wa = Ws::connect(&gw1, &ta).await;
    let mut wb = Ws::connect(&gw2, &tb).await;
    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };
    redis.kill9();
    until("relay mode", Duration::from_secs(10), || {
        relay_mode(&gw1, true)
    })
    .await;
    for id in ["x1", "x2"] {
        wa.send(json!({"type":"send","conv":&dm,"id":id,"body":id}))
            .await;
        assert_eq!(
            next_of(&mut wa, "sent", Duration::from_secs(10)).await["relayed"],
            true
        );
    }
    msgs(&mut wb, &["x1", "x2"], true).await;
    assert_eq!(metric(&gw1, "relay_publish_failures").await, 0);
    gw1.shutdown().await;
    gw2.shutdown().await;
    relay.shutdown().await;
}
