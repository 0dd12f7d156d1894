//! The Ably-compatible REST subset over plain HTTP: key auth and its
//! errors, single and batch publish, idempotency by message id, channel
//! creation on first use, delivery to WebSocket subscribers, and history
//! with Ably's paging. (`ably_sdk.rs` runs the official npm SDK against it.)
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;

const KEY: &str = "app.key1:s3cret";
/// A key limited to `news` and `live-*`.
const LIMITED: &str = "lim.k:l1m:news|live-*";
const LIMITED_AUTH: &str = "lim.k:l1m";

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

async fn post(
    base: &str,
    channel: &str,
    auth: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/channels/{channel}/messages"))
        .json(&body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

async fn get(base: &str, path: &str) -> (u16, Value, Option<String>) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("authorization", basic(KEY))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap(), link)
}

#[tokio::test]
async fn publish_history_and_errors() {
    let backend = Backend::redis();
    let cfg = GatewayConfig {
        api_keys: vec![KEY.parse().unwrap(), LIMITED.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&backend, cfg).await;
    let base = http(&gw);

    // A WebSocket viewer of the channel (created by the first publish, so
    // subscribe after it).
    let (status, v, _) = post(
        &base,
        "news",
        Some(&basic(KEY)),
        json!({"name": "greeting", "data": "hello"}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["channel"], "news");
    assert_eq!(v["serials"], json!(["1"]));
    let token = login(&base, &Wallet::random()).await;
    let mut ws = Ws::connect(&gw, &token).await;
    ws.send(json!({"type": "subscribe", "channel": "ch:news"}))
        .await;
    assert_eq!(ws.recv_type("subscribed").await["last_seq"], 1);

    // A batch as the SDK sends it (ids, `action`, `size`, JSON-encoded data).
    let batch = json!([
        {"id": "Y03VYTCePv8q:0", "name": "a", "data": "{\"x\":1}", "encoding": "json", "action": 0, "size": 12},
        {"id": "Y03VYTCePv8q:1", "name": "b", "data": "two", "clientId": "bot", "extras": {"k": 1}},
    ]);
    let (status, v, _) = post(&base, "news", Some(&basic(KEY)), batch.clone()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["messageId"].as_str(), &v["serials"]),
        (Some("Y03VYTCePv8q:0"), &json!(["2", "3"]))
    );
    let live = ws.recv_type("msg").await;
    assert_eq!(live["seq"], 2);
    assert_eq!(live["body"]["name"], "a");
    assert_eq!(ws.recv_type("msg").await["body"]["clientId"], "bot");
    // The same ids again (a retried publish): same serials, nothing new.
    let (status, v, _) = post(&base, "news", Some(&basic(KEY)), batch).await;
    assert_eq!((status, &v["serials"]), (201, &json!(["2", "3"])));
    // An id outside the MsgId alphabet (base64 with + and /) is fine too.
    let (_, v, _) = post(
        &base,
        "news",
        Some(&basic(KEY)),
        json!({"id": "ab+/cd==:0", "data": "x"}),
    )
    .await;
    assert_eq!(v["serials"], json!(["4"]));
    let (_, v, _) = post(
        &base,
        "news",
        Some(&basic(KEY)),
        json!({"id": "ab+/cd==:0", "data": "x"}),
    )
    .await;
    assert_eq!(v["serials"], json!(["4"]), "idempotent");

    // History: newest first, Ably fields as published, timestamp and serial.
    let (status, h, link) = get(&base, "/channels/news/messages?limit=2").await;
    assert_eq!(status, 200, "{h}");
    let ids: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["ab+/cd==:0", "Y03VYTCePv8q:1"]);
    assert_eq!(h[1]["extras"], json!({"k": 1}));
    assert_eq!(h[1]["serial"], "3");
    assert!(h[1]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(h[1].get("action").is_none(), "unknown fields are not kept");
    let link = link.expect("a next page");
    assert!(
        link.starts_with("<./messages?") && link.ends_with(">; rel=\"next\""),
        "{link}"
    );
    // As Ably clients do: the link's query on the original path.
    let query = link[..link.find('>').unwrap()].split_once('?').unwrap().1;
    let next = format!("/channels/news/messages?{query}");
    let (_, h2, link2) = get(&base, &next).await;
    let ids: Vec<&str> = h2
        .as_array()
        .unwrap_or_else(|| panic!("{next}: {h2}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["Y03VYTCePv8q:0", ids[1]]);
    assert_eq!(h2[1]["data"], "hello");
    assert!(link2.is_none(), "the oldest page has no next");
    // Forwards, and a time window that excludes everything.
    let (_, f, _) = get(&base, "/channels/news/messages?direction=forwards&limit=10").await;
    let serials: Vec<&str> = f
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, vec!["1", "2", "3", "4"]);
    let (_, none, _) = get(&base, "/channels/news/messages?end=1000").await;
    assert_eq!(none, json!([]));
    let (_, unused, _) = get(&base, "/channels/never-used/messages").await;
    assert_eq!(unused, json!([]));

    // A message sent over WebSocket by a publisher reads back as JSON data.
    let owner = Wallet::random();
    let t_owner = login(&base, &owner).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/channels"))
        .bearer_auth(&t_owner)
        .json(&json!({"name": "walletch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let mut wo = Ws::connect(&gw, &t_owner).await;
    wo.send(json!({"type":"send","conv":"ch:walletch","id":"w1","body":{"text":"hi"}}))
        .await;
    wo.recv_type("sent").await;
    let (_, h, _) = get(&base, "/channels/walletch/messages").await;
    assert_eq!(h[0]["id"], "w1");
    assert_eq!(h[0]["encoding"], "json");
    let data: Value = serde_json::from_str(h[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"text": "hi"}));

    // A key may publish to any channel, a wallet's too (a limited key only
    // to its patterns: below).
    let (status, v, _) = post(
        &base,
        "walletch",
        Some(&basic(KEY)),
        json!({"data": "by key"}),
    )
    .await;
    assert_eq!((status, &v["serials"]), (201, &json!(["2"])), "{v}");
    let (status, _, _) = post(
        &base,
        "live-1",
        Some(&basic(LIMITED_AUTH)),
        json!({"data": 1}),
    )
    .await;
    assert_eq!(status, 201);

    // A signed-in wallet with its session token (Ably token auth): as is,
    // or base64-encoded as the SDKs send it; held to the channel's rights.
    let bearer = format!("Bearer {t_owner}");
    let (status, v, _) = post(
        &base,
        "walletch",
        Some(&bearer),
        json!({"data": "by wallet"}),
    )
    .await;
    assert_eq!((status, &v["serials"]), (201, &json!(["3"])), "{v}");
    let b64 = format!(
        "Bearer {}",
        base64::engine::general_purpose::STANDARD.encode(&t_owner)
    );
    let (status, _, _) = post(&base, "walletch", Some(&b64), json!({"data": "again"})).await;
    assert_eq!(status, 201);
    let stranger = login(&base, &Wallet::random()).await;
    let (status, v, _) = post(
        &base,
        "walletch",
        Some(&format!("Bearer {stranger}")),
        json!({"data": 1}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (401, Some(40160)),
        "{v}"
    );

    // Errors, as Ably ErrorInfo with its codes and headers.
    for (auth, channel, body, status, code) in [
        (None, "news", json!({"data": 1}), 401, 40101),
        (
            Some(basic("app.key1:wrong")),
            "news",
            json!({"data": 1}),
            401,
            40101,
        ),
        (
            Some(basic("app.nokey:s3cret")),
            "news",
            json!({"data": 1}),
            401,
            40101,
        ),
        (
            Some("Bearer abc".to_string()),
            "news",
            json!({"data": 1}),
            401,
            40101,
        ),
        (
            Some(basic(LIMITED_AUTH)),
            "walletch",
            json!({"data": 1}),
            401,
            40160,
        ),
        (
            Some(basic(KEY)),
            "bad%20name",
            json!({"data": 1}),
            400,
            40010,
        ),
        (Some(basic(KEY)), "news", json!(42), 400, 40000),
        (Some(basic(KEY)), "news", json!([]), 400, 40000),
    ] {
        let (got, v, headers) = post(&base, channel, auth.as_deref(), body.clone()).await;
        assert_eq!(
            (got, v["error"]["code"].as_u64()),
            (status, Some(code)),
            "{channel} {body}: {v}"
        );
        assert_eq!(v["error"]["statusCode"], status);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-ably-errorcode"], code.to_string().as_str());
    }
}

/// One Ably SSE event.
#[derive(Debug)]
struct Ev {
    id: String,
    data: Value,
}

/// The shared SSE reader, for Ably `message` events (JSON data).
struct Events(SseStream);

impl Events {
    async fn open(url: &str) -> Events {
        match SseStream::open(url, &[]).await {
            Ok(s) => Events(s),
            Err((status, body)) => panic!("{url}: {status} {body}"),
        }
    }

    async fn next(&mut self) -> Ev {
        let e = self.0.next().await;
        assert_eq!(e.event, "message", "{e:?}");
        Ev {
            id: e.id.unwrap_or_default(),
            data: serde_json::from_str(&e.data).unwrap(),
        }
    }
}

#[tokio::test]
async fn sse_subscribe_rewind_and_resume() {
    let backend = Backend::memory();
    let cfg = GatewayConfig {
        api_keys: vec![KEY.parse().unwrap(), LIMITED.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&backend, cfg).await;
    let base = http(&gw);
    for n in 1..=3 {
        let (s, v, _) = post(
            &base,
            "news",
            Some(&basic(KEY)),
            json!({"name": "n", "data": n}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    // Two channels, the last 2 messages of each to start with.
    let url = format!("{base}/sse?v=1.2&channels=news,sport&key={KEY}&rewind=2");
    let mut es = Events::open(&url).await;
    let a = es.next().await;
    assert_eq!(
        (a.data["channel"].as_str(), &a.data["data"]),
        (Some("news"), &json!(2))
    );
    assert_eq!(a.id, "news@2|sport@0");
    let b = es.next().await;
    assert_eq!(b.data["data"], 3);
    post(
        &base,
        "sport",
        Some(&basic(KEY)),
        json!({"name": "goal", "data": "1-0"}),
    )
    .await;
    let c = es.next().await;
    assert_eq!(
        (c.data["channel"].as_str(), c.data["name"].as_str()),
        (Some("sport"), Some("goal"))
    );
    assert_eq!(c.id, "news@3|sport@1");
    assert!(c.data["timestamp"].as_u64().is_some());

    // Dropped; two more while away; resume from the last id seen.
    drop(es);
    for n in 4..=5 {
        post(&base, "news", Some(&basic(KEY)), json!({"data": n})).await;
    }
    let mut es = Events::open(&format!(
        "{base}/sse?channels=news,sport&key={KEY}&lastEvent={}",
        c.id.replace('|', "%7C")
    ))
    .await;
    assert_eq!(es.next().await.data["data"], 4);
    let e = es.next().await;
    assert_eq!(
        (e.data["data"].as_i64(), e.id.as_str()),
        (Some(5), "news@5|sport@1")
    );

    // enveloped=false: the data alone; no lastEvent or rewind: only new ones.
    let mut raw = Events::open(&format!(
        "{base}/sse?channels=news&key={KEY}&enveloped=false"
    ))
    .await;
    post(
        &base,
        "news",
        Some(&basic(KEY)),
        json!({"data": {"k": "v"}}),
    )
    .await;
    assert_eq!(raw.next().await.data, json!({"k": "v"}));

    // A wallet's session token as accessToken.
    let t = login(&base, &Wallet::random()).await;
    let mut w = Events::open(&format!(
        "{base}/sse?channels=news&accessToken={t}&rewind=1"
    ))
    .await;
    assert_eq!(w.next().await.data["channel"], "news");

    // Errors before the stream: Ably ErrorInfo.
    for (query, status, code) in [
        ("channels=news&key=app.key1:nope".to_string(), 401, 40101),
        ("channels=news&key=other:x".to_string(), 401, 40101),
        ("channels=news&accessToken=abc".to_string(), 401, 40101),
        (format!("key={KEY}"), 400, 40000),
        (format!("channels=bad%20name&key={KEY}"), 400, 40010),
        (
            format!("channels=news,sport&key={LIMITED_AUTH}"),
            401,
            40160,
        ),
    ] {
        let r = reqwest::get(format!("{base}/sse?{query}")).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{query}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{query}: {v}");
    }
}

/// Two API keys publishing the same message id are two publishers: each
/// gets its own serial, and a retry by either is still idempotent.
#[tokio::test]
async fn the_same_id_from_two_keys_is_two_messages() {
    let cfg = GatewayConfig {
        api_keys: vec![KEY.parse().unwrap(), LIMITED.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&Backend::memory(), cfg).await;
    let base = http(&gw);
    let msg = json!({"id": "shared:0", "data": "x"});
    let (s1, v1, _) = post(&base, "live-ids", Some(&basic(KEY)), msg.clone()).await;
    let (s2, v2, _) = post(&base, "live-ids", Some(&basic(LIMITED_AUTH)), msg.clone()).await;
    assert_eq!((s1, s2), (201, 201), "{v1} {v2}");
    assert_eq!(
        (&v1["serials"], &v2["serials"]),
        (&json!(["1"]), &json!(["2"]))
    );
    let (_, again, _) = post(&base, "live-ids", Some(&basic(LIMITED_AUTH)), msg).await;
    assert_eq!(again["serials"], json!(["2"]), "idempotent per key");
    gw.shutdown().await;
}
