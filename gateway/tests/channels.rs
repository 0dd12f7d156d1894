//! Channels: one publisher, many subscribers spread over three gateways
//! (memory broker, real Redis, real Redis Cluster): every subscriber gets
//! every message exactly once, in order; replay from `after`, unsubscribe,
//! SSE on a channel, rights by visibility and publisher, and REST errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use serde_json::{Value, json};
use switchboard_proto::ids::ConvId;

async fn create_channel(base: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/channels"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// How long one frame may take in these bulk tests: thousands of sockets
/// subscribe and receive at once, and on a loaded 2-core machine one of
/// them can wait seconds for its turn. What is checked is that every frame
/// arrives once and in order, not how fast.
const BULK_WAIT: Duration = Duration::from_secs(60);

/// The next frame of `ty` within [`BULK_WAIT`], skipping others.
async fn bulk_recv(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = ws
            .try_recv(BULK_WAIT)
            .await
            .unwrap_or_else(|| panic!("no {ty} frame within {BULK_WAIT:?}"));
        if v["type"] == ty || ty.is_empty() {
            return v;
        }
    }
}

/// Subscribe and wait for `subscribed`; returns the frames before it.
async fn subscribe(ws: &mut Ws, channel: &str, after: Option<u64>) -> (Vec<u64>, Value) {
    let mut frame = json!({"type": "subscribe", "channel": channel});
    if let Some(a) = after {
        frame["after"] = json!(a);
    }
    ws.send(frame).await;
    let mut replayed = Vec::new();
    loop {
        let v = bulk_recv(ws, "").await;
        match v["type"].as_str() {
            Some("msg") => replayed.push(v["seq"].as_u64().unwrap()),
            Some("subscribed") => return (replayed, v),
            _ => panic!("unexpected {v}"),
        }
    }
}

async fn publish(ws: &mut Ws, channel: &str, n: u64) -> u64 {
    ws.send(json!({"type":"send","conv":channel,"id":format!("p{n}"),"body":{"n":n}}))
        .await;
    let sent = ws.recv_type("sent").await;
    sent["seq"].as_u64().unwrap()
}

/// `users × per_user` subscriber sockets, `messages` published.
async fn fan_out(backend: Backend, users: usize, per_user: usize, messages: u64) {
    // Up to ~10,000 descriptors at once in this process; the default soft
    // limit is often 1,024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Thousands of sockets and sign-ins from one address, 100 sockets per
    // user: a load test, not a client, so the flood limits are off.
    let cfg = || switchboard_gateway::GatewayConfig {
        limits: switchboard_gateway::config::LimitsConfig::off(),
        ..fast_config()
    };
    let gws = [
        start_gateway(&backend, cfg()).await,
        start_gateway(&backend, cfg()).await,
        start_gateway(&backend, cfg()).await,
    ];
    let owner = Wallet::random();
    let t_owner = login(&http(&gws[0]), &owner).await;
    let name = format!("live-{:08x}", rand::random::<u32>());
    let (status, ch) = create_channel(
        &http(&gws[0]),
        &t_owner,
        json!({"name": name, "title": "Live", "visibility": "public"}),
    )
    .await;
    assert_eq!(status, 201, "{ch}");
    let channel = ch["id"].as_str().unwrap().to_string();
    assert_eq!(channel, format!("ch:{name}"));

    // Viewers are not members: a public channel is open to any signed-in user.
    let mut subs = Vec::new();
    for u in 0..users {
        let gw = &gws[u % 3];
        let token = login(&http(gw), &Wallet::random()).await;
        for i in 0..per_user {
            // Spread each user's sockets over the gateways too.
            let gw = &gws[(u + i) % 3];
            subs.push(Ws::connect(gw, &token).await);
        }
    }
    join_all(subs.iter_mut().map(|ws| async {
        let (replayed, done) = subscribe(ws, &channel, None).await;
        assert!(replayed.is_empty());
        assert_eq!(done["last_seq"], 0);
    }))
    .await;

    let mut publisher = Ws::connect(&gws[0], &t_owner).await;
    for n in 1..=messages {
        assert_eq!(publish(&mut publisher, &channel, n).await, n);
    }
    let want: Vec<u64> = (1..=messages).collect();
    join_all(subs.iter_mut().map(|ws| async {
        let mut got = Vec::new();
        while (got.len() as u64) < messages {
            let m = bulk_recv(ws, "msg").await;
            assert_eq!(m["conv"], channel.as_str());
            got.push(m["seq"].as_u64().unwrap());
        }
        assert_eq!(got, want, "every message once, in order");
        // Nothing more (no duplicates).
        assert!(
            ws.collect_type("msg", Duration::from_millis(200))
                .await
                .is_empty()
        );
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_memory() {
    fan_out(Backend::memory(), 15, 100, 100).await;
}

/// The figures on the Redis engines: 5,000 subscribers over three
/// gateways, 200 messages; one after the other, since every socket costs
/// two descriptors in this process (client and server side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_redis_and_redis_cluster() {
    fan_out(Backend::redis(), 50, 100, 200).await;
    fan_out(Backend::cluster(), 50, 100, 200).await;
}

#[tokio::test]
async fn replay_unsubscribe_and_sse() {
    let backend = Backend::redis();
    let (g1, g2) = (
        start_gateway(&backend, fast_config()).await,
        start_gateway(&backend, fast_config()).await,
    );
    let owner = Wallet::random();
    let t_owner = login(&http(&g1), &owner).await;
    let (_, ch) = create_channel(&http(&g1), &t_owner, json!({"name": "news"})).await;
    let channel = ch["id"].as_str().unwrap().to_string();
    let mut publisher = Ws::connect(&g1, &t_owner).await;
    for n in 1..=5 {
        publish(&mut publisher, &channel, n).await;
    }

    // A viewer resuming after seq 2: the replay, then live.
    let t_viewer = login(&http(&g2), &Wallet::random()).await;
    let mut v = Ws::connect(&g2, &t_viewer).await;
    let (replayed, done) = subscribe(&mut v, &channel, Some(2)).await;
    assert_eq!(replayed, vec![3, 4, 5]);
    assert_eq!(
        (done["last_seq"].as_u64(), done["recovered"].as_bool()),
        (Some(5), Some(true))
    );
    publish(&mut publisher, &channel, 6).await;
    assert_eq!(v.recv_type("msg").await["seq"], 6);

    // SSE on the channel (by name), no membership needed: replay then live.
    let url = format!(
        "{}/v1/channels/news/events?access_token={t_viewer}&after=4",
        http(&g2)
    );
    let mut sse = reqwest::get(&url).await.unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    publish(&mut publisher, &channel, 7).await;
    let mut text = String::new();
    while text.matches("event: message").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, vec!["5", "6", "7"], "{text}");

    // History over REST for a viewer who is not a member: no statuses.
    let h: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{channel}/messages?after=0",
            http(&g2)
        ))
        .bearer_auth(&t_viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "{h}");
    assert!(h["messages"][0].get("status").is_none(), "{h}");

    // Unsubscribed: nothing more arrives on the socket.
    assert_eq!(v.recv_type("msg").await["seq"], 7);
    v.send(json!({"type": "unsubscribe", "channel": channel}))
        .await;
    assert_eq!(
        v.recv_type("unsubscribed").await["channel"],
        channel.as_str()
    );
    publish(&mut publisher, &channel, 8).await;
    assert!(
        v.collect_type("msg", Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn rights_and_errors() {
    let backend = Backend::memory();
    let gw = start_gateway(&backend, fast_config()).await;
    let base = http(&gw);
    let (owner, publisher, member, outsider) = (
        Wallet::random(),
        Wallet::random(),
        Wallet::random(),
        Wallet::random(),
    );
    let t_owner = login(&base, &owner).await;
    let t_pub = login(&base, &publisher).await;
    let t_member = login(&base, &member).await;
    let t_out = login(&base, &outsider).await;

    let (status, ch) = create_channel(
        &base,
        &t_owner,
        json!({"name": "team", "visibility": "members",
               "publishers": [publisher.addr], "members": [member.addr]}),
    )
    .await;
    assert_eq!(status, 201, "{ch}");
    let channel = ch["id"].as_str().unwrap().to_string();
    assert_eq!(ch["kind"], "channel");
    assert_eq!(ch["visibility"], "members");
    assert_eq!(ch["publishers"].as_array().unwrap().len(), 2, "{ch}");

    // Publishers post; a member may read but not post.
    let mut wp = Ws::connect(&gw, &t_pub).await;
    assert_eq!(publish(&mut wp, &channel, 1).await, 1);
    let mut wm = Ws::connect(&gw, &t_member).await;
    wm.send(json!({"type":"send","conv":channel,"id":"m1","body":1}))
        .await;
    let err = wm.recv_type("error").await;
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["message"], "not a publisher of this channel");
    let (replayed, _) = subscribe(&mut wm, &channel, Some(0)).await;
    assert_eq!(replayed, vec![1]);
    // Members only: an outsider can neither subscribe nor see it.
    let mut wo = Ws::connect(&gw, &t_out).await;
    wo.send(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(wo.recv_type("error").await["code"], "forbidden");
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/conversations/{channel}"))
        .bearer_auth(&t_out)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Channels take no receipts or typing; subscribe takes only channels.
    wm.send(json!({"type":"typing","conv":channel})).await;
    assert_eq!(wm.recv_type("error").await["code"], "bad_frame");
    let dm = ConvId::direct(&member.addr, &outsider.addr).unwrap();
    wm.send(json!({"type":"subscribe","channel":dm})).await;
    assert_eq!(wm.recv_type("error").await["code"], "bad_frame");

    // REST errors.
    for (body, status, needle) in [
        (json!({"name": "team"}), 409, "already exists"),
        (json!({"name": "has space"}), 400, "name"),
        (
            json!({"name": "x", "members": [member.addr]}),
            400,
            "members are only",
        ),
        (
            json!({"name": "y", "publishers": ["0x12"]}),
            400,
            "publishers[0]",
        ),
        (json!({"name": "z", "visibility": "secret"}), 400, ""),
    ] {
        let (got, v) = create_channel(&base, &t_owner, body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{body}: {v}");
    }
}

/// An SSE stream on a channel with no history answers `synced` at once (not
/// at the first keep-alive), on Redis.
#[tokio::test]
async fn sse_on_an_empty_channel_starts_at_once() {
    let backend = Backend::redis();
    let gw = start_gateway(&backend, fast_config()).await;
    let base = http(&gw);
    let t_owner = login(&base, &Wallet::random()).await;
    let (status, _) = create_channel(&base, &t_owner, json!({"name": "quiet"})).await;
    assert_eq!(status, 201);
    let t_viewer = login(&base, &Wallet::random()).await;
    let started = tokio::time::Instant::now();
    let mut sse = reqwest::get(format!(
        "{base}/v1/channels/quiet/events?access_token={t_viewer}"
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(3), sse.chunk())
        .await
        .expect("the first event within 3 s")
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: synced"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
