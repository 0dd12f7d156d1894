//! The realtime path across two gateway instances, on every engine: the memory
//! broker, a real standalone redis-server and a real 6-node Redis Cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard_proto::ids::ConvId;

/// A on gateway 1 and B on gateway 2 exchange direct messages: seqs 1..n in
/// order, `sent` to the sender, `msg` to the recipient, receipts back, an
/// idempotent resend, and A's second device sees the conversation too.
async fn direct_across_gateways(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&g1), &a).await;
    let tb = login(&http(&g2), &b).await;
    let mut wa = Ws::connect(&g1, &ta).await;
    let mut wa2 = Ws::connect(&g2, &ta).await; // A's second device
    let mut wb = Ws::connect(&g2, &tb).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();

    for i in 1..=20u64 {
        wa.send(json!({"type":"send","conv":conv,"id":format!("m{i}"),"body":{"text":format!("hello {i}")}}))
            .await;
        let sent = wa.recv_type("sent").await;
        assert_eq!(sent["seq"], i, "{sent}");
        assert_eq!(sent["id"], format!("m{i}"));
    }
    for i in 1..=20u64 {
        let m = wb.recv_type("msg").await;
        assert_eq!(m["seq"], i, "{m}");
        assert_eq!(m["conv"], conv.as_str());
        assert_eq!(m["from"], a.addr.to_string());
        assert_eq!(m["body"]["text"], format!("hello {i}"));
        wb.ack(&m).await;
        let m2 = wa2.recv_type("msg").await;
        assert_eq!(m2["seq"], i);
        wa2.ack(&m2).await;
    }
    // A's sending device got `sent`, never its own `msg`.
    // Receipts: B's acks raise B's delivered watermark, visible to A.
    let mut delivered = 0;
    while delivered < 20 {
        let r = wa.recv_type("receipt").await;
        if r["user"] == b.addr.to_string() {
            delivered = r["delivered"].as_u64().unwrap();
        }
    }
    // Read receipt.
    wb.send(json!({"type":"read","conv":conv,"seq":15})).await;
    loop {
        let r = wa.recv_type("receipt").await;
        if r["user"] == b.addr.to_string() && r["read"] == 15 {
            assert_eq!(r["delivered"], 20);
            break;
        }
    }
    // Idempotent resend: same id → same seq, nothing delivered again.
    wa.send(json!({"type":"send","conv":conv,"id":"m3","body":{"text":"hello 3"}}))
        .await;
    let again = wa.recv_type("sent").await;
    assert_eq!(again["seq"], 3);
    assert!(
        wb.collect_type("msg", Duration::from_millis(400))
            .await
            .is_empty()
    );
    // The next new message continues the sequence with no gap.
    wa.send(json!({"type":"send","conv":conv,"id":"m21","body":1}))
        .await;
    assert_eq!(wa.recv_type("sent").await["seq"], 21);
    assert_eq!(wb.recv_type("msg").await["seq"], 21);
    g1.shutdown().await;
    g2.shutdown().await;
}

/// A group created over REST delivers to every member on either gateway.
async fn group_across_gateways(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b, c) = (Wallet::random(), Wallet::random(), Wallet::random());
    let ta = login(&http(&g1), &a).await;
    let tb = login(&http(&g2), &b).await;
    let tc = login(&http(&g1), &c).await;
    let conv = create_group(&http(&g1), &ta, &[b.addr, c.addr]).await;
    let mut wa = Ws::connect(&g1, &ta).await;
    let mut wb = Ws::connect(&g2, &tb).await;
    let mut wc = Ws::connect(&g1, &tc).await;
    wb.send(json!({"type":"send","conv":conv,"id":"x1","body":"from b"}))
        .await;
    assert_eq!(wb.recv_type("sent").await["seq"], 1);
    for ws in [&mut wa, &mut wc] {
        let m = ws.recv_type("msg").await;
        assert_eq!(m["body"], "from b");
        assert_eq!(m["from"], b.addr.to_string());
        ws.ack(&m).await;
    }
    wc.send(json!({"type":"send","conv":conv,"id":"x2","body":"from c"}))
        .await;
    assert_eq!(wc.recv_type("sent").await["seq"], 2);
    assert_eq!(wa.recv_type("msg").await["seq"], 2);
    assert_eq!(wb.recv_type("msg").await["seq"], 2);
    g1.shutdown().await;
    g2.shutdown().await;
}

/// No ack → the message is resent exactly `max_retries` (3) times, then the
/// gateway gives up; an ack stops the resends.
async fn retries_until_acked(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let mut wa = Ws::connect(&g1, &login(&http(&g1), &a).await).await;
    let mut wb = Ws::connect(&g2, &login(&http(&g2), &b).await).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    wa.send(json!({"type":"send","conv":conv,"id":"r1","body":"retry me"}))
        .await;
    wa.recv_type("sent").await;
    // ack_timeout is 300 ms: first delivery + 3 resends within ~1.2 s, then silence.
    let got = wb.collect_type("msg", Duration::from_millis(2000)).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|m| m["seq"] == 1));
    // Acked messages are not resent.
    wa.send(json!({"type":"send","conv":conv,"id":"r2","body":"ack me"}))
        .await;
    let m = wb.recv_type("msg").await;
    wb.ack(&m).await;
    assert!(
        wb.collect_type("msg", Duration::from_millis(800))
            .await
            .is_empty()
    );
    g1.shutdown().await;
    g2.shutdown().await;
}

/// B disconnects, misses messages, reconnects on the other gateway and syncs.
async fn resync_after_disconnect(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&g1), &a).await;
    let tb = login(&http(&g2), &b).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let mut wa = Ws::connect(&g1, &ta).await;
    let mut wb = Ws::connect(&g2, &tb).await;
    wa.send(json!({"type":"send","conv":conv,"id":"s1","body":1}))
        .await;
    assert_eq!(wa.recv_type("sent").await["seq"], 1);
    let m = wb.recv_type("msg").await;
    wb.ack(&m).await;
    wb.inner.close(None).await.unwrap();
    drop(wb);
    for i in 2..=6 {
        wa.send(json!({"type":"send","conv":conv,"id":format!("s{i}"),"body":i}))
            .await;
        assert_eq!(wa.recv_type("sent").await["seq"], i);
    }
    let mut wb = Ws::connect(&g1, &tb).await;
    wb.send(json!({"type":"sync","conv":conv,"after":1})).await;
    for i in 2..=6 {
        let m = wb.recv_type("msg").await;
        assert_eq!(m["seq"], i);
        assert_eq!(m["body"], i);
        wb.ack(&m).await;
    }
    let synced = wb.recv_type("synced").await;
    assert_eq!(synced["recovered"], true);
    assert_eq!(synced["last_seq"], 6);
    // Nothing to replay: still a synced answer.
    wb.send(json!({"type":"sync","conv":conv,"after":6})).await;
    let synced = wb.recv_type("synced").await;
    assert_eq!(synced["last_seq"], 6);
    g1.shutdown().await;
    g2.shutdown().await;
}

/// Typing is relayed to the other members, rate-limited; presence moves
/// online → away → offline with (shortened) thresholds.
async fn typing_and_presence(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&g1), &a).await;
    let tb = login(&http(&g2), &b).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let mut wa = Ws::connect(&g1, &ta).await;
    // A first message makes A and B peers.
    wa.send(json!({"type":"send","conv":conv,"id":"p1","body":"hi"}))
        .await;
    wa.recv_type("sent").await;
    wa.inner.close(None).await.unwrap();
    drop(wa);
    let mut wb = Ws::connect(&g2, &tb).await;
    // Wait until A counts as offline, so its return is a transition.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = wb
        .collect_type("presence", Duration::from_millis(100))
        .await;
    let mut wa = Ws::connect(&g1, &ta).await;
    let p = wb.recv_type("presence").await;
    assert_eq!(p["user"], a.addr.to_string());
    assert_eq!(p["status"], "online");

    wa.send(json!({"type":"typing","conv":conv})).await;
    wa.send(json!({"type":"typing","conv":conv})).await; // within the interval: dropped
    let t = wb.collect_type("typing", Duration::from_millis(400)).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0]["user"], a.addr.to_string());
    assert!(
        wa.collect_type("typing", Duration::from_millis(100))
            .await
            .is_empty()
    );

    wa.inner.close(None).await.unwrap();
    drop(wa);
    let p = wb.recv_type("presence").await;
    assert_eq!(p["status"], "away", "{p}");
    let p = wb.recv_type("presence").await;
    assert_eq!(p["status"], "offline", "{p}");
    assert!(p["last_seen"].as_u64().unwrap() > 0);
    g1.shutdown().await;
    g2.shutdown().await;
}

/// B moves between gateways while A keeps sending from gateway 1: every
/// message sent after B's socket is ready (the `ready` frame follows B's
/// registration) arrives on B's new socket at once, although gateway 1
/// caches where B is (on standalone Redis; the cache is checked against the
/// registry's version the send saw).
async fn user_moves_between_gateways(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&g1), &a).await;
    let tb = login(&http(&g1), &b).await;
    let mut wa = Ws::connect(&g1, &ta).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let mut seq = 0u64;
    for round in 0..6 {
        // B on gateway 1, then on 2, then on 1 …; two messages each time
        // (the second from gateway 1's warm cache).
        let to = if round % 2 == 0 { &g1 } else { &g2 };
        let mut wb = Ws::connect(to, &tb).await;
        for _ in 0..2 {
            seq += 1;
            wa.send(json!({"type":"send","conv":conv,"id":format!("m{seq}"),"body":seq}))
                .await;
            assert_eq!(wa.recv_type("sent").await["seq"], seq);
            let m = wb.recv_type("msg").await;
            assert_eq!(m["seq"], seq, "round {round}: {m}");
            wb.ack(&m).await;
        }
        wb.inner.close(None).await.unwrap();
    }
    g1.shutdown().await;
    g2.shutdown().await;
}

/// Delivered acks are gathered gateway-wide and applied together: acks of
/// eight recipients' sockets, each closed right after its ack, all move
/// their watermarks and reach the sender as receipts; a user's acking
/// device gets no receipt of its own ack, their other device does.
async fn acks_of_many_sockets(backend: Backend) {
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let a = Wallet::random();
    let mut wa = Ws::connect(&g1, &login(&http(&g1), &a).await).await;
    let mut expected = std::collections::HashMap::new();
    let mut seen = std::collections::HashMap::new();
    fn note_receipt(seen: &mut std::collections::HashMap<String, u64>, r: &Value) {
        seen.insert(
            r["user"].as_str().unwrap().to_owned(),
            r["delivered"].as_u64().unwrap(),
        );
    }
    for i in 0..8u64 {
        let b = Wallet::random();
        let tb = login(&http(&g2), &b).await;
        let mut wb = Ws::connect(&g2, &tb).await;
        let mut wb2 = Ws::connect(&g1, &tb).await; // b's other device
        let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
        for n in 1..=i + 1 {
            wa.send(json!({"type":"send","conv":conv,"id":format!("m{n}"),"body":n}))
                .await;
            // Receipts of the earlier recipients may come first: keep them.
            loop {
                let f = wa.recv().await;
                match f["type"].as_str() {
                    Some("sent") => break assert_eq!(f["seq"], n),
                    Some("receipt") => note_receipt(&mut seen, &f),
                    _ => {}
                }
            }
        }
        let mut last = Value::Null;
        for n in 1..=i + 1 {
            last = wb.recv_type("msg").await;
            assert_eq!(last["seq"], n);
            assert_eq!(wb2.recv_type("msg").await["seq"], n);
        }
        // Only the last message is acked, and the socket closes at once.
        wb.ack(&last).await;
        wb.inner.close(None).await.unwrap();
        let r = wb2.recv_type("receipt").await;
        assert_eq!(
            (r["user"].as_str(), r["delivered"].as_u64()),
            (Some(b.addr.to_string().as_str()), Some(i + 1)),
            "{r}"
        );
        expected.insert(b.addr.to_string(), i + 1);
    }
    while seen.len() < expected.len() {
        let r = wa.recv_type("receipt").await;
        note_receipt(&mut seen, &r);
    }
    assert_eq!(seen, expected);
    // And the acking device itself: no receipt of its own ack.
    let b = Wallet::random();
    let tb = login(&http(&g2), &b).await;
    let mut wb = Ws::connect(&g2, &tb).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    wa.send(json!({"type":"send","conv":conv,"id":"x","body":1}))
        .await;
    let m = wb.recv_type("msg").await;
    wb.ack(&m).await;
    assert_eq!(wa.recv_type("receipt").await["user"], b.addr.to_string());
    assert!(
        wb.collect_type("receipt", Duration::from_millis(300))
            .await
            .is_empty()
    );
    g1.shutdown().await;
    g2.shutdown().await;
}

/// Five users send 40 direct messages each to one reader without waiting
/// for `sent`: the reader's queue fills faster than its socket drains, so
/// its socket writes queued messages in batches with one flush each. Every
/// message arrives, each conversation's in seq order, and every sender gets
/// `sent` for each of its messages.
async fn burst_from_many_senders(backend: Backend) {
    const SENDERS: usize = 5;
    const EACH: u64 = 40;
    let g1 = start_gateway(&backend, fast_config()).await;
    let g2 = start_gateway(&backend, fast_config()).await;
    let reader = Wallet::random();
    let mut wr = Ws::connect(&g1, &login(&http(&g1), &reader).await).await;
    let mut ws = Vec::new();
    let mut convs = Vec::new();
    for i in 0..SENDERS {
        let w = Wallet::random();
        // Senders on both gateways: local and routed deliveries mix.
        let g = if i % 2 == 0 { &g1 } else { &g2 };
        ws.push(Ws::connect(g, &login(&http(g), &w).await).await);
        convs.push(ConvId::direct(&w.addr, &reader.addr).unwrap().to_string());
    }
    for n in 1..=EACH {
        for (w, conv) in ws.iter_mut().zip(&convs) {
            w.send(json!({"type":"send","conv":conv,"id":format!("m{n}"),"body":n}))
                .await;
        }
    }
    // Per conversation, the seqs in the order they arrive (a resend of an
    // unacked message may repeat one: the first arrival counts).
    let mut got: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    let mut distinct = 0;
    while distinct < SENDERS as u64 * EACH {
        let m = wr.recv_type("msg").await;
        wr.ack(&m).await;
        let seqs = got
            .entry(m["conv"].as_str().unwrap().to_owned())
            .or_default();
        let seq = m["seq"].as_u64().unwrap();
        if !seqs.contains(&seq) {
            assert_eq!(m["id"], format!("m{seq}"), "{m}");
            seqs.push(seq);
            distinct += 1;
        }
    }
    for conv in &convs {
        assert_eq!(got[conv], (1..=EACH).collect::<Vec<_>>(), "{conv}");
    }
    for w in &mut ws {
        for n in 1..=EACH {
            let sent = w.recv_type("sent").await;
            assert_eq!(
                (&sent["id"], &sent["seq"]),
                (&json!(format!("m{n}")), &json!(n))
            );
        }
    }
    g1.shutdown().await;
    g2.shutdown().await;
}

macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod memory { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::memory()).await } )* }
        mod redis { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::redis()).await } )* }
        mod cluster { use super::*; $( #[tokio::test] async fn $name() { super::$name(Backend::cluster()).await } )* }
    };
}

on_every_engine!(
    direct_across_gateways,
    user_moves_between_gateways,
    group_across_gateways,
    retries_until_acked,
    resync_after_disconnect,
    typing_and_presence,
    acks_of_many_sockets,
    burst_from_many_senders,
);
