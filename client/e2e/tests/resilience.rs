//! The SDK's delivery guarantees under failure: the outbox across a gateway
//! restart, catch-up by sync after an outage, forced reconnects in the middle
//! of sends, duplicate deliveries, gap filling and the end of a session.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::{Client, ClientError, ClientOptions, Event};
use switchboard_core::broker::{Broker, MemoryBroker};
use switchboard_gateway::GatewayConfig;
use switchboard_proto::ids::ConvId;
use tokio::time::timeout;

#[tokio::test]
async fn outbox_survives_a_gateway_restart() {
    let broker = MemoryBroker::default();
    let gw1 = start_gateway(&broker, "127.0.0.1:0", gateway_config()).await;
    let addr = gw1.local_addr();
    let base = base(&gw1);
    let (sa, sb) = (login(&base).await, login(&base).await);
    let mut a = connect(&base, &sa).await;
    let mut b = connect(&base, &sb).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    assert_eq!(a.send(&conv, json!({"n": 0})).await.unwrap().seq, 1);
    assert_eq!(seqs(&messages(&mut b, 1, Duration::ZERO).await), [1]);

    // Drain: every socket is closed with 1012 and the port goes dark.
    gw1.shutdown().await;
    wait_for(&mut a, "disconnect", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: Some(1012),
                ..
            }
        )
    })
    .await;

    // Composed while the gateway is unreachable: queued, in order.
    let mut pending: Vec<_> = (1..=3).map(|n| a.send(&conv, json!({"n": n}))).collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        timeout(Duration::from_millis(10), &mut pending[0])
            .await
            .is_err(),
        "resolved with no gateway"
    );

    // A new gateway on the same port, same secret, same broker.
    let gw2 = start_gateway(&broker, &addr.to_string(), gateway_config()).await;
    let mut got = Vec::new();
    for p in pending {
        got.push(timeout(WAIT, p).await.unwrap().unwrap().seq);
    }
    assert_eq!(got, [2, 3, 4]);
    wait_for(&mut a, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;

    // B reconnected too and gets each exactly once, in order.
    let at_b = messages(&mut b, 3, Duration::from_millis(300)).await;
    assert_eq!(seqs(&at_b), [2, 3, 4]);
    assert_eq!(
        at_b.iter()
            .map(|m| body(m)["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // The broker stored four messages, no duplicates.
    let log = broker.read_log(&conv, 0, 100).await.unwrap();
    assert_eq!(seqs(&log.messages), [1, 2, 3, 4]);
    assert_eq!(
        log.messages
            .iter()
            .map(|m| &m.id)
            .collect::<HashSet<_>>()
            .len(),
        4
    );
    a.close().await;
    b.close().await;
    gw2.shutdown().await;
}

#[tokio::test]
async fn offline_recipient_catches_up_by_sync() {
    let (gw, broker) = gateway().await;
    let base = base(&gw);
    let proxy = Proxy::start(gw.local_addr()).await;
    let (sa, sb) = (login(&base).await, login(&base).await);
    let a = connect(&base, &sa).await;
    let mut b = connect(&proxy.base(), &sb).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    a.send(&conv, json!({"n": 1})).await.unwrap();
    assert_eq!(seqs(&messages(&mut b, 1, Duration::ZERO).await), [1]);

    // B's network fails: no close frame, and reconnects are refused.
    proxy.cut();
    wait_for(&mut b, "disconnect", |e| {
        matches!(e, Event::Disconnected { code: None, .. })
    })
    .await;
    for n in 2..=6 {
        a.send(&conv, json!({"n": n})).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();

    wait_for(&mut b, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    let got = messages(&mut b, 5, Duration::from_millis(300)).await;
    assert_eq!(seqs(&got), [2, 3, 4, 5, 6]);

    // A fresh client that follows the conversation from the start replays it,
    // paging until it reaches the last seq; one that holds 4 gets only 5 and 6.
    let opts = ClientOptions {
        track: vec![(conv.clone(), 0)],
        ..fast_opts()
    };
    let mut fresh = Client::connect(&base, &sb, opts).await.unwrap();
    assert_eq!(
        seqs(&messages(&mut fresh, 6, Duration::from_millis(200)).await),
        [1, 2, 3, 4, 5, 6]
    );
    let mut resumed = connect(&base, &sb).await;
    resumed.track_from(&conv, 4).unwrap();
    let synced = wait_for(&mut resumed, "synced", |e| {
        matches!(e, Event::Synced { .. })
    })
    .await;
    assert!(
        matches!(
            synced,
            Event::Synced {
                last_seq: 6,
                held: 6,
                lost: 0,
                ..
            }
        ),
        "{synced:?}"
    );
    drop(resumed);
    assert_eq!(
        broker.read_log(&conv, 0, 100).await.unwrap().messages.len(),
        6
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn sync_pages_through_long_histories() {
    let broker = MemoryBroker::default();
    let cfg = GatewayConfig {
        sync_limit: 7,
        ..gateway_config()
    };
    let gw = start_gateway(&broker, "127.0.0.1:0", cfg).await;
    let base = base(&gw);
    let (sa, sb) = (login(&base).await, login(&base).await);
    let a = connect(&base, &sa).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    let pending: Vec<_> = (0..30).map(|n| a.send(&conv, json!({"n": n}))).collect();
    for p in pending {
        p.await.unwrap();
    }
    let opts = ClientOptions {
        track: vec![(conv.clone(), 0)],
        ..fast_opts()
    };
    let mut b = Client::connect(&base, &sb, opts).await.unwrap();
    let got = messages(&mut b, 30, Duration::from_millis(200)).await;
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<_>>());
    gw.shutdown().await;
}

#[tokio::test]
async fn forced_reconnects_during_sends_never_duplicate() {
    let (gw, broker) = gateway().await;
    let base = base(&gw);
    let proxy = Proxy::start(gw.local_addr()).await;
    let (sa, sb) = (login(&base).await, login(&base).await);
    let mut a = connect(&proxy.base(), &sa).await;
    let mut b = connect(&base, &sb).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();

    // Each round kills A's connection with sends outstanding: in even rounds
    // the server has stored them but its `sent` answers are held up in the
    // network (the resend must hit the server's dedupe); in odd rounds the
    // send frames themselves are lost on the way (the resend stores them).
    let mut pending = Vec::new();
    for round in 0..4 {
        let answers_lost = round % 2 == 0;
        if answers_lost {
            proxy.stall_server_to_client(true);
        } else {
            proxy.stall_client_to_server(true);
        }
        for n in 0..15 {
            pending.push(a.send(&conv, json!({"round": round, "n": n})));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.sever();
        proxy.stall_server_to_client(false);
        proxy.stall_client_to_server(false);
        wait_for(&mut a, "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await;
        wait_for(&mut a, "reconnect", |e| {
            matches!(e, Event::Connected { .. })
        })
        .await;
    }
    let ids: Vec<_> = pending.iter().map(|p| p.id().clone()).collect();
    let mut sent = Vec::new();
    for p in pending {
        sent.push(timeout(WAIT, p).await.unwrap().unwrap());
    }
    // Every send got its own seq, in the order composed.
    assert_eq!(
        sent.iter().map(|s| s.seq).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    // The server stored 30 messages before A saw their `sent`: had a resend
    // been stored again, the count below would be off.
    assert_eq!(gw.state().metrics.messages_in.get(), 60);

    let got = messages(&mut b, 60, Duration::from_millis(300)).await;
    assert_eq!(seqs(&got), (1..=60).collect::<Vec<_>>());
    assert_eq!(got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    let log = broker.read_log(&conv, 0, 1000).await.unwrap();
    assert_eq!(log.messages.len(), 60);
    assert_eq!(log.last_seq, 60);
    gw.shutdown().await;
}

#[tokio::test]
async fn redelivered_messages_are_acked_again_but_surfaced_once() {
    let broker = MemoryBroker::default();
    let cfg = GatewayConfig {
        ack_timeout: Duration::from_millis(40),
        ..gateway_config()
    };
    let gw = start_gateway(&broker, "127.0.0.1:0", cfg).await;
    let base = base(&gw);
    let proxy = Proxy::start(gw.local_addr()).await;
    let (sa, sb) = (login(&base).await, login(&base).await);
    let a = connect(&base, &sa).await;
    let mut b = connect(&proxy.base(), &sb).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();

    // B's acks are held back: the gateway resends every msg.
    proxy.stall_client_to_server(true);
    for n in 0..5 {
        a.send(&conv, json!({"n": n})).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.stall_client_to_server(false);
    let retries = gw.state().metrics.retries.get();
    assert!(retries >= 5, "expected redeliveries, got {retries}");

    let got = messages(&mut b, 5, Duration::from_millis(300)).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5]);
    gw.shutdown().await;
}

#[tokio::test]
async fn seq_gaps_are_filled_by_sync() {
    let (gw, _broker) = gateway().await;
    let base = base(&gw);
    let (sa, sb) = (login(&base).await, login(&base).await);
    let a = connect(&base, &sa).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    for n in 1..=3 {
        a.send(&conv, json!({"n": n})).await.unwrap();
    }
    // B comes online knowing nothing of the conversation and backfills: the
    // first live message (seq 4) shows a gap, which a sync fills.
    let opts = ClientOptions {
        backfill_new: true,
        ..fast_opts()
    };
    let mut b = Client::connect(&base, &sb, opts).await.unwrap();
    a.send(&conv, json!({"n": 4})).await.unwrap();
    let got = messages(&mut b, 4, Duration::from_millis(300)).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4]);

    // Without backfill a new conversation starts at its first live message.
    let mut live = connect(&base, &sb).await;
    a.send(&conv, json!({"n": 5})).await.unwrap();
    assert_eq!(
        seqs(&messages(&mut live, 1, Duration::from_millis(300)).await),
        [5]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unauthorized_on_reconnect_stops_the_client() {
    let broker = MemoryBroker::default();
    let gw1 = start_gateway(&broker, "127.0.0.1:0", gateway_config()).await;
    let addr = gw1.local_addr();
    let base = base(&gw1);
    let sa = login(&base).await;
    let sb = login(&base).await;
    let mut a = connect(&base, &sa).await;
    gw1.shutdown().await;

    // The replacement has a different token secret: A's token is refused.
    let cfg = GatewayConfig {
        token_secret: b"another-secret-another-secret-an".to_vec(),
        ..gateway_config()
    };
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    let pending = a.send(&conv, json!({"n": 1}));
    let gw2 = start_gateway(&broker, &addr.to_string(), cfg).await;
    wait_for(&mut a, "4001", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: Some(4001),
                ..
            }
        )
    })
    .await;
    assert!(matches!(
        timeout(WAIT, pending).await.unwrap(),
        Err(ClientError::Unauthorized(_))
    ));
    // The client has stopped: events end, new sends fail at once.
    assert!(
        timeout(WAIT, async { while a.next_event().await.is_some() {} })
            .await
            .is_ok()
    );
    assert!(matches!(
        a.send(&conv, json!({})).await,
        Err(ClientError::Closed)
    ));
    assert!(matches!(a.ping().await, Err(ClientError::Closed)));
    gw2.shutdown().await;
}

#[tokio::test]
async fn close_is_clean_and_fails_pending_sends() {
    let (gw, _broker) = gateway().await;
    let base = base(&gw);
    let proxy = Proxy::start(gw.local_addr()).await;
    let (sa, sb) = (login(&base).await, login(&base).await);
    let a = connect(&proxy.base(), &sa).await;
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    proxy.cut();
    let pending = a.send(&conv, json!({"n": 1}));
    let handle = a.handle();
    timeout(WAIT, a.close()).await.unwrap();
    assert!(matches!(
        timeout(WAIT, pending).await.unwrap(),
        Err(ClientError::Closed)
    ));
    assert!(matches!(
        handle.send(&conv, json!({})).await,
        Err(ClientError::Closed)
    ));
    gw.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_idle_connections_open() {
    let broker = MemoryBroker::default();
    let cfg = GatewayConfig {
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..gateway_config()
    };
    let gw = start_gateway(&broker, "127.0.0.1:0", cfg).await;
    let sa = login(&base(&gw)).await;
    let mut a = connect(&base(&gw), &sa).await;
    // Ten idle timeouts' worth of silence from the app: the client's own
    // pings keep the socket alive.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, a.next_event()).await {
        assert!(!matches!(e, Event::Disconnected { .. }), "{e:?}");
    }
    a.ping().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_replaced() {
    let (gw, _broker) = gateway().await;
    let proxy = Proxy::start(gw.local_addr()).await;
    let sa = login(&base(&gw)).await;
    let opts = ClientOptions {
        heartbeat: Some(Duration::from_millis(50)),
        pong_timeout: Duration::from_millis(200),
        ..fast_opts()
    };
    let mut a = Client::connect(&proxy.base(), &sa, opts).await.unwrap();
    // The server's answers stop arriving (a half-dead TCP path).
    proxy.stall_server_to_client(true);
    let e = wait_for(&mut a, "disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(&e, Event::Disconnected { code: None, reason } if reason.contains("heartbeat")),
        "{e:?}"
    );
    proxy.stall_server_to_client(false);
    wait_for(&mut a, "reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    a.ping().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limited_sends_are_retried_with_the_same_id() {
    let broker = MemoryBroker::default();
    let cfg = GatewayConfig {
        send_rate: 40,
        send_burst: 5,
        ..gateway_config()
    };
    let gw = start_gateway(&broker, "127.0.0.1:0", cfg).await;
    let base = base(&gw);
    let (sa, sb) = (login(&base).await, login(&base).await);
    let conv = ConvId::direct(&sa.address, &sb.address).unwrap();
    let mut b = connect(&base, &sb).await;

    // One send in flight at a time: order holds even through refusals.
    let opts = ClientOptions {
        max_in_flight: 1,
        ..fast_opts()
    };
    let a = Client::connect(&base, &sa, opts).await.unwrap();
    let pending: Vec<_> = (0..20).map(|n| a.send(&conv, json!({"n": n}))).collect();
    let mut seqs_sent = Vec::new();
    for p in pending {
        seqs_sent.push(timeout(WAIT, p).await.unwrap().unwrap().seq);
    }
    assert_eq!(seqs_sent, (1..=20).collect::<Vec<_>>());
    let got = messages(&mut b, 20, Duration::from_millis(200)).await;
    let ns: Vec<u64> = got.iter().map(|m| body(m)["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..20).collect::<Vec<_>>());

    // Pipelined (the default window): every message still lands exactly once.
    let a = connect(&base, &sa).await;
    let pending: Vec<_> = (0..20).map(|n| a.send(&conv, json!({"n": n}))).collect();
    let mut seqs_sent = Vec::new();
    for p in pending {
        seqs_sent.push(timeout(WAIT, p).await.unwrap().unwrap().seq);
    }
    seqs_sent.sort_unstable();
    assert_eq!(seqs_sent, (21..=40).collect::<Vec<_>>());
    assert_eq!(
        seqs(&messages(&mut b, 20, Duration::from_millis(200)).await),
        (21..=40).collect::<Vec<_>>()
    );
    let refused = gw
        .state()
        .metrics
        .errors
        .get_or_create(&switchboard_gateway::metrics::CodeLabel {
            code: "rate_limited",
        })
        .get();
    assert!(refused > 0, "the rate limit never triggered");
    gw.shutdown().await;
}
