//! `switchboard-bench persist`: the worker's persistence throughput against a
//! naive baseline (one autocommitted `INSERT` per message), measured side by
//! side in one run, and the end-to-end lag from `sent` to row visible at a
//! steady send rate. Redis and PostgreSQL come from testkit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::value::RawValue;
use switchboard_core::broker::{Broker, BrokerConfig, RedisBroker, SendRequest};
use switchboard_core::store::PgStore;
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, MsgId};
use switchboard_testkit::{Postgres, PostgresOptions, RedisServer, RedisServerOptions};
use switchboard_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// ~100-byte chat bodies.
fn body(i: usize) -> Box<RawValue> {
    let text = format!(
        r#"{{"text":"message number {i:08} with some ordinary chat text in it","kind":"text"}}"#
    );
    RawValue::from_string(text).unwrap_or_else(|_| unreachable!("the body is valid JSON"))
}

fn conversations(n: usize) -> Result<Vec<(ConvId, Address)>> {
    (0..n)
        .map(|_| {
            let (a, b) = (Address(rand::random()), Address(rand::random()));
            Ok((ConvId::direct(&a, &b)?, a))
        })
        .collect()
}

async fn broker(redis: &RedisServer) -> Result<Arc<RedisBroker>> {
    let cfg = BrokerConfig {
        persist: true,
        ..BrokerConfig::default()
    };
    Ok(Arc::new(RedisBroker::connect(&redis.url(), cfg).await?))
}

async fn store(pg: &Postgres, db: &str) -> Result<PgStore> {
    let url = pg.create_database(db)?;
    let s = PgStore::connect(&url, 8).await?;
    s.migrate().await?;
    Ok(s)
}

/// Send `n` messages over `convs` with 32 concurrent senders; returns what
/// the broker answered (exactly what the worker will persist).
async fn fill(
    broker: &Arc<RedisBroker>,
    convs: &[(ConvId, Address)],
    n: usize,
) -> Result<Vec<Message>> {
    let convs = Arc::new(convs.to_vec());
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (broker, convs) = (broker.clone(), convs.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = t;
            while i < n {
                let (conv, from) = &convs[i % convs.len()];
                let o = broker
                    .send(SendRequest {
                        conv: conv.clone(),
                        id: MsgId::random(),
                        from: *from,
                        body: body(i),
                        privileged: false,
                    })
                    .await?;
                out.push(o.message);
                i += 32;
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Run a worker until every stream entry is persisted; returns the time.
async fn drain_with_worker(redis: &RedisServer, store: PgStore, batch: usize) -> Result<Duration> {
    let cfg = WorkerConfig {
        batch_size: batch,
        ..WorkerConfig::default()
    };
    let worker = Worker::connect(&redis.url(), store, cfg).await?;
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    loop {
        if streams.backlog().await? == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    task.await?;
    Ok(took)
}

/// The naive baseline: one autocommitted INSERT per message, in order, on
/// one connection (what a straightforward consumer does).
async fn naive(store: &PgStore, msgs: &[Message]) -> Result<Duration> {
    let started = Instant::now();
    for m in msgs {
        sqlx::query(
            "INSERT INTO messages (conv_id, seq, msg_id, sender, body, sent_at)
             VALUES ($1, $2, $3, $4, $5::json, to_ms_ts($6)) ON CONFLICT DO NOTHING",
        )
        .bind(m.conv.as_str())
        .bind(m.seq as i64)
        .bind(m.id.as_str())
        .bind(m.from.lower())
        .bind(m.body.get())
        .bind(m.ts as i64)
        .execute(store.pool())
        .await?;
    }
    Ok(started.elapsed())
}

fn row(scenario: &str, load: String, result: String, extra: String) -> String {
    format!("| {scenario} | {load} | {result} | {extra} |")
}

// The `persist` subcommand's flags.
#[derive(Args)]
pub struct PersistArgs {
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Messages the naive baseline inserts (its rate is what counts).
    #[arg(long, default_value_t = 20_000)]
    naive_messages: usize,
    /// Send rate of the lag scenario (messages/s).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Worker batch sizes to drain the backlog with, one run each; the
    /// first is compared with the naive baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 1000, 100])]
    batches: Vec<usize>,
}

pub async fn run(args: PersistArgs) -> Result<()> {
    let PersistArgs {
        messages,
        naive_messages,
        rate,
        seconds,
        batches,
    } = args;
    let Some(&first_batch) = batches.first() else {
        anyhow::bail!("--batches needs at least one batch size");
    };
    let redis = RedisServer::start_with(RedisServerOptions {
        // Filling the streams is set-up, not what is measured.
        persistence: false,
        ..Default::default()
    })?;
    // Production durability: every commit is flushed, as in production.
    let pg = Postgres::start_with(PostgresOptions { durable: true })?;
    let convs = conversations(1000)?;
    println!("| scenario | load | result | extra |");
    println!("|---|---|---|---|");

    // Lag at a steady rate (sent → row visible), first: the bulk loads
    // below leave checkpoint work behind that would stall it.
    let b = broker(&redis).await?;
    let lag = lag(&redis, &pg, &b, &convs[..100], rate, seconds).await?;

    // Throughput: the same backlog persisted by the worker at each batch
    // size, and by the naive loop.
    let mut worker_rates = vec![];
    let mut sample = vec![];
    for (i, batch) in batches.iter().copied().enumerate() {
        let msgs = fill(&b, &convs, messages)
            .await
            .context("filling the streams")?;
        let s = store(&pg, &format!("worker{i}")).await?;
        let took = drain_with_worker(&redis, s, batch).await?;
        let rate = messages as f64 / took.as_secs_f64();
        worker_rates.push(rate);
        println!(
            "{}",
            row(
                &format!("worker, batch {batch}"),
                format!("{messages} messages, 1000 conversations, 64 shards"),
                format!("**{rate:.0} messages/s**"),
                format!("{:.2} s", took.as_secs_f64()),
            )
        );
        if sample.is_empty() {
            sample = msgs;
        }
    }
    let s = store(&pg, "naive").await?;
    let n = naive_messages.min(sample.len());
    let took = naive(&s, &sample[..n]).await?;
    let naive_rate = n as f64 / took.as_secs_f64();
    println!(
        "{}",
        row(
            "naive: one INSERT per message",
            format!("{n} messages, autocommit, one connection"),
            format!("**{naive_rate:.0} messages/s**"),
            format!(
                "worker (batch {first_batch}) / naive = **{:.1}×**",
                worker_rates[0] / naive_rate
            ),
        )
    );

    println!("{lag}");
    Ok(())
}

/// Send at `rate` for `seconds` with a worker running, and stamp when each
/// message becomes visible. Visibility is read from `conversations.last_seq`,
/// which the worker moves in the same transaction as the message rows, polled
/// every 5 ms (the stated measurement granularity).
async fn lag(
    redis: &RedisServer,
    pg: &Postgres,
    b: &Arc<RedisBroker>,
    convs: &[(ConvId, Address)],
    rate: u64,
    seconds: u64,
) -> Result<String> {
    let s = store(pg, "lag").await?;
    let worker = Worker::connect(&redis.url(), s.clone(), WorkerConfig::default()).await?;
    let stop = CancellationToken::new();
    let wtask = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let sent_at: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let lags: Arc<Mutex<Vec<f64>>> = Arc::default();

    // Poller: every 5 ms, read each conversation's stored last seq; every seq
    // up to it not stamped yet is visible now.
    let poll_stop = CancellationToken::new();
    let poller = {
        let (s, sent_at, lags, poll_stop) =
            (s.clone(), sent_at.clone(), lags.clone(), poll_stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            while !poll_stop.is_cancelled() {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT id, last_seq FROM conversations")
                        .fetch_all(s.pool())
                        .await?;
                let now = Instant::now();
                {
                    let sent = sent_at.lock().unwrap_or_else(|p| p.into_inner());
                    let mut l = lags.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, last) in rows {
                        let from = seen.get(&id).copied().unwrap_or(0);
                        for seq in from + 1..=last as u64 {
                            if let Some(t) = sent.get(&(id.clone(), seq)) {
                                l.push(now.duration_since(*t).as_secs_f64() * 1000.0);
                            }
                        }
                        seen.insert(id, last as u64);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_ms = rate as f64 / 1000.0;
    let (mut budget, mut i) = (0.0, 0usize);
    let mut inflight = tokio::task::JoinSet::new();
    while i < total {
        tick.tick().await;
        budget += per_ms;
        while budget >= 1.0 && i < total {
            budget -= 1.0;
            let (conv, from) = convs[i % convs.len()].clone();
            let (b, sent_at) = (b.clone(), sent_at.clone());
            let n = i;
            inflight.spawn(async move {
                let o = b
                    .send(SendRequest {
                        conv,
                        id: MsgId::random(),
                        from,
                        body: body(n),
                        privileged: false,
                    })
                    .await?;
                sent_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((o.message.conv.to_string(), o.message.seq), Instant::now());
                anyhow::Ok(())
            });
            i += 1;
        }
        while let Some(r) = inflight.try_join_next() {
            r??;
        }
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while lags.lock().unwrap_or_else(|p| p.into_inner()).len() < total && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poll_stop.cancel();
    poller.await??;
    stop.cancel();
    wtask.await?;
    let mut l = lags.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(row(
        "lag: sent → row visible",
        format!("{rate} msg/s for {seconds} s, 100 conversations, worker default config"),
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(0.50),
            pct(0.95),
            pct(0.99),
            l.last().copied().unwrap_or(f64::NAN)
        ),
        format!("{} of {total} observed; polled every 5 ms", l.len()),
    ))
}
