//! Conformance suite: the same checks against the memory engine, a real
//! standalone redis-server and a real Redis Cluster (3 primaries, 3 replicas).
//!
//! Every check is an `async fn(&Engine)` written once; the `suite!` macro
//! instantiates it as `memory::<check>` and `redis::<check>` (each on its own
//! fresh server) and runs all of them concurrently on one shared cluster in
//! `cluster` (checks use random ids, so they do not see each other's keys;
//! a failure names the check). Redis-only checks (the persistence stream) run
//! on both Redis topologies; the kill -9 test needs a standalone server.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::broker::{
    BrokerConfig, BrokerError, ClusterRef, DynBroker, GatewayIdentity, Mark, MarkRequest,
    MemoryBroker, RedisBroker, Routed, SendOutcome, SendRequest, Watermarks, shard_of,
};
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::{Conversation, Visibility};
use switchboard_proto::time::now_ms;
use switchboard_testkit::{RedisCluster, RedisServer};
use tokio::sync::mpsc::Receiver;
use tokio::time::{sleep, timeout};

// ---------------------------------------------------------------------------
// Engines and helpers

enum Engine {
    Memory,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Engine {
    /// A broker on this engine. Memory brokers are fresh and empty; Redis
    /// brokers share the server, so checks use random ids.
    async fn broker(&self, cfg: BrokerConfig) -> DynBroker {
        match self {
            Engine::Memory => Arc::new(MemoryBroker::new(cfg)),
            _ => Arc::new(RedisBroker::connect(&self.url(), cfg).await.unwrap()),
        }
    }

    fn url(&self) -> String {
        match self {
            Engine::Memory => panic!("the memory engine has no URL"),
            Engine::Redis(r) => r.url(),
            Engine::Cluster(c) => c.url(),
        }
    }
}

fn addr() -> Address {
    Address(rand::random())
}

fn tag() -> String {
    format!("{:08x}", rand::random::<u32>())
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
        privileged: false,
    }
}

fn group(members: &[Address]) -> Conversation {
    Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: Some("t".into()),
        members: members.to_vec(),
        created_by: members.first().copied(),
        created_at: 1,
        publishers: Vec::new(),
        visibility: None,
    }
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn seqs(page: &[switchboard_proto::frames::Message]) -> Vec<u64> {
    page.iter().map(|m| m.seq).collect()
}

fn wm(delivered: u64, read: u64) -> Watermarks {
    Watermarks { delivered, read }
}

/// `ts` is server time: close to ours (same machine).
fn assert_recent(ts: u64) {
    let now = now_ms();
    assert!(
        ts + 60_000 > now && ts < now + 60_000,
        "ts {ts} vs now {now}"
    );
}

/// The next routed event; Redis pub/sub takes a moment.
async fn recv(rx: &mut Receiver<Routed>) -> Routed {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no routed event within 5 s")
        .expect("gateway feed closed")
}

/// Nothing more arrives on any of `rxs` within 300 ms.
async fn assert_quiet(rxs: &mut [&mut Receiver<Routed>]) {
    sleep(Duration::from_millis(300)).await;
    for (i, rx) in rxs.iter_mut().enumerate() {
        if let Ok(ev) = rx.try_recv() {
            panic!("receiver #{i} got an unexpected event for {:?}", ev.users);
        }
    }
}

fn user_set(ev: &Routed) -> HashSet<Address> {
    let set: HashSet<Address> = ev.users.iter().copied().collect();
    assert_eq!(set.len(), ev.users.len(), "a user listed twice: {ev:?}");
    set
}

/// Refresh the gateways' liveness every 150 ms until aborted.
fn keep_alive(b: &DynBroker, gateways: &[&str]) -> tokio::task::JoinHandle<()> {
    let b = b.clone();
    let gateways: Vec<String> = gateways.iter().map(|g| g.to_string()).collect();
    tokio::spawn(async move {
        loop {
            for g in &gateways {
                let _ = b.gateway_alive(g).await;
            }
            sleep(Duration::from_millis(150)).await;
        }
    })
}

/// A plain fred client on the engine's server(s), to look under the hood.
async fn plain_client(url: &str) -> fred::prelude::Client {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// The fields of every entry of a Redis stream.
async fn stream_entries(url: &str, key: &str) -> Vec<HashMap<String, String>> {
    use fred::prelude::*;
    let client = plain_client(url).await;
    let entries: Vec<(String, HashMap<String, String>)> =
        client.xrange_values(key, "-", "+", None).await.unwrap();
    let _ = client.quit().await;
    entries.into_iter().map(|(_, fields)| fields).collect()
}

// ---------------------------------------------------------------------------
// Checks shared by every engine

async fn nonces(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    b.ping().await.unwrap();
    let t = tag();
    let n = |s: &str| format!("{s}-{t}");
    let minute = Duration::from_secs(60);
    assert!(b.use_nonce(&n("once"), minute).await.unwrap(), "first use");
    assert!(
        !b.use_nonce(&n("once"), minute).await.unwrap(),
        "second use"
    );
    assert!(
        b.use_nonce(&n("other"), minute).await.unwrap(),
        "another nonce"
    );
    // Single use under a race: exactly one of 20 concurrent uses wins.
    let uses = (0..20).map(|_| {
        let (b, n) = (b.clone(), n("race"));
        tokio::spawn(async move { b.use_nonce(&n, minute).await.unwrap() })
    });
    let wins = futures_util::future::join_all(uses)
        .await
        .into_iter()
        .filter(|w| *w.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1, "concurrent uses of one nonce");
    // The record lasts its ttl, to the millisecond rather than rounded to
    // whole seconds; after it the nonce's own expiry refuses it (checked by
    // the gateway), so the record may go.
    assert!(
        b.use_nonce(&n("short"), Duration::from_secs(1))
            .await
            .unwrap()
    );
    assert!(
        b.use_nonce(&n("longer"), Duration::from_millis(2900))
            .await
            .unwrap()
    );
    sleep(Duration::from_millis(2200)).await;
    assert!(
        b.use_nonce(&n("short"), minute).await.unwrap(),
        "a 1 s record is gone after 2.2 s"
    );
    assert!(
        !b.use_nonce(&n("longer"), minute).await.unwrap(),
        "a 2.9 s record is still there after 2.2 s"
    );
}

async fn conversations(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z) = (addr(), addr(), addr());
    // Members are a set (sorted, no duplicates); the title round-trips.
    let g = Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: Some("Ünïcödé ✓ 🦀 \"title\"".into()),
        members: vec![y, x, y],
        created_by: Some(y),
        created_at: 1_700_000_000_123,
        publishers: Vec::new(),
        visibility: None,
    };
    b.create_group(&g).await.unwrap();
    let stored = Conversation {
        members: sorted(&[x, y]),
        ..g.clone()
    };
    assert_eq!(b.conversation(&g.id).await.unwrap(), Some(stored.clone()));
    // A taken id: AlreadyExists, and nothing about the group changes.
    let clash = Conversation {
        title: None,
        members: vec![z],
        created_by: Some(z),
        created_at: 2,
        ..g.clone()
    };
    assert!(matches!(
        b.create_group(&clash).await,
        Err(BrokerError::AlreadyExists)
    ));
    assert_eq!(b.conversation(&g.id).await.unwrap(), Some(stored));
    assert!(b.is_member(&g.id, &x).await.unwrap());
    assert!(b.is_member(&g.id, &y).await.unwrap());
    assert!(!b.is_member(&g.id, &z).await.unwrap());
    let unknown = ConvId::new_group();
    assert!(b.conversation(&unknown).await.unwrap().is_none());
    assert!(!b.is_member(&unknown, &x).await.unwrap());
    // An empty title reads back as none; no creator is fine.
    let g2 = Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: Some(String::new()),
        members: vec![x],
        created_by: None,
        created_at: 5,
        publishers: Vec::new(),
        visibility: None,
    };
    b.create_group(&g2).await.unwrap();
    assert_eq!(
        b.conversation(&g2.id).await.unwrap(),
        Some(Conversation {
            title: None,
            ..g2.clone()
        })
    );
    // A group without members is stored as such.
    let g3 = Conversation {
        members: vec![],
        ..group(&[x])
    };
    b.create_group(&g3).await.unwrap();
    let stored3 = b.conversation(&g3.id).await.unwrap().unwrap();
    assert!(stored3.members.is_empty());
    // Concurrent creation of one id: exactly one wins.
    let g4 = group(&[z]);
    let creates = (0..10).map(|_| {
        let (b, g4) = (b.clone(), g4.clone());
        tokio::spawn(async move { b.create_group(&g4).await })
    });
    let results = futures_util::future::join_all(creates).await;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(ok, 1, "concurrent creates of one id");
    assert!(results.iter().all(|r| matches!(
        r.as_ref().unwrap(),
        Ok(()) | Err(BrokerError::AlreadyExists)
    )));
    assert_eq!(
        b.user_conversations(&x).await.unwrap(),
        sorted(&[g.id.clone(), g2.id.clone()])
    );
    assert_eq!(b.user_conversations(&y).await.unwrap(), vec![g.id.clone()]);
    assert_eq!(b.user_conversations(&z).await.unwrap(), vec![g4.id.clone()]);
    assert!(b.user_conversations(&addr()).await.unwrap().is_empty());
    // A direct conversation exists implicitly, with the two members of its id...
    let dm = ConvId::direct(&x, &z).unwrap();
    assert_eq!(
        b.conversation(&dm).await.unwrap(),
        Some(Conversation {
            id: dm.clone(),
            kind: ConvKind::Direct,
            title: None,
            members: sorted(&[x, z]),
            created_by: None,
            created_at: 0,
            publishers: Vec::new(),
            visibility: None,
        })
    );
    assert!(b.is_member(&dm, &x).await.unwrap());
    assert!(b.is_member(&dm, &z).await.unwrap());
    assert!(!b.is_member(&dm, &y).await.unwrap());
    // ...and joins both users' lists with its first message, once.
    assert_eq!(b.user_conversations(&z).await.unwrap(), vec![g4.id.clone()]);
    b.send(req(&dm, "a", x, "1")).await.unwrap();
    b.send(req(&dm, "b", z, "2")).await.unwrap();
    assert_eq!(
        b.user_conversations(&z).await.unwrap(),
        sorted(&[dm.clone(), g4.id.clone()])
    );
    assert_eq!(
        b.user_conversations(&x).await.unwrap(),
        sorted(&[dm.clone(), g.id.clone(), g2.id.clone()])
    );
    assert_eq!(b.user_conversations(&y).await.unwrap(), vec![g.id.clone()]);
}

async fn sends(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z) = (addr(), addr(), addr());
    let g = group(&[x, y]);
    b.create_group(&g).await.unwrap();
    // 200 concurrent sends from two members: seqs are exactly 1..=200.
    let tasks = (0..200).map(|i| {
        let b = b.clone();
        let from = if i % 2 == 0 { x } else { y };
        let r = req(&g.id, &format!("c{i}"), from, &format!("{{\"i\":{i}}}"));
        tokio::spawn(async move { b.send(r).await.unwrap() })
    });
    let outs: Vec<SendOutcome> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut got: Vec<u64> = outs.iter().map(|o| o.message.seq).collect();
    got.sort();
    assert_eq!(got, (1..=200).collect::<Vec<u64>>(), "gap-free seqs");
    for (i, o) in outs.iter().enumerate() {
        assert!(!o.duplicate);
        assert_eq!(sorted(&o.members), sorted(&[x, y]));
        assert_eq!(o.message.conv, g.id);
        assert_eq!(o.message.id.as_str(), format!("c{i}"));
        assert_eq!(o.message.from, if i % 2 == 0 { x } else { y });
        assert_eq!(o.message.body.get(), format!("{{\"i\":{i}}}"));
        assert_recent(o.message.ts);
    }
    // The log agrees with what each sender was told.
    let page = b.read_log(&g.id, 0, 1000).await.unwrap();
    assert_eq!(page.last_seq, 200);
    assert_eq!(seqs(&page.messages), (1..=200).collect::<Vec<u64>>());
    let by_seq: HashMap<u64, &SendOutcome> = outs.iter().map(|o| (o.message.seq, o)).collect();
    for m in &page.messages {
        let o = by_seq[&m.seq];
        assert_eq!(
            (&m.id, m.from, m.body.get(), m.ts),
            (
                &o.message.id,
                o.message.from,
                o.message.body.get(),
                o.message.ts
            )
        );
    }
    assert_eq!(
        b.send(req(&g.id, "next", x, "1"))
            .await
            .unwrap()
            .message
            .seq,
        201
    );
    // Non-members are refused, in groups and direct conversations, and
    // refusals consume no seq.
    assert!(matches!(
        b.send(req(&g.id, "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    assert!(matches!(
        b.send(req(&ConvId::new_group(), "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    let dm = ConvId::direct(&x, &y).unwrap();
    assert!(matches!(
        b.send(req(&dm, "n", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    assert_eq!(b.read_log(&g.id, 0, 1).await.unwrap().last_seq, 201);
    assert_eq!(b.read_log(&dm, 0, 1).await.unwrap().last_seq, 0);
    // Direct conversations: their own seq, both members returned.
    let out = b.send(req(&dm, "d1", y, "true")).await.unwrap();
    assert_eq!(out.message.seq, 1);
    assert_eq!(sorted(&out.members), sorted(&[x, y]));
    assert_eq!(b.send(req(&dm, "d2", x, "1")).await.unwrap().message.seq, 2);
}

async fn dedupe(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z) = (addr(), addr(), addr());
    let g = group(&[x, y]);
    b.create_group(&g).await.unwrap();
    let first = b.send(req(&g.id, "m1", x, "1")).await.unwrap();
    assert!(!first.duplicate);
    // A retry returns the original seq and ts, and still the members.
    let dup = b.send(req(&g.id, "m1", x, "1")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(
        (dup.message.seq, dup.message.ts),
        (first.message.seq, first.message.ts)
    );
    assert_eq!(sorted(&dup.members), sorted(&[x, y]));
    // ...consumes no seq and stores nothing.
    let second = b.send(req(&g.id, "m2", y, "2")).await.unwrap();
    assert_eq!(second.message.seq, 2);
    let page = b.read_log(&g.id, 0, 10).await.unwrap();
    assert_eq!(seqs(&page.messages), [1, 2]);
    assert_eq!(page.last_seq, 2);
    // A non-member replaying a member's id is still refused.
    assert!(matches!(
        b.send(req(&g.id, "m1", z, "1")).await,
        Err(BrokerError::NotMember)
    ));
    // Ids are per conversation.
    let dm = ConvId::direct(&x, &y).unwrap();
    let other = b.send(req(&dm, "m1", x, "1")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.message.seq, 1);
    let dup = b.send(req(&dm, "m1", x, "1")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(sorted(&dup.members), sorted(&[x, y]));
    // Ids are per sender: the other member reusing `m1` sends a message of
    // its own (it must not get x's `sent` back, nor swallow its own text),
    // and x's retry still answers x's message.
    let theirs = b.send(req(&dm, "m1", y, "2")).await.unwrap();
    assert!(!theirs.duplicate);
    assert_eq!((theirs.message.seq, theirs.message.from), (2, y));
    let retry = b.send(req(&dm, "m1", x, "1")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.message.seq, retry.message.from), (1, x));
    let retry = b.send(req(&dm, "m1", y, "2")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, 2);
    // 20 concurrent sends of one id: one message.
    let tasks = (0..20).map(|_| {
        let (b, r) = (b.clone(), req(&g.id, "race", y, "3"));
        tokio::spawn(async move { b.send(r).await.unwrap() })
    });
    let outs: Vec<SendOutcome> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(outs.iter().filter(|o| !o.duplicate).count(), 1);
    assert!(outs.iter().all(|o| o.message.seq == 3));
    assert_eq!(b.read_log(&g.id, 0, 10).await.unwrap().last_seq, 3);
    // The id is forgotten after `dedupe_ttl`.
    let short = e
        .broker(BrokerConfig {
            dedupe_ttl: Duration::from_secs(1),
            ..BrokerConfig::default()
        })
        .await;
    let dm2 = ConvId::direct(&x, &z).unwrap();
    assert_eq!(
        short
            .send(req(&dm2, "e", x, "1"))
            .await
            .unwrap()
            .message
            .seq,
        1
    );
    assert!(short.send(req(&dm2, "e", x, "1")).await.unwrap().duplicate);
    sleep(Duration::from_millis(1500)).await;
    let again = short.send(req(&dm2, "e", x, "1")).await.unwrap();
    assert!(!again.duplicate, "id remembered past dedupe_ttl");
    assert_eq!(again.message.seq, 2);
}

async fn bodies(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let big = format!(r#"{{"big":"{}"}}"#, "ü∑".repeat(10_000));
    let raws = [
        r#"{"text":"héllo ✓ 🦀 \"q\" \\ \n \u00e9 \ud83e\udd80","n":[1,{"a":null,"b":[true,false]}],"f":1.50,"e":1E3,"z":-0}"#,
        r#"{ "spaced" :  [ 1 , 2 ] ,"k":{}}"#,
        r#""just a string""#,
        "42",
        "null",
        "[]",
        big.as_str(),
    ];
    for (i, raw) in raws.iter().enumerate() {
        let out = b.send(req(&dm, &format!("b{i}"), x, raw)).await.unwrap();
        assert_eq!(out.message.body.get(), *raw);
    }
    let page = b.read_log(&dm, 0, 100).await.unwrap();
    assert_eq!(page.messages.len(), raws.len());
    for (m, raw) in page.messages.iter().zip(raws) {
        assert_eq!(m.body.get(), raw, "body of seq {}", m.seq);
    }
}

async fn logs(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let empty = b.read_log(&dm, 0, 10).await.unwrap();
    assert!(empty.messages.is_empty());
    assert_eq!(empty.last_seq, 0);
    for i in 1..=7u64 {
        let from = if i % 2 == 0 { y } else { x };
        b.send(req(&dm, &format!("m{i}"), from, &i.to_string()))
            .await
            .unwrap();
    }
    // Paging by `after` and `limit`.
    let mut after = 0;
    let mut pages = vec![];
    loop {
        let p = b.read_log(&dm, after, 3).await.unwrap();
        assert_eq!(p.last_seq, 7);
        let Some(last) = p.messages.last() else { break };
        after = last.seq;
        pages.push(seqs(&p.messages));
    }
    assert_eq!(pages, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let p = b.read_log(&dm, 2, 2).await.unwrap();
    assert_eq!(seqs(&p.messages), [3, 4]);
    assert_eq!(p.messages[0].id.as_str(), "m3");
    assert_eq!(p.messages[0].from, x);
    assert_eq!(p.messages[1].from, y);
    assert_eq!(p.messages[1].body.get(), "4");
    assert!(p.messages.iter().all(|m| m.conv == dm));
    // `limit` 0 reads nothing (but still tells the last seq).
    let none = b.read_log(&dm, 0, 0).await.unwrap();
    assert!(none.messages.is_empty(), "limit 0 returned messages");
    assert_eq!(none.last_seq, 7);
    for after in [7, 8, u64::MAX] {
        let p = b.read_log(&dm, after, 10).await.unwrap();
        assert!(p.messages.is_empty());
        assert_eq!(p.last_seq, 7);
    }
    let unknown = ConvId::direct(&x, &addr()).unwrap();
    let p = b.read_log(&unknown, 0, 10).await.unwrap();
    assert!(p.messages.is_empty());
    assert_eq!(p.last_seq, 0);
}

/// A log page is a snapshot: every seq up to its `last_seq` (after `after`,
/// within `limit`) is in it, also while sends land concurrently. Reading the
/// log before the counter let a send fall between the two reads: an empty
/// page with a larger `last_seq`, which a replay must call unrecoverable,
/// and a client then skipped a message that existed.
async fn snapshot_reads(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let sender = {
        let b = b.clone();
        let dm = dm.clone();
        tokio::spawn(async move {
            for i in 1..=400u64 {
                b.send(req(&dm, &format!("s{i}"), x, "1")).await.unwrap();
            }
        })
    };
    let mut after = 0;
    let mut reads = 0;
    while after < 400 {
        let p = b.read_log(&dm, after, 5).await.unwrap();
        let want = (p.last_seq.saturating_sub(after)).min(5);
        assert_eq!(
            p.messages.len() as u64,
            want,
            "read after {after}: last_seq {} but {:?}",
            p.last_seq,
            seqs(&p.messages)
        );
        if let Some(m) = p.messages.first() {
            assert_eq!(m.seq, after + 1);
            after = p.messages.last().unwrap().seq;
        }
        reads += 1;
        assert!(reads < 100_000, "the sender stalled");
    }
    sender.await.unwrap();
}

/// Messages older than `log_max_age` leave the log on the next send.
async fn age_trimming(e: &Engine) {
    let b = e
        .broker(BrokerConfig {
            log_max_age: Duration::from_millis(300),
            ..BrokerConfig::default()
        })
        .await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    for i in 1..=3 {
        b.send(req(&dm, &format!("a{i}"), x, "1")).await.unwrap();
    }
    assert_eq!(
        seqs(&b.read_log(&dm, 0, 10).await.unwrap().messages),
        [1, 2, 3]
    );
    sleep(Duration::from_millis(400)).await;
    b.send(req(&dm, "a4", x, "1")).await.unwrap();
    let page = b.read_log(&dm, 0, 10).await.unwrap();
    assert_eq!(seqs(&page.messages), [4]);
    assert_eq!(page.last_seq, 4);
}

async fn trimming(e: &Engine) {
    let b = e
        .broker(BrokerConfig {
            log_max_len: 10,
            ..BrokerConfig::default()
        })
        .await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    for i in 1..=500 {
        b.send(req(&dm, &format!("m{i}"), x, &i.to_string()))
            .await
            .unwrap();
    }
    // Far past the cap: old entries are gone (Redis trims approximately, in
    // whole stream nodes of 100 entries), at least the newest 10 are kept, and
    // what is kept is the contiguous tail.
    let all = b.read_log(&dm, 0, 1000).await.unwrap();
    assert_eq!(all.last_seq, 500);
    let n = all.messages.len();
    assert!(
        (10..=250).contains(&n),
        "{n} messages kept with log_max_len 10"
    );
    let s = seqs(&all.messages);
    assert_eq!(s, ((500 - n as u64 + 1)..=500).collect::<Vec<u64>>());
    assert!(s[0] > 1);
    let tail = b.read_log(&dm, 490, 100).await.unwrap();
    assert_eq!(seqs(&tail.messages), (491..=500).collect::<Vec<u64>>());
    assert_eq!(tail.messages[9].body.get(), "500");
    // Reading from before the kept range starts at the oldest kept message.
    let head = b.read_log(&dm, 0, 3).await.unwrap();
    assert_eq!(seqs(&head.messages), s[..3]);
    // Trimming does not disturb the seq or the dedupe records.
    assert_eq!(
        b.send(req(&dm, "m501", y, "1")).await.unwrap().message.seq,
        501
    );
    let dup = b.send(req(&dm, "m1", x, "1")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.message.seq, 1);
}

async fn marks(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    // Nothing to mark in an empty conversation.
    assert_eq!(b.mark(&dm, &y, Mark::Read, 3).await.unwrap(), None);
    assert_eq!(b.watermarks(&dm, &y).await.unwrap(), wm(0, 0));
    for i in 1..=5 {
        b.send(req(&dm, &format!("m{i}"), x, "1")).await.unwrap();
    }
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 0).await.unwrap(), None);
    assert_eq!(
        b.mark(&dm, &y, Mark::Delivered, 2).await.unwrap(),
        Some(wm(2, 0))
    );
    assert_eq!(b.watermarks(&dm, &y).await.unwrap(), wm(2, 0));
    // Monotonic: lower or equal marks do not move.
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 1).await.unwrap(), None);
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 2).await.unwrap(), None);
    // Reading implies delivery.
    assert_eq!(
        b.mark(&dm, &y, Mark::Read, 4).await.unwrap(),
        Some(wm(4, 4))
    );
    assert_eq!(b.mark(&dm, &y, Mark::Read, 3).await.unwrap(), None);
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 4).await.unwrap(), None);
    assert_eq!(
        b.mark(&dm, &y, Mark::Delivered, 5).await.unwrap(),
        Some(wm(5, 4))
    );
    // Clamped to the last seq.
    assert_eq!(
        b.mark(&dm, &y, Mark::Read, 99).await.unwrap(),
        Some(wm(5, 5))
    );
    assert_eq!(b.mark(&dm, &y, Mark::Delivered, 99).await.unwrap(), None);
    assert_eq!(b.mark(&dm, &y, Mark::Read, u64::MAX).await.unwrap(), None);
    assert_eq!(b.watermarks(&dm, &y).await.unwrap(), wm(5, 5));
    // Per user.
    assert_eq!(b.watermarks(&dm, &x).await.unwrap(), wm(0, 0));
    assert_eq!(
        b.mark(&dm, &x, Mark::Delivered, 99).await.unwrap(),
        Some(wm(5, 0))
    );
    // Concurrent marks end at the maximum, read never above delivered.
    let tasks = (0..40u64).map(|i| {
        let (b, dm) = (b.clone(), dm.clone());
        let m = if i % 3 == 0 {
            Mark::Read
        } else {
            Mark::Delivered
        };
        tokio::spawn(async move { b.mark(&dm, &x, m, i % 5 + 1).await.unwrap() })
    });
    for r in futures_util::future::join_all(tasks).await {
        if let Some(w) = r.unwrap() {
            assert!(w.read <= w.delivered, "{w:?}");
        }
    }
    assert_eq!(b.watermarks(&dm, &x).await.unwrap(), wm(5, 5));
}

/// Many marks in one call (the gateway's gathered acks): each answered as
/// `mark` would have answered it, in order, across conversations (other
/// slots on a cluster), with repeats of one user and conversation applied
/// one after the other; more marks than one script call takes.
async fn many_marks(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let x = addr();
    let (y, z) = (addr(), addr());
    let (xy, xz) = (
        ConvId::direct(&x, &y).unwrap(),
        ConvId::direct(&x, &z).unwrap(),
    );
    for i in 1..=3 {
        b.send(req(&xy, &format!("a{i}"), x, "1")).await.unwrap();
        b.send(req(&xz, &format!("b{i}"), x, "1")).await.unwrap();
    }
    let m = |conv: &ConvId, user: Address, mark: Mark, seq: u64| MarkRequest {
        conv: conv.clone(),
        user,
        mark,
        seq,
    };
    assert_eq!(b.mark_many(&[]).await.unwrap(), vec![]);
    let moved = b
        .mark_many(&[
            m(&xy, y, Mark::Delivered, 2),
            m(&xz, z, Mark::Delivered, 9), // clamped to 3
            m(&xy, y, Mark::Delivered, 1), // below the first: no move
            m(&xy, y, Mark::Read, 1),
            m(&xz, x, Mark::Read, 2),
        ])
        .await
        .unwrap();
    assert_eq!(
        moved,
        vec![
            Some(wm(2, 0)),
            Some(wm(3, 0)),
            None,
            Some(wm(2, 1)),
            Some(wm(2, 2))
        ]
    );
    assert_eq!(b.watermarks(&xy, &y).await.unwrap(), wm(2, 1));
    assert_eq!(b.watermarks(&xz, &z).await.unwrap(), wm(3, 0));
    assert_eq!(b.watermarks(&xz, &x).await.unwrap(), wm(2, 2));
    // 150 conversations, one new mark each: past any one call's batch.
    let mut convs = Vec::new();
    for _ in 0..150 {
        let c = ConvId::direct(&x, &addr()).unwrap();
        b.send(req(&c, "m", x, "1")).await.unwrap();
        convs.push(c);
    }
    let marks: Vec<MarkRequest> = convs.iter().map(|c| m(c, x, Mark::Read, 1)).collect();
    let moved = b.mark_many(&marks).await.unwrap();
    assert_eq!(moved, vec![Some(wm(1, 1)); 150]);
    for c in [&convs[0], &convs[70], &convs[149]] {
        assert_eq!(b.watermarks(c, &x).await.unwrap(), wm(1, 1));
    }
    assert_eq!(b.mark_many(&marks).await.unwrap(), vec![None; 150]);
}

async fn routing(e: &Engine) {
    let b = e
        .broker(BrokerConfig {
            gateway_ttl: Duration::from_secs(1),
            ..BrokerConfig::default()
        })
        .await;
    let t = tag();
    let (ga, gb, gc) = (
        format!("gw-a-{t}"),
        format!("gw-b-{t}"),
        format!("gw-c-{t}"),
    );
    let (x, y, z, nobody) = (addr(), addr(), addr(), addr());
    // The first refresh of a gateway the broker never listed says so (a
    // gateway re-registers its users then); the next ones do not.
    let gd = format!("gw-d-{t}");
    assert!(b.gateway_alive(&gd).await.unwrap(), "gd was not listed");
    assert!(!b.gateway_alive(&gd).await.unwrap(), "gd is listed");
    let mut ra = b.attach(&ga).await.unwrap();
    let alive_a = keep_alive(&b, &[&ga]);
    b.register(&x, &ga).await.unwrap();
    b.register(&x, &ga).await.unwrap(); // a second connection: still one entry
    assert!(b.is_connected(&x).await.unwrap());
    assert!(!b.is_connected(&nobody).await.unwrap());
    // A gateway that attaches later is seen at once.
    let mut rb = b.attach(&gb).await.unwrap();
    let alive_bc = keep_alive(&b, &[&gb, &gc]);
    b.register(&y, &gb).await.unwrap();
    assert!(
        b.is_connected(&y).await.unwrap(),
        "user on a just-attached gateway"
    );
    b.register(&y, &ga).await.unwrap(); // y on both gateways
    let conv = ConvId::new_group();
    let ev = Routed {
        users: vec![x, y, nobody],
        frame: Arc::from(r#"{"type":"msg","body":{"t":"ü ✓"},"n":[1,2]}"#),
        ack: Some((conv.clone(), 9)),
        skip_conn: Some(format!("{ga}/1")),
        channel: None,
        revoke: None,
    };
    let check = |got: &Routed, users: &[Address]| {
        assert_eq!(user_set(got), users.iter().copied().collect());
        assert_eq!(&*got.frame, &*ev.frame);
        assert_eq!(got.ack, Some((conv.clone(), 9)));
        assert_eq!(got.skip_conn, ev.skip_conn);
    };
    // One event per gateway, with that gateway's users.
    b.route(ev.clone()).await.unwrap();
    check(&recv(&mut ra).await, &[x, y]);
    check(&recv(&mut rb).await, &[y]);
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    // route_local hands the caller's share back instead of delivering it.
    let mine = b.route_local(ev.clone(), &gb).await.unwrap();
    check(&mine.expect("the local gateway's share"), &[y]);
    check(&recv(&mut ra).await, &[x, y]);
    assert!(
        b.route_local(for_users(&ev, &[x]), &gb)
            .await
            .unwrap()
            .is_none()
    );
    check(&recv(&mut ra).await, &[x]);
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    // Several events at once: each gateway gets each event with its own
    // users there, in order; the caller's shares come back, in order.
    let second = Routed {
        frame: Arc::from(r#"{"type":"receipt","n":2}"#),
        ..for_users(&ev, &[y])
    };
    let third = for_users(&ev, &[nobody]);
    let mine = b
        .route_local_many(vec![ev.clone(), third, second.clone()], &gb)
        .await
        .unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    check(&mine[0], &[y]);
    assert_eq!(
        (&*mine[1].frame, user_set(&mine[1])),
        (&*second.frame, [y].into())
    );
    check(&recv(&mut ra).await, &[x, y]);
    let got = recv(&mut ra).await;
    assert_eq!((&*got.frame, user_set(&got)), (&*second.frame, [y].into()));
    assert_eq!(got.skip_conn, ev.skip_conn);
    assert!(
        b.route_local_many(Vec::new(), &gb)
            .await
            .unwrap()
            .is_empty()
    );
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    // Unregistered: no longer routed there.
    b.unregister(&y, &ga).await.unwrap();
    b.route(ev.clone()).await.unwrap();
    check(&recv(&mut ra).await, &[x]);
    check(&recv(&mut rb).await, &[y]);
    // Liveness is its own: a live gateway that never attached here (another
    // process's) counts for is_connected; events for it go nowhere here.
    b.gateway_alive(&gc).await.unwrap();
    b.register(&z, &gc).await.unwrap();
    assert!(b.is_connected(&z).await.unwrap(), "user on a live gateway");
    b.route(for_users(&ev, &[z])).await.unwrap();
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    // gw-b and gw-c stop refreshing: past gateway_ttl they are dead (the
    // Redis engine may cache liveness for another second).
    alive_bc.abort();
    sleep(Duration::from_millis(2300)).await;
    assert!(!b.is_connected(&y).await.unwrap(), "user on a dead gateway");
    assert!(!b.is_connected(&z).await.unwrap(), "user on a dead gateway");
    assert!(b.is_connected(&x).await.unwrap());
    b.route(ev.clone()).await.unwrap();
    check(&recv(&mut ra).await, &[x]);
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    // The caller's own share comes back even if its liveness lapsed.
    let mine = b.route_local(ev.clone(), &gb).await.unwrap();
    check(&mine.expect("the local gateway's share"), &[y]);
    check(&recv(&mut ra).await, &[x]);
    // A gateway that refreshes again is routed to again.
    b.gateway_alive(&gb).await.unwrap();
    assert!(
        b.is_connected(&y).await.unwrap(),
        "user on a revived gateway"
    );
    b.route(ev.clone()).await.unwrap();
    check(&recv(&mut ra).await, &[x]);
    check(&recv(&mut rb).await, &[y]);
    // The last connection of x goes.
    b.unregister(&x, &ga).await.unwrap();
    assert!(!b.is_connected(&x).await.unwrap());
    b.route(for_users(&ev, &[x])).await.unwrap();
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    alive_a.abort();
}

/// Two gateways, each with its own broker (as two processes): a user who
/// moves from gateway A to gateway B gets the next message A routes at B,
/// however soon after the move it is sent. A caches users' gateways; the
/// send script tells it the registry's version, so a move it has not heard
/// of yet makes it read the registry. Also after Redis lost everything
/// (FLUSHALL, as a restart without persistence): the registry version starts
/// over above every earlier one.
async fn registry_moves(e: &Engine) {
    let a = e.broker(BrokerConfig::default()).await;
    let b = e.broker(BrokerConfig::default()).await;
    let t = tag();
    let (ga, gb) = (format!("gw-a-{t}"), format!("gw-b-{t}"));
    let mut ra = a.attach(&ga).await.unwrap();
    let mut rb = b.attach(&gb).await.unwrap();
    let alive = keep_alive(&a, &[&ga, &gb]);
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    a.register(&x, &ga).await.unwrap();
    a.register(&y, &ga).await.unwrap();
    let mut n = 0;
    // A sends x's next message to y and routes it, as the gateway does.
    let mut send = async |a: &DynBroker| {
        n += 1;
        let out = a.send(req(&dm, &format!("m{n}"), x, "1")).await.unwrap();
        let ev = Routed {
            users: vec![y],
            frame: Arc::from(format!(r#"{{"seq":{}}}"#, out.message.seq)),
            ack: Some((dm.clone(), out.message.seq)),
            skip_conn: None,
            channel: None,
            revoke: None,
        };
        (a.route_local(ev, &ga).await.unwrap(), out.message.seq)
    };
    let at_a = |mine: Option<Routed>| mine.is_some_and(|m| m.users == [y]);
    for round in 0..10 {
        // y on A (twice, so the second comes from a warm cache).
        for _ in 0..2 {
            let (mine, _) = send(&a).await;
            assert!(at_a(mine), "round {round}: y is on A");
        }
        // y's socket on A closes, y connects to B, x sends at once.
        a.unregister(&y, &ga).await.unwrap();
        b.register(&y, &gb).await.unwrap();
        for _ in 0..2 {
            let (mine, seq) = send(&a).await;
            assert!(mine.is_none(), "round {round}: y left A");
            let got = recv(&mut rb).await;
            assert_eq!(got.users, [y]);
            assert_eq!(got.ack, Some((dm.clone(), seq)), "round {round}");
        }
        // A second device of y on A: both get it.
        a.register(&y, &ga).await.unwrap();
        let (mine, _) = send(&a).await;
        assert!(at_a(mine), "round {round}: y is on A again");
        assert_eq!(recv(&mut rb).await.users, [y]);
        // y leaves B; only A is left.
        b.unregister(&y, &gb).await.unwrap();
        let (mine, _) = send(&a).await;
        assert!(at_a(mine), "round {round}: y is on A only");
        assert_quiet(&mut [&mut ra, &mut rb]).await;
    }
    if let Engine::Redis(r) = e {
        // Redis loses everything; B's socket of y registers again (a
        // gateway does when its liveness was gone), y's socket on A is gone.
        let plain = plain_client(&r.url()).await;
        let _: () = {
            use fred::prelude::*;
            plain.flushall(false).await.unwrap()
        };
        b.register(&y, &gb).await.unwrap();
        a.gateway_alive(&gb).await.unwrap();
        let (mine, seq) = send(&a).await;
        assert!(mine.is_none(), "y is on B only after the flush");
        assert_eq!(recv(&mut rb).await.ack, Some((dm.clone(), seq)));
    }
    alive.abort();
}

/// Channels: creation (name taken → AlreadyExists), read and publish
/// rights by visibility, sends only by publishers with no user fan-out, and
/// publish → only the gateways subscribed to that channel.
async fn channels(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let t = tag();
    let (owner, publisher, member, outsider) = (addr(), addr(), addr(), addr());
    let public = Conversation {
        id: ConvId::channel(&format!("live-{t}")).unwrap(),
        kind: ConvKind::Channel,
        title: Some("Live".into()),
        members: vec![],
        created_by: Some(owner),
        created_at: now_ms(),
        publishers: vec![publisher, publisher],
        visibility: Some(Visibility::Public),
    };
    b.create_channel(&public).await.unwrap();
    assert!(matches!(
        b.create_channel(&public).await,
        Err(BrokerError::AlreadyExists)
    ));
    let back = b.conversation(&public.id).await.unwrap().unwrap();
    assert_eq!(back.kind, ConvKind::Channel);
    let mut want = vec![owner, publisher];
    want.sort();
    assert_eq!(back.publishers, want, "the creator included, deduplicated");
    assert_eq!(back.visibility, Some(Visibility::Public));
    assert_eq!(back.created_by, Some(owner));
    assert!(
        b.is_member(&public.id, &outsider).await.unwrap(),
        "public: anyone reads"
    );
    assert!(
        b.user_conversations(&publisher)
            .await
            .unwrap()
            .contains(&public.id)
    );

    // Owner and publishers send; nobody is a per-user recipient.
    let out = b.send(req(&public.id, "c1", owner, "1")).await.unwrap();
    assert_eq!((out.message.seq, out.members.len()), (1, 0));
    let out = b.send(req(&public.id, "c2", publisher, "2")).await.unwrap();
    assert_eq!(out.message.seq, 2);
    assert!(matches!(
        b.send(req(&public.id, "c3", outsider, "3")).await,
        Err(BrokerError::NotPublisher)
    ));
    // A privileged sender (a configured API key) needs no publisher entry.
    let key_send = SendRequest {
        privileged: true,
        ..req(&public.id, "k1", outsider, "3")
    };
    assert_eq!(b.send(key_send).await.unwrap().message.seq, 3);
    assert_eq!(
        seqs(&b.read_log(&public.id, 0, 10).await.unwrap().messages),
        vec![1, 2, 3]
    );

    let private = Conversation {
        id: ConvId::channel(&format!("team-{t}")).unwrap(),
        members: vec![member],
        visibility: Some(Visibility::Members),
        publishers: vec![],
        ..public.clone()
    };
    b.create_channel(&private).await.unwrap();
    assert!(b.is_member(&private.id, &member).await.unwrap());
    assert!(b.is_member(&private.id, &owner).await.unwrap());
    assert!(
        !b.is_member(&private.id, &outsider).await.unwrap(),
        "members only"
    );
    assert!(b.send(req(&private.id, "p1", member, "1")).await.is_err());

    // Publish reaches exactly the subscribed gateways.
    let (ga, gb) = (format!("gw-a-{t}"), format!("gw-b-{t}"));
    let mut ra = b.attach(&ga).await.unwrap();
    let mut rb = b.attach(&gb).await.unwrap();
    b.subscribe_channel(&ga, &public.id).await.unwrap();
    b.subscribe_channel(&ga, &public.id).await.unwrap(); // idempotent
    let ev = Routed {
        users: vec![],
        frame: Arc::from(r#"{"type":"msg","seq":2}"#),
        ack: None,
        skip_conn: None,
        channel: Some((public.id.clone(), 2)),
        revoke: None,
    };
    b.publish_channel(ev.clone()).await.unwrap();
    let got = recv(&mut ra).await;
    assert_eq!(got.channel, Some((public.id.clone(), 2)));
    assert_eq!(&*got.frame, &*ev.frame);
    assert!(got.users.is_empty());
    assert_quiet(&mut [&mut ra, &mut rb]).await;
    b.subscribe_channel(&gb, &public.id).await.unwrap();
    b.unsubscribe_channel(&ga, &public.id).await.unwrap();
    b.publish_channel(ev.clone()).await.unwrap();
    assert_eq!(recv(&mut rb).await.channel, Some((public.id.clone(), 2)));
    assert_quiet(&mut [&mut ra, &mut rb]).await;
}

fn for_users(ev: &Routed, users: &[Address]) -> Routed {
    Routed {
        users: users.to_vec(),
        ..ev.clone()
    }
}

async fn presence(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y, z, nobody) = (addr(), addr(), addr(), addr());
    b.touch(&x, 1000).await.unwrap();
    b.touch(&x, 900).await.unwrap(); // never moves backwards
    b.touch(&y, 5).await.unwrap();
    assert_eq!(b.last_seen(&[x, nobody, y]).await.unwrap(), [1000, 0, 5]);
    assert_eq!(b.last_seen(&[x]).await.unwrap(), [1000]);
    assert_eq!(b.last_seen(&[nobody]).await.unwrap(), [0]);
    assert_eq!(b.last_seen(&[y, y]).await.unwrap(), [5, 5]);
    assert!(b.last_seen(&[]).await.unwrap().is_empty());
    b.touch(&x, 1001).await.unwrap();
    assert_eq!(b.last_seen(&[x]).await.unwrap(), [1001]);
    // Concurrent reports from several gateways: the latest wins, whatever
    // order they land in.
    let now = now_ms();
    let tasks = (0..50u64).map(|i| {
        let b = b.clone();
        tokio::spawn(async move { b.touch(&z, now + (i * 37) % 50).await.unwrap() })
    });
    for r in futures_util::future::join_all(tasks).await {
        r.unwrap();
    }
    assert_eq!(b.last_seen(&[z]).await.unwrap(), [now + 49]);
}

/// Connection reports: one per pod, replaced on each write, scoped to one
/// cluster, gone after the TTL or when withdrawn.
async fn revocations(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    assert_eq!(b.sessions_revoked_before(&x).await.unwrap(), None);
    b.revoke_sessions(&x, 100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.sessions_revoked_before(&x).await.unwrap(), Some(100));
    assert_eq!(b.sessions_revoked_before(&y).await.unwrap(), None);
    // A later revocation replaces the cut; it lapses after its TTL.
    b.revoke_sessions(&x, 200, Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(b.sessions_revoked_before(&x).await.unwrap(), Some(200));
    sleep(Duration::from_millis(900)).await;
    assert_eq!(b.sessions_revoked_before(&x).await.unwrap(), None);
}

async fn connection_reports(e: &Engine) {
    let b = e.broker(BrokerConfig::default()).await;
    let ns = format!("ns-{}", tag());
    let chat = ClusterRef::new(&ns, "chat").unwrap();
    let other = ClusterRef::new(&ns, "other").unwrap();
    let pod = |c: &ClusterRef, p: &str| GatewayIdentity::new(c.clone(), p).unwrap();
    let long = Duration::from_secs(30);

    assert!(
        b.connection_reports(&chat)
            .await
            .unwrap()
            .reports
            .is_empty()
    );
    b.report_connections(&pod(&chat, "gw-b"), 5, long)
        .await
        .unwrap();
    b.report_connections(&pod(&chat, "gw-a"), 3, long)
        .await
        .unwrap();
    b.report_connections(&pod(&other, "gw-a"), 7, long)
        .await
        .unwrap();
    let got = b.connection_reports(&chat).await.unwrap();
    let pods: Vec<(&str, u64)> = got
        .reports
        .iter()
        .map(|r| (r.pod.as_str(), r.connections))
        .collect();
    assert_eq!(pods, [("gw-a", 3), ("gw-b", 5)]);
    assert_eq!(got.total(), 8);
    assert_recent(got.now);
    for r in &got.reports {
        assert_recent(r.reported_at);
        assert!(r.reported_at <= got.now, "{r:?} after {}", got.now);
    }

    // A new report replaces the pod's last one.
    b.report_connections(&pod(&chat, "gw-a"), 0, long)
        .await
        .unwrap();
    let got = b.connection_reports(&chat).await.unwrap();
    assert_eq!(got.total(), 5);
    assert_eq!(got.reports.len(), 2);

    // A report that is not renewed vanishes after its TTL.
    b.report_connections(&pod(&chat, "gw-c"), 11, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(b.connection_reports(&chat).await.unwrap().total(), 16);
    sleep(Duration::from_millis(600)).await;
    let got = b.connection_reports(&chat).await.unwrap();
    assert_eq!(got.total(), 5);
    assert!(got.reports.iter().all(|r| r.pod != "gw-c"));

    // Withdrawn at once; other clusters untouched.
    b.withdraw_report(&pod(&chat, "gw-b")).await.unwrap();
    b.withdraw_report(&pod(&chat, "gw-nobody")).await.unwrap();
    let got = b.connection_reports(&chat).await.unwrap();
    assert_eq!(got.reports.len(), 1);
    assert_eq!(got.reports[0].pod, "gw-a");
    let got = b.connection_reports(&other).await.unwrap();
    assert_eq!(got.reports.len(), 1);
    assert_eq!(got.reports[0].connections, 7);
}

// ---------------------------------------------------------------------------
// Redis-only checks

/// Under the hood: one hash per cluster, a field per pod holding
/// `connections:reported_at:expires_at`; expired fields are dropped by the
/// next write, and the hash itself expires when no gateway writes any more.
async fn connection_report_keys(e: &Engine) {
    use fred::prelude::*;
    let b = e.broker(BrokerConfig::default()).await;
    let chat = ClusterRef::new(format!("ns-{}", tag()), "chat").unwrap();
    let key = chat.redis_key();
    assert_eq!(key, format!("sb:conns:{{{}/chat}}", chat.namespace()));
    let a = GatewayIdentity::new(chat.clone(), "gw-a").unwrap();
    let z = GatewayIdentity::new(chat.clone(), "gw-z").unwrap();
    let client = plain_client(&e.url()).await;

    b.report_connections(&a, 42, Duration::from_millis(400))
        .await
        .unwrap();
    let v: String = client.hget(&key, "gw-a").await.unwrap();
    let parts: Vec<u64> = v.split(':').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{v}");
    assert_eq!(parts[0], 42);
    assert_recent(parts[1]);
    assert_eq!(parts[2], parts[1] + 400);
    let pttl: i64 = client.pttl(&key).await.unwrap();
    assert!(pttl > 0 && pttl <= 400, "pttl {pttl}");

    // A dead pod's field is dropped by the next write of another pod.
    sleep(Duration::from_millis(600)).await;
    b.report_connections(&z, 1, Duration::from_secs(2))
        .await
        .unwrap();
    let fields: Vec<String> = client.hkeys(&key).await.unwrap();
    assert_eq!(fields, ["gw-z"]);

    // When the last gateway stops writing, the key goes too.
    b.report_connections(&z, 1, Duration::from_millis(300))
        .await
        .unwrap();
    let pttl: i64 = client.pttl(&key).await.unwrap();
    assert!(pttl > 300, "the hash keeps the longest TTL written: {pttl}");
    sleep(Duration::from_millis(2200)).await;
    let n: i64 = client.exists(&key).await.unwrap();
    assert_eq!(n, 0);
    let _ = client.quit().await;
}

/// With `persist` on, messages and watermark moves also go to the shard's
/// persistence stream for the worker; with it off, nothing does.
async fn persist_stream(e: &Engine) {
    let url = e.url();
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let stream = format!("sb:{{{}}}:persist", shard_of(&dm, 64));
    // Other checks may share the shard: look at this conversation's entries.
    let entries = |conv: ConvId, stream: String| {
        let url = url.clone();
        async move {
            stream_entries(&url, &stream)
                .await
                .into_iter()
                .filter(|f| f.get("conv").map(String::as_str) == Some(conv.as_str()))
                .collect::<Vec<_>>()
        }
    };
    let off = e.broker(BrokerConfig::default()).await;
    off.send(req(&dm, "a", x, "1")).await.unwrap();
    assert!(off.mark(&dm, &y, Mark::Read, 1).await.unwrap().is_some());
    assert!(
        entries(dm.clone(), stream.clone()).await.is_empty(),
        "persist off"
    );
    let on = e
        .broker(BrokerConfig {
            persist: true,
            ..BrokerConfig::default()
        })
        .await;
    let raw = r#"{"t":"ü ✓","n":[1,{"a":null}]}"#;
    let sent = on.send(req(&dm, "b", x, raw)).await.unwrap();
    assert_eq!(sent.message.seq, 2);
    assert!(on.send(req(&dm, "b", x, raw)).await.unwrap().duplicate); // not appended
    assert_eq!(
        on.mark(&dm, &y, Mark::Delivered, 2).await.unwrap(),
        Some(wm(2, 1))
    );
    assert_eq!(on.mark(&dm, &y, Mark::Delivered, 1).await.unwrap(), None); // not appended
    let got = entries(dm.clone(), stream.clone()).await;
    let want: Vec<HashMap<String, String>> = vec![
        HashMap::from([
            ("t".into(), "msg".into()),
            ("conv".into(), dm.to_string()),
            ("seq".into(), "2".into()),
            ("id".into(), "b".into()),
            ("from".into(), x.lower()),
            ("body".into(), raw.into()),
            ("ts".into(), sent.message.ts.to_string()),
        ]),
        HashMap::from([
            ("t".into(), "wm".into()),
            ("conv".into(), dm.to_string()),
            ("user".into(), y.lower()),
            ("delivered".into(), "2".into()),
            ("read".into(), "1".into()),
        ]),
    ];
    assert_eq!(got, want);
    // A group's messages go to its own shard's stream.
    let g = group(&[x, y]);
    on.create_group(&g).await.unwrap();
    on.send(req(&g.id, "g1", y, "7")).await.unwrap();
    let gs = format!("sb:{{{}}}:persist", shard_of(&g.id, 64));
    let got = entries(g.id.clone(), gs).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["t"], "msg");
    assert_eq!(got[0]["from"], y.lower());
    assert_eq!(got[0]["body"], "7");
    // Marks applied together append each move to its own shard's stream.
    let both = [
        MarkRequest {
            conv: g.id.clone(),
            user: x,
            mark: Mark::Read,
            seq: 1,
        },
        MarkRequest {
            conv: dm.clone(),
            user: x,
            mark: Mark::Delivered,
            seq: 2,
        },
    ];
    assert_eq!(
        on.mark_many(&both).await.unwrap(),
        vec![Some(wm(1, 1)), Some(wm(2, 0))]
    );
    let gs = format!("sb:{{{}}}:persist", shard_of(&g.id, 64));
    let got = entries(g.id.clone(), gs).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        (
            got[1]["t"].as_str(),
            got[1]["user"].clone(),
            got[1]["read"].as_str()
        ),
        ("wm", x.lower(), "1")
    );
    let got = entries(dm.clone(), stream.clone()).await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        (got[2]["user"].clone(), got[2]["delivered"].as_str()),
        (x.lower(), "2")
    );
}

/// The first message of a direct conversation adds it to both users' lists
/// after the send script (other slots). If that step is lost (undone by hand
/// here, as if the gateway died or Redis failed in between), the client's
/// retry with the same id repairs it.
async fn direct_list_repair(e: &Engine) {
    use fred::prelude::*;
    let b = e.broker(BrokerConfig::default()).await;
    let (x, z) = (addr(), addr());
    let dm = ConvId::direct(&x, &z).unwrap();
    b.send(req(&dm, "first", x, "1")).await.unwrap();
    assert_eq!(b.user_conversations(&z).await.unwrap(), vec![dm.clone()]);
    let client = plain_client(&e.url()).await;
    let key = format!("sb:uc:{{{}}}", z.lower());
    let removed: u64 = client.srem(&key, dm.as_str()).await.unwrap();
    assert_eq!(removed, 1, "key layout changed? {key}");
    let _ = client.quit().await;
    assert!(b.user_conversations(&z).await.unwrap().is_empty());
    assert!(b.send(req(&dm, "first", x, "1")).await.unwrap().duplicate);
    assert_eq!(b.user_conversations(&z).await.unwrap(), vec![dm.clone()]);
    assert_eq!(b.user_conversations(&x).await.unwrap(), vec![dm]);
}

/// A full persistence stream (the worker down or far behind) refuses new
/// messages with a clear error instead of growing until Redis runs out of
/// memory; retries of stored messages still answer, and sends resume once
/// the worker caught up. On a server of its own: it empties a shard's
/// stream, which the checks sharing the cluster run would see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_backlog() {
    use fred::prelude::*;
    let e = &Engine::Redis(RedisServer::start().unwrap());
    let b = e
        .broker(BrokerConfig {
            persist: true,
            persist_backlog_max: 3,
            ..BrokerConfig::default()
        })
        .await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    for i in 1..=3 {
        b.send(req(&dm, &format!("b{i}"), x, "1")).await.unwrap();
    }
    assert!(matches!(
        b.send(req(&dm, "b4", x, "1")).await,
        Err(BrokerError::Backlogged(3))
    ));
    assert!(b.send(req(&dm, "b1", x, "1")).await.unwrap().duplicate);
    assert_eq!(b.read_log(&dm, 0, 10).await.unwrap().last_seq, 3);
    // The worker catches up (and trims what it stored).
    let shard = shard_of(&dm, BrokerConfig::default().shards);
    let client = plain_client(&e.url()).await;
    let _: u64 = client
        .xtrim(
            switchboard_core::broker::persist::persist_stream_key(shard),
            ("MAXLEN", 0),
        )
        .await
        .unwrap();
    let _ = client.quit().await;
    assert_eq!(b.send(req(&dm, "b4", x, "1")).await.unwrap().message.seq, 4);
}

/// Records written before idempotency was per sender (`…:d:<msgid>`) still
/// answer their sender's retries after an upgrade, and only theirs.
async fn legacy_dedupe_records(e: &Engine) {
    use fred::prelude::*;
    let b = e.broker(BrokerConfig::default()).await;
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let first = b.send(req(&dm, "old", x, "1")).await.unwrap();
    // Turn the record into the pre-upgrade form: per-message, not per-sender.
    let shard = shard_of(&dm, BrokerConfig::default().shards);
    let prefix = format!("sb:{{{shard}}}:c:{dm}:d");
    let client = plain_client(&e.url()).await;
    let record: Option<String> = client
        .getdel(format!("{prefix}:{}:old", x.lower()))
        .await
        .unwrap();
    let record = record.expect("key layout changed? no per-sender record");
    let _: () = client
        .set(format!("{prefix}:old"), record, None, None, false)
        .await
        .unwrap();
    let _ = client.quit().await;
    // The sender's retry is still a duplicate of its message...
    let retry = b.send(req(&dm, "old", x, "1")).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, first.message.seq);
    // ...and the other member's reuse of the id is a new message.
    let other = b.send(req(&dm, "old", y, "2")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.message.seq, 2);
    let page = b.read_log(&dm, 0, 10).await.unwrap();
    assert_eq!(seqs(&page.messages), [1, 2]);
}

// ---------------------------------------------------------------------------
// Instantiation

macro_rules! suite {
    (common: [$($check:ident),* $(,)?], redis_only: [$($rcheck:ident),* $(,)?] $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::Engine::Memory).await
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let e = super::Engine::Redis(super::RedisServer::start().unwrap());
                    super::$check(&e).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rcheck() {
                    let e = super::Engine::Redis(super::RedisServer::start().unwrap());
                    super::$rcheck(&e).await
                }
            )*
        }

        /// Every check at once on one cluster (forming one takes seconds).
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cluster() {
            let e = Arc::new(Engine::Cluster(RedisCluster::start(3, 1).unwrap()));
            let mut tasks = vec![];
            $(
                let c = e.clone();
                tasks.push((stringify!($check), tokio::spawn(async move { $check(&c).await })));
            )*
            $(
                let c = e.clone();
                tasks.push((stringify!($rcheck), tokio::spawn(async move { $rcheck(&c).await })));
            )*
            let mut failed = vec![];
            for (name, task) in tasks {
                if task.await.is_err() {
                    failed.push(name);
                }
            }
            assert!(failed.is_empty(), "checks failed on the cluster: {failed:?}");
        }
    };
}

suite!(
    common: [nonces, conversations, sends, dedupe, bodies, logs, snapshot_reads, trimming, age_trimming, marks, many_marks, routing, channels, presence, revocations, connection_reports],
    redis_only: [persist_stream, direct_list_repair, connection_report_keys, legacy_dedupe_records, registry_moves],
);

/// kill -9 and restart of Redis (AOF, fsync always): the seq continues
/// without reuse, the log and the dedupe records survive, and the gateway
/// subscription comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_kill9_restart() {
    let mut r = RedisServer::start().unwrap();
    let b: DynBroker = Arc::new(
        RedisBroker::connect(&r.url(), BrokerConfig::default())
            .await
            .unwrap(),
    );
    let (x, y) = (addr(), addr());
    let dm = ConvId::direct(&x, &y).unwrap();
    let gw = format!("gw-{}", tag());
    let mut rx = b.attach(&gw).await.unwrap();
    b.register(&y, &gw).await.unwrap();
    for i in 1..=3 {
        b.send(req(&dm, &format!("k{i}"), x, &i.to_string()))
            .await
            .unwrap();
    }
    assert!(b.mark(&dm, &y, Mark::Read, 2).await.unwrap().is_some());
    r.kill9();
    r.restart().unwrap();
    // The same broker reconnects on its own; retry like a client would.
    let mut next = None;
    for _ in 0..100 {
        match b.send(req(&dm, "k4", x, "4")).await {
            Ok(o) => {
                next = Some(o);
                break;
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
    let next = next.expect("Redis did not come back within 10 s");
    assert_eq!(next.message.seq, 4);
    let page = b.read_log(&dm, 0, 10).await.unwrap();
    assert_eq!(page.last_seq, 4);
    assert_eq!(seqs(&page.messages), [1, 2, 3, 4]);
    let ids: Vec<&str> = page.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["k1", "k2", "k3", "k4"]);
    assert_eq!(page.messages[2].body.get(), "3");
    // A retry of an id from before the crash is still deduplicated.
    let dup = b.send(req(&dm, "k2", x, "2")).await.unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.message.seq, 2);
    assert_eq!(b.watermarks(&dm, &y).await.unwrap(), wm(2, 2));
    // The gateway's subscription is restored: routed events arrive again.
    let ev = Routed {
        users: vec![y],
        frame: Arc::from(r#"{"type":"pong"}"#),
        ack: None,
        skip_conn: None,
        channel: None,
        revoke: None,
    };
    let mut delivered = false;
    for _ in 0..50 {
        b.gateway_alive(&gw).await.unwrap();
        b.route(ev.clone()).await.unwrap();
        if let Ok(Some(got)) = timeout(Duration::from_millis(200), rx.recv()).await {
            assert_eq!(got.users, [y]);
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no routed event after the restart");
}
