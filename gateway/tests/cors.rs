//! CORS over real HTTP: preflights for allowed and other origins, the
//! headers on actual answers (native REST, Ably REST, both SSE streams,
//! errors and `429`s), `*`, hostile `Origin` values, preflights counted by
//! the address's rate limit, and no CORS headers at all when unconfigured.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response};
use serde_json::json;
use switchboard_gateway::GatewayConfig;
use switchboard_gateway::config::LimitsConfig;
use switchboard_proto::ids::ConvId;

const APP: &str = "https://app.example";
const DEV: &str = "http://localhost:5173";
const EVIL: &str = "https://evil.example";
const KEY: &str = "app.key1:s3cret";

fn with_origins(origins: &[&str]) -> GatewayConfig {
    GatewayConfig {
        cors_origins: origins.iter().map(|o| o.parse().unwrap()).collect(),
        api_keys: vec![KEY.parse().unwrap()],
        ..fast_config()
    }
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    )
}

async fn preflight(url: &str, origin: &str, method: &str, headers: &str) -> Response {
    reqwest::Client::new()
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// A comma list header's items, lower-cased.
fn items(h: &HeaderMap, name: &str) -> Vec<String> {
    header(h, name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn no_cors(h: &HeaderMap) {
    let cors: Vec<&str> = h
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers {cors:?}");
}

/// An actual answer a page on `origin` may read, with the headers it needs.
fn readable_by(h: &HeaderMap, origin: &str) {
    assert_eq!(
        header(h, "access-control-allow-origin"),
        Some(origin),
        "{h:?}"
    );
    let exposed = items(h, "access-control-expose-headers");
    for name in [
        "link",
        "retry-after",
        "x-ably-errorcode",
        "x-ably-errormessage",
    ] {
        assert!(
            exposed.contains(&name.to_string()),
            "{name} not in {exposed:?}"
        );
    }
    assert_eq!(header(h, "access-control-allow-credentials"), None);
}

#[tokio::test]
async fn preflights_answer_allowed_origins_only() {
    // Configured as an operator might write it; matched as browsers send it.
    let gw = start_gateway(
        &Backend::memory(),
        with_origins(&["HTTPS://App.Example:443", DEV]),
    )
    .await;
    let base = http(&gw);
    for (path, method, headers) in [
        ("/v1/conversations", "POST", "authorization,content-type"),
        (
            "/v1/conversations/dm:x/members/0xab",
            "DELETE",
            "authorization",
        ),
        (
            "/v1/conversations/dm:x/events",
            "GET",
            "authorization,last-event-id",
        ),
        ("/v1/auth/verify", "POST", "content-type"),
        (
            "/channels/news/messages",
            "POST",
            "authorization,content-type,x-ably-version,ably-agent",
        ),
        ("/sse", "GET", "last-event-id"),
    ] {
        for origin in [APP, DEV] {
            let r = preflight(&format!("{base}{path}"), origin, method, headers).await;
            assert_eq!(r.status().as_u16(), 200, "{path}");
            let h = r.headers();
            assert_eq!(header(h, "access-control-allow-origin"), Some(origin));
            assert!(items(h, "access-control-allow-methods").contains(&method.to_lowercase()));
            let allowed = items(h, "access-control-allow-headers");
            for want in headers.split(',') {
                assert!(
                    allowed.contains(&want.to_string()),
                    "{want} not in {allowed:?}"
                );
            }
            assert_eq!(header(h, "access-control-max-age"), Some("3600"));
            assert_eq!(header(h, "access-control-allow-credentials"), None);
            assert!(items(h, "vary").contains(&"origin".to_string()), "{h:?}");
        }
        // Another origin: no Access-Control-Allow-Origin, so the browser
        // refuses to send the request.
        let r = preflight(&format!("{base}{path}"), EVIL, method, headers).await;
        assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    }
}

#[tokio::test]
async fn answers_carry_allow_origin_and_exposed_headers() {
    let gw = start_gateway(&Backend::memory(), with_origins(&[APP])).await;
    let base = http(&gw);
    let w = Wallet::random();
    let token = login(&base, &w).await;
    let bearer = format!("Bearer {token}");

    // Native REST, success and error.
    let r = get(
        &format!("{base}/v1/conversations"),
        &[("origin", APP), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    readable_by(r.headers(), APP);
    let r = get(&format!("{base}/v1/conversations"), &[("origin", APP)]).await;
    assert_eq!(r.status().as_u16(), 401);
    readable_by(r.headers(), APP);
    let r = get(&format!("{base}/v1/no-such"), &[("origin", APP)]).await;
    assert_eq!(r.status().as_u16(), 404);
    readable_by(r.headers(), APP);

    // Ably REST: history's Link header, and an error's x-ably-* headers.
    for n in 0..3 {
        let r = reqwest::Client::new()
            .post(format!("{base}/channels/news/messages"))
            .header("authorization", basic())
            .header("origin", APP)
            .json(&json!({"name": "n", "data": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        readable_by(r.headers(), APP);
    }
    let r = get(
        &format!("{base}/channels/news/messages?limit=1"),
        &[("origin", APP), ("authorization", &basic())],
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    readable_by(r.headers(), APP);
    assert!(header(r.headers(), "link").is_some(), "{:?}", r.headers());
    let r = get(
        &format!("{base}/channels/news/messages"),
        &[("origin", APP)],
    )
    .await;
    assert_eq!(r.status().as_u16(), 401);
    readable_by(r.headers(), APP);
    assert!(header(r.headers(), "x-ably-errorcode").is_some());

    // Another origin is served (CORS is the browser's check) but gets no
    // header that would let its page read the answer.
    let r = get(
        &format!("{base}/v1/conversations"),
        &[("origin", EVIL), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    // A request without Origin (not from a browser) is untouched.
    let r = get(
        &format!("{base}/v1/conversations"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
}

#[tokio::test]
async fn sse_streams_are_readable_cross_origin() {
    let gw = start_gateway(&Backend::memory(), with_origins(&[APP])).await;
    let base = http(&gw);
    let (a, b) = (Wallet::random(), Wallet::random());
    let (ta, tb) = (login(&base, &a).await, login(&base, &b).await);
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let mut wa = Ws::connect(&gw, &ta).await;
    wa.send(json!({"type":"send","conv":conv,"id":"m1","body":{"text":"hi"}}))
        .await;
    wa.recv_type("sent").await;

    // EventSource: the token in the query, Origin from the page.
    let mut s = SseStream::open(
        &format!("{base}/v1/conversations/{conv}/events?access_token={tb}"),
        &[("origin", APP)],
    )
    .await
    .unwrap();
    readable_by(s.headers(), APP);
    let ev = s.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.id.as_deref()),
        ("message", Some("1"))
    );

    // Ably's SSE endpoint.
    let mut s = SseStream::open(
        &format!("{base}/sse?channels=live&key={KEY}"),
        &[("origin", APP)],
    )
    .await
    .unwrap();
    readable_by(s.headers(), APP);
    let r = reqwest::Client::new()
        .post(format!("{base}/channels/live/messages"))
        .header("authorization", basic())
        .json(&json!({"name": "n", "data": "live"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ev = s.next().await;
    assert!(ev.data.contains("live"), "{ev:?}");
}

#[tokio::test]
async fn wildcard_allows_every_origin_without_credentials() {
    let gw = start_gateway(&Backend::memory(), with_origins(&["*"])).await;
    let base = http(&gw);
    for origin in [APP, EVIL, "null", "http://localhost:1234"] {
        let r = preflight(
            &format!("{base}/v1/conversations"),
            origin,
            "POST",
            "authorization,content-type",
        )
        .await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            header(r.headers(), "access-control-allow-origin"),
            Some("*")
        );
        assert_eq!(
            header(r.headers(), "access-control-allow-credentials"),
            None
        );
        let r = get(&format!("{base}/v1/auth/nonce"), &[("origin", origin)]).await;
        assert_eq!(r.status().as_u16(), 200);
        readable_by(r.headers(), "*");
    }
}

#[tokio::test]
async fn hostile_origins_are_not_allowed_and_harm_nothing() {
    let gw = start_gateway(&Backend::memory(), with_origins(&[APP])).await;
    let base = http(&gw);
    let huge = format!("{APP}{}", "a".repeat(32 * 1024));
    let client = reqwest::Client::new();
    let hostile: Vec<HeaderValue> = vec![
        HeaderValue::from_str(&huge).unwrap(),
        HeaderValue::from_bytes(b"https://app.example\xff").unwrap(),
        HeaderValue::from_static("null"),
        HeaderValue::from_static("https://app.example, https://evil.example"),
        HeaderValue::from_static("https://app.example/"),
        HeaderValue::from_static("HTTPS://APP.EXAMPLE"),
        HeaderValue::from_static("*"),
        HeaderValue::from_static(""),
    ];
    for origin in hostile {
        let r = client
            .request(Method::OPTIONS, format!("{base}/v1/conversations"))
            .header("origin", origin.clone())
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{origin:?}");
        assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
        let r = client
            .get(format!("{base}/v1/auth/nonce"))
            .header("origin", origin.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{origin:?}");
        assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    }
    // And the allowed origin still is.
    let r = get(&format!("{base}/v1/auth/nonce"), &[("origin", APP)]).await;
    readable_by(r.headers(), APP);
}

#[tokio::test]
async fn preflights_count_against_the_address_and_429s_are_readable() {
    let gw = start_gateway(
        &Backend::memory(),
        GatewayConfig {
            limits: LimitsConfig {
                rest_rate: 0.01,
                rest_burst: 3,
                ..LimitsConfig::default()
            },
            ..with_origins(&[APP])
        },
    )
    .await;
    let base = http(&gw);
    let url = format!("{base}/v1/conversations");
    for _ in 0..3 {
        let r = preflight(&url, APP, "POST", "authorization").await;
        assert_eq!(r.status().as_u16(), 200);
    }
    // The burst went to preflights: the next one is refused, with the
    // origin's header (a browser fails a refused preflight either way).
    let r = preflight(&url, APP, "POST", "authorization").await;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    assert!(header(r.headers(), "retry-after").is_some());
    let r = preflight(&url, EVIL, "POST", "authorization").await;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    // An actual request's 429 is readable: status and Retry-After.
    for path in ["/v1/auth/nonce", "/channels/news/messages"] {
        let r = get(&format!("{base}{path}"), &[("origin", APP)]).await;
        assert_eq!(r.status().as_u16(), 429, "{path}");
        readable_by(r.headers(), APP);
        assert!(header(r.headers(), "retry-after").is_some());
    }
    // Probes stay outside the limits.
    let r = get(&format!("{base}/healthz"), &[("origin", APP)]).await;
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn no_cors_headers_when_no_origin_is_configured() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let base = http(&gw);
    let r = preflight(
        &format!("{base}/v1/conversations"),
        APP,
        "POST",
        "authorization",
    )
    .await;
    assert_ne!(r.status().as_u16(), 200);
    no_cors(r.headers());
    let r = get(&format!("{base}/v1/auth/nonce"), &[("origin", APP)]).await;
    assert_eq!(r.status().as_u16(), 200);
    no_cors(r.headers());
}
