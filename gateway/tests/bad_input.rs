//! Every kind of bad input gets a clear, typed answer, and the gateway keeps
//! serving the offender's socket (where the protocol says so) and everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;
use switchboard_proto::auth::eip191::sign_personal;
use switchboard_proto::auth::siwe::{SignInParams, build_message};
use switchboard_proto::ids::ConvId;

async fn gateway() -> (Backend, switchboard_gateway::Gateway) {
    let b = Backend::memory();
    let g = start_gateway(&b, fast_config()).await;
    (b, g)
}

async fn still_alive(ws: &mut Ws) {
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.recv_type("pong").await["type"], "pong");
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_the_socket_stays_open() {
    let (_b, g) = gateway().await;
    let a = Wallet::random();
    let mut ws = Ws::connect(&g, &login(&http(&g), &a).await).await;
    for raw in [
        "not json",
        "{}",
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"send","conv":"dm:nope","id":"x","body":1}"#,
        r#"{"type":"send","conv":"g:00000000000000000000000000000000","id":"has space","body":1}"#,
        r#"{"type":"ack","conv":"g:00000000000000000000000000000000","seq":-1}"#,
        r#"[1,2,3]"#,
    ] {
        ws.send_raw(raw).await;
        let e = ws.recv_type("error").await;
        assert_eq!(e["code"], "bad_frame", "{raw} → {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    ws.inner
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(ws.recv_type("error").await["code"], "bad_frame");
    // A second auth is refused but harmless.
    ws.send(json!({"type":"auth","token":"x"})).await;
    assert_eq!(ws.recv_type("error").await["code"], "bad_frame");
    still_alive(&mut ws).await;
    g.shutdown().await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn unauthenticated_sockets_are_closed_with_4001() {
    let (_b, g) = gateway().await;
    // A frame other than auth first.
    let mut ws = Ws::open(&g).await;
    ws.send(json!({"type":"ping"})).await;
    let e = ws.recv().await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4001));
    // A forged token.
    let mut ws = Ws::open(&g).await;
    ws.send(json!({"type":"auth","token":"v1.eyJzdWIiOiIweDAwIn0.AAAA"}))
        .await;
    assert_eq!(ws.recv().await["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4001));
    // A token signed with another gateway's secret.
    let other = Backend::memory();
    let g_other = start_gateway(
        &other,
        GatewayConfig {
            token_secret: b"another-secret-another-secret-xx".to_vec(),
            ..fast_config()
        },
    )
    .await;
    let foreign = login(&http(&g_other), &Wallet::random()).await;
    let mut ws = Ws::open(&g).await;
    ws.send(json!({"type":"auth","token":foreign})).await;
    assert_eq!(ws.recv().await["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4001));
    // A bad bearer header on the upgrade is an HTTP 401.
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/v1/ws", g.local_addr()),
    )
    .unwrap();
    let mut req = req;
    req.headers_mut()
        .insert("authorization", "Bearer nonsense".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected HTTP 401, got {:?}", other.map(|_| ())),
    }
    g.shutdown().await;
    g_other.shutdown().await;
}

#[tokio::test]
async fn silent_sockets_are_closed_after_the_auth_timeout() {
    let b = Backend::memory();
    let g = start_gateway(
        &b,
        GatewayConfig {
            auth_timeout: Duration::from_millis(300),
            ..fast_config()
        },
    )
    .await;
    let mut ws = Ws::open(&g).await;
    assert_eq!(ws.recv().await["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4001));
    g.shutdown().await;
}

#[tokio::test]
async fn bearer_header_authenticates_the_upgrade() {
    let (_b, g) = gateway().await;
    let token = login(&http(&g), &Wallet::random()).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/v1/ws", g.local_addr()),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (inner, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut ws = Ws { inner };
    assert_eq!(ws.recv().await["type"], "ready");
    g.shutdown().await;
}

#[tokio::test]
async fn non_members_are_forbidden() {
    let (_b, g) = gateway().await;
    let (a, b, c) = (Wallet::random(), Wallet::random(), Wallet::random());
    let ta = login(&http(&g), &a).await;
    let tc = login(&http(&g), &c).await;
    let group = create_group(&http(&g), &ta, &[b.addr]).await;
    let mut wc = Ws::connect(&g, &tc).await;
    let dm_ab = ConvId::direct(&a.addr, &b.addr).unwrap();
    for frame in [
        json!({"type":"send","conv":dm_ab,"id":"f1","body":1}),
        json!({"type":"send","conv":group,"id":"f2","body":1}),
        json!({"type":"sync","conv":group,"after":0}),
        json!({"type":"ack","conv":dm_ab,"seq":1}),
        json!({"type":"read","conv":group,"seq":1}),
        json!({"type":"typing","conv":group}),
    ] {
        wc.send(frame.clone()).await;
        let e = wc.recv_type("error").await;
        assert_eq!(e["code"], "forbidden", "{frame} → {e}");
    }
    // A missing group looks the same as a group you are not in.
    wc.send(json!({"type":"send","conv":ConvId::new_group(),"id":"f3","body":1}))
        .await;
    assert_eq!(wc.recv_type("error").await["code"], "forbidden");
    // REST: 404 for non-members, no leak of existence.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/conversations/{group}", http(&g)))
        .bearer_auth(&tc)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    still_alive(&mut wc).await;
    g.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009_and_others_are_unaffected() {
    let (_b, g) = gateway().await;
    let (a, b) = (Wallet::random(), Wallet::random());
    let mut wa = Ws::connect(&g, &login(&http(&g), &a).await).await;
    let mut wb = Ws::connect(&g, &login(&http(&g), &b).await).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap();
    let big = "x".repeat(65 * 1024);
    wa.send(json!({"type":"send","conv":conv,"id":"big","body":big}))
        .await;
    assert_eq!(wa.close_code().await, Some(1009));
    still_alive(&mut wb).await;
    g.shutdown().await;
}

#[tokio::test]
async fn flooding_is_rate_limited() {
    let b = Backend::memory();
    let g = start_gateway(
        &b,
        GatewayConfig {
            send_rate: 5,
            send_burst: 5,
            ..fast_config()
        },
    )
    .await;
    let (a, peer) = (Wallet::random(), Wallet::random());
    let mut wa = Ws::connect(&g, &login(&http(&g), &a).await).await;
    let conv = ConvId::direct(&a.addr, &peer.addr).unwrap();
    for i in 0..20 {
        wa.send(json!({"type":"send","conv":conv,"id":format!("f{i}"),"body":i}))
            .await;
    }
    let mut sent = 0;
    let mut limited = vec![];
    for _ in 0..20 {
        let f = wa.recv().await;
        match f["type"].as_str().unwrap() {
            "sent" => sent += 1,
            "error" => {
                assert_eq!(f["code"], "rate_limited");
                limited.push(f["ref"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        sent >= 5 && !limited.is_empty(),
        "sent {sent}, limited {limited:?}"
    );
    // Retrying a limited id later succeeds: nothing was lost.
    tokio::time::sleep(Duration::from_millis(400)).await;
    wa.send(json!({"type":"send","conv":conv,"id":limited[0],"body":0}))
        .await;
    assert_eq!(wa.recv_type("sent").await["id"], limited[0]);
    still_alive(&mut wa).await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off() {
    let b = Backend::memory();
    let g = start_gateway(
        &b,
        GatewayConfig {
            send_queue: 8,
            send_rate: 10_000,
            send_burst: 10_000,
            frame_rate: 10_000,
            frame_burst: 10_000,
            ..fast_config()
        },
    )
    .await;
    let (a, slow) = (Wallet::random(), Wallet::random());
    let mut wa = Ws::connect(&g, &login(&http(&g), &a).await).await;
    let ws_slow = Ws::connect(&g, &login(&http(&g), &slow).await).await; // never reads again
    let conv = ConvId::direct(&a.addr, &slow.addr).unwrap();
    let body = "y".repeat(60 * 1024);
    let metrics = format!("http://{}/metrics", g.metrics_addr());
    let mut cut = false;
    for i in 0..400 {
        wa.send(json!({"type":"send","conv":conv,"id":format!("s{i}"),"body":body}))
            .await;
        wa.recv_type("sent").await;
        if i % 20 == 19 {
            let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            if m.contains("switchboard_gateway_slow_consumers_total 1") {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the slow reader was never disconnected");
    // The server dropped it: only A remains connected.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(g.state().hub.connection_count(), 1);
    still_alive(&mut wa).await;
    drop(ws_slow);
    g.shutdown().await;
}

#[tokio::test]
async fn sign_in_failures_are_401_with_a_code() {
    let (_b, g) = gateway().await;
    let base = http(&g);
    let w = Wallet::random();
    let other = Wallet::random();

    // Wrong domain, wrong chain id.
    for (domain, chain) in [("evil.example", 1), ("localhost", 5)] {
        let n = nonce(&base).await;
        let msg = siwe_message(domain, w.addr, &n, chain);
        let (s, body) = verify(&base, &msg, &sign_personal(&w.key, msg.as_bytes())).await;
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Signed by a different key than the address in the message.
    let n = nonce(&base).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let (s, _) = verify(&base, &msg, &sign_personal(&other.key, msg.as_bytes())).await;
    assert_eq!(s, 401);
    // Tampered message.
    let n = nonce(&base).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let sig = sign_personal(&w.key, msg.as_bytes());
    let tampered = msg.replace("Sign in to Switchboard", "Sign in to Switchboarb");
    assert_eq!(verify(&base, &tampered, &sig).await.0, 401);
    // Unknown nonce.
    let msg = siwe_message("localhost", w.addr, "abcdefghijklmnop1234", 1);
    assert_eq!(
        verify(&base, &msg, &sign_personal(&w.key, msg.as_bytes()))
            .await
            .0,
        401
    );
    // Replayed nonce: the first use succeeds, the replay fails.
    let n = nonce(&base).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let sig = sign_personal(&w.key, msg.as_bytes());
    assert_eq!(verify(&base, &msg, &sig).await.0, 200);
    assert_eq!(verify(&base, &msg, &sig).await.0, 401);
    // High-S twin of a valid signature.
    let n = nonce(&base).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let sig = sign_personal(&w.key, msg.as_bytes());
    let high_s = high_s_twin(&sig);
    let (s, body) = verify(&base, &msg, &high_s).await;
    assert_eq!(s, 401, "{body}");
    // …and the nonce was not burnt by the forgery: the real signature works.
    assert_eq!(verify(&base, &msg, &sig).await.0, 200);
    // Garbage bodies.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/auth/verify"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
    assert_eq!(verify(&base, "hello", "0x1234").await.0, 401);
    g.shutdown().await;
}

/// The message must be for this server (its URI's authority is the
/// configured domain) and fresh (issued at most the nonce lifetime plus the
/// clock skew ago); a refusal names the reason.
#[tokio::test]
async fn sign_in_refuses_a_foreign_uri_and_an_old_message() {
    let (_b, g) = gateway().await;
    let base = http(&g);
    let w = Wallet::random();
    let now = time::OffsetDateTime::now_utc();
    let message = |nonce: &str, uri: &str, issued_at: time::OffsetDateTime| {
        build_message(&SignInParams {
            domain: "localhost".into(),
            address: w.addr,
            statement: None,
            uri: uri.into(),
            chain_id: 1,
            nonce: nonce.into(),
            issued_at,
            expiration_time: None,
        })
    };
    for (uri, issued_at, code) in [
        ("https://evil.example/", now, "wrong_uri"),
        ("https://localhost.evil.example/", now, "wrong_uri"),
        ("http://localhost:8080/", now, "wrong_uri"),
        (
            "http://localhost/",
            now - time::Duration::hours(1),
            "too_old",
        ),
        (
            "http://localhost/",
            now + time::Duration::hours(1),
            "not_yet_valid",
        ),
    ] {
        let n = nonce(&base).await;
        let msg = message(&n, uri, issued_at);
        let (s, body) = verify(&base, &msg, &sign_personal(&w.key, msg.as_bytes())).await;
        assert_eq!(s, 401, "{uri} {issued_at}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains(code), "{uri} {issued_at}: {text}");
    }
    // The same nonce still works with a good message: refusals burn nothing.
    let n = nonce(&base).await;
    let msg = message(&n, "https://evil.example/", now);
    assert_eq!(
        verify(&base, &msg, &sign_personal(&w.key, msg.as_bytes()))
            .await
            .0,
        401
    );
    let msg = message(&n, "https://localhost/app", now);
    let (s, body) = verify(&base, &msg, &sign_personal(&w.key, msg.as_bytes())).await;
    assert_eq!(s, 200, "{body}");
    g.shutdown().await;
}

/// s' = n - s with the recovery bit flipped: the same signature in its
/// malleable high-S form.
fn high_s_twin(sig_hex: &str) -> String {
    const N: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFE, 0xBA, 0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36,
        0x41, 0x41,
    ];
    let mut b = hex::decode(sig_hex.trim_start_matches("0x")).unwrap();
    let mut borrow = 0i16;
    let mut s = [0u8; 32];
    for i in (0..32).rev() {
        let d = N[i] as i16 - b[32 + i] as i16 - borrow;
        borrow = if d < 0 { 1 } else { 0 };
        s[i] = (d + 256) as u8;
    }
    b[32..64].copy_from_slice(&s);
    b[64] = if b[64] == 27 { 28 } else { 27 };
    format!("0x{}", hex::encode(b))
}

#[tokio::test]
async fn rest_validation_errors() {
    let (_b, g) = gateway().await;
    let base = http(&g);
    let token = login(&base, &Wallet::random()).await;
    let client = reqwest::Client::new();
    for (body, why) in [
        (json!({"kind":"group","members":["0x12"]}), "members[0]"),
        (json!({"kind":"direct","members":[]}), "only kind"),
        (json!({"kind":"group","title":"x".repeat(201)}), "title"),
        (json!({"kind":"group","bogus":1}), "unknown field"),
    ] {
        let r = client
            .post(format!("{base}/v1/conversations"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
    }
    let r = client
        .post(format!("{base}/v1/conversations"))
        .json(&json!({"kind":"group"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{base}/v1/conversations/not-an-id"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/nope")).await.unwrap().status(),
        404
    );
    g.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let (_b, g) = gateway().await;
    let mut ws = Ws::connect(&g, &login(&http(&g), &Wallet::random()).await).await;
    let closing = tokio::spawn(async move { ws.close_code().await });
    g.shutdown().await;
    assert_eq!(closing.await.unwrap(), Some(1012));
}

#[tokio::test]
async fn frame_limit_spares_acks_and_names_the_send() {
    let b = Backend::memory();
    let g = start_gateway(
        &b,
        GatewayConfig {
            frame_rate: 1,
            frame_burst: 3,
            ..fast_config()
        },
    )
    .await;
    let (a, peer) = (Wallet::random(), Wallet::random());
    let mut wa = Ws::connect(&g, &login(&http(&g), &a).await).await;
    let conv = ConvId::direct(&a.addr, &peer.addr).unwrap();
    for seq in 0..20 {
        wa.send(json!({"type":"ack","conv":conv,"seq":seq})).await;
    }
    assert!(
        wa.collect_type("error", Duration::from_millis(300))
            .await
            .is_empty()
    );
    for i in 0..6 {
        wa.send(json!({"type":"send","conv":conv,"id":format!("q{i}"),"body":i}))
            .await;
    }
    let errors = wa.collect_type("error", Duration::from_millis(500)).await;
    assert!(!errors.is_empty());
    for e in errors {
        assert_eq!(e["code"], "rate_limited");
        assert!(e["ref"].as_str().unwrap().starts_with('q'), "{e}");
    }
    g.shutdown().await;
}
