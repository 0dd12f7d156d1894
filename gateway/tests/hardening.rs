//! Hostile input (issue 13): each test here failed before its fix.
//! - a `sync` on a channel is replayed once and never resent (channel
//!   messages take no acks);
//! - a seq of `u64::MAX` in `sync`, `after=`, `Last-Event-ID` is answered,
//!   not an overflow;
//! - request bodies have explicit limits (`413`), lists are bounded before
//!   any per-element work, Ably batches and the channels one SSE request
//!   may create are capped;
//! - a member reusing another member's message id sends its own message and
//!   swallows nobody's (idempotency is per sender).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn post(url: &str, token: &str, body: String) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_channel_sync_is_replayed_once_and_never_resent() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let (owner, reader) = (Wallet::random(), Wallet::random());
    let (t_owner, t_reader) = (login(&base, &owner).await, login(&base, &reader).await);
    let (st, _) = post(
        &format!("{base}/v1/channels"),
        &t_owner,
        json!({"name": "replayed"}).to_string(),
    )
    .await;
    assert_eq!(st, 201);
    let mut pub_ws = Ws::connect(&gw, &t_owner).await;
    for n in 0..3 {
        pub_ws
            .send(json!({"type":"send","conv":"ch:replayed","id":format!("r{n}"),"body":{"n":n}}))
            .await;
        pub_ws.recv_type("sent").await;
    }
    let mut ws = Ws::connect(&gw, &t_reader).await;
    ws.send(json!({"type":"sync","conv":"ch:replayed","after":0}))
        .await;
    // The ack timeout is 300 ms here: three rounds of resends would come
    // within 1.2 s.
    let msgs = ws.collect_type("msg", Duration::from_millis(1500)).await;
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "channel replay resent: {seqs:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_largest_seq_is_an_answer_not_an_overflow() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&base, &a).await;
    let conv = format!("dm:{}:{}", a.addr.lower(), b.addr.lower());
    let conv = conv
        .parse::<switchboard_proto::ids::ConvId>()
        .unwrap()
        .to_string();
    let mut ws = Ws::connect(&gw, &ta).await;
    ws.send(json!({"type":"send","conv":conv,"id":"m1","body":"hi"}))
        .await;
    ws.recv_type("sent").await;

    ws.send(json!({"type":"sync","conv":conv,"after":u64::MAX}))
        .await;
    let synced = ws.recv_type("synced").await;
    assert_eq!(synced["last_seq"], 1, "{synced}");
    // The socket still works.
    ws.send(json!({"type":"ping"})).await;
    ws.recv_type("pong").await;

    let r = reqwest::Client::new()
        .get(format!(
            "{base}/v1/conversations/{conv}/messages?after={}",
            u64::MAX
        ))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["messages"], json!([]), "{page}");

    let url = format!("{base}/v1/conversations/{conv}/events?access_token={ta}");
    let max = u64::MAX.to_string();
    let mut sse = SseStream::open(&url, &[("last-event-id", &max)])
        .await
        .unwrap();
    let ev = sse.next().await;
    assert_eq!(ev.event, "synced", "{ev:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn bodies_and_lists_are_bounded_before_any_work() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let w = Wallet::random();
    let t = login(&base, &w).await;

    // A group body far above what its members could need: 413, unread.
    let many: Vec<String> = (0..20_000).map(|i| format!("0x{:040x}", i + 1)).collect();
    let body = json!({"kind": "group", "members": many}).to_string();
    assert!(body.len() > 256 * 1024);
    let (st, v) = post(&format!("{base}/v1/conversations"), &t, body).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_large", "{v}");

    // Within the body limit but more entries than a group may have: refused
    // by count, before the addresses are parsed or compared.
    let over: Vec<String> = (0..1_001).map(|_| "not-an-address".to_string()).collect();
    let body = json!({"kind": "group", "members": over}).to_string();
    let (st, v) = post(&format!("{base}/v1/conversations"), &t, body).await;
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("at most 1000"), "{msg}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reader_that_never_acks_is_a_slow_consumer() {
    let cfg = switchboard_gateway::GatewayConfig {
        sync_limit: 10,
        send_queue: 8,
        // No resend or give-up within the test: every message stays pending.
        ack_timeout: Duration::from_secs(30),
        send_rate: 10_000,
        send_burst: 10_000,
        frame_rate: 10_000,
        frame_burst: 10_000,
        ..fast_config()
    };
    // Unacked messages allowed: sync_limit + 4 × send_queue = 42.
    let gw = start_gateway(&Backend::memory(), cfg).await;
    let base = http(&gw);
    let (a, b) = (Wallet::random(), Wallet::random());
    let (ta, tb) = (login(&base, &a).await, login(&base, &b).await);
    let conv = format!("dm:{}:{}", a.addr.lower(), b.addr.lower())
        .parse::<switchboard_proto::ids::ConvId>()
        .unwrap()
        .to_string();
    let mut reader = Ws::connect(&gw, &tb).await;
    // Reads everything (so its outbox never fills), acks nothing.
    let reading = tokio::spawn(async move {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as WsMsg;
        let mut got = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), reader.inner.next()).await {
                Ok(Some(Ok(WsMsg::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "msg" {
                        got += 1;
                    }
                }
                Ok(Some(Ok(WsMsg::Close(frame)))) => {
                    return (got, frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => {}
                _ => return (got, None),
            }
        }
    });
    let mut sender = Ws::connect(&gw, &ta).await;
    for n in 0..60 {
        sender
            .send(json!({"type":"send","conv":conv,"id":format!("m{n}"),"body":n}))
            .await;
        sender.recv_type("sent").await;
    }
    let (got, code) = reading.await.unwrap();
    assert_eq!(code, Some(4008), "after {got} unacked messages");
    assert!(got <= 43, "{got} unacked messages delivered");
    gw.shutdown().await;
}

#[tokio::test]
async fn ably_batches_and_stream_creations_are_capped() {
    let key = "app.key1:s3cret";
    let cfg = switchboard_gateway::GatewayConfig {
        api_keys: vec![key.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&Backend::memory(), cfg).await;
    let base = http(&gw);
    let client = reqwest::Client::new();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
    );
    let publish = |n: usize| {
        let batch: Vec<Value> = (0..n).map(|i| json!({"data": i})).collect();
        client
            .post(format!("{base}/channels/capped/messages"))
            .header("authorization", &basic)
            .json(&batch)
            .send()
    };
    let ok = publish(100).await.unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    let over = publish(101).await.unwrap();
    assert_eq!(over.status().as_u16(), 400);
    let v: Value = over.json().await.unwrap();
    assert_eq!(v["error"]["code"], 40000, "{v}");

    // A body over the publish limit: 413 with Ably's "too large" code.
    let big = "x".repeat(1024 * 1024 + 1);
    let r = client
        .post(format!("{base}/channels/capped/messages"))
        .header("authorization", &basic)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 40009, "{v}");

    // One SSE request creates at most 10 channels; existing ones are free.
    let names: Vec<String> = (0..11).map(|i| format!("new-{i}")).collect();
    let r = client
        .get(format!("{base}/sse?channels={}&key={key}", names.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("new channels"),
        "{v}"
    );
    gw.shutdown().await;
}

/// The victim sends, then another member of the group sends with the same
/// id: both messages are stored and delivered, and each sender's `sent`
/// names its own message.
async fn reused_ids_are_per_sender(backend: Backend) {
    let gw = start_gateway(&backend, fast_config()).await;
    let base = http(&gw);
    let (victim, thief, reader) = (Wallet::random(), Wallet::random(), Wallet::random());
    let tv = login(&base, &victim).await;
    let tt = login(&base, &thief).await;
    let tr = login(&base, &reader).await;
    let conv = create_group(&base, &tv, &[thief.addr, reader.addr]).await;
    let mut read = Ws::connect(&gw, &tr).await;
    let mut v = Ws::connect(&gw, &tv).await;
    let mut t = Ws::connect(&gw, &tt).await;
    v.send(json!({"type":"send","conv":conv,"id":"shared","body":"from the victim"}))
        .await;
    let sent_v = v.recv_type("sent").await;
    t.send(json!({"type":"send","conv":conv,"id":"shared","body":"from the thief"}))
        .await;
    let sent_t = t.recv_type("sent").await;
    assert_eq!(sent_v["seq"], 1);
    assert_eq!(
        sent_t["seq"], 2,
        "the thief got the victim's sent: {sent_t}"
    );
    // The victim's retry is still its own message.
    v.send(json!({"type":"send","conv":conv,"id":"shared","body":"from the victim"}))
        .await;
    assert_eq!(v.recv_type("sent").await["seq"], 1);
    let first = read.recv_type("msg").await;
    read.ack(&first).await;
    let second = read.recv_type("msg").await;
    read.ack(&second).await;
    assert_eq!(
        (first["body"].clone(), second["body"].clone()),
        (json!("from the victim"), json!("from the thief"))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn reused_ids_are_per_sender_memory() {
    reused_ids_are_per_sender(Backend::memory()).await;
}

#[tokio::test]
async fn reused_ids_are_per_sender_redis() {
    reused_ids_are_per_sender(Backend::redis()).await;
}
