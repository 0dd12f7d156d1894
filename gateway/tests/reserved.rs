//! Reserved channel patterns (`--reserved-channel`): a wallet cannot create
//! a matching channel on any path (REST `POST /v1/channels`, the Ably
//! publish and SSE endpoints with a session token) and gets a typed answer
//! (`403 reserved` problem JSON, Ably 40160); an API key creates it; once it
//! exists, wallets read it (WebSocket, REST SSE, Ably SSE) with the rights
//! of any wallet (not a publisher) and cannot take it over.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;

const KEY: &str = "ops.key:s3cret";
const NAME: &str = "announcements:eu";

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

async fn gateway() -> (Backend, switchboard_gateway::Gateway) {
    let backend = Backend::memory();
    let cfg = GatewayConfig {
        api_keys: vec![KEY.parse().unwrap()],
        reserved_channels: vec!["announcements:*".parse().unwrap(), "ops".parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&backend, cfg).await;
    (backend, gw)
}

/// `POST /v1/channels` as a wallet.
async fn create(base: &str, token: &str, name: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/channels"))
        .bearer_auth(token)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Ably publish with `authorization`.
async fn ably_publish(base: &str, name: &str, authorization: &str, data: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/channels/{name}/messages"))
        .header("authorization", authorization)
        .json(&json!({ "data": data }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn assert_reserved_problem(status: u16, v: &Value, name: &str, pattern: &str) {
    assert_eq!(status, 403, "{name}: {v}");
    assert_eq!(v["error"]["code"], "reserved", "{name}: {v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains(name) && m.contains(pattern) && m.contains("API keys"),
        "{m}"
    );
}

fn assert_ably_reserved(status: u16, v: &Value) {
    assert_eq!((status, &v["error"]["code"]), (401, &json!(40160)), "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("reserved") && m.contains(NAME), "{m}");
}

#[tokio::test]
async fn wallets_cannot_create_reserved_channels_on_rest_or_ably() {
    let (_b, gw) = gateway().await;
    let base = http(&gw);
    let token = login(&base, &Wallet::random()).await;

    // REST: refused with a typed problem, for a glob and an exact name.
    let (s, v) = create(&base, &token, NAME).await;
    assert_reserved_problem(s, &v, NAME, "announcements:*");
    let (s, v) = create(&base, &token, "ops").await;
    assert_reserved_problem(s, &v, "ops", "ops");
    // Names the patterns do not match stay first come, first served.
    for free in ["opsx", "announcements", "eu-announcements:x"] {
        let (s, v) = create(&base, &token, free).await;
        assert_eq!(s, 201, "{free}: {v}");
    }

    // Ably with the wallet's session token: publish and SSE both refused,
    // as Ably's "not permitted" (40160) naming the reason.
    let bearer = format!("Bearer {token}");
    let (s, v) = ably_publish(&base, NAME, &bearer, json!("mine now")).await;
    assert_ably_reserved(s, &v);
    let r = reqwest::get(format!("{base}/sse?channels={NAME}&accessToken={token}"))
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_ably_reserved(s, &r.json().await.unwrap());

    // Nothing was created by the refusals.
    let r = reqwest::get(format!(
        "{base}/v1/channels/{NAME}/events?access_token={token}"
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // The API key creates it (first use), and stays its only publisher.
    let (s, v) = ably_publish(&base, NAME, &basic(KEY), json!("welcome")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = ably_publish(&base, NAME, &bearer, json!("mine now")).await;
    assert_eq!((s, &v["error"]["code"]), (401, &json!(40160)), "{v}");
    // Existing or not, a wallet's create of a reserved name is `reserved`.
    let (s, v) = create(&base, &token, NAME).await;
    assert_reserved_problem(s, &v, NAME, "announcements:*");

    // Wallets read it: REST SSE and Ably SSE replay the key's message.
    let mut sse = SseStream::open(
        &format!("{base}/v1/channels/{NAME}/events?access_token={token}&after=0"),
        &[],
    )
    .await
    .unwrap();
    let ev = sse.next().await;
    assert_eq!(ev.event, "message", "{ev:?}");
    assert!(ev.data.contains("welcome"), "{ev:?}");
    let mut ably = SseStream::open(
        &format!("{base}/sse?channels={NAME}&accessToken={token}&rewind=1"),
        &[],
    )
    .await
    .unwrap();
    let ev = ably.next().await;
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (data["channel"].as_str(), &data["data"]),
        (Some(NAME), &json!("welcome"))
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_wallets_follow_a_reserved_channel_but_cannot_take_it() {
    let (_b, gw) = gateway().await;
    let base = http(&gw);
    let token = login(&base, &Wallet::random()).await;
    let mut ws = Ws::connect(&gw, &token).await;
    let channel = format!("ch:{NAME}");

    // Before the key created it: the answer for any unknown channel (the
    // socket learns nothing about what exists).
    ws.send(json!({"type": "subscribe", "channel": channel}))
        .await;
    let e = ws.recv_type("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");

    let (s, v) = ably_publish(&base, NAME, &basic(KEY), json!(1)).await;
    assert_eq!(s, 201, "{v}");
    ws.send(json!({"type": "subscribe", "channel": channel}))
        .await;
    let done = ws.recv_type("subscribed").await;
    assert_eq!(done["last_seq"], 1, "{done}");
    // Live from the key.
    let (s, v) = ably_publish(&base, NAME, &basic(KEY), json!(2)).await;
    assert_eq!(s, 201, "{v}");
    let m = ws.recv_type("msg").await;
    assert_eq!(
        (m["conv"].as_str(), m["seq"].as_u64()),
        (Some(channel.as_str()), Some(2))
    );
    // The wallet may not publish to it.
    ws.send(json!({"type": "send", "conv": channel, "id": "w1", "body": {"t": "x"}}))
        .await;
    let e = ws.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("forbidden"), Some("not a publisher of this channel")),
        "{e}"
    );
    gw.shutdown().await;
}
