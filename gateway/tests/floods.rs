//! Unauthenticated floods (issue 13, finding 2): each test here failed
//! before its fix.
//! - `GET /v1/auth/nonce` stores nothing (nonces are signed, not stored);
//!   only a sign-in whose signature checked out writes one record;
//! - a nonce is single use across gateways, and a forged or expired one is
//!   refused by name, before any signature recovery;
//! - REST is rate limited per client address and per user (`429`,
//!   `rate_limited`, `Retry-After`), `X-Forwarded-For` counts only from a
//!   trusted proxy;
//! - connections are capped per address, per user and per gateway (HTTP
//!   429 before an upgrade, close 4029 after a first-frame `auth`);
//! - a verify flood recovers only the signatures the limiter admitted;
//! - a socket that keeps sending through a burst of `rate_limited` answers
//!   is closed (4030) instead of being answered forever.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;
use switchboard_gateway::config::LimitsConfig;
use switchboard_proto::auth::eip191::sign_personal;
use switchboard_proto::auth::nonce::NonceSigner;
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite;

fn with_limits(limits: LimitsConfig) -> GatewayConfig {
    GatewayConfig {
        limits,
        ..fast_config()
    }
}

/// The value of one sample on `gw`'s `/metrics` (0 when absent).
async fn metric(gw: &switchboard_gateway::Gateway, sample: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn redis_keys(backend: &Backend, pattern: &str) -> Vec<String> {
    let Backend::Redis(r) = backend else {
        unreachable!("a standalone Redis")
    };
    r.command(&["KEYS", pattern])
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn a_nonce_flood_stores_nothing_and_a_sign_in_stores_one_record() {
    let backend = Backend::redis();
    let gw = start_gateway(&backend, with_limits(LimitsConfig::off())).await;
    let base = http(&gw);
    let mut nonces = std::collections::HashSet::new();
    for _ in 0..300 {
        let n = nonce(&base).await;
        // Inside SIWE's nonce grammar: alphanumeric, at least 8.
        assert!(n.len() >= 8 && n.chars().all(|c| c.is_ascii_alphanumeric()));
        nonces.insert(n);
    }
    assert_eq!(nonces.len(), 300, "every nonce is distinct");
    assert_eq!(
        redis_keys(&backend, "sb:nonce:*"),
        Vec::<String>::new(),
        "handing out nonces wrote to Redis"
    );
    // A sign-in records its nonce as used, for the rest of its life.
    login(&base, &Wallet::random()).await;
    let used = redis_keys(&backend, "sb:nonce:*");
    assert_eq!(used.len(), 1, "{used:?}");
    let Backend::Redis(r) = &backend else {
        unreachable!()
    };
    let ttl: i64 = r
        .command(&["TTL", &used[0]])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "TTL {ttl}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_replayed_nonce_is_refused_on_every_gateway() {
    let backend = Backend::redis();
    let (g1, g2) = (
        start_gateway(&backend, fast_config()).await,
        start_gateway(&backend, fast_config()).await,
    );
    let w = Wallet::random();
    // A nonce from one gateway signs in on another (one secret)...
    let n = nonce(&http(&g1)).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let sig = sign_personal(&w.key, msg.as_bytes());
    let (status, body) = verify(&http(&g2), &msg, &sig).await;
    assert_eq!(status, 200, "{body}");
    // ...once: replayed on either gateway, it is refused by name.
    for gw in [&g1, &g2] {
        let (status, body) = verify(&http(gw), &msg, &sig).await;
        assert_eq!(status, 401, "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains("used_nonce"), "{text}");
    }
    g1.shutdown().await;
    g2.shutdown().await;
}

#[tokio::test]
async fn forged_and_expired_nonces_are_refused_before_any_recovery() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let w = Wallet::random();
    let sign_in = |nonce: String| {
        let msg = siwe_message("localhost", w.addr, &nonce, 1);
        let sig = sign_personal(&w.key, msg.as_bytes());
        (msg, sig)
    };
    let past = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let cases = [
        // The old format: random alphanumerics the server never signed.
        ("abcdefghijklmnopqrstuvwx".to_string(), "forged_nonce"),
        // Signed with another secret.
        (
            NonceSigner::new(b"another secret")
                .issue(Duration::from_secs(300), past + time::Duration::hours(1)),
            "forged_nonce",
        ),
        // Signed with this gateway's secret, an hour ago, for 5 minutes.
        (
            NonceSigner::new(SECRET).issue(Duration::from_secs(300), past),
            "expired_nonce",
        ),
    ];
    for (n, code) in cases {
        let (msg, sig) = sign_in(n);
        let (status, body) = verify(&base, &msg, &sig).await;
        assert_eq!(status, 401, "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(code), "{code}: {text}");
    }
    assert_eq!(
        metric(&gw, "switchboard_gateway_signature_recoveries_total").await,
        0,
        "a signature was recovered for a nonce this gateway did not issue"
    );
    // A real one goes through (and is the one recovery).
    login(&base, &w).await;
    assert_eq!(
        metric(&gw, "switchboard_gateway_signature_recoveries_total").await,
        1
    );
    gw.shutdown().await;
}

/// One request per 100 s after the burst: nothing refills while a test runs.
const SLOW: f64 = 0.01;

#[tokio::test]
async fn rest_is_limited_per_address_with_429_and_retry_after() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            rest_rate: SLOW,
            rest_burst: 5,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    // The burst is served, then the next request is refused.
    for _ in 0..5 {
        let r = get(&format!("{base}/v1/auth/nonce"), &[]).await;
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = get(&format!("{base}/v1/auth/nonce"), &[]).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Every route but the probes counts; the Ably routes answer in Ably's format.
    let r = get(&format!("{base}/channels/x/messages"), &[]).await;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 42910, "{body}");
    let r = get(&format!("{base}/healthz"), &[]).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        metric(
            &gw,
            "switchboard_gateway_refusals_total{limit=\"rest_per_address\"}"
        )
        .await,
        2
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn rest_is_limited_per_user() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            user_rest_rate: SLOW,
            user_rest_burst: 3,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    let token = login(&base, &Wallet::random()).await;
    let bearer = format!("Bearer {token}");
    let list = format!("{base}/v1/conversations");
    let mut statuses = vec![];
    for _ in 0..4 {
        let r = get(&list, &[("authorization", &bearer)]).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // The token in the query counts for the same user.
    let r = get(&format!("{list}?access_token={token}"), &[]).await;
    assert_eq!(r.status().as_u16(), 429);
    // Another user from the same address is not held back by it.
    let other = login(&base, &Wallet::random()).await;
    let r = get(&list, &[("authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        metric(
            &gw,
            "switchboard_gateway_refusals_total{limit=\"rest_per_user\"}"
        )
        .await,
        2
    );
    gw.shutdown().await;
}

/// The statuses of `n` requests to `url` with `X-Forwarded-For: xff`.
async fn statuses(url: &str, xff: &str, n: usize) -> Vec<u16> {
    let mut out = vec![];
    for _ in 0..n {
        let r = get(url, &[("x-forwarded-for", xff)]).await;
        out.push(r.status().as_u16());
    }
    out
}

#[tokio::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let limits = LimitsConfig {
        rest_rate: SLOW,
        rest_burst: 2,
        ..LimitsConfig::default()
    };
    // Behind a trusted proxy (the test's loopback), each forwarded client
    // has its own bucket.
    let proxied = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..limits.clone()
        }),
    )
    .await;
    let url = format!("{}/v1/auth/nonce", http(&proxied));
    assert_eq!(statuses(&url, "198.51.100.1", 3).await, [200, 200, 429]);
    assert_eq!(statuses(&url, "198.51.100.2", 1).await, [200]);
    // What a client writes in front of the proxy's entry is not believed:
    // the right-most entry is the client.
    assert_eq!(statuses(&url, "198.51.100.9, 198.51.100.1", 1).await, [429]);
    proxied.shutdown().await;

    // Without a trusted proxy the header changes nothing: the socket's
    // peer is the client, whatever it claims.
    let direct = start_gateway(&Backend::memory(), with_limits(limits)).await;
    let url = format!("{}/v1/auth/nonce", http(&direct));
    assert_eq!(statuses(&url, "198.51.100.1", 2).await, [200, 200]);
    assert_eq!(statuses(&url, "198.51.100.2", 1).await, [429]);
    direct.shutdown().await;
}

/// A WebSocket upgrade to `gw`, optionally with a bearer token: the socket,
/// or the HTTP status and `Retry-After` it was refused with.
async fn upgrade(
    gw: &switchboard_gateway::Gateway,
    token: Option<&str>,
) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/ws", gw.local_addr())
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((inner, _)) => Ok(Ws { inner }),
        Err(tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// Poll `f` until it holds (the server notices a closed socket a moment
/// after the client closed it).
async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_are_capped_per_address() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            conns_per_addr: 3,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    // Sockets count from the upgrade on, authenticated or not: a flood of
    // sockets that never authenticate is held to the cap too.
    let mut held = vec![];
    for _ in 0..3 {
        held.push(upgrade(&gw, None).await.unwrap());
    }
    assert_eq!(upgrade(&gw, None).await.err(), Some((429, "5".into())));
    // SSE streams count against the same cap.
    let token = login(&base, &Wallet::random()).await;
    let url = format!("{base}/v1/channels/none/events?access_token={token}");
    let (status, body) = SseStream::open(&url, &[]).await.err().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(
        metric(
            &gw,
            "switchboard_gateway_refusals_total{limit=\"connections_per_address\"}"
        )
        .await
            >= 2
    );
    // A closed socket gives its place back.
    let mut first = held.remove(0);
    first.inner.close(None).await.unwrap();
    eventually(|| async { upgrade(&gw, None).await.is_ok() }).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_are_capped_per_user() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            conns_per_user: 2,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    let w = Wallet::random();
    let token = login(&base, &w).await;
    let _a = Ws::connect(&gw, &token).await;
    let _b = Ws::connect(&gw, &token).await;
    let sse_url = format!("{base}/v1/channels/none/events?access_token={token}");
    // Third, authenticating with its first frame: refused by frame and close code.
    let mut c = Ws::open(&gw).await;
    c.send(json!({"type": "auth", "token": token})).await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "rate_limited", "{err}");
    assert_eq!(c.close_code().await, Some(4029));
    // Third, with a bearer upgrade: refused before the upgrade.
    assert_eq!(
        upgrade(&gw, Some(&token)).await.err(),
        Some((429, "5".into()))
    );
    // Third, as an SSE stream.
    let (status, _) = SseStream::open(&sse_url, &[]).await.err().unwrap();
    assert_eq!(status, 429);
    // Another user is not held back.
    let other = login(&base, &Wallet::random()).await;
    let _d = Ws::connect(&gw, &other).await;
    assert_eq!(
        metric(
            &gw,
            "switchboard_gateway_refusals_total{limit=\"connections_per_user\"}"
        )
        .await,
        3
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_are_capped_per_gateway() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            max_conns: 2,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    let (t1, t2) = (
        login(&base, &Wallet::random()).await,
        login(&base, &Wallet::random()).await,
    );
    let _a = Ws::connect(&gw, &t1).await;
    let _b = Ws::connect(&gw, &t2).await;
    assert_eq!(upgrade(&gw, None).await.err(), Some((429, "5".into())));
    assert_eq!(
        metric(
            &gw,
            "switchboard_gateway_refusals_total{limit=\"connections\"}"
        )
        .await,
        1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_verify_flood_recovers_only_what_the_limiter_admits() {
    let gw = start_gateway(
        &Backend::memory(),
        with_limits(LimitsConfig {
            rest_rate: SLOW,
            rest_burst: 5,
            ..LimitsConfig::default()
        }),
    )
    .await;
    let base = http(&gw);
    // A real nonce, signed by the wrong key: every verify that gets past
    // the limiter costs a recovery (and fails on the address).
    let (claimed, signer) = (Wallet::random(), Wallet::random());
    let n = nonce(&base).await;
    let msg = siwe_message("localhost", claimed.addr, &n, 1);
    let sig = sign_personal(&signer.key, msg.as_bytes());
    let floods = (0..40).map(|_| {
        let (base, msg, sig) = (base.clone(), msg.clone(), sig.clone());
        tokio::spawn(async move { verify(&base, &msg, &sig).await })
    });
    let answers: Vec<(u16, Value)> = futures_util::future::join_all(floods)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let admitted = answers.iter().filter(|(st, _)| *st == 401).count() as u64;
    let limited = answers.iter().filter(|(st, _)| *st == 429).count();
    // The nonce took one request of the burst of 5.
    assert_eq!((admitted, limited), (4, 36), "{answers:?}");
    for (st, body) in &answers {
        if *st == 401 {
            let text = body["error"]["message"].as_str().unwrap();
            assert!(text.contains("address_mismatch"), "{text}");
        }
    }
    assert_eq!(
        metric(&gw, "switchboard_gateway_signature_recoveries_total").await,
        admitted,
        "recoveries beyond the requests the limiter admitted"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_socket_that_ignores_rate_limited_is_closed() {
    let gw = start_gateway(
        &Backend::memory(),
        GatewayConfig {
            frame_rate: 1,
            frame_burst: 5,
            ..fast_config()
        },
    )
    .await;
    let base = http(&gw);
    let token = login(&base, &Wallet::random()).await;
    let mut ws = Ws::connect(&gw, &token).await;
    // One frame at a time, each after the previous answer: the client never
    // ignores the server's pace, only its refusals (and nothing is left
    // unread when the server closes, which would reset the connection).
    let (mut pongs, mut refused) = (0, 0);
    let code = 'frames: loop {
        assert!(pongs + refused < 200, "still open after 200 frames");
        ws.inner
            .send(tungstenite::Message::text(r#"{"type":"ping"}"#))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(WAIT, ws.inner.next()).await {
                Ok(Some(Ok(tungstenite::Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("pong") => pongs += 1,
                        Some("error") if v["code"] == "rate_limited" => refused += 1,
                        _ => continue,
                    }
                    break;
                }
                Ok(Some(Ok(tungstenite::Message::Close(Some(f))))) => {
                    break 'frames u16::from(f.code);
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    };
    assert_eq!(code, 4030);
    // The burst was served, and each refusal answered, until 100 of them
    // (the burst, at least 100) came in a row; the last one closes.
    assert!(pongs >= 5, "{pongs} pongs");
    assert!(refused >= 99, "{refused} refusals");
    assert_eq!(
        metric(&gw, "switchboard_gateway_refusals_total{limit=\"frames\"}").await,
        1
    );
    gw.shutdown().await;
}
