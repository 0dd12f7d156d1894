//! `switchboard-bench latency`: delivery latency and gateway CPU per 1,000
//! deliveries, on one gateway or with every conversation split over two.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::ids::{Address, ConvId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMsg;

use crate::client::open;
use crate::target::{Engine, Target};

// The `latency` subcommand's flags.
#[derive(Args)]
pub struct LatencyArgs {
    #[arg(long, value_enum, default_value = "redis")]
    engine: Engine,
    /// Gateway processes on the same Redis. With 2 or more, the two users
    /// of every conversation sit on different gateways, so each delivery
    /// crosses Redis pub/sub instead of the local short cut.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// One run, printed as a row of the results table.
pub async fn run(args: LatencyArgs) -> Result<()> {
    let LatencyArgs {
        engine,
        gateways,
        users,
        rate,
        seconds,
    } = args;
    let r = latency(engine, gateways, users, rate, seconds).await?;
    println!("{}", r.row());
    Ok(())
}

pub struct LatencyResult {
    engine: Engine,
    gateways: usize,
    users: usize,
    rate: u64,
    sent: u64,
    delivered: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_s_per_1000: f64,
    /// Redis CPU per 1,000 deliveries (Redis engine only), for context.
    redis_cpu_s_per_1000: Option<f64>,
    /// `PUBLISH` calls during the run (Redis engine only).
    publishes: Option<u64>,
}

impl LatencyResult {
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn row(&self) -> String {
        format!(
            "| latency | {:?}, {} | {} users, {} msg/s | sent {} delivered {} | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.1} ms | {:.3} gateway CPU-s per 1,000 deliveries{} |",
            self.engine,
            match self.gateways {
                1 => "1 gateway".to_string(),
                n => format!("{n} gateways, every pair split"),
            },
            self.users,
            self.rate,
            self.sent,
            self.delivered,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms,
            self.cpu_s_per_1000,
            match (self.redis_cpu_s_per_1000, self.publishes) {
                (Some(r), Some(p)) => format!(" (Redis: {r:.3} CPU-s; {p} PUBLISH)"),
                _ => String::new(),
            }
        )
    }
}

/// `users` users in `users / 2` direct conversations (users 2i and 2i + 1),
/// sending at `rate` msg/s in both directions, every message acked. User j
/// connects to gateway `j % gateways`: with two gateways, the two users of
/// every conversation are on different gateways, so every delivery (and every
/// receipt) goes through Redis pub/sub (`sb:gw:{id}`) rather than the
/// sending gateway's local short cut.
pub async fn latency(
    engine: Engine,
    gateways: usize,
    users: usize,
    rate: u64,
    seconds: u64,
) -> Result<LatencyResult> {
    let t = Target::start_many(engine, gateways, None).await?;
    let load = Load::open(&t, users).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.run(&t, engine, gateways, rate, seconds).await
}

/// Connected users of a latency run, reusable for several measured runs
/// (the relay scenario measures normal and relay mode on the same sockets).
pub struct Load {
    start: Instant,
    users: usize,
    senders: Vec<mpsc::UnboundedSender<String>>,
    convs: Vec<ConvId>,
    samples: Arc<Mutex<Vec<u64>>>,
    delivered: Arc<AtomicU64>,
    /// Messages sent by earlier runs: ids stay unique across runs.
    sent_before: AtomicU64,
}

impl Load {
    /// Sign in and connect `users` users, user j to gateway `j % n`.
    pub async fn open(t: &Target, users: usize) -> Result<Load> {
        if users < 2 {
            bail!("latency needs at least 2 users (one conversation)");
        }
        let start = Instant::now();
        let addrs: Vec<Address> = (0..users).map(|_| Address(rand::random())).collect();
        let samples = Arc::new(Mutex::new(Vec::<u64>::new()));
        let delivered = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::with_capacity(users);
        for (j, a) in addrs.iter().enumerate() {
            let ws = open(t.addr(j), &t.token(a)).await?;
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            let ack_tx = tx.clone();
            senders.push(tx);
            tokio::spawn(async move {
                while let Some(s) = rx.recv().await {
                    if sink.send(WsMsg::text(s)).await.is_err() {
                        break;
                    }
                }
            });
            let samples = samples.clone();
            let delivered = delivered.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    let WsMsg::Text(text) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if v["type"] != "msg" {
                        continue;
                    }
                    let relayed = v["relayed"] == true;
                    // A relayed message's sequenced copy comes later (after
                    // the measured run): only first copies are samples.
                    let counted = relayed || v["body"]["r"] != true;
                    if counted {
                        let now = start.elapsed().as_micros() as u64;
                        if let Some(t0) = v["body"]["t"].as_u64() {
                            samples
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(now.saturating_sub(t0));
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    // Relayed copies have no seq to ack.
                    if !relayed {
                        let ack = json!({"type":"ack","conv":v["conv"],"seq":v["seq"]}).to_string();
                        let _ = ack_tx.send(ack);
                    }
                }
            });
        }
        let convs: Vec<ConvId> = (0..users / 2)
            .map(|i| ConvId::direct(&addrs[2 * i], &addrs[2 * i + 1]))
            .collect::<Result<_, _>>()?;
        Ok(Load {
            start,
            users,
            senders,
            convs,
            samples,
            delivered,
            sent_before: AtomicU64::new(0),
        })
    }

    /// One measured run: `rate` msg/s for `seconds`, then up to 10 s for the
    /// last deliveries. Messages of a run with `mark_relayed` carry
    /// `"r": true`, so their sequenced copies (after Redis returns) are not
    /// counted again by a later run.
    pub async fn run(
        &self,
        t: &Target,
        engine: Engine,
        gateways: usize,
        rate: u64,
        seconds: u64,
    ) -> Result<LatencyResult> {
        self.run_marked(t, engine, gateways, rate, seconds, false)
            .await
    }

    pub async fn run_marked(
        &self,
        t: &Target,
        engine: Engine,
        gateways: usize,
        rate: u64,
        seconds: u64,
        mark_relayed: bool,
    ) -> Result<LatencyResult> {
        let Load {
            start,
            users,
            senders,
            convs,
            samples,
            delivered,
            sent_before,
        } = self;
        samples.lock().unwrap_or_else(|p| p.into_inner()).clear();
        delivered.store(0, Ordering::Relaxed);
        let cpu0 = t.cpu_seconds()?;
        let redis_cpu0 = t.redis_cpu_seconds().ok().flatten();
        let publishes0 = t.redis_publishes().ok().flatten();
        let total = rate * seconds;
        let first = sent_before.fetch_add(total, Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let per_ms = rate as f64 / 1000.0;
        let mut sent = 0u64;
        let mut budget = 0.0;
        let mut n = 0usize;
        while sent < total {
            tick.tick().await;
            budget += per_ms;
            while budget >= 1.0 && sent < total {
                budget -= 1.0;
                let pair = n % convs.len();
                let from = 2 * pair + (n / convs.len()) % 2;
                n += 1;
                let body = json!({"t": start.elapsed().as_micros() as u64, "r": mark_relayed});
                let id = format!("b{}", first + sent);
                let frame = json!({"type":"send","conv":convs[pair],"id":id,"body":body});
                let _ = senders[from].send(frame.to_string());
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = t.cpu_seconds()? - cpu0;
        let redis_cpu = match (t.redis_cpu_seconds().ok().flatten(), redis_cpu0) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        let publishes = match (t.redis_publishes().ok().flatten(), publishes0) {
            (Some(b), Some(a)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let got = delivered.load(Ordering::Relaxed);
        let per_1000 = |cpu: f64| {
            if got == 0 {
                0.0
            } else {
                cpu / got as f64 * 1000.0
            }
        };
        let mut s = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.sort_unstable();
        let pct = |p: f64| {
            s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        Ok(LatencyResult {
            engine,
            gateways,
            users: *users,
            rate,
            sent,
            delivered: got,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            max_ms: s.last().copied().unwrap_or(0) as f64 / 1000.0,
            cpu_s_per_1000: per_1000(cpu),
            redis_cpu_s_per_1000: redis_cpu.map(per_1000),
            publishes,
        })
    }
}

/// `a` over `b` for the latency percentiles and the gateway CPU.
pub fn ratio_line(label: &str, a: &LatencyResult, b: &LatencyResult) -> String {
    let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    format!(
        "- {label}: p50 {:.1}x, p95 {:.1}x, p99 {:.1}x, gateway CPU per 1,000 deliveries {:.1}x",
        r(a.p50_ms, b.p50_ms),
        r(a.p95_ms, b.p95_ms),
        r(a.p99_ms, b.p99_ms),
        r(a.cpu_s_per_1000, b.cpu_s_per_1000)
    )
}
