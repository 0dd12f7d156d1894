//! `switchboard-bench flood`: one client floods one gateway — sign-in
//! nonces, verifies, REST, connections and frames — while well-behaved
//! sockets on the same gateway measure `ping` → `pong` round trips. The
//! gateway is the shipped `switchboard-gateway` binary (release build, next
//! to this one) with its default limits; the flooder sends from 127.0.0.2,
//! the well-behaved clients from 127.0.0.1, so the per-address limits tell
//! them apart as they would two hosts.
//!
//! Phases: `--seconds` of baseline (only the well-behaved sockets), then
//! `--seconds` of flood with the same sockets still measuring. Printed: the
//! round-trip percentiles of each phase, what the flood got answered (by
//! kind: admitted, refused with 429 or a close, failed), the gateway's CPU
//! per phase and its refusal counters.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::client::{Ws, open, token};
use crate::target::{Engine, GatewayBin, bench_redis, default_gateway_bin};

/// The flooder's source address (Linux routes all of 127/8 to loopback).
const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// The `flood` subcommand's flags.
#[derive(Args)]
pub struct FloodArgs {
    #[arg(long, value_enum, default_value = "redis")]
    engine: Engine,
    /// Well-behaved sockets (one user each), measuring ping round trips.
    #[arg(long, default_value_t = 50)]
    sockets: usize,
    /// Pings per second per well-behaved socket.
    #[arg(long, default_value_t = 10)]
    ping_rate: u64,
    /// Length of each phase (baseline, then flood).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent flood loops per kind (nonce, verify, REST, connections, frames).
    #[arg(long, default_value_t = 4)]
    flood_tasks: usize,
    /// The gateway binary (default: `switchboard-gateway` next to this one).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Extra `switchboard-gateway` flags (e.g. `--rest-rate=0` to compare
    /// without limits), space separated.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    gateway_flags: String,
}

/// Round-trip samples (µs), by phase.
#[derive(Default)]
struct Samples {
    baseline: Vec<u64>,
    flood: Vec<u64>,
    /// Pings without a pong before the socket ended (should stay 0).
    lost: u64,
}

/// What the flood was answered, per kind.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn line(&self, kind: &str) -> String {
        format!(
            "{kind}: {} admitted, {} refused, {} failed",
            self.admitted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
    fn status(&self, status: u16) {
        match status {
            429 => &self.refused,
            200..=499 => &self.admitted,
            _ => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Tallies {
    nonce: Tally,
    verify: Tally,
    rest: Tally,
    conns: Tally,
    frames: Tally,
}

pub async fn run(args: FloodArgs) -> Result<()> {
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => default_gateway_bin()?,
    };
    let redis = match args.engine {
        Engine::Redis => Some(bench_redis()?),
        Engine::Memory => None,
    };
    let secret: [u8; 32] = rand::random();
    let signer = TokenSigner::new(&secret);
    let url = redis.as_ref().map(|r| r.url());
    let gw = GatewayBin::spawn(&bin, url.as_deref(), &secret, &args.gateway_flags).await?;
    let addr = gw.addr.clone();

    // Well-behaved sockets: one user each, pinging at a steady pace.
    let flooding = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut pingers = vec![];
    for _ in 0..args.sockets {
        let ws = open(&addr, &token(&signer, &Address(rand::random()))).await?;
        pingers.push(tokio::spawn(ping_loop(
            ws,
            Duration::from_micros(1_000_000 / args.ping_rate.max(1)),
            flooding.clone(),
            stop.clone(),
            samples.clone(),
        )));
    }
    let cpu0 = gw.cpu_seconds()?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu1 = gw.cpu_seconds()?;

    // The flood, on its own runtime (one thread) so its tasks do not queue
    // in front of the well-behaved sockets' in this process's scheduler.
    flooding.store(true, Ordering::Relaxed);
    let tallies = Arc::new(Tallies::default());
    let flood = {
        let (addr, tallies, stop) = (addr.clone(), tallies.clone(), stop.clone());
        let signer = signer.clone();
        let tasks = args.flood_tasks.max(1);
        std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(flood_all(addr, signer, tasks, tallies, stop))
        })
    };
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu2 = gw.cpu_seconds()?;
    stop.store(true, Ordering::Relaxed);
    for p in pingers {
        let _ = p.await;
    }
    if let Ok(Err(e)) = flood.join() {
        eprintln!("flooder: {e:#}");
    }
    let metrics = metrics_text(&gw.metrics_addr).await.unwrap_or_default();

    let s = samples.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "flood | {:?} | {} well-behaved sockets x {} pings/s, {} s per phase, {} flood loops per kind, gateway flags [{}]",
        args.engine,
        args.sockets,
        args.ping_rate,
        args.seconds,
        args.flood_tasks,
        args.gateway_flags
    );
    println!(
        "- baseline: {} (gateway CPU {:.2} s)",
        percentiles(&s.baseline),
        cpu1 - cpu0
    );
    println!(
        "- flood:    {} (gateway CPU {:.2} s)",
        percentiles(&s.flood),
        cpu2 - cpu1
    );
    println!("- pings never answered: {}", s.lost);
    for (kind, t) in [
        ("nonce", &tallies.nonce),
        ("verify", &tallies.verify),
        ("REST", &tallies.rest),
        ("connections", &tallies.conns),
    ] {
        println!("- {}", t.line(kind));
    }
    println!(
        "- frames: {} sent, {} answered rate_limited, {} socket opens failed",
        tallies.frames.admitted.load(Ordering::Relaxed),
        tallies.frames.refused.load(Ordering::Relaxed),
        tallies.frames.failed.load(Ordering::Relaxed)
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("switchboard_gateway_refusals_total")
            || l.starts_with("switchboard_gateway_signature_recoveries_total")
            || l.starts_with("switchboard_gateway_errors_total")
    }) {
        println!("- {line}");
    }
    Ok(())
}

fn percentiles(s: &[u64]) -> String {
    let mut s = s.to_vec();
    s.sort_unstable();
    let pct = |p: f64| {
        s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    format!(
        "{} round trips, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.1} ms",
        s.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        s.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

/// Ping every `every`; each pong's round trip goes to the phase it started in.
async fn ping_loop(
    ws: Ws,
    every: Duration,
    flooding: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
) {
    let (mut sink, mut stream) = ws.split();
    // Stagger the sockets over one interval.
    tokio::time::sleep(every.mul_f64(rand::random::<f64>())).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let phase_flood = flooding.load(Ordering::Relaxed);
        let t0 = Instant::now();
        if sink.send(WsMsg::text(r#"{"type":"ping"}"#)).await.is_err() {
            samples.lock().unwrap_or_else(|p| p.into_inner()).lost += 1;
            return;
        }
        let pong = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = stream.next().await {
                if let WsMsg::Text(t) = m
                    && t.contains("\"pong\"")
                {
                    return true;
                }
            }
            false
        })
        .await;
        let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
        match pong {
            Ok(true) => {
                let us = t0.elapsed().as_micros() as u64;
                if phase_flood {
                    s.flood.push(us);
                } else {
                    s.baseline.push(us);
                }
            }
            _ => {
                s.lost += 1;
                return;
            }
        }
    }
    let _ = sink.close().await;
}

async fn metrics_text(addr: &str) -> Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// Every kind of flood from [`FLOODER`] until `stop`.
async fn flood_all(
    addr: String,
    signer: TokenSigner,
    tasks: usize,
    tallies: Arc<Tallies>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .local_address(FLOODER)
        .pool_max_idle_per_host(tasks * 4)
        .build()?;
    let base = format!("http://{addr}");
    // A real nonce, signed by a key that is not the claimed address: every
    // verify the gateway admits costs it a signature recovery.
    let nonce: Value = http
        .get(format!("{base}/v1/auth/nonce"))
        .send()
        .await?
        .json()
        .await?;
    let nonce = nonce["nonce"].as_str().unwrap_or("abcdefgh").to_owned();
    let message = sign_in_message(&nonce);
    let signature = format!("0x{}", "11".repeat(65));
    let flood_user = Address(rand::random());
    let bearer = format!("Bearer {}", token(&signer, &flood_user));
    let mut loops = vec![];
    for _ in 0..tasks {
        let nonce_req = http.get(format!("{base}/v1/auth/nonce"));
        loops.push(tokio::spawn(http_loop(
            nonce_req,
            Kind::Nonce,
            tallies.clone(),
            stop.clone(),
        )));
        let verify_req = http
            .post(format!("{base}/v1/auth/verify"))
            .json(&json!({"message": message, "signature": signature}));
        loops.push(tokio::spawn(http_loop(
            verify_req,
            Kind::Verify,
            tallies.clone(),
            stop.clone(),
        )));
        let rest_req = http
            .get(format!("{base}/v1/conversations"))
            .header("authorization", &bearer);
        loops.push(tokio::spawn(http_loop(
            rest_req,
            Kind::Rest,
            tallies.clone(),
            stop.clone(),
        )));
        let (a, t, s) = (addr.clone(), tallies.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            // After the frame flooders' sockets are in.
            tokio::time::sleep(Duration::from_millis(200)).await;
            conn_flood(a, t, s).await
        }));
        let (a, t, s) = (addr.clone(), tallies.clone(), stop.clone());
        let tok = token(&signer, &Address(rand::random()));
        loops.push(tokio::spawn(frame_flood(a, tok, t, s)));
    }
    for l in loops {
        let _ = l.await;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Nonce,
    Verify,
    Rest,
}

/// Send `req` again and again until `stop`, tallying the answers.
async fn http_loop(
    req: reqwest::RequestBuilder,
    kind: Kind,
    t: Arc<Tallies>,
    stop: Arc<AtomicBool>,
) {
    let tally = match kind {
        Kind::Nonce => &t.nonce,
        Kind::Verify => &t.verify,
        Kind::Rest => &t.rest,
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = req.try_clone() else { return };
        match r.send().await {
            Ok(resp) => tally.status(resp.status().as_u16()),
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn sign_in_message(nonce: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    format!(
        "localhost wants you to sign in with your Ethereum account:\n{}\n\nflood\n\nURI: http://localhost/\nVersion: 1\nChain ID: 1\nNonce: {nonce}\nIssued At: {}\nExpiration Time: {}",
        Address(rand::random()),
        fmt(now),
        fmt(now + time::Duration::minutes(10))
    )
}

/// A WebSocket from [`FLOODER`]; `Err(Some(status))` when refused over HTTP.
async fn flood_socket(addr: &str, token: Option<&str>) -> Result<Ws, Option<u16>> {
    let target: SocketAddr = addr.parse().map_err(|_| None)?;
    let socket = TcpSocket::new_v4().map_err(|_| None)?;
    socket.bind(SocketAddr::new(FLOODER, 0)).map_err(|_| None)?;
    let stream = socket.connect(target).await.map_err(|_| None)?;
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|_| None)?;
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.headers_mut().insert("authorization", v);
    }
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(Some(r.status().as_u16())),
        Err(_) => Err(None),
    }
}

/// Open sockets that never authenticate, and hold them, as fast as the
/// gateway lets us; back off 10 ms after a refusal.
async fn conn_flood(addr: String, t: Arc<Tallies>, stop: Arc<AtomicBool>) {
    let mut held = vec![];
    while !stop.load(Ordering::Relaxed) {
        match flood_socket(&addr, None).await {
            Ok(ws) => {
                t.conns.admitted.fetch_add(1, Ordering::Relaxed);
                held.push(ws);
            }
            Err(Some(status)) => {
                t.conns.status(status);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(None) => {
                t.conns.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One authenticated socket sending `sync` frames (for a conversation it
/// is not in) as fast as it can, reading what comes back; reconnects when
/// closed. Past the per-socket frame limit each is answered `rate_limited`.
async fn frame_flood(addr: String, token: String, t: Arc<Tallies>, stop: Arc<AtomicBool>) {
    let conv = format!(
        "dm:{}:{}",
        Address([1; 20]).lower(),
        Address([2; 20]).lower()
    );
    let frame = json!({"type": "sync", "conv": conv, "after": 0}).to_string();
    while !stop.load(Ordering::Relaxed) {
        let ws = match flood_socket(&addr, Some(&token)).await {
            Ok(ws) => ws,
            Err(_) => {
                t.frames.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (mut sink, mut stream) = ws.split();
        let reader = {
            let t = t.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = stream.next().await {
                    if let WsMsg::Text(text) = m
                        && text.contains("rate_limited")
                    {
                        t.frames.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        while !stop.load(Ordering::Relaxed) {
            if sink.send(WsMsg::text(frame.clone())).await.is_err() {
                break;
            }
            t.frames.admitted.fetch_add(1, Ordering::Relaxed);
        }
        reader.abort();
    }
}
