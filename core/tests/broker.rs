//! Conformance suite: the same checks against the memory engine, a real
//! standalone redis-server and a real 6-node Redis Cluster.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use switchboard_core::broker::{
    Broker, BrokerConfig, BrokerError, Conversation, DynBroker, Mark, MemoryBroker, RedisBroker,
    Routed, SendRequest, Watermarks, shard_of,
};
use switchboard_core::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_testkit::{RedisCluster, RedisServer};

enum Engine {
    Memory,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Engine {
    async fn broker(&self, cfg: BrokerConfig) -> DynBroker {
        match self {
            Engine::Memory => Arc::new(MemoryBroker::new(cfg)),
            Engine::Redis(r) => Arc::new(RedisBroker::connect(&r.url(), cfg).await.unwrap()),
            Engine::Cluster(c) => Arc::new(RedisBroker::connect(&c.url(), cfg).await.unwrap()),
        }
    }
}

fn addr() -> Address {
    Address(rand::random())
}

fn body(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

fn req(conv: &ConvId, id: &str, from: Address, b: &str) -> SendRequest {
    SendRequest {
        conv: conv.clone(),
        id: id.parse::<MsgId>().unwrap(),
        from,
        body: body(b),
    }
}

fn group(members: &[Address]) -> Conversation {
    Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: Some("t".into()),
        members: members.to_vec(),
        created_by: Some(members[0]),
        created_at: 1,
    }
}

async fn nonces(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    b.put_nonce("n1", Duration::from_secs(60)).await.unwrap();
    assert!(b.take_nonce("n1").await.unwrap());
    assert!(!b.take_nonce("n1").await.unwrap());
    assert!(!b.take_nonce("unknown").await.unwrap());
    b.put_nonce("n2", Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!b.take_nonce("n2").await.unwrap());
}

async fn conversations(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z) = (addr(), addr(), addr());
    let mut g = group(&[x, y]);
    g.members.sort();
    b.create_group(&g).await.unwrap();
    assert!(matches!(
        b.create_group(&g).await,
        Err(BrokerError::AlreadyExists)
    ));
    assert_eq!(b.conversation(&g.id).await.unwrap().unwrap(), g);
    assert!(b.is_member(&g.id, &x).await.unwrap());
    assert!(!b.is_member(&g.id, &z).await.unwrap());
    assert!(
        b.conversation(&ConvId::new_group())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.user_conversations(&x).await.unwrap(), vec![g.id.clone()]);
    // A direct conversation exists implicitly and joins both users' lists
    // with its first message.
    let dm = ConvId::direct(&x, &z).unwrap();
    assert!(b.is_member(&dm, &z).await.unwrap());
    assert!(!b.is_member(&dm, &y).await.unwrap());
    b.send(req(&dm, "a", x, "1")).await.unwrap();
    let zs = b.user_conversations(&z).await.unwrap();
    assert_eq!(zs, vec![dm.clone()]);
    assert_eq!(b.user_conversations(&x).await.unwrap().len(), 2);
}

async fn sends(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z) = (addr(), addr(), addr());
    let g = group(&[x, y]);
    b.create_group(&g).await.unwrap();
    // 200 concurrent sends from two members: seqs are exactly 1..=200.
    let futs = (0..200).map(|i| {
        let b = b.clone();
        let r = req(
            &g.id,
            &format!("c{i}"),
            if i % 2 == 0 { x } else { y },
            &i.to_string(),
        );
        async move { b.send(r).await.unwrap() }
    });
    let outs = join_all(futs).await;
    let seqs: HashSet<u64> = outs.iter().map(|o| o.message.seq).collect();
    assert_eq!(seqs, (1..=200).collect());
    assert!(outs.iter().all(|o| !o.duplicate));
    let mut members = outs[0].members.clone();
    members.sort();
    let mut want = vec![x, y];
    want.sort();
    assert_eq!(members, want);
    // A duplicate id returns the original seq and ts and consumes no seq.
    let first = outs.iter().find(|o| o.message.id.as_str() == "c7").unwrap();
    let dup = b.send(req(&g.id, "c7", y, "999")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(
        (dup.message.seq, dup.message.ts),
        (first.message.seq, first.message.ts)
    );
    assert_eq!(
        b.send(req(&g.id, "next", x, "1"))
            .await
            .unwrap()
            .message
            .seq,
        201
    );
    // Non-members are refused, in groups and direct conversations.
    assert!(matches!(
        b.send(req(&g.id, "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    assert!(matches!(
        b.send(req(&ConvId::new_group(), "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    let dm_xy = ConvId::direct(&x, &y).unwrap();
    assert!(matches!(
        b.send(req(&dm_xy, "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    // Bodies round-trip byte for byte.
    let raw = r#"{"text":"héllo ✓ \"q\"","n":[1,{"a":null}],"f":1.50}"#;
    let out = b.send(req(&dm_xy, "raw", x, raw)).await.unwrap();
    assert_eq!(out.message.seq, 1);
    let page = b.read_log(&dm_xy, 0, 10).await.unwrap();
    assert_eq!(page.messages[0].body.get(), raw);
    assert_eq!(page.messages[0].from, x);
    assert_eq!(page.messages[0].id.as_str(), "raw");
}

async fn logs(e: &Engine) {
    let b = e
        .broker(BrokerConfig {
            log_max_len: 10,
            ..BrokerConfig::default()
        })
        .await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let empty = b.read_log(&dm, 0, 10).await.unwrap();
    assert!(empty.messages.is_empty() && empty.last_seq == 0);
    for i in 1..=5 {
        b.send(req(&dm, &format!("m{i}"), x, &i.to_string()))
            .await
            .unwrap();
    }
    let p = b.read_log(&dm, 2, 2).await.unwrap();
    assert_eq!(
        p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(p.last_seq, 5);
    assert!(b.read_log(&dm, 5, 10).await.unwrap().messages.is_empty());
    // Far past the cap: old entries are trimmed (Redis trims approximately,
    // in whole stream nodes), the newest are kept, the seq continues.
    for i in 6..=500 {
        b.send(req(&dm, &format!("m{i}"), y, &i.to_string()))
            .await
            .unwrap();
    }
    let all = b.read_log(&dm, 0, 1000).await.unwrap();
    assert_eq!(all.last_seq, 500);
    assert!(
        all.messages.len() >= 10 && all.messages.len() < 400,
        "{}",
        all.messages.len()
    );
    assert!(all.messages[0].seq > 1);
    assert_eq!(all.messages.last().unwrap().seq, 500);
    let seqs: Vec<u64> = all.messages.iter().map(|m| m.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "log is contiguous"
    );
}

async fn marks(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    for i in 1..=5 {
        b.send(req(&dm, &format!("m{i}"), x, "1")).await.unwrap();
    }
    let w = |d, r| {
        Some(Watermarks {
            delivered: d,
            read: r,
        })
    };
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 2).await.unwrap(), w(2, 0));
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 1).await.unwrap(), None);
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 2).await.unwrap(), None);
    assert_eq!(b.mark(&dm, &y, Mark::Read, 4).await.unwrap(), w(4, 4));
    assert_eq!(b.mark(&dm, &y, Mark::Read, 99).await.unwrap(), w(5, 5)); // clamped
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 99).await.unwrap(), None);
    assert_eq!(
        b.watermarks(&dm, &y).await.unwrap(),
        Watermarks {
            delivered: 5,
            read: 5
        }
    );
    assert_eq!(b.watermarks(&dm, &x).await.unwrap(), Watermarks::default());
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<Routed>) -> Option<Routed> {
    tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .ok()
        .flatten()
}

async fn routing(e: &Engine) {
    let cfg = BrokerConfig {
        gateway_ttl: Duration::from_secs(2),
        ..BrokerConfig::default()
    };
    let b = e.broker(cfg).await;
    let tag = format!("{:x}", rand::random::<u32>());
    let (ga, gb) = (format!("gw-a-{tag}"), format!("gw-b-{tag}"));
    let mut ra = b.attach(&ga).await.unwrap();
    let mut rb = b.attach(&gb).await.unwrap();
    b.gateway_alive(&ga).await.unwrap();
    b.gateway_alive(&gb).await.unwrap();
    let (x, y, nobody) = (addr(), addr(), addr());
    b.register(&x, &ga).await.unwrap();
    b.register(&y, &gb).await.unwrap();
    b.register(&y, &ga).await.unwrap();
    assert!(b.is_connected(&y).await.unwrap());
    assert!(!b.is_connected(&nobody).await.unwrap());
    let conv = ConvId::new_group();
    let ev = Routed {
        users: vec![x, y, nobody],
        frame: Arc::from(r#"{"type":"pong"}"#),
        ack: Some((conv.clone(), 9)),
        skip_conn: Some("gw/1".into()),
    };
    b.route(ev.clone()).await.unwrap();
    let got_a = recv(&mut ra).await.unwrap();
    let users: HashSet<Address> = got_a.users.iter().copied().collect();
    assert_eq!(users, HashSet::from([x, y]));
    assert_eq!(&*got_a.frame, r#"{"type":"pong"}"#);
    assert_eq!(got_a.ack, Some((conv.clone(), 9)));
    assert_eq!(got_a.skip_conn.as_deref(), Some("gw/1"));
    assert_eq!(recv(&mut rb).await.unwrap().users, vec![y]);
    // Unregistered users are no longer routed to that gateway.
    b.unregister(&y, &ga).await.unwrap();
    b.route(ev.clone()).await.unwrap();
    assert_eq!(recv(&mut ra).await.unwrap().users, vec![x]);
    assert_eq!(recv(&mut rb).await.unwrap().users, vec![y]);
    // A gateway that stops refreshing is dead: not routed to, not "connected".
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.gateway_alive(&ga).await.unwrap();
    }
    assert!(!b.is_connected(&y).await.unwrap());
    assert!(b.is_connected(&x).await.unwrap());
    b.route(ev).await.unwrap();
    assert_eq!(recv(&mut ra).await.unwrap().users, vec![x]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rb.recv())
            .await
            .is_err()
    );
}

async fn presence(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    b.touch(&x, 1000).await.unwrap();
    b.touch(&x, 900).await.unwrap(); // never moves backwards
    assert_eq!(b.last_seen(&[x, y]).await.unwrap(), vec![1000, 0]);
    assert!(b.last_seen(&[]).await.unwrap().is_empty());
}

macro_rules! suite {
    ($($check:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $check() { super::$check(&super::Engine::Memory).await } )* }
        mod redis { $( #[tokio::test] async fn $check() {
            let e = super::Engine::Redis(switchboard_testkit::RedisServer::start().unwrap());
            super::$check(&e).await
        } )* }
    };
}

suite!(nonces, conversations, sends, logs, marks, routing, presence);

/// The whole suite on one cluster (forming one takes a few seconds).
#[tokio::test]
async fn cluster_suite() {
    let e = Engine::Cluster(RedisCluster::start(3, 1).unwrap());
    conversations(&e).await;
    sends(&e).await;
    logs(&e).await;
    marks(&e).await;
    routing(&e).await;
    presence(&e).await;
    nonces(&e).await;
}

/// With `persist` on, messages and watermark moves also go to the shard's
/// persistence stream for the worker; with it off, nothing does.
#[tokio::test]
async fn persistence_stream_follows_the_flag() {
    let r = RedisServer::start().unwrap();
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let stream = format!("sb:{{{}}}:persist", shard_of(&dm, 64));
    let off = RedisBroker::connect(&r.url(), BrokerConfig::default())
        .await
        .unwrap();
    off.send(req(&dm, "a", x, "1")).await.unwrap();
    off.mark(&dm, &y, Mark::Read, 1).await.unwrap();
    assert_eq!(r.command(&["XLEN", &stream]).unwrap(), "0");
    let on = RedisBroker::connect(
        &r.url(),
        BrokerConfig {
            persist: true,
            ..BrokerConfig::default()
        },
    )
    .await
    .unwrap();
    on.send(req(&dm, "b", x, r#"{"t":1}"#)).await.unwrap();
    on.send(req(&dm, "b", x, r#"{"t":1}"#)).await.unwrap(); // duplicate: not appended
    on.mark(&dm, &y, Mark::Delivered, 2).await.unwrap();
    assert_eq!(r.command(&["XLEN", &stream]).unwrap(), "2");
    let entries = r.command(&["XRANGE", &stream, "-", "+"]).unwrap();
    assert!(
        entries.contains("msg") && entries.contains(r#"{"t":1}"#) && entries.contains("wm"),
        "{entries}"
    );
}

/// kill -9 and restart of Redis (AOF): the seq continues without reuse and
/// the log keeps the old messages.
#[tokio::test]
async fn seq_survives_redis_kill9() {
    let mut r = RedisServer::start().unwrap();
    let b = RedisBroker::connect(&r.url(), BrokerConfig::default())
        .await
        .unwrap();
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    for i in 1..=3 {
        b.send(req(&dm, &format!("k{i}"), x, "1")).await.unwrap();
    }
    r.kill9();
    r.restart().unwrap();
    let mut next = None;
    for _ in 0..50 {
        match b.send(req(&dm, "k4", x, "1")).await {
            Ok(o) => {
                next = Some(o.message.seq);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(next, Some(4));
    let page = b.read_log(&dm, 0, 10).await.unwrap();
    assert_eq!(page.messages.len(), 4);
    // The retried id from before the crash is still deduplicated.
    assert!(b.send(req(&dm, "k2", x, "1")).await.unwrap().duplicate);
}
