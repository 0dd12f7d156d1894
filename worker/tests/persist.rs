//! The worker against real Redis and PostgreSQL: exactly-once storage under
//! retries, concurrent workers, crashes and outages.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use switchboard_core::broker::RedisBroker;
use switchboard_proto::ids::{ConvId, MsgId};
use switchboard_testkit::{Postgres, RedisServer};
use switchboard_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

fn spawn_worker(worker: Worker) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let handle = tokio::spawn(async move { worker.run(c).await });
    (cancel, handle)
}

/// Random senders, conversations and retries; afterwards every message a
/// sender saw `sent` for is in PostgreSQL exactly once, seq 1..n per
/// conversation, ids and bodies intact. Two workers consume concurrently.
#[test]
fn property_sent_messages_are_stored_exactly_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = rt.block_on(store(&pg, "property"));
    let broker = rt.block_on(async {
        RedisBroker::connect(&redis.url(), broker_config())
            .await
            .unwrap()
    });
    let mut workers = vec![];
    let mut streams = None;
    for i in 0..2 {
        let w = rt
            .block_on(Worker::connect(
                &redis.url(),
                store.clone(),
                WorkerConfig {
                    consumer: format!("prop-{i}"),
                    batch_size: 16,
                    ..worker_config()
                },
            ))
            .unwrap();
        streams.get_or_insert(w.streams());
        workers.push(rt.block_on(async { spawn_worker(w) }));
    }
    let streams = streams.unwrap();

    // (sender, conversation, retry the previous id instead of a new one)
    let ops = prop::collection::vec((0usize..3, 0usize..4, prop::bool::weighted(0.25)), 1..80);
    let mut runner = TestRunner::new(Config {
        cases: 6,
        ..Config::default()
    });
    runner
        .run(&ops, |ops| {
            rt.block_on(async {
                let users = [addr(), addr(), addr()];
                let mut convs: Vec<ConvId> = vec![
                    ConvId::direct(&users[0], &users[1]).unwrap(),
                    ConvId::direct(&users[1], &users[2]).unwrap(),
                ];
                convs.push(group(&broker, &users).await);
                convs.push(group(&broker, &users).await);
                let mut sent = Sent::new();
                let mut last: Option<(usize, usize, MsgId, String)> = None;
                for (i, (s, c, retry)) in ops.into_iter().enumerate() {
                    let (s, c, id, body) = match (&last, retry) {
                        (Some(prev), true) => prev.clone(),
                        _ => {
                            // Direct conversations only accept their members.
                            let s = match c {
                                0 => s % 2,
                                1 => 1 + s % 2,
                                _ => s,
                            };
                            (s, c, MsgId::random(), format!(r#"{{"n": {i}, "k": "é"}}"#))
                        }
                    };
                    send(&broker, &mut sent, &convs[c], users[s], &id, &body)
                        .await
                        .unwrap();
                    last = Some((s, c, id, body));
                }
                drained(&streams, Duration::from_secs(20)).await;
                assert_stored_exactly(&store, &sent).await;
            });
            Ok(())
        })
        .unwrap();
    for (cancel, handle) in workers {
        cancel.cancel();
        rt.block_on(handle).unwrap();
    }
}

/// An entry the worker cannot use goes to the dead-letter stream after
/// `max_attempts` deliveries, with the reason; the good entries around it are
/// stored and nothing else is held up.
#[tokio::test]
async fn poison_entries_are_dead_lettered_with_a_reason() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "poison").await;
    let broker = RedisBroker::connect(&redis.url(), broker_config())
        .await
        .unwrap();
    let worker = Worker::connect(
        &redis.url(),
        store.clone(),
        WorkerConfig {
            max_attempts: 2,
            claim_idle: Duration::from_millis(200),
            claim_interval: Duration::from_millis(100),
            ..worker_config()
        },
    )
    .await
    .unwrap();
    let metrics = worker.metrics();
    let streams = worker.streams();
    let (cancel, handle) = spawn_worker(worker);

    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let mut sent = Sent::new();
    send(&broker, &mut sent, &dm, a, &MsgId::random(), "1")
        .await
        .unwrap();
    redis
        .command(&[
            "XADD",
            "sb:{3}:persist",
            "*",
            "t",
            "msg",
            "conv",
            "nonsense",
        ])
        .unwrap();
    send(&broker, &mut sent, &dm, b, &MsgId::random(), "2")
        .await
        .unwrap();

    drained(&streams, Duration::from_secs(20)).await;
    assert_stored_exactly(&store, &sent).await;
    let dead = redis.command(&["XRANGE", "sb:{3}:dead", "-", "+"]).unwrap();
    assert!(dead.contains("nonsense"), "{dead}");
    assert!(dead.contains("reason") && dead.contains("conv"), "{dead}");
    assert!(
        metrics
            .render()
            .contains("switchboard_worker_dead_letters_total 1")
    );
    cancel.cancel();
    handle.await.unwrap();
}

/// PostgreSQL goes away for 20 s while senders keep sending: sends keep
/// succeeding (the live path does not touch PostgreSQL), the worker holds
/// its batch and backs off, then catches up; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let redis = RedisServer::start().unwrap();
    let mut pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "outage").await;
    let broker = Arc::new(
        RedisBroker::connect(&redis.url(), broker_config())
            .await
            .unwrap(),
    );
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let metrics = worker.metrics();
    let streams = worker.streams();
    let (cancel, handle) = spawn_worker(worker);

    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let stop = CancellationToken::new();
    let sender = {
        let (broker, stop, dm) = (broker.clone(), stop.clone(), dm.clone());
        tokio::spawn(async move {
            let mut sent = Sent::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                send(&broker, &mut sent, &dm, a, &MsgId::random(), &i.to_string())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| pg.stop());
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        streams.backlog().await.unwrap() > 0,
        "nothing waited during the outage"
    );
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let sent = sender.await.unwrap();
    assert!(
        sent[dm.as_str()].len() > 1000,
        "{} sent",
        sent[dm.as_str()].len()
    );

    drained(&streams, Duration::from_secs(30)).await;
    assert_stored_exactly(&store, &sent).await;
    let text = metrics.render();
    // The series is exported from the start (at 0); the outage moved it.
    let transient: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("switchboard_worker_batch_failures_total{kind=\"transient\"} ")
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(transient > 0.0, "{text}");
    cancel.cancel();
    handle.await.unwrap();
}

/// Workers restart again and again while PostgreSQL is down (a crash loop,
/// pods rescheduled): each takes over the pending entries, which counts a
/// delivery each time, and none can write them. Once PostgreSQL is back,
/// every message is stored and nothing was dead-lettered: an entry is moved
/// aside only after the database itself refused it. (Before, entries were
/// dead-lettered at claim time after `max_attempts` deliveries, whatever
/// the reason.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_restarting_workers_dead_letters_nothing() {
    let redis = RedisServer::start().unwrap();
    let mut pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "outage_restarts").await;
    let broker = RedisBroker::connect(&redis.url(), broker_config())
        .await
        .unwrap();
    let cfg = WorkerConfig {
        max_attempts: 2,
        claim_idle: Duration::from_millis(200),
        claim_interval: Duration::from_millis(100),
        ..worker_config()
    };
    // The consumer group exists before the outage.
    drop(
        Worker::connect(&redis.url(), store.clone(), cfg.clone())
            .await
            .unwrap(),
    );
    tokio::task::block_in_place(|| pg.stop());
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let mut sent = Sent::new();
    for i in 0..20 {
        send(&broker, &mut sent, &dm, a, &MsgId::random(), &i.to_string())
            .await
            .unwrap();
    }
    // Five short-lived workers in a row, each cut off mid-outage.
    let mut last_metrics = None;
    for n in 0..5 {
        let worker = Worker::connect(
            &redis.url(),
            store.clone(),
            WorkerConfig {
                consumer: format!("restarting-{n}"),
                ..cfg.clone()
            },
        )
        .await
        .unwrap();
        last_metrics = Some(worker.metrics());
        let (cancel, handle) = spawn_worker(worker);
        tokio::time::sleep(Duration::from_millis(900)).await;
        cancel.cancel();
        handle.await.unwrap();
    }
    let deliveries = redis
        .command(&[
            "XPENDING",
            &persist_key_of(&dm),
            switchboard_core::broker::persist::WORKER_GROUP,
        ])
        .unwrap();
    assert!(!deliveries.is_empty());
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    let worker = Worker::connect(&redis.url(), store.clone(), cfg)
        .await
        .unwrap();
    let metrics = worker.metrics();
    let streams = worker.streams();
    let (cancel, handle) = spawn_worker(worker);
    drained(&streams, Duration::from_secs(30)).await;
    assert_stored_exactly(&store, &sent).await;
    for m in [metrics, last_metrics.unwrap()] {
        assert!(
            !m.render()
                .contains("switchboard_worker_dead_letters_total 1"),
            "{}",
            m.render()
        );
        assert_eq!(m.dead_letters.get(), 0);
    }
    cancel.cancel();
    handle.await.unwrap();
}

/// The persistence stream of `conv`'s shard.
fn persist_key_of(conv: &ConvId) -> String {
    switchboard_core::broker::persist::persist_stream_key(switchboard_core::broker::shard_of(
        conv, SHARDS,
    ))
}

/// kill -9 a worker process while it works through a backlog, start another:
/// the second claims what the first left pending; every message is stored
/// exactly once.
#[tokio::test]
async fn killed_worker_is_replaced_without_loss_or_duplicates() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, db_url) = store(&pg, "kill9").await;
    let broker = RedisBroker::connect(&redis.url(), broker_config())
        .await
        .unwrap();
    let users = [addr(), addr(), addr()];
    let convs = [
        ConvId::direct(&users[0], &users[1]).unwrap(),
        group(&broker, &users).await,
    ];
    let mut sent = Sent::new();
    for i in 0..4000 {
        let c = i % 2;
        send(
            &broker,
            &mut sent,
            &convs[c],
            users[i % 2],
            &MsgId::random(),
            &format!("[{i}]"),
        )
        .await
        .unwrap();
    }
    let spawn = |listen: String| {
        Command::new(env!("CARGO_BIN_EXE_switchboard-worker"))
            .args([
                "run",
                "--redis-url",
                &redis.url(),
                "--database-url",
                &db_url,
            ])
            .args(["--listen", &listen, "--shards", &SHARDS.to_string()])
            .args(["--batch-size", "50", "--claim-idle-secs", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let mut first = spawn("127.0.0.1:0".into());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count().await < 500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first worker stored nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let stored = count().await;
    assert!(
        stored < 4000,
        "the first worker finished before it was killed"
    );

    let metrics_port = switchboard_testkit::free_port().unwrap();
    let mut second = spawn(format!("127.0.0.1:{metrics_port}"));
    let streams =
        switchboard_worker::streams::Streams::connect(&redis.url(), SHARDS, "probe".into())
            .await
            .unwrap();
    drained(&streams, Duration::from_secs(60)).await;
    assert_stored_exactly(&store, &sent).await;
    // The binary's /metrics: which build, and what it stored.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let build = format!(
        "switchboard_build_info{{version=\"{}\",git_sha=\"{}\"}} 1",
        switchboard_core::telemetry::VERSION,
        switchboard_core::telemetry::git_sha()
    );
    assert!(text.contains(&build), "{build} not in:\n{text}");
    assert!(
        text.contains("switchboard_worker_messages_total "),
        "{text}"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Redis is killed (-9) and restarted from its AOF: the consumer group and
/// pending entries survive, seqs continue without reuse, the worker resumes.
#[tokio::test]
async fn redis_restart_keeps_seqs_and_the_group() {
    let mut redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "redis_restart").await;
    let broker = RedisBroker::connect(&redis.url(), broker_config())
        .await
        .unwrap();
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let (cancel, handle) = spawn_worker(worker);
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let mut sent = Sent::new();
    for i in 0..50 {
        send(&broker, &mut sent, &dm, a, &MsgId::random(), &i.to_string())
            .await
            .unwrap();
    }
    redis.kill9();
    redis.restart().unwrap();
    let mut ok = 0;
    for i in 50..100 {
        // The client retries under the same id until the broker is back.
        let id = MsgId::random();
        for _ in 0..100 {
            if send(&broker, &mut sent, &dm, b, &id, &i.to_string())
                .await
                .is_ok()
            {
                ok += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(ok, 50);
    assert_eq!(*sent[dm.as_str()].keys().last().unwrap(), 100);
    drained(&streams, Duration::from_secs(30)).await;
    assert_stored_exactly(&store, &sent).await;
    cancel.cancel();
    handle.await.unwrap();
}

/// A gateway restarts while a client keeps sending through the SDK, which
/// writes interrupted sends again under the same id: every message is
/// stored exactly once, seqs 1..n.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_under_retries_stores_exactly_once() {
    use switchboard_client::{Client, ClientOptions};
    use switchboard_gateway::{Gateway, GatewayConfig};

    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "gw_restart").await;
    let cfg = switchboard_core::broker::BrokerConfig {
        seed_from_store: true,
        ..broker_config()
    };
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let (cancel, handle) = spawn_worker(worker);
    let secret = b"restart-test-secret-restart-test".to_vec();
    let start = |addr: Option<std::net::SocketAddr>| {
        let (url, store, secret, cfg) = (redis.url(), store.clone(), secret.clone(), cfg.clone());
        async move {
            let bind = addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
            let mut listener = None;
            for _ in 0..50 {
                match tokio::net::TcpListener::bind(&bind).await {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            let broker = Arc::new(RedisBroker::connect(&url, cfg).await.unwrap());
            Gateway::start_with_store(
                GatewayConfig {
                    token_secret: secret,
                    ..GatewayConfig::default()
                },
                broker,
                Some(Arc::new(store)),
                listener.expect("port not free again"),
            )
            .await
            .unwrap()
        }
    };
    let gw = start(None).await;
    let gw_addr = gw.local_addr();
    let (a, b) = (addr(), addr());
    let (token, _) = gw.state().chat.tokens.issue(
        &a,
        Duration::from_secs(300),
        time::OffsetDateTime::now_utc(),
    );
    let opts = ClientOptions {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        send_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let client = Client::connect_with_token(&format!("http://{gw_addr}"), &token, opts)
        .await
        .unwrap();
    let dm = ConvId::direct(&a, &b).unwrap();
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let h = client.handle();
            let dm = dm.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let p = h.send(&dm, serde_json::json!({ "i": i }));
                let id = p.id().to_string();
                (id, p.await)
            }
        })
        .collect();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.shutdown().await;
        start(Some(gw_addr)).await
    };
    let (results, gw2) = tokio::join!(futures_util::future::join_all(sends), restart);
    let mut sent = Sent::new();
    for (id, r) in results {
        let s = r.expect("the SDK gave up on a send");
        let prev = sent
            .entry(dm.to_string())
            .or_default()
            .insert(s.seq, (id.clone(), String::new()));
        assert!(prev.is_none(), "seq {} given twice", s.seq);
    }
    assert_eq!(sent[dm.as_str()].len(), 300);
    drained(&streams, Duration::from_secs(30)).await;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, msg_id FROM messages WHERE conv_id = $1 ORDER BY seq")
            .bind(dm.as_str())
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 300);
    for (i, (seq, id)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(*id, sent[dm.as_str()][&(*seq as u64)].0);
    }
    client.close().await;
    gw2.shutdown().await;
    cancel.cancel();
    handle.await.unwrap();
}
