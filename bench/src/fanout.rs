//! Channel fan-out: one publisher, many subscribers on two gateways.
//!
//! Redis (testkit) and two gateway child processes, A and B, on it. A public
//! channel is created over REST on A (its creator is the publisher). S
//! subscribers, each a distinct signed-in user, are split evenly over A and
//! B (subscriber i on A if i is even, else on B) and each subscribes to the
//! channel; then one publisher WebSocket on A sends M messages at a fixed
//! rate. Every message's body carries its index `n` and `t`, the send instant
//! in microseconds since the bench's start `Instant` (the bench process both
//! sends and receives, so one clock serves both ends).
//!
//! Each subscriber's task records, per message, receive instant − `t`
//! (publish → receive, including the publisher's own socket, the gateway's
//! append, Redis pub/sub to B, and the subscriber's socket), and which `n`s
//! it saw, so missing messages and duplicates are counted exactly. Reported
//! separately for subscribers on A (local fan-out) and on B (over Redis
//! pub/sub): deliveries expected (S × M) vs received, missing, duplicates,
//! deliveries per second over first send → last receive, and the latency
//! percentiles.
//!
//! Two runs on the same gateways, each with its own channel: WebSocket
//! subscribers (`subscribe` → `subscribed`, then `msg` frames), and Server-
//! Sent Events subscribers (`GET /v1/channels/<name>/events?access_token=`,
//! one plain HTTP/1.1 connection each, read until `synced`, then the `data:`
//! of each `message` event).
//!
//! The bench process holds every client socket: the subscriber count is
//! capped at the open-files limit minus some headroom (the sandbox's hard
//! limit is 20,000 per process), and the output says so when it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use switchboard_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_util::sync::CancellationToken;

use crate::client::{Ws, open};
use crate::drain::pick;
use crate::target::GatewayProc;

/// File descriptors kept free in the bench process besides the subscribers
/// (publisher, REST calls, Redis, std streams, the runtime).
const FD_HEADROOM: usize = 1000;

/// How long deliveries may keep coming after the last send before the run
/// counts what is still missing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    WebSocket,
    Sse,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "WebSocket",
            Transport::Sse => "SSE",
        }
    }
}

/// The system under test: Redis and gateways A and B. Fields drop in
/// order: the gateways stop before their Redis does.
struct Setup {
    gateways: [GatewayProc; 2],
    signer: TokenSigner,
    _redis: RedisServer,
}

impl Setup {
    fn token(&self, user: &Address) -> String {
        crate::client::token(&self.signer, user)
    }
}

/// One side's (A's or B's) figures for one run.
struct Side {
    subscribers: usize,
    expected: u64,
    received: u64,
    duplicates: u64,
    /// Publish → receive, sorted.
    latencies: Vec<Duration>,
    /// Last receive, since the first send.
    last_receive: Duration,
}

struct RunResult {
    transport: Transport,
    messages: usize,
    rate: f64,
    sides: [Side; 2],
    /// First send → last send.
    publish_window: Duration,
    subscribe_time: Duration,
}

// The `fanout` subcommand's flags.
#[derive(Args)]
pub struct FanoutArgs {
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
}

pub async fn run(args: FanoutArgs) -> Result<()> {
    let FanoutArgs {
        subscribers,
        messages,
        rate,
        sse_subscribers,
    } = args;
    let command: Vec<String> = std::env::args().collect();
    if messages == 0 || rate <= 0.0 {
        bail!("--messages and --rate must be positive");
    }
    let limit = open_files_limit()?;
    let cap = limit.saturating_sub(FD_HEADROOM as u64) as usize;
    let mut notes = vec![];
    let capped = |what: &str, n: usize, notes: &mut Vec<String>| {
        if n > cap {
            notes.push(format!(
                "{what}: {n} requested, {cap} used: the bench process holds every client socket and may open {limit} files (`ulimit -n`), less {FD_HEADROOM} headroom"
            ));
            cap
        } else {
            n
        }
    };
    let subscribers = capped("--subscribers", subscribers, &mut notes);
    let sse_subscribers = capped("--sse-subscribers", sse_subscribers, &mut notes);
    for n in &notes {
        eprintln!("fanout: {n}");
    }

    let redis = crate::target::bench_redis()?;
    let url = redis.url();
    let secret: [u8; 32] = rand::random();
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // B's drain at the end of the run is not measured: keep both short.
    let short_drain = ["--drain-seconds".to_string(), "1".to_string()];
    let a = GatewayProc::spawn_with(&secret_hex, Some(&url), None, &short_drain).await?;
    let b = GatewayProc::spawn_with(&secret_hex, Some(&url), None, &short_drain).await?;
    let setup = Setup {
        gateways: [a, b],
        signer: TokenSigner::new(&secret),
        _redis: redis,
    };

    let mut results = vec![];
    for (transport, n) in [
        (Transport::WebSocket, subscribers),
        (Transport::Sse, sse_subscribers),
    ] {
        if n == 0 {
            continue;
        }
        let r = one(&setup, transport, n, messages, rate).await?;
        results.push(r);
        // Let the previous run's sockets go away.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(setup);

    println!("`{}`\n", command.join(" "));
    println!(
        "| transport | subscribers on | subscribers | messages × rate | deliveries expected | received | missing | duplicates | deliveries/s | publish → receive p50 / p95 / p99 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    for r in &results {
        let all = merge(&r.sides);
        for (label, s) in [
            ("A (local)", &r.sides[0]),
            ("B (via Redis)", &r.sides[1]),
            ("A + B", &all),
        ] {
            println!(
                "| {} | {} | {} | {} × {}/s | {} | {} | {} | {} | {:.0} | {} / {} / {} / {} |",
                r.transport.label(),
                label,
                s.subscribers,
                r.messages,
                r.rate,
                s.expected,
                s.received,
                s.expected.saturating_sub(s.received),
                s.duplicates,
                s.received as f64 / s.last_receive.as_secs_f64().max(1e-9),
                ms(pick(&s.latencies, 0.50)),
                ms(pick(&s.latencies, 0.95)),
                ms(pick(&s.latencies, 0.99)),
                ms(s.latencies.last().copied().unwrap_or_default()),
            );
        }
    }
    println!();
    for r in &results {
        let all = merge(&r.sides);
        println!(
            "- {}: {} subscribers subscribed in {:.1} s; publish window {:.2} s, last delivery {:.2} s after the first send",
            r.transport.label(),
            all.subscribers,
            r.subscribe_time.as_secs_f64(),
            r.publish_window.as_secs_f64(),
            all.last_receive.as_secs_f64(),
        );
    }
    for n in &notes {
        println!("- {n}");
    }
    println!(
        "- deliveries/s = distinct deliveries / (first send → last receive); received counts distinct (subscriber, message) pairs"
    );
    Ok(())
}

/// Both sides as one.
fn merge(sides: &[Side; 2]) -> Side {
    let mut latencies: Vec<Duration> = sides
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    Side {
        subscribers: sides.iter().map(|s| s.subscribers).sum(),
        expected: sides.iter().map(|s| s.expected).sum(),
        received: sides.iter().map(|s| s.received).sum(),
        duplicates: sides.iter().map(|s| s.duplicates).sum(),
        latencies,
        last_receive: sides
            .iter()
            .map(|s| s.last_receive)
            .max()
            .unwrap_or_default(),
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from /proc/self/limits.
fn open_files_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("/proc/self/limits: no Max open files")
}

/// One subscriber's connection.
enum Sub {
    Ws(Box<Ws>),
    Sse(SseConn),
}

impl Sub {
    /// The next channel message (the `msg` frame), `None` at end of stream.
    async fn next_msg(&mut self) -> Result<Option<Value>> {
        match self {
            Sub::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMsg::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).context("frame JSON")?;
                        if v["type"] == "msg" {
                            return Ok(Some(v));
                        }
                    }
                    Some(Ok(WsMsg::Close(_))) | None => return Ok(None),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
            Sub::Sse(s) => loop {
                let Some((event, data)) = s.next_event().await? else {
                    return Ok(None);
                };
                if event == "message" {
                    return Ok(Some(serde_json::from_str(&data).context("SSE data JSON")?));
                }
            },
        }
    }
}

/// Open a WebSocket on `addr` and subscribe to `channel`.
async fn ws_subscriber(addr: &str, token: &str, channel: &str) -> Result<Sub> {
    let mut ws = open(addr, token).await?;
    ws.send(WsMsg::text(
        json!({"type": "subscribe", "channel": channel}).to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMsg::Text(t))) => {
                let v: Value = serde_json::from_str(&t).context("frame JSON")?;
                match v["type"].as_str() {
                    Some("subscribed") => return Ok(Sub::Ws(Box::new(ws))),
                    Some("error") => bail!("subscribe refused: {v}"),
                    _ => continue,
                }
            }
            Some(Ok(_)) => continue,
            other => bail!("no subscribed frame: {other:?}"),
        }
    }
}

/// Open an SSE stream on `addr` for channel `name` and read until `synced`.
async fn sse_subscriber(addr: &str, token: &str, name: &str) -> Result<Sub> {
    let mut s = SseConn::open(
        addr,
        &format!("/v1/channels/{name}/events?access_token={token}"),
    )
    .await?;
    loop {
        match s.next_event().await? {
            Some((e, _)) if e == "synced" => return Ok(Sub::Sse(s)),
            Some(_) => continue,
            None => bail!("SSE stream ended before synced"),
        }
    }
}

/// A raw HTTP/1.1 `text/event-stream` response, de-chunked and split into
/// events as it arrives (the crate has no HTTP client; this is all SSE needs).
struct SseConn {
    stream: TcpStream,
    /// Bytes read but not yet de-chunked.
    raw: Vec<u8>,
    chunked: bool,
    /// De-chunked event-stream text not yet split into events.
    text: String,
    /// Bytes of the current chunk still to come (chunked encoding).
    chunk_left: usize,
}

impl SseConn {
    async fn open(addr: &str, path: &str) -> Result<SseConn> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if read_more(&mut stream, &mut raw).await? == 0 {
                bail!("SSE: connection closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("SSE: HTTP {status}: {}", String::from_utf8_lossy(&raw));
        }
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        raw.drain(..head_end + 4);
        let mut conn = SseConn {
            stream,
            raw,
            chunked,
            text: String::new(),
            chunk_left: 0,
        };
        // Body bytes that came with the head (often the first event): parse
        // them now, or the first read would wait for the next bytes (the
        // keep-alive, 15 s later).
        conn.dechunk()?;
        Ok(conn)
    }

    /// Move what `raw` holds of the body into `text`.
    fn dechunk(&mut self) -> Result<()> {
        if !self.chunked {
            self.text.push_str(std::str::from_utf8(&self.raw)?);
            self.raw.clear();
            return Ok(());
        }
        loop {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                // A chunk may end inside a UTF-8 character: keep the bytes
                // until the character is whole.
                let (ok, rest) = match std::str::from_utf8(&self.raw[..n]) {
                    Ok(s) => (s.len(), s),
                    Err(e) if e.error_len().is_none() => {
                        let v = e.valid_up_to();
                        (v, std::str::from_utf8(&self.raw[..v])?)
                    }
                    Err(e) => return Err(e.into()),
                };
                if ok == 0 {
                    return Ok(());
                }
                self.text.push_str(rest);
                self.raw.drain(..ok);
                self.chunk_left -= ok;
                continue;
            }
            // Between chunks: the CRLF that ends the last one (if any), then
            // `<hex size>[;ext]\r\n`.
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return Ok(());
            };
            if eol == 0 {
                self.raw.drain(..2);
                continue;
            }
            let line = std::str::from_utf8(&self.raw[..eol])?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("SSE: bad chunk size {line:?}"))?;
            if size == 0 {
                bail!("SSE: the response ended (last chunk)");
            }
            self.raw.drain(..eol + 2);
            self.chunk_left = size;
        }
    }

    /// The next event as (event name, data); comments are skipped. `None`
    /// when the connection closes.
    async fn next_event(&mut self) -> Result<Option<(String, String)>> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let (mut event, mut data) = (String::new(), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a comment (`:keepalive`)
                }
                if event.is_empty() {
                    event = "message".into();
                }
                return Ok(Some((event, data.join("\n"))));
            }
            if read_more(&mut self.stream, &mut self.raw).await? == 0 {
                return Ok(None);
            }
            self.dechunk()?;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    let mut tmp = [0u8; 8192];
    let n = stream.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// `POST /v1/channels` on `addr` over a raw HTTP/1.1 connection; returns the
/// channel id (`ch:<name>`).
async fn create_channel(addr: &str, token: &str, name: &str) -> Result<String> {
    let body = json!({"name": name, "title": "Fan-out bench", "visibility": "public"}).to_string();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST /v1/channels HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut resp = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut resp))
        .await
        .context("POST /v1/channels: no answer within 10 s")??;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp.split_whitespace().nth(1).unwrap_or("");
    if status != "201" {
        bail!("POST /v1/channels: HTTP {status}: {resp}");
    }
    Ok(format!("ch:{name}"))
}

/// What one subscriber's task hands back.
struct SubOutcome {
    side: usize,
    /// Distinct messages received.
    received: u64,
    duplicates: u64,
    latencies: Vec<Duration>,
}

async fn one(
    setup: &Setup,
    transport: Transport,
    subscribers: usize,
    messages: usize,
    rate: f64,
) -> Result<RunResult> {
    let start = Instant::now();
    let owner = Address(rand::random());
    let name = format!("fanout-{:08x}", rand::random::<u32>());
    let channel = create_channel(&setup.gateways[0].addr, &setup.token(&owner), &name).await?;

    // Subscribe everyone, 64 at a time; subscriber i on gateway i % 2.
    let t_sub = Instant::now();
    let mut subs: Vec<(usize, Sub)> = Vec::with_capacity(subscribers);
    let mut pending = futures_util::stream::iter((0..subscribers).map(|i| {
        let side = i % 2;
        let addr = setup.gateways[side].addr.clone();
        let token = setup.token(&Address(rand::random()));
        let (channel, name) = (channel.clone(), name.clone());
        async move {
            let sub = timeout(Duration::from_secs(30), async {
                match transport {
                    Transport::WebSocket => ws_subscriber(&addr, &token, &channel).await,
                    Transport::Sse => sse_subscriber(&addr, &token, &name).await,
                }
            })
            .await
            .context("subscribe: no answer within 30 s")??;
            anyhow::Ok((side, sub))
        }
    }))
    .buffer_unordered(64);
    while let Some(s) = pending.next().await {
        subs.push(s?);
    }
    drop(pending);
    let subscribe_time = t_sub.elapsed();
    eprintln!(
        "fanout {}: {subscribers} subscribers on {channel} in {:.1} s",
        transport.label(),
        subscribe_time.as_secs_f64()
    );

    // Each subscriber's task: read until all M messages are in, the stream
    // ends, or the run is stopped.
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicU64::new(0));
    // Microseconds since `start` of the last receive, per side.
    let last_rx = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::with_capacity(subscribers);
    for (side, mut sub) in subs {
        let (stop, delivered, last_rx) = (stop.clone(), delivered.clone(), last_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![false; messages];
            let mut out = SubOutcome {
                side,
                received: 0,
                duplicates: 0,
                latencies: Vec::with_capacity(messages),
            };
            while (out.received as usize) < messages {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next_msg() => m,
                };
                let Ok(Some(m)) = m else { break };
                let now = start.elapsed();
                let (Some(n), Some(t)) = (m["body"]["n"].as_u64(), m["body"]["t"].as_u64()) else {
                    continue;
                };
                let Some(slot) = seen.get_mut(n as usize) else {
                    continue;
                };
                if *slot {
                    out.duplicates += 1;
                    continue;
                }
                *slot = true;
                out.received += 1;
                out.latencies
                    .push(now.saturating_sub(Duration::from_micros(t)));
                delivered.fetch_add(1, Ordering::Relaxed);
                last_rx[side].fetch_max(now.as_micros() as u64, Ordering::Relaxed);
            }
            // Keep reading for a moment to catch duplicates, unless stopped.
            let _ = timeout(Duration::from_millis(500), async {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = sub.next_msg() => match m {
                            Ok(Some(m)) if m["body"]["n"].as_u64().is_some() => out.duplicates += 1,
                            Ok(Some(_)) => {}
                            _ => break,
                        },
                    }
                }
            })
            .await;
            out
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The publisher, on A: one frame every 1/rate s, each `sent` counted.
    let publisher = open(&setup.gateways[0].addr, &setup.token(&owner)).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sink, mut stream) = publisher.split();
    let acks = tokio::spawn(async move {
        let (mut sent, mut errors) = (0u64, vec![]);
        while let Some(Ok(m)) = stream.next().await {
            let WsMsg::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            match v["type"].as_str() {
                Some("sent") => sent += 1,
                Some("error") => errors.push(v.to_string()),
                _ => {}
            }
        }
        (sent, errors)
    });
    tick.tick().await;
    let first_send = start.elapsed();
    for n in 0..messages {
        if n > 0 {
            tick.tick().await;
        }
        let t = start.elapsed().as_micros() as u64;
        let frame = json!({"type": "send", "conv": channel, "id": format!("f{n}"), "body": {"n": n, "t": t}});
        sink.send(WsMsg::text(frame.to_string()))
            .await
            .context("publisher send")?;
    }
    let publish_window = start.elapsed() - first_send;

    // Drain: until every delivery is in, or no progress for DRAIN_TIMEOUT.
    let want = (subscribers * messages) as u64;
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now >= want {
            break;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > DRAIN_TIMEOUT {
            eprintln!(
                "fanout {}: {} of {want} deliveries after {DRAIN_TIMEOUT:?} without progress",
                transport.label(),
                now
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the tasks' duplicate watch run, then stop whatever still waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.cancel();
    let _ = sink.close().await;
    let (sent, errors) = timeout(Duration::from_secs(5), acks)
        .await
        .unwrap_or(Ok((0, vec!["publisher reader did not finish".into()])))?;
    if sent != messages as u64 || !errors.is_empty() {
        eprintln!(
            "fanout {}: publisher got {sent} of {messages} `sent`; errors: {errors:?}",
            transport.label()
        );
    }

    let mut sides = [0, 1].map(|_| Side {
        subscribers: 0,
        expected: 0,
        received: 0,
        duplicates: 0,
        latencies: vec![],
        last_receive: Duration::ZERO,
    });
    for t in tasks {
        let o = t.await?;
        let s = &mut sides[o.side];
        s.subscribers += 1;
        s.expected += messages as u64;
        s.received += o.received;
        s.duplicates += o.duplicates;
        s.latencies.extend(o.latencies);
    }
    for (i, s) in sides.iter_mut().enumerate() {
        s.latencies.sort_unstable();
        let last = Duration::from_micros(last_rx[i].load(Ordering::Relaxed));
        s.last_receive = last.saturating_sub(first_send);
    }
    Ok(RunResult {
        transport,
        messages,
        rate,
        sides,
        publish_window,
        subscribe_time,
    })
}
