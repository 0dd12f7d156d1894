//! Sign-in, direct and group messaging, receipts, typing, ping and typed
//! errors, against a real in-process gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::{
    Client, ClientError, ClientOptions, ErrorCode, Event, SignInOptions, Tls, create_group,
    get_conversation, sign_in,
};
use switchboard_proto::auth::eip191::address_of;
use switchboard_proto::ids::ConvId;

#[tokio::test]
async fn direct_messages_arrive_in_order_exactly_once() {
    let (gw, _broker) = gateway().await;
    let base = base(&gw);
    let key = wallet();
    let sa = sign_in(&base, &key, &SignInOptions::default())
        .await
        .unwrap();
    assert_eq!(sa.address, address_of(key.verifying_key()));
    assert!(!sa.expired(Duration::from_secs(60)));
    let sb = login(&base).await;
    let mut a = connect(&base, &sa).await;
    let mut b = connect(&base, &sb).await;
    assert_eq!(a.user(), sa.address);
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();

    // Composed back to back; each future resolves with its own seq, in order.
    let pending: Vec<_> = (0..30)
        .map(|n| a.send(&conv, json!({"text": format!("m{n}"), "n": n})))
        .collect();
    let ids: Vec<_> = pending.iter().map(|p| p.id().clone()).collect();
    let mut sent = Vec::new();
    for p in pending {
        sent.push(p.await.unwrap());
    }
    assert_eq!(
        sent.iter().map(|s| s.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(sent.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), ids);
    assert!(sent.iter().all(|s| s.conv == conv && s.ts > 0));

    let got = messages(&mut b, 30, Duration::from_millis(300)).await;
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<_>>());
    for (n, m) in got.iter().enumerate() {
        assert_eq!(m.from, sa.address);
        assert_eq!(m.id, ids[n]);
        assert_eq!(body(m)["n"], n);
    }

    // B's acks come back to A as delivered receipts; read marks too.
    wait_for(
        &mut a,
        "delivered receipt",
        |e| matches!(e, Event::Receipt { user, delivered: 30, .. } if *user == sb.address),
    )
    .await;
    b.read(&conv, 30).unwrap();
    wait_for(&mut a, "read receipt", |e| {
        matches!(e, Event::Receipt { read: 30, .. })
    })
    .await;

    // The reply continues the same sequence; A's own sends are not echoed to A.
    b.typing(&conv).unwrap();
    wait_for(
        &mut a,
        "typing",
        |e| matches!(e, Event::Typing { user, .. } if *user == sb.address),
    )
    .await;
    let r = b.send(&conv, json!({"text": "pong"})).await.unwrap();
    assert_eq!(r.seq, 31);
    let got = messages(&mut a, 1, Duration::from_millis(200)).await;
    assert_eq!(seqs(&got), [31]);
    assert_eq!(body(&got[0])["text"], "pong");

    assert!(a.ping().await.unwrap() < Duration::from_secs(1));
    a.close().await;
    b.close().await;
    gw.shutdown().await;
}

#[tokio::test]
async fn groups_over_rest_and_websocket() {
    let (gw, _broker) = gateway().await;
    let base = base(&gw);
    let (sa, sb, sc) = (login(&base).await, login(&base).await, login(&base).await);
    let g = create_group(
        &base,
        &sa.token,
        &[sb.address, sc.address],
        Some("team"),
        &Tls::default(),
    )
    .await
    .unwrap();
    assert_eq!(g.title.as_deref(), Some("team"));
    assert_eq!(g.members.len(), 3);
    assert_eq!(
        get_conversation(&base, &sb.token, &g.id, &Tls::default())
            .await
            .unwrap()
            .id,
        g.id
    );

    let outsider = login(&base).await;
    match get_conversation(&base, &outsider.token, &g.id, &Tls::default()).await {
        Err(ClientError::Api {
            status: 404, code, ..
        }) => assert_eq!(code, "not_found"),
        other => panic!("{other:?}"),
    }

    let a = connect(&base, &sa).await;
    let mut b = connect(&base, &sb).await;
    let mut c = connect(&base, &sc).await;
    for n in 0..5 {
        a.send(&g.id, json!({"n": n})).await.unwrap();
    }
    b.send(&g.id, json!({"n": 5})).await.unwrap();
    let at_c = messages(&mut c, 6, Duration::from_millis(200)).await;
    assert_eq!(seqs(&at_c), [1, 2, 3, 4, 5, 6]);
    let at_b = messages(&mut b, 5, Duration::from_millis(200)).await;
    assert_eq!(seqs(&at_b), [1, 2, 3, 4, 5]);

    // A non-member's send is rejected with a typed error, not retried.
    let o = connect(&base, &outsider).await;
    match o.send(&g.id, json!({"x": 1})).await {
        Err(ClientError::Rejected {
            code: ErrorCode::Forbidden,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Too large for the protocol: refused locally, never written.
    let big = "x".repeat(70 * 1024);
    assert!(matches!(
        o.send(&g.id, json!({"text": big})).await,
        Err(ClientError::TooLarge { .. })
    ));
    // The connection is still fine.
    o.ping().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn http_and_auth_errors_are_typed() {
    let (gw, _broker) = gateway().await;
    let base = base(&gw);
    let key = wallet();

    let wrong_domain = SignInOptions {
        domain: "evil.example".into(),
        ..SignInOptions::default()
    };
    match sign_in(&base, &key, &wrong_domain).await {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (401, "unauthorized"));
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let wrong_chain = SignInOptions {
        chain_id: 5,
        ..SignInOptions::default()
    };
    assert!(matches!(
        sign_in(&base, &key, &wrong_chain).await,
        Err(ClientError::Api { status: 401, .. })
    ));
    assert!(matches!(
        sign_in("localhost:1", &key, &SignInOptions::default()).await,
        Err(ClientError::InvalidUrl(_))
    ));
    let err = sign_in("http://127.0.0.1:1", &key, &SignInOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err:?}");
    assert!(err.is_transient());

    match Client::connect_with_token(&base, "v1.bogus", ClientOptions::default()).await {
        Err(ClientError::Unauthorized(_)) => {}
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected with a bogus token"),
    }
    match create_group(&base, "v1.bogus", &[], None, &Tls::default()).await {
        Err(ClientError::Api {
            status: 401, code, ..
        }) => assert_eq!(code, "unauthorized"),
        other => panic!("{other:?}"),
    }
    gw.shutdown().await;
}
