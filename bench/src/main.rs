//! `switchboard-bench`: the project's load generator.
//!
//! Each scenario starts the gateway as a separate child process (this same
//! binary, `serve`), so its RSS and CPU time are read cleanly from /proc, and
//! drives it over real WebSockets on loopback. Redis comes from testkit.
//!
//!   switchboard-bench idle --engine redis --connections 10000 [--ws-buffer 131072]
//!   switchboard-bench latency --engine redis --users 1000 --rate 2000 --seconds 10
//!   switchboard-bench latency --engine redis --gateways 2   # every pair split over two gateways
//!   switchboard-bench all        # the set recorded in docs/benchmarks.md
//!   switchboard-bench persist    # worker vs naive INSERTs, and sent→stored lag
//!   switchboard-bench drain --connections 10000 --window-seconds 10,1
//!   switchboard-bench autoscale --runs 10
//!   switchboard-bench fanout --subscribers 20000 --messages 200 --rate 20 --sse-subscribers 2000

mod autoscale;
mod drain;
mod fanout;
mod persist;
mod reconcile;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_core::broker::{BrokerConfig, DynBroker, MemoryBroker, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::{Address, ConvId};
use switchboard_testkit::RedisServer;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMsg;

#[derive(Parser)]
#[command(about = "Switchboard load generator and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Engine {
    Memory,
    Redis,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a gateway (used as the child process of the scenarios).
    Serve {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        redis_url: Option<String>,
        #[arg(long)]
        secret_hex: String,
        /// WebSocket read/write buffer per socket (default: the gateway's).
        #[arg(long)]
        ws_buffer: Option<usize>,
        /// Drain window on shutdown (default: the gateway's, 10 s).
        #[arg(long)]
        drain_seconds: Option<f64>,
    },
    /// Gateway RSS per idle authenticated connection.
    Idle {
        #[arg(long, value_enum, default_value = "redis")]
        engine: Engine,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// WebSocket buffer size for the gateway under test.
        #[arg(long)]
        ws_buffer: Option<usize>,
    },
    /// Delivery latency and gateway CPU per 1,000 deliveries.
    Latency {
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
    },
    /// The standard set for docs/benchmarks.md.
    All,
    /// Worker persistence throughput vs one INSERT per message, and lag.
    Persist {
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
    },
    /// Operator reconcile latency in the local control plane: apply → all
    /// children and status, and spec change → converged.
    Reconcile {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Graceful drain of one gateway (SIGTERM) whose clients reconnect to a
    /// second one: close-time spread, reconnect time, exit time.
    Drain {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Drain windows to run, one run each, side by side.
        #[arg(long, value_delimiter = ',', default_values_t = [10.0f64, 1.0])]
        window_seconds: Vec<f64>,
    },
    /// Autoscaler reaction time: connections cross the target → the
    /// Deployment's replicas change (local control plane, operator in process).
    Autoscale {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Connections per replica (the ChatCluster's target).
        #[arg(long, default_value_t = 100)]
        target: usize,
        /// The operator's autoscaler sync period.
        #[arg(long, default_value_t = 1000)]
        sync_ms: u64,
        /// The gateway's connection report interval.
        #[arg(long, default_value_t = 1000)]
        report_ms: u64,
    },
    /// Channel fan-out: one publisher, subscribers split over two gateways
    /// (WebSocket, then SSE): deliveries, throughput, publish → receive.
    Fanout {
        /// WebSocket subscribers (capped at the open-files limit less headroom).
        #[arg(long, default_value_t = 20_000)]
        subscribers: usize,
        /// Messages the publisher sends.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Publish rate (messages/s).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// SSE subscribers (0 skips the SSE run).
        #[arg(long, default_value_t = 2000)]
        sse_subscribers: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve {
            listen,
            redis_url,
            secret_hex,
            ws_buffer,
            drain_seconds,
        } => rt.block_on(serve(
            listen,
            redis_url,
            secret_hex,
            ws_buffer,
            drain_seconds,
        )),
        Cmd::Idle {
            engine,
            connections,
            ws_buffer,
        } => rt.block_on(async {
            let r = idle(engine, connections, ws_buffer).await?;
            println!("{}", r.row());
            Ok(())
        }),
        Cmd::Latency {
            engine,
            gateways,
            users,
            rate,
            seconds,
        } => rt.block_on(async {
            let r = latency(engine, gateways, users, rate, seconds).await?;
            println!("{}", r.row());
            Ok(())
        }),
        Cmd::All => rt.block_on(all()),
        Cmd::Persist {
            messages,
            naive_messages,
            rate,
            seconds,
            batches,
        } => rt.block_on(persist::run(
            messages,
            naive_messages,
            rate,
            seconds,
            batches,
        )),
        Cmd::Reconcile { runs } => rt.block_on(reconcile::run(runs)),
        Cmd::Drain {
            connections,
            window_seconds,
        } => rt.block_on(drain::run(connections, window_seconds)),
        Cmd::Autoscale {
            runs,
            target,
            sync_ms,
            report_ms,
        } => rt.block_on(autoscale::run(
            runs,
            target,
            Duration::from_millis(sync_ms),
            Duration::from_millis(report_ms),
        )),
        Cmd::Fanout {
            subscribers,
            messages,
            rate,
            sse_subscribers,
        } => rt.block_on(fanout::run(subscribers, messages, rate, sse_subscribers)),
    }
}

async fn serve(
    listen: String,
    redis_url: Option<String>,
    secret_hex: String,
    ws_buffer: Option<usize>,
    drain_seconds: Option<f64>,
) -> Result<()> {
    let broker: DynBroker = match redis_url {
        Some(url) => Arc::new(RedisBroker::connect(&url, BrokerConfig::default()).await?),
        None => Arc::new(MemoryBroker::default()),
    };
    let cfg = GatewayConfig {
        token_secret: decode_hex(&secret_hex)?,
        // The load generator sends far faster per socket than a person.
        send_rate: 100_000,
        send_burst: 100_000,
        frame_rate: 100_000,
        frame_burst: 100_000,
        ..GatewayConfig::default()
    };
    let cfg = match ws_buffer {
        Some(n) => GatewayConfig {
            ws_read_buffer: n,
            ws_write_buffer: n,
            ..cfg
        },
        None => cfg,
    };
    let cfg = match drain_seconds {
        Some(s) => GatewayConfig {
            drain_window: Duration::from_secs_f64(s),
            ..cfg
        },
        None => cfg,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let gw = Gateway::start(cfg, broker, listener).await?;
    // SIGINT (the scenarios' Drop) or SIGTERM (what Kubernetes sends; the
    // drain scenario): both drain.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    gw.shutdown().await;
    Ok(())
}

fn decode_hex(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16).context("bad hex"))
        .collect()
}

/// One gateway child process.
struct GatewayProc {
    child: Child,
    addr: String,
}

impl GatewayProc {
    async fn spawn(
        secret_hex: &str,
        redis_url: Option<&str>,
        ws_buffer: Option<usize>,
    ) -> Result<GatewayProc> {
        GatewayProc::spawn_with(secret_hex, redis_url, ws_buffer, &[]).await
    }

    /// As [`GatewayProc::spawn`], with extra `serve` arguments.
    async fn spawn_with(
        secret_hex: &str,
        redis_url: Option<&str>,
        ws_buffer: Option<usize>,
        extra: &[String],
    ) -> Result<GatewayProc> {
        let port = switchboard_testkit::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match std::env::var("SB_BENCH_WRAP") {
            // e.g. SB_BENCH_WRAP="valgrind --tool=massif" to profile the gateway.
            Ok(wrap) if !wrap.is_empty() => {
                let mut parts = wrap.split_whitespace();
                let mut c = Command::new(parts.next().unwrap_or("env"));
                c.args(parts).arg(std::env::current_exe()?);
                c
            }
            _ => Command::new(std::env::current_exe()?),
        };
        cmd.args(["serve", "--listen", &addr, "--secret-hex", secret_hex]);
        if let Some(url) = redis_url {
            cmd.args(["--redis-url", url]);
        }
        if let Some(b) = ws_buffer {
            cmd.args(["--ws-buffer", &b.to_string()]);
        }
        cmd.args(extra);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
        // From here on, Drop stops the child even if it never comes up.
        let g = GatewayProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&g.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("gateway did not start on {}", g.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(g)
    }

    /// SIGINT: the gateway drains and exits (and a profiler wrapper gets to
    /// write its report).
    fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM, as Kubernetes sends it: the gateway drains and exits.
    fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    fn proc_file(&self, name: &str) -> Result<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{name}",
            self.child.id()
        ))?)
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let status = self.proc_file("status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.proc_file("stat")?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 (1-based), in clock ticks (100 Hz on Linux).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(ticks as f64 / 100.0)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        // SIGINT first (again, if `Target` already sent it: harmless); SIGKILL
        // if it lingers.
        self.interrupt();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The system under test: one or more gateway child processes sharing one
/// token secret (so one token works on each) and, for the Redis engine, one
/// Redis. Fields drop in order: the gateways stop before their Redis does.
struct Target {
    gateways: Vec<GatewayProc>,
    signer: TokenSigner,
    redis: Option<RedisServer>,
}

impl Target {
    async fn start(engine: Engine, ws_buffer: Option<usize>) -> Result<Target> {
        Target::start_many(engine, 1, ws_buffer).await
    }

    async fn start_many(engine: Engine, n: usize, ws_buffer: Option<usize>) -> Result<Target> {
        if n == 0 {
            bail!("at least one gateway");
        }
        if engine == Engine::Memory && n > 1 {
            // The memory broker lives inside one process: separate gateway
            // processes could not reach each other's users.
            bail!("the memory engine runs one gateway; use --engine redis for several");
        }
        let redis = match engine {
            Engine::Redis => Some(bench_redis()?),
            Engine::Memory => None,
        };
        let secret: [u8; 32] = rand::random();
        let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let url = redis.as_ref().map(RedisServer::url);
        let mut t = Target {
            gateways: Vec::with_capacity(n),
            signer: TokenSigner::new(&secret),
            redis,
        };
        for _ in 0..n {
            let g = GatewayProc::spawn(&secret_hex, url.as_deref(), ws_buffer).await?;
            t.gateways.push(g);
        }
        Ok(t)
    }

    /// The address of gateway `i` (wrapping around).
    fn addr(&self, i: usize) -> &str {
        &self.gateways[i % self.gateways.len()].addr
    }

    fn token(&self, user: &Address) -> String {
        token(&self.signer, user)
    }

    /// Resident set size in KiB, summed over the gateways.
    fn rss_kib(&self) -> Result<u64> {
        self.gateways.iter().map(GatewayProc::rss_kib).sum()
    }

    /// User + system CPU seconds so far, summed over the gateways.
    fn cpu_seconds(&self) -> Result<f64> {
        self.gateways.iter().map(GatewayProc::cpu_seconds).sum()
    }

    /// User + system CPU seconds of Redis so far (`INFO cpu`), if any.
    fn redis_cpu_seconds(&self) -> Result<Option<f64>> {
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        let info = r.command(&["INFO", "cpu"])?;
        let field = |name: &str| -> Result<f64> {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("INFO cpu: no {name}"))
        };
        Ok(Some(field("used_cpu_user")? + field("used_cpu_sys")?))
    }

    /// `PUBLISH` calls Redis has served so far (`INFO commandstats`), if any:
    /// shows whether deliveries crossed pub/sub or took the local short cut.
    fn redis_publishes(&self) -> Result<Option<u64>> {
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        let info = r.command(&["INFO", "commandstats"])?;
        // `cmdstat_publish:calls=123,usec=...`; absent until the first call.
        Ok(Some(
            info.lines()
                .find_map(|l| l.trim().strip_prefix("cmdstat_publish:calls="))
                .and_then(|v| v.split(',').next()?.parse().ok())
                .unwrap_or(0),
        ))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Let every gateway start draining at once; each one's Drop then
        // waits for it (SIGKILL after 20 s).
        for g in &self.gateways {
            g.interrupt();
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(addr: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")).await?;
    ws.send(WsMsg::text(
        json!({"type":"auth","token":token}).to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) if t.contains("\"ready\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            other => bail!("no ready frame: {other:?}"),
        }
    }
}

struct IdleResult {
    engine: Engine,
    ws_buffer: Option<usize>,
    connections: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

impl IdleResult {
    fn per_conn_kib(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib)) as f64 / self.connections as f64
    }
    fn row(&self) -> String {
        format!(
            "| idle memory | {:?}, {} | {} connections | RSS {} → {} KiB | **{:.2} KiB per connection** | |",
            self.engine,
            match self.ws_buffer {
                Some(b) => format!("{b} B WebSocket buffers"),
                None => "default config".into(),
            },
            self.connections,
            self.rss_before_kib,
            self.rss_after_kib,
            self.per_conn_kib()
        )
    }
}

async fn idle(engine: Engine, connections: usize, ws_buffer: Option<usize>) -> Result<IdleResult> {
    let t = Target::start(engine, ws_buffer).await?;
    // Warm up allocator arenas and lazily initialised state with a few
    // connections, so the baseline is a running gateway, not a cold one.
    let mut warm = vec![];
    for _ in 0..50 {
        warm.push(open(t.addr(0), &t.token(&Address(rand::random()))).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = t.rss_kib()?;
    let mut held = Vec::with_capacity(connections);
    let mut pending = futures_util::stream::iter((0..connections).map(|_| {
        let token = t.token(&Address(rand::random()));
        let addr = t.addr(0).to_owned();
        async move { open(&addr, &token).await }
    }))
    .buffer_unordered(64);
    while let Some(ws) = pending.next().await {
        held.push(ws?);
    }
    drop(pending);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = t.rss_kib()?;
    drop(held);
    drop(warm);
    Ok(IdleResult {
        engine,
        ws_buffer,
        connections,
        rss_before_kib: before,
        rss_after_kib: after,
    })
}

struct LatencyResult {
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
    fn row(&self) -> String {
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
async fn latency(
    engine: Engine,
    gateways: usize,
    users: usize,
    rate: u64,
    seconds: u64,
) -> Result<LatencyResult> {
    if users < 2 {
        bail!("latency needs at least 2 users (one conversation)");
    }
    let t = Target::start_many(engine, gateways, None).await?;
    let start = Instant::now();
    let addrs: Vec<Address> = (0..users).map(|_| Address(rand::random())).collect();
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (rate * seconds) as usize,
    )));
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
                if v["type"] == "msg" {
                    let now = start.elapsed().as_micros() as u64;
                    if let Some(t0) = v["body"]["t"].as_u64() {
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now.saturating_sub(t0));
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let ack = json!({"type":"ack","conv":v["conv"],"seq":v["seq"]}).to_string();
                    let _ = ack_tx.send(ack);
                }
            }
        });
    }
    let convs: Vec<ConvId> = (0..users / 2)
        .map(|i| ConvId::direct(&addrs[2 * i], &addrs[2 * i + 1]))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = t.cpu_seconds()?;
    let redis_cpu0 = t.redis_cpu_seconds()?;
    let publishes0 = t.redis_publishes()?;
    let total = rate * seconds;
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
            let body = json!({"t": start.elapsed().as_micros() as u64});
            let frame =
                json!({"type":"send","conv":convs[pair],"id":format!("b{sent}"),"body":body});
            let _ = senders[from].send(frame.to_string());
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = t.cpu_seconds()? - cpu0;
    let redis_cpu = match (t.redis_cpu_seconds()?, redis_cpu0) {
        (Some(b), Some(a)) => Some(b - a),
        _ => None,
    };
    let publishes = match (t.redis_publishes()?, publishes0) {
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
        users,
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

async fn all() -> Result<()> {
    println!("| scenario | engine | load | raw | result | extra |\n|---|---|---|---|---|---|");
    // 19,000 is the most one process can hold here: the sandbox caps open
    // files at 20,000 per process (hard limit), for the gateway and the
    // load generator alike.
    let mut idle_runs = vec![];
    for (engine, n, buf) in [
        (Engine::Redis, 10_000, None),
        (Engine::Redis, 19_000, None),
        (Engine::Memory, 10_000, None),
        // Side by side: tungstenite's default buffers (128 KiB read buffer).
        (Engine::Redis, 10_000, Some(128 * 1024)),
    ] {
        let r = idle(engine, n, buf).await?;
        println!("{}", r.row());
        idle_runs.push(r);
    }
    // Single-gateway memory, single-gateway Redis (local short cut), and two
    // gateways on one Redis (every delivery over pub/sub).
    let mut lat = vec![];
    for (engine, gateways) in [(Engine::Memory, 1), (Engine::Redis, 1), (Engine::Redis, 2)] {
        let r = latency(engine, gateways, 1000, 2000, 10).await?;
        println!("{}", r.row());
        lat.push(r);
    }
    println!();
    if let [small, .., big] = idle_runs.as_slice() {
        println!(
            "- idle memory, 128 KiB buffers / default: {:.1}x ({:.2} / {:.2} KiB per connection)",
            big.per_conn_kib() / small.per_conn_kib(),
            big.per_conn_kib(),
            small.per_conn_kib()
        );
    }
    if let [mem, redis1, redis2] = lat.as_slice() {
        println!("{}", ratio_line("Redis 1 gateway / memory", redis1, mem));
        println!(
            "{}",
            ratio_line("Redis 2 gateways / Redis 1 gateway", redis2, redis1)
        );
    }
    Ok(())
}

/// `a` over `b` for the latency percentiles and the gateway CPU.
fn ratio_line(label: &str, a: &LatencyResult, b: &LatencyResult) -> String {
    let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
    format!(
        "- {label}: p50 {:.1}x, p95 {:.1}x, p99 {:.1}x, gateway CPU per 1,000 deliveries {:.1}x",
        r(a.p50_ms, b.p50_ms),
        r(a.p95_ms, b.p95_ms),
        r(a.p99_ms, b.p99_ms),
        r(a.cpu_s_per_1000, b.cpu_s_per_1000)
    )
}

/// An hour-long session token for `user`, as `/v1/auth/verify` would issue.
pub(crate) fn token(signer: &TokenSigner, user: &Address) -> String {
    signer
        .issue(
            user,
            Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .0
}

/// Tokens of `n` fresh random users.
pub(crate) fn random_tokens(signer: &TokenSigner, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| token(signer, &Address(rand::random())))
        .collect()
}

/// A redis-server for benchmarks of the gateway: no AOF (fsync-always would
/// measure the disk).
pub(crate) fn bench_redis() -> Result<RedisServer, switchboard_testkit::TestkitError> {
    RedisServer::start_with(switchboard_testkit::RedisServerOptions {
        persistence: false,
        ..Default::default()
    })
}
