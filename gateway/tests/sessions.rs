//! Sessions end (issue 13, finding 8): a socket or SSE stream is closed with
//! 4001 when its token expires, and a user's sessions can be revoked — by
//! the user (sign out everywhere) or by an operator with an unrestricted API
//! key — without rotating the token secret for everyone: revoked tokens are
//! refused on every gateway and their open connections close with 4001.
//! Before, a token was checked only when a connection opened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::Value;
use switchboard_gateway::GatewayConfig;
use switchboard_proto::ids::ConvId;
use time::OffsetDateTime;

async fn post(url: &str, auth: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn conversations(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/v1/conversations"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sockets_and_streams_close_when_their_token_expires() {
    let gw = start_gateway(&Backend::memory(), fast_config()).await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let (short, _) =
        gw.state()
            .chat
            .tokens
            .issue(&a.addr, Duration::from_secs(2), OffsetDateTime::now_utc());
    let lasting = login(&http(&gw), &b).await;
    let mut ws = Ws::connect(&gw, &short).await;
    let mut other = Ws::connect(&gw, &lasting).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let url = format!(
        "{}/v1/conversations/{conv}/events?access_token={short}",
        http(&gw)
    );
    let mut sse = SseStream::open(&url, &[]).await.unwrap();
    // Within the two seconds plus the once-a-second sweep.
    assert_eq!(ws.close_code().await, Some(4001));
    let mut ev = sse.next().await;
    if ev.event == "synced" {
        ev = sse.next().await;
    }
    assert_eq!(ev.event, "close", "{ev:?}");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["code"], 4001, "{data}");
    // A connection with a valid token stays open.
    other.send(serde_json::json!({"type":"ping"})).await;
    assert_eq!(other.recv_type("pong").await["type"], "pong");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_out_everywhere() {
    let backend = Backend::redis();
    let (gw1, gw2) = (
        start_gateway(&backend, fast_config()).await,
        start_gateway(&backend, fast_config()).await,
    );
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw1), &a).await;
    let tb = login(&http(&gw1), &b).await;
    let mut a1 = Ws::connect(&gw1, &ta).await;
    let mut a2 = Ws::connect(&gw2, &ta).await;
    let mut b2 = Ws::connect(&gw2, &tb).await;

    let (status, body) = post(
        &format!("{}/v1/auth/revoke", http(&gw1)),
        &format!("Bearer {ta}"),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // Both of a's sockets close, on both gateways.
    assert_eq!(a1.close_code().await, Some(4001));
    assert_eq!(a2.close_code().await, Some(4001));
    // The token is refused everywhere, for REST and for new sockets...
    assert_eq!(conversations(&http(&gw2), &ta).await, 401);
    let mut again = Ws::open(&gw2).await;
    again
        .send(serde_json::json!({"type":"auth","token":ta}))
        .await;
    let refused = again.recv_type("error").await;
    assert!(
        refused["message"].as_str().unwrap().contains("revoked"),
        "{refused}"
    );
    // ...while b is untouched.
    assert_eq!(conversations(&http(&gw2), &tb).await, 200);
    b2.send(serde_json::json!({"type":"ping"})).await;
    assert_eq!(b2.recv_type("pong").await["type"], "pong");
    // Signing in again (tokens count whole seconds: in a later second than
    // the revocation) starts a session that works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = login(&http(&gw2), &a).await;
    assert_eq!(conversations(&http(&gw1), &fresh).await, 200);
    gw1.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test]
async fn an_operator_revokes_a_user_with_an_unrestricted_key() {
    let cfg = GatewayConfig {
        api_keys: vec![
            "admin.k:s3cret".parse().unwrap(),
            "lim.k:l1m:news".parse().unwrap(),
        ],
        ..fast_config()
    };
    let gw = start_gateway(&Backend::memory(), cfg).await;
    let a = Wallet::random();
    let ta = login(&http(&gw), &a).await;
    let mut ws = Ws::connect(&gw, &ta).await;
    let basic = |k: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(k)
        )
    };
    let url = format!("{}/v1/users/{}/revoke", http(&gw), a.addr);
    let (status, body) = post(&url, &basic("lim.k:l1m")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = post(&url, &basic("admin.k:wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = post(&url, &format!("Bearer {ta}")).await;
    assert_eq!(status, 401, "a session token is not an operator's key");
    let (status, body) = post(
        &format!("{}/v1/users/0xnot-an-address/revoke", http(&gw)),
        &basic("admin.k:s3cret"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        conversations(&http(&gw), &ta).await,
        200,
        "nothing revoked yet"
    );
    let (status, body) = post(&url, &basic("admin.k:s3cret")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(ws.close_code().await, Some(4001));
    assert_eq!(conversations(&http(&gw), &ta).await, 401);
    gw.shutdown().await;
}
