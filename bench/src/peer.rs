//! `switchboard-bench peer`: Switchboard against its peer, Socket.IO 4 with
//! the Redis adapter, side by side on one Redis, driven by the same load
//! generator, runs alternated (Switchboard, Socket.IO, Switchboard, …).
//!
//! Systems: the shipped `switchboard-gateway` (release binary next to this
//! one, default limits, `RUST_LOG=warn`), and `bench/peer/socketio/server.mjs`
//! under `node` (see [`crate::sio`]). Each run starts fresh server
//! processes on the shared Redis and measures, per system:
//!
//! - **idle memory** (configurations with one server process): 50 warm-up
//!   sockets, then `--idle` more signed-in idle sockets; RSS delta / count;
//! - **sign-in**: every user signs in over HTTP (Switchboard: nonce, SIWE
//!   message signed with a fresh secp256k1 key, verify; Socket.IO: nonce,
//!   sign-in POST) and opens an authenticated socket; server CPU per user;
//! - **load**: `--users` users in direct pairs, `--rate` messages per second
//!   in all for `--seconds`, alternating direction; the recipient acks every
//!   `msg`, the sender must see a receipt covering it. Server CPU (utime +
//!   stime from /proc, all server processes), Redis CPU (`INFO cpu`) and
//!   Redis calls per command (`INFO commandstats`) over the load phase, and
//!   send → `msg` latency.
//!
//! Clients sign in from many loopback source addresses (127.1.x.y, at most
//! `--users-per-address` users each), as users on different hosts would, so
//! the gateway's default per-address limits are not hit; a `429` is honoured
//! (wait `Retry-After`, try again) and counted, never worked around.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use switchboard_proto::auth::eip191::{address_of, sign_personal};
use switchboard_proto::auth::siwe::{SignInParams, build_message};
use switchboard_proto::ids::{Address, ConvId};
use switchboard_testkit::RedisServer;
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMsg;

use crate::client::Ws;
use crate::eio;
use crate::sio::{SioProc, ensure_packages};
use crate::target::{
    CpuTimes, GatewayBin, bench_redis, default_gateway_bin, proc_cpu_times, redis_commandstats,
    redis_cpu_seconds,
};

// The `peer` subcommand's flags.
#[derive(Args)]
pub struct PeerArgs {
    /// Users in the load phase (in users/2 direct pairs).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Messages per second, all pairs together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Idle signed-in sockets for the memory figure (0: skip).
    #[arg(long, default_value_t = 5000)]
    idle: usize,
    /// Rounds; each runs every configuration for both systems.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Server processes per system, per configuration (comma list). With
    /// 2, the two users of every pair are on different processes.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    gateways: Vec<usize>,
    /// Users signing in from one source address.
    #[arg(long, default_value_t = 20)]
    users_per_address: usize,
    /// The gateway binary (default: `switchboard-gateway` next to this
    /// one). Repeat as `--gateway-bin LABEL=PATH` to run several builds
    /// side by side in one invocation (each run alternates through them).
    #[arg(long)]
    gateway_bin: Vec<String>,
    /// The Node.js binary.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// Record the Switchboard gateways' load phase with `perf record`
    /// into this directory (those runs' CPU figures include perf's cost).
    #[arg(long)]
    perf_dir: Option<PathBuf>,
    /// perf's `--call-graph` mode: `fp` (frame pointers; shallow stacks in
    /// a release build without them) or `dwarf` (full stacks, large files).
    #[arg(long, default_value = "fp", value_parser = ["fp", "dwarf"])]
    perf_call_graph: String,
    /// Only this system (default: both).
    #[arg(long, value_enum)]
    only: Option<System>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Switchboard,
    SocketIo,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Switchboard => "Switchboard",
            System::SocketIo => "Socket.IO",
        }
    }
}

/// What is shared by every run: Redis, the secret, how to start each system.
struct Ctx {
    redis: RedisServer,
    secret: [u8; 32],
    /// Switchboard builds to run: label (empty: the only one) and binary.
    gateway_bins: Vec<(String, PathBuf)>,
    node: PathBuf,
    modules: PathBuf,
    users_per_address: usize,
    /// `429`s waited out.
    paced: AtomicU64,
}

/// One system's server processes for one run.
enum Servers {
    Switchboard(Vec<GatewayBin>),
    SocketIo(Vec<SioProc>),
}

impl Servers {
    async fn start(ctx: &Ctx, system: System, variant: usize, n: usize) -> Result<Servers> {
        let url = ctx.redis.url();
        Ok(match system {
            System::Switchboard => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let bin = &ctx.gateway_bins[variant.min(ctx.gateway_bins.len() - 1)].1;
                    v.push(GatewayBin::spawn(bin, Some(&url), &ctx.secret, "").await?);
                }
                Servers::Switchboard(v)
            }
            System::SocketIo => {
                let hex = hex::encode(ctx.secret);
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(SioProc::spawn(&ctx.node, &ctx.modules, &url, &hex).await?);
                }
                Servers::SocketIo(v)
            }
        })
    }

    fn system(&self) -> System {
        match self {
            Servers::Switchboard(_) => System::Switchboard,
            Servers::SocketIo(_) => System::SocketIo,
        }
    }

    fn len(&self) -> usize {
        match self {
            Servers::Switchboard(v) => v.len(),
            Servers::SocketIo(v) => v.len(),
        }
    }

    fn addr(&self, i: usize) -> &str {
        match self {
            Servers::Switchboard(v) => &v[i % v.len()].addr,
            Servers::SocketIo(v) => &v[i % v.len()].addr,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Servers::Switchboard(v) => v.iter().map(GatewayBin::pid).collect(),
            Servers::SocketIo(v) => v.iter().map(SioProc::pid).collect(),
        }
    }

    fn cpu_seconds(&self) -> Result<f64> {
        let t = self.cpu_times()?;
        Ok(t.user + t.system)
    }

    /// User and kernel CPU seconds, summed over the server processes.
    fn cpu_times(&self) -> Result<CpuTimes> {
        self.pids().into_iter().map(proc_cpu_times).sum()
    }

    fn rss_kib(&self, i: usize) -> Result<u64> {
        match self {
            Servers::Switchboard(v) => v[i].rss_kib(),
            Servers::SocketIo(v) => v[i].rss_kib(),
        }
    }
}

/// Hands out source addresses: each serves at most `per` users per server
/// lifetime, so no address comes near the per-address limits.
struct Sources {
    next: usize,
    per: usize,
    clients: HashMap<usize, reqwest::Client>,
}

impl Sources {
    fn new(per: usize) -> Sources {
        Sources {
            next: 0,
            per: per.max(1),
            clients: HashMap::new(),
        }
    }

    fn next(&mut self) -> Result<(IpAddr, reqwest::Client)> {
        let i = self.next / self.per;
        self.next += 1;
        if i >= 250 * 250 {
            bail!("out of loopback source addresses");
        }
        let ip = IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8));
        let client = match self.clients.get(&i) {
            Some(c) => c.clone(),
            None => {
                // No idle keep-alive connections: they would stay open on the
                // server and count in its RSS per idle socket.
                let c = reqwest::Client::builder()
                    .local_address(ip)
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(30))
                    .build()?;
                self.clients.insert(i, c.clone());
                c
            }
        };
        Ok((ip, client))
    }
}

/// Send `req`, waiting out `429`s (counted in `paced`); the JSON answer.
async fn call_paced(req: reqwest::RequestBuilder, paced: &AtomicU64) -> Result<Value> {
    loop {
        let r = req.try_clone().context("request cannot be retried")?;
        let resp = r.send().await?;
        let status = resp.status();
        if status.as_u16() == 429 {
            paced.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry_after(resp.headers())).await;
            continue;
        }
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{status}: {}", text.chars().take(300).collect::<String>());
        }
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "answer is not JSON: {}",
                text.chars().take(300).collect::<String>()
            )
        });
    }
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Duration {
    let secs = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 30))
}

/// Sign in one fresh user on `servers` process `i` from a fresh source
/// address and open its authenticated socket.
async fn sign_in_and_connect(
    ctx: &Ctx,
    servers: &Servers,
    i: usize,
    from: IpAddr,
    http: reqwest::Client,
) -> Result<(Address, Ws)> {
    let addr = servers.addr(i);
    let base = format!("http://{addr}");
    match servers.system() {
        System::Switchboard => {
            let key = SigningKey::from_slice(&rand::random::<[u8; 32]>())
                .context("random signing key")?;
            let user = address_of(key.verifying_key());
            let nonce = call_paced(http.get(format!("{base}/v1/auth/nonce")), &ctx.paced).await?;
            let nonce = nonce["nonce"]
                .as_str()
                .context("nonce answer without nonce")?;
            let now = time::OffsetDateTime::now_utc();
            let message = build_message(&SignInParams {
                domain: "localhost".into(),
                address: user,
                statement: Some("Sign in to Switchboard".into()),
                uri: "http://localhost".into(),
                chain_id: 1,
                nonce: nonce.to_owned(),
                issued_at: now,
                expiration_time: Some(now + time::Duration::minutes(10)),
            });
            let signature = sign_personal(&key, message.as_bytes());
            let session = call_paced(
                http.post(format!("{base}/v1/auth/verify"))
                    .json(&json!({"message": message, "signature": signature})),
                &ctx.paced,
            )
            .await?;
            let token = session["token"]
                .as_str()
                .context("verify answer without token")?;
            loop {
                match open_from(addr, from, token).await {
                    Err(Upgrade::Refused(wait)) => {
                        ctx.paced.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(wait).await;
                    }
                    Err(Upgrade::Failed(e)) => return Err(e),
                    Ok(ws) => return Ok((user, ws)),
                }
            }
        }
        System::SocketIo => {
            let user = Address(rand::random());
            let nonce = call_paced(http.get(format!("{base}/nonce")), &ctx.paced).await?;
            let nonce = nonce["nonce"]
                .as_str()
                .context("nonce answer without nonce")?;
            let session = call_paced(
                http.post(format!("{base}/signin"))
                    .json(&json!({"address": user.lower(), "nonce": nonce})),
                &ctx.paced,
            )
            .await?;
            let token = session["token"]
                .as_str()
                .context("sign-in answer without token")?;
            Ok((user, eio::connect(addr, from, token).await?))
        }
    }
}

enum Upgrade {
    /// `429`: wait this long.
    Refused(Duration),
    Failed(anyhow::Error),
}

/// A Switchboard WebSocket from source address `from`, authenticated (its
/// `ready` received).
async fn open_from(addr: &str, from: IpAddr, token: &str) -> Result<Ws, Upgrade> {
    let fail = |e: anyhow::Error| Upgrade::Failed(e);
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| fail(anyhow::anyhow!("bad address {addr}")))?;
    let socket = TcpSocket::new_v4().map_err(|e| fail(e.into()))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| fail(e.into()))?;
    let stream = socket.connect(target).await.map_err(|e| fail(e.into()))?;
    let (mut ws, _) = match tokio_tungstenite::client_async(
        format!("ws://{addr}/v1/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status().as_u16() == 429 => {
            let secs = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            return Err(Upgrade::Refused(Duration::from_secs(secs.clamp(1, 30))));
        }
        Err(e) => return Err(fail(e.into())),
    };
    ws.send(WsMsg::text(
        json!({"type":"auth","token":token}).to_string(),
    ))
    .await
    .map_err(|e| fail(e.into()))?;
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) if t.contains("\"ready\"") => return Ok(ws),
            Some(Ok(WsMsg::Text(t))) if t.contains("\"error\"") => {
                return Err(fail(anyhow::anyhow!("auth refused: {t}")));
            }
            Some(Ok(_)) => continue,
            other => return Err(fail(anyhow::anyhow!("no ready frame: {other:?}"))),
        }
    }
}

/// What the load's sockets observed.
struct Stats {
    start: Instant,
    samples: Mutex<Vec<u64>>,
    delivered: AtomicU64,
    /// `sent` answers to the senders.
    sent_acks: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Per (conversation, recipient): the highest seq delivered to it, and
    /// the highest delivered watermark its peer has seen in receipts.
    marks: Mutex<HashMap<(String, String), (u64, u64)>>,
}

impl Stats {
    fn new(start: Instant) -> Stats {
        Stats {
            start,
            samples: Mutex::new(Vec::new()),
            delivered: AtomicU64::new(0),
            sent_acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            marks: Mutex::new(HashMap::new()),
        }
    }

    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    }

    fn msg(&self, me: &str, conv: &str, seq: u64, t0: Option<u64>) {
        let now = self.start.elapsed().as_micros() as u64;
        if let Some(t0) = t0 {
            self.samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now.saturating_sub(t0));
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry((conv.to_owned(), me.to_owned())).or_default();
        e.0 = e.0.max(seq);
    }

    fn receipt(&self, conv: &str, user: &str, delivered: u64) {
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry((conv.to_owned(), user.to_ascii_lowercase()))
            .or_default();
        e.1 = e.1.max(delivered);
    }

    /// Every delivered message is covered by a receipt its sender saw.
    fn receipts_complete(&self) -> bool {
        let m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        m.values().all(|(d, r)| r >= d)
    }
}

/// A connected user: its outgoing frames, and the tasks writing and reading
/// its socket (aborted, closing the socket, when dropped).
struct Sock {
    tx: mpsc::UnboundedSender<String>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Sock {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Run `ws` of user `me`: write what `Sock::tx` gets; read every frame,
/// answer Engine.IO pings, ack every `msg` and note it and receipts in
/// `stats`.
fn run_socket(system: System, me: Address, ws: Ws, stats: Arc<Stats>) -> Sock {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            if sink.send(WsMsg::text(s)).await.is_err() {
                break;
            }
        }
    });
    let out = tx.clone();
    let me = me.lower();
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let text = match m {
                Ok(WsMsg::Text(t)) => t,
                Ok(_) => continue,
                Err(e) => {
                    stats.error(format!("socket of {me}: {e}"));
                    break;
                }
            };
            let (kind, v) = match system {
                System::Switchboard => match serde_json::from_str::<Value>(&text) {
                    Ok(v) => (v["type"].as_str().unwrap_or("").to_owned(), v),
                    Err(e) => {
                        stats.error(format!("frame is not JSON ({e}): {text}"));
                        continue;
                    }
                },
                System::SocketIo => match eio::parse(&text) {
                    Ok(eio::Packet::Ping) => {
                        let _ = out.send(eio::PONG.to_owned());
                        continue;
                    }
                    Ok(eio::Packet::Event { name, data }) => (name, data),
                    Ok(eio::Packet::Noop | eio::Packet::Pong) => continue,
                    Ok(other) => {
                        stats.error(format!("unexpected packet {other:?}"));
                        continue;
                    }
                    Err(e) => {
                        stats.error(format!("{e:#}"));
                        continue;
                    }
                },
            };
            match kind.as_str() {
                "msg" => {
                    let (Some(conv), Some(seq)) = (v["conv"].as_str(), v["seq"].as_u64()) else {
                        stats.error(format!("msg without conv/seq: {v}"));
                        continue;
                    };
                    stats.msg(&me, conv, seq, v["body"]["t"].as_u64());
                    let ack = json!({"conv": conv, "seq": seq});
                    let frame = match system {
                        System::Switchboard => {
                            json!({"type": "ack", "conv": conv, "seq": seq}).to_string()
                        }
                        System::SocketIo => eio::event("ack", &ack),
                    };
                    let _ = out.send(frame);
                }
                "receipt" => {
                    if let (Some(conv), Some(user), Some(d)) = (
                        v["conv"].as_str(),
                        v["user"].as_str(),
                        v["delivered"].as_u64(),
                    ) {
                        stats.receipt(conv, user, d);
                    }
                }
                "sent" => {
                    stats.sent_acks.fetch_add(1, Ordering::Relaxed);
                }
                "error" | "failed" => stats.error(format!("server said: {v}")),
                _ => {}
            }
        }
    });
    Sock {
        tx,
        tasks: [writer, reader],
    }
}

/// Sign in and connect `n` users; user j goes to server process `place(j)`.
async fn connect_many(
    ctx: &Ctx,
    servers: &Servers,
    sources: &mut Sources,
    n: usize,
    place: impl Fn(usize) -> usize,
    stats: &Arc<Stats>,
) -> Result<Vec<(Address, Sock)>> {
    let mut jobs = Vec::with_capacity(n);
    for j in 0..n {
        let (ip, http) = sources.next()?;
        jobs.push((j, place(j), ip, http));
    }
    let mut pending =
        futures_util::stream::iter(jobs.into_iter().map(|(j, i, ip, http)| async move {
            sign_in_and_connect(ctx, servers, i, ip, http)
                .await
                .map(|r| (j, r))
        }))
        .buffer_unordered(32);
    let mut out: Vec<Option<(Address, Sock)>> = (0..n).map(|_| None).collect();
    while let Some(r) = pending.next().await {
        let (j, (user, ws)) = r?;
        out[j] = Some((user, run_socket(servers.system(), user, ws, stats.clone())));
    }
    out.into_iter()
        .map(|s| s.context("a user did not connect"))
        .collect()
}

/// One system's figures in one run.
struct RunResult {
    system: System,
    /// The system's name, with the Switchboard build's label if several ran.
    label: String,
    /// Which Switchboard build (index into `--gateway-bin`).
    variant: usize,
    gateways: usize,
    round: usize,
    idle: Option<Idle>,
    signin_ms_per_user: f64,
    sent: u64,
    delivered: u64,
    sent_acks: u64,
    receipts_complete: bool,
    errors: u64,
    first_error: Option<String>,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    cpu_s: f64,
    /// Of `cpu_s`, the kernel's (system time: system calls, the network
    /// stack, scheduling).
    kernel_s: f64,
    redis_cpu_s: f64,
    /// Redis calls per delivery, by command.
    calls: BTreeMap<String, f64>,
    perf: bool,
}

struct Idle {
    count: usize,
    before_kib: u64,
    after_kib: u64,
}

impl Idle {
    fn per_conn_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.count as f64
    }
}

impl RunResult {
    fn per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.delivered as f64 / self.cpu_s
        } else {
            f64::NAN
        }
    }

    /// Server CPU µs per delivery: (user space, kernel).
    fn us_per_delivery(&self) -> (f64, f64) {
        if self.delivered == 0 {
            return (f64::NAN, f64::NAN);
        }
        let per = |s: f64| s / self.delivered as f64 * 1e6;
        (per(self.cpu_s - self.kernel_s), per(self.kernel_s))
    }

    fn redis_us_per_delivery(&self) -> f64 {
        if self.delivered > 0 {
            self.redis_cpu_s / self.delivered as f64 * 1e6
        } else {
            f64::NAN
        }
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} / {} / {} / {} | {:.0} | {:.2} / {:.2} / {:.2} / {:.1} | {:.2} | {:.0} / {:.0} | {:.1} | {} | {:.2} |{}",
            self.round + 1,
            self.label,
            self.gateways,
            self.sent,
            self.sent_acks,
            self.delivered,
            if self.receipts_complete {
                "all receipted"
            } else {
                "RECEIPTS MISSING"
            },
            self.per_cpu_s(),
            self.p50,
            self.p95,
            self.p99,
            self.max,
            self.cpu_s,
            self.us_per_delivery().0,
            self.us_per_delivery().1,
            self.redis_us_per_delivery(),
            match &self.idle {
                Some(i) => format!(
                    "{:.2} KiB ({} → {} KiB, {} sockets)",
                    i.per_conn_kib(),
                    i.before_kib,
                    i.after_kib,
                    i.count
                ),
                None => "–".into(),
            },
            self.signin_ms_per_user,
            if self.perf { " (perf recording)" } else { "" },
        )
    }
}

pub async fn run(args: PeerArgs) -> Result<()> {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        bail!("--users must be an even number, at least 2");
    }
    if args.gateways.iter().any(|&n| n == 0 || n > 8) {
        bail!("--gateways takes counts from 1 to 8");
    }
    if args.idle + args.users + 100 > 15_000 {
        bail!(
            "--idle + --users must stay under ~15,000: this process holds every client socket (20,000 files at most)"
        );
    }
    let gateway_bins: Vec<(String, PathBuf)> = if args.gateway_bin.is_empty() {
        vec![(String::new(), default_gateway_bin()?)]
    } else if args.gateway_bin.len() == 1 && !args.gateway_bin[0].contains('=') {
        vec![(String::new(), PathBuf::from(&args.gateway_bin[0]))]
    } else {
        args.gateway_bin
            .iter()
            .map(|b| match b.split_once('=') {
                Some((label, path)) if !label.is_empty() && !path.is_empty() => {
                    Ok((label.to_owned(), PathBuf::from(path)))
                }
                _ => bail!("with several --gateway-bin, each is LABEL=PATH (got {b:?})"),
            })
            .collect::<Result<_>>()?
    };
    if gateway_bins.len() > 8 {
        bail!("--gateway-bin: at most 8 builds");
    }
    for (_, bin) in &gateway_bins {
        if !bin.is_file() {
            bail!("no gateway binary at {}", bin.display());
        }
    }
    let modules = ensure_packages()?;
    if let Some(d) = &args.perf_dir {
        std::fs::create_dir_all(d)?;
    }
    let ctx = Ctx {
        redis: bench_redis()?,
        secret: rand::random(),
        gateway_bins,
        node: args.node.clone(),
        modules,
        users_per_address: args.users_per_address,
        paced: AtomicU64::new(0),
    };
    let systems: Vec<System> = match args.only {
        Some(s) => vec![s],
        None => vec![System::Switchboard, System::SocketIo],
    };
    // Every Switchboard build, then the peer.
    let runs: Vec<(System, usize)> = systems
        .iter()
        .flat_map(|&s| match s {
            System::Switchboard => (0..ctx.gateway_bins.len()).map(|v| (s, v)).collect(),
            System::SocketIo => vec![(s, 0)],
        })
        .collect();
    println!(
        "peer | {} users in {} pairs, {} msg/s for {} s, every msg acked; {} idle sockets; {} rounds; server processes {:?}",
        args.users,
        args.users / 2,
        args.rate,
        args.seconds,
        args.idle,
        args.rounds,
        args.gateways
    );
    println!(
        "| round | system | processes | sent / `sent` answers / delivered / receipts | deliveries per server CPU-s | latency p50 / p95 / p99 / max ms | server CPU-s | server CPU µs per delivery: user / kernel | Redis CPU µs per delivery | RSS per idle connection | sign-in server CPU ms per user |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results = vec![];
    for round in 0..args.rounds {
        for &n in &args.gateways {
            for &(system, variant) in &runs {
                let r = one_run(&ctx, &args, system, variant, n, round)
                    .await
                    .with_context(|| {
                        format!("{} with {n} processes, round {}", system.name(), round + 1)
                    })?;
                println!("{}", r.row());
                if r.errors > 0 {
                    println!(
                        "  errors: {} (first: {})",
                        r.errors,
                        r.first_error.as_deref().unwrap_or("?")
                    );
                }
                results.push(r);
            }
        }
    }
    println!("\nRedis calls per delivery (INFO commandstats over the load phase):");
    for r in &results {
        let calls: Vec<String> = r
            .calls
            .iter()
            .filter(|(_, v)| **v >= 0.005)
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        println!(
            "- round {}, {}, {} processes: {}",
            r.round + 1,
            r.label,
            r.gateways,
            calls.join(", ")
        );
    }
    println!("\nRatios (Switchboard over Socket.IO, same round and configuration):");
    for sb in results.iter().filter(|r| r.system == System::Switchboard) {
        let Some(io) = results.iter().find(|r| {
            r.system == System::SocketIo && r.round == sb.round && r.gateways == sb.gateways
        }) else {
            continue;
        };
        let mem = match (&sb.idle, &io.idle) {
            (Some(a), Some(b)) => format!(
                "; RSS per idle connection {:.2}x less ({:.2} vs {:.2} KiB)",
                b.per_conn_kib() / a.per_conn_kib(),
                a.per_conn_kib(),
                b.per_conn_kib()
            ),
            _ => String::new(),
        };
        println!(
            "- round {}, {}, {} process(es): deliveries per server CPU-s {:.2}x ({:.0} vs {:.0}); p50 {:.2}x, p99 {:.2}x; Redis CPU per delivery {:.2}x ({:.1} vs {:.1} µs){mem}",
            sb.round + 1,
            sb.label,
            sb.gateways,
            sb.per_cpu_s() / io.per_cpu_s(),
            sb.per_cpu_s(),
            io.per_cpu_s(),
            sb.p50 / io.p50,
            sb.p99 / io.p99,
            sb.redis_us_per_delivery() / io.redis_us_per_delivery(),
            sb.redis_us_per_delivery(),
            io.redis_us_per_delivery(),
        );
    }
    if ctx.gateway_bins.len() > 1 {
        println!(
            "\nSwitchboard builds against the first ({}), same round and configuration:",
            ctx.gateway_bins[0].0
        );
        for r in results
            .iter()
            .filter(|r| r.system == System::Switchboard && r.variant > 0)
        {
            let Some(first) = results.iter().find(|f| {
                f.system == System::Switchboard
                    && f.variant == 0
                    && f.round == r.round
                    && f.gateways == r.gateways
            }) else {
                continue;
            };
            println!(
                "- round {}, {}, {} process(es): deliveries per server CPU-s {:.2}x ({:.0} vs {:.0}); p99 {:.2}x",
                r.round + 1,
                r.label,
                r.gateways,
                r.per_cpu_s() / first.per_cpu_s(),
                r.per_cpu_s(),
                first.per_cpu_s(),
                r.p99 / first.p99,
            );
        }
    }
    println!(
        "\n429s waited out during sign-in: {}",
        ctx.paced.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn one_run(
    ctx: &Ctx,
    args: &PeerArgs,
    system: System,
    variant: usize,
    n: usize,
    round: usize,
) -> Result<RunResult> {
    let servers = Servers::start(ctx, system, variant, n).await?;
    let label = match &ctx.gateway_bins[variant.min(ctx.gateway_bins.len() - 1)].0 {
        l if system == System::Switchboard && !l.is_empty() => format!("Switchboard ({l})"),
        _ => system.name().to_owned(),
    };
    let mut sources = Sources::new(ctx.users_per_address);
    let start = Instant::now();

    // Idle memory, on a single-process configuration only.
    let idle = if n == 1 && args.idle > 0 {
        let scratch = Arc::new(Stats::new(start));
        let warm = connect_many(ctx, &servers, &mut sources, 50, |_| 0, &scratch).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = servers.rss_kib(0)?;
        let held = connect_many(ctx, &servers, &mut sources, args.idle, |_| 0, &scratch).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = servers.rss_kib(0)?;
        drop(held);
        drop(warm);
        if scratch.errors.load(Ordering::Relaxed) > 0 {
            bail!(
                "idle sockets saw errors: {:?}",
                scratch
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            );
        }
        // Let the server finish closing them before the load is measured.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(Idle {
            count: args.idle,
            before_kib: before,
            after_kib: after,
        })
    } else {
        None
    };

    // Sign-in and connect: users 2i and 2i+1 form pair i; with several
    // processes, the two users of a pair are on different ones.
    let stats = Arc::new(Stats::new(start));
    let nproc = servers.len();
    let cpu_a = servers.cpu_seconds()?;
    let users = connect_many(
        ctx,
        &servers,
        &mut sources,
        args.users,
        |j| j % nproc,
        &stats,
    )
    .await?;
    let signin_ms_per_user = (servers.cpu_seconds()? - cpu_a) * 1000.0 / args.users as f64;
    let convs: Vec<String> = (0..args.users / 2)
        .map(|i| ConvId::direct(&users[2 * i].0, &users[2 * i + 1].0).map(|c| c.to_string()))
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let perf = match &args.perf_dir {
        Some(dir) if system == System::Switchboard => Some(Perf::start(
            dir.join(format!(
                "switchboard{variant}-{n}gw-round{}.data",
                round + 1
            )),
            &servers.pids(),
            &args.perf_call_graph,
        )?),
        _ => None,
    };
    if perf.is_some() {
        // perf needs a moment to attach before the load starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu0 = servers.cpu_times()?;
    let redis0 = redis_cpu_seconds(&ctx.redis)?;
    let calls0 = redis_commandstats(&ctx.redis)?;
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_ms = args.rate as f64 / 1000.0;
    let (mut sent, mut budget, mut k) = (0u64, 0.0, 0usize);
    while sent < total {
        tick.tick().await;
        budget += per_ms;
        while budget >= 1.0 && sent < total {
            budget -= 1.0;
            let pair = k % convs.len();
            let from = 2 * pair + (k / convs.len()) % 2;
            k += 1;
            let data = json!({"conv": convs[pair], "id": format!("b{sent}"), "body": {"t": start.elapsed().as_micros() as u64}});
            let frame = match system {
                System::Switchboard => {
                    let mut d = data;
                    d["type"] = json!("send");
                    d.to_string()
                }
                System::SocketIo => eio::event("send", &data),
            };
            let _ = users[from].1.tx.send(frame);
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while (stats.delivered.load(Ordering::Relaxed) < sent || !stats.receipts_complete())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = servers.cpu_times()? - cpu0;
    let redis_cpu_s = redis_cpu_seconds(&ctx.redis)? - redis0;
    let calls1 = redis_commandstats(&ctx.redis)?;
    drop(perf);
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let calls = calls1
        .iter()
        .map(|(k, v)| {
            let d = v.saturating_sub(calls0.get(k).copied().unwrap_or(0));
            (k.clone(), d as f64 / delivered.max(1) as f64)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let mut s = stats
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    s.sort_unstable();
    let pct = |p: f64| {
        s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let receipts_complete = stats.receipts_complete();
    let first_error = stats
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    drop(users);
    drop(servers);
    Ok(RunResult {
        system,
        label,
        variant,
        gateways: n,
        round,
        idle,
        signin_ms_per_user,
        sent,
        delivered,
        sent_acks: stats.sent_acks.load(Ordering::Relaxed),
        receipts_complete,
        errors: stats.errors.load(Ordering::Relaxed),
        first_error,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        max: s.last().copied().unwrap_or(0) as f64 / 1000.0,
        cpu_s: cpu.user + cpu.system,
        kernel_s: cpu.system,
        redis_cpu_s,
        calls,
        perf: args.perf_dir.is_some() && system == System::Switchboard,
    })
}

/// `perf record` with call graphs, attached to running processes until
/// dropped.
struct Perf {
    child: Child,
}

impl Perf {
    fn start(out: PathBuf, pids: &[u32], call_graph: &str) -> Result<Perf> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["record", "--call-graph", call_graph, "-F", "999"])
            .args(["-p", &pids.join(","), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run perf (Debian: apt-get install linux-perf)")?;
        Ok(Perf { child })
    }
}

impl Drop for Perf {
    /// SIGINT: perf writes its file and exits.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
