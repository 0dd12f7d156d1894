//! The SDK over TLS: a real gateway serving plain HTTP behind a
//! TLS-terminating proxy (a test CA's certificate for `localhost`). Sign-in
//! and REST over `https://`, the WebSocket over `wss://`, trusting the CA
//! through `Tls::with_ca_file`; without the CA every call fails at once
//! with a certificate error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::{
    Client, ClientError, ClientOptions, SignInOptions, Tls, create_group, get_conversation, sign_in,
};
use switchboard_proto::ids::ConvId;
use switchboard_testkit::tls::{TestCa, TlsProxy};
use tokio::time::timeout;

#[tokio::test]
async fn sign_in_rest_and_websocket_over_tls_with_a_private_ca() {
    let (gw, _broker) = gateway().await;
    let ca = TestCa::generate().unwrap();
    let proxy = TlsProxy::start(&ca, gw.local_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::default()
        .with_ca_file(&ca.write_ca(dir.path()).unwrap())
        .unwrap();
    assert_eq!(tls.extra_roots(), 1);
    let base = proxy.https_url();

    let signin = SignInOptions {
        tls: tls.clone(),
        ..SignInOptions::default()
    };
    let sa = sign_in(&base, &wallet(), &signin).await.unwrap();
    let sb = sign_in(&base, &wallet(), &signin).await.unwrap();
    let opts = ClientOptions {
        tls: tls.clone(),
        ..fast_opts()
    };
    let a = Client::connect(&base, &sa, opts.clone()).await.unwrap();
    let mut b = Client::connect(&base, &sb, opts).await.unwrap();

    // A message over wss:// both ways of the proxy.
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    let sent = a.send(&conv, json!({"text": "over tls"})).await.unwrap();
    assert_eq!(sent.seq, 1);
    let got = messages(&mut b, 1, Duration::from_millis(100)).await;
    assert_eq!(body(&got[0])["text"], "over tls");
    assert_eq!(got[0].from, sa.address);

    // REST over https://.
    let group = create_group(&base, &sa.token, &[sb.address], Some("tls"), &tls)
        .await
        .unwrap();
    let seen = get_conversation(&base, &sb.token, &group.id, &tls)
        .await
        .unwrap();
    assert_eq!(seen.id, group.id);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn an_untrusted_certificate_fails_fast_and_says_so() {
    let (gw, _broker) = gateway().await;
    let ca = TestCa::generate().unwrap();
    let proxy = TlsProxy::start(&ca, gw.local_addr()).await.unwrap();
    let base = proxy.https_url();
    // A token from the plain listener, to try the WebSocket with.
    let session = login(&common::base(&gw)).await;
    let peer = login(&common::base(&gw)).await;

    let untrusted = |e: ClientError| {
        let m = e.to_string();
        assert!(matches!(e, ClientError::Tls(_)), "{m}");
        assert!(m.contains("certificate is not trusted"), "{m}");
        assert!(!e.is_transient(), "{m}");
        m
    };
    let quick = Duration::from_secs(5);
    let e = timeout(quick, sign_in(&base, &wallet(), &SignInOptions::default()))
        .await
        .expect("sign-in fails at once")
        .unwrap_err();
    let m = untrusted(e);
    assert!(m.contains("UnknownIssuer"), "{m}");
    let e = timeout(
        quick,
        get_conversation(
            &base,
            &session.token,
            &ConvId::direct(&session.address, &peer.address).unwrap(),
            &Tls::default(),
        ),
    )
    .await
    .expect("REST fails at once");
    untrusted(e.unwrap_err());
    let e = timeout(quick, Client::connect(&base, &session, fast_opts()))
        .await
        .expect("connect fails at once");
    match e {
        Ok(_) => panic!("connected without trusting the CA"),
        Err(e) => assert!(untrusted(e).contains("UnknownIssuer")),
    }

    // Another CA (with the same name: the signature does not match) does not help either.
    let other = TestCa::generate().unwrap();
    let tls = Tls::default()
        .with_ca_pem(other.ca_pem().as_bytes())
        .unwrap();
    let opts = ClientOptions { tls, ..fast_opts() };
    match timeout(quick, Client::connect(&base, &session, opts))
        .await
        .expect("connect fails at once")
    {
        Ok(_) => panic!("connected trusting another CA"),
        Err(e) => assert!(untrusted(e).contains("BadSignature")),
    }
}
