//! Graceful drain of a gateway with N idle authenticated connections.
//!
//! Redis (testkit) and two gateway child processes, A and B, on it. N
//! connections authenticate on A; each connection's task, when A closes it
//! with 1012 (Service Restart), at once reconnects and re-authenticates on B,
//! as the SDK does once the load balancer has taken A out. Then SIGTERM goes
//! to A's process (`serve` drains on SIGTERM, like a pod being deleted) and
//! the bench records, relative to the SIGTERM: each close and its code, each
//! `ready` on B, A's exit, and B's RSS and CPU (sampled from /proc).
//!
//! One run per drain window, side by side (default 10 s and 1 s: the spread
//! against the herd).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use futures_util::StreamExt;
use switchboard_proto::auth::token::TokenSigner;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_util::sync::CancellationToken;

use crate::client::open;
use crate::target::GatewayProc;

/// What happened to one connection.
struct Outcome {
    closed_at: Instant,
    /// The close frame's code; `None` for an error or a close without frame.
    code: Option<u16>,
    /// The socket failed (reset) before a close frame was read.
    error: bool,
    /// `ready` on B, if the reconnect succeeded.
    ready_at: Option<Instant>,
    attempts: u32,
}

struct DrainResult {
    window: f64,
    connections: usize,
    first_close: Duration,
    p50_close: Duration,
    p95_close: Duration,
    last_close: Duration,
    non_1012: usize,
    /// Of those: sockets that failed (reset) before a close frame.
    resets: usize,
    /// The codes of the other non-1012 closes.
    other_codes: Vec<Option<u16>>,
    reconnected: usize,
    retries: u32,
    all_ready: Duration,
    reconnect_p50: Duration,
    reconnect_p95: Duration,
    reconnect_max: Duration,
    exit: Option<Duration>,
    b_rss_before_kib: u64,
    b_rss_peak_kib: u64,
    b_cpu_s: f64,
    b_cpu_peak_pct: f64,
}

// The `drain` subcommand's flags.
#[derive(Args)]
pub struct DrainArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Drain windows to run, one run each, side by side.
    #[arg(long, value_delimiter = ',', default_values_t = [10.0f64, 1.0])]
    window_seconds: Vec<f64>,
}

pub async fn run(args: DrainArgs) -> Result<()> {
    let DrainArgs {
        connections,
        window_seconds: windows,
    } = args;
    let mut results = vec![];
    for w in windows {
        let r = one(connections, w).await?;
        results.push(r);
        // Let the previous run's processes and sockets go away.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!(
        "| drain window | connections | first 1012 | p50 close | p95 close | last 1012 | non-1012 closes | all re-authenticated on B | close → ready on B p50 / p95 / max | A exited | B RSS before → peak | B CPU (peak over 250 ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} s | {} | {} | {} | {} | {} | {} ({} resets) | {} ({} of {}, {} retries) | {} / {} / {} | {} | {} → {} KiB | {:.2} CPU-s ({:.0}%) |",
            r.window,
            r.connections,
            ms(r.first_close),
            ms(r.p50_close),
            ms(r.p95_close),
            ms(r.last_close),
            r.non_1012,
            r.resets,
            ms(r.all_ready),
            r.reconnected,
            r.connections,
            r.retries,
            ms(r.reconnect_p50),
            ms(r.reconnect_p95),
            ms(r.reconnect_max),
            r.exit.map(ms).unwrap_or_else(|| "not within 60 s".into()),
            r.b_rss_before_kib,
            r.b_rss_peak_kib,
            r.b_cpu_s,
            r.b_cpu_peak_pct,
        );
    }
    if let [a, b, ..] = results.as_slice() {
        let r = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64().max(1e-9);
        println!(
            "\n- {} s / {} s window: close → ready p95 {:.1}x, max {:.1}x; B peak CPU {:.1}x; B peak RSS {:.2}x",
            b.window,
            a.window,
            r(b.reconnect_p95, a.reconnect_p95),
            r(b.reconnect_max, a.reconnect_max),
            b.b_cpu_peak_pct / a.b_cpu_peak_pct.max(1e-9),
            b.b_rss_peak_kib as f64 / a.b_rss_peak_kib.max(1) as f64,
        );
    }
    Ok(())
}

async fn one(n: usize, window: f64) -> Result<DrainResult> {
    let redis = crate::target::bench_redis()?;
    let url = redis.url();
    let secret: [u8; 32] = rand::random();
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let signer = TokenSigner::new(&secret);
    let mut a = GatewayProc::spawn_with(
        &secret_hex,
        Some(&url),
        None,
        &["--drain-seconds".into(), window.to_string()],
    )
    .await?;
    // B's own drain (at the end of the run) is not measured: keep it short.
    let b = GatewayProc::spawn_with(
        &secret_hex,
        Some(&url),
        None,
        &["--drain-seconds".into(), "1".into()],
    )
    .await?;

    let tokens = crate::client::random_tokens(&signer, n);
    let a_addr = a.addr.clone();
    let mut opened = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter(tokens.into_iter().map(|token| {
        let addr = a_addr.clone();
        async move { open(&addr, &token).await.map(|ws| (ws, token)) }
    }))
    .buffer_unordered(64);
    while let Some(c) = pending.next().await {
        opened.push(c?);
    }
    drop(pending);

    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    for (mut ws, token) in opened {
        let tx = tx.clone();
        let stop = stop.clone();
        let b_addr = b.addr.clone();
        tokio::spawn(async move {
            let (code, error, closed_at) = loop {
                match ws.next().await {
                    Some(Ok(WsMsg::Close(f))) => {
                        break (f.map(|f| u16::from(f.code)), false, Instant::now());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => break (None, true, Instant::now()),
                    None => break (None, false, Instant::now()),
                }
            };
            // Finish the close handshake off the reconnect's path.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while ws.next().await.is_some() {}
                })
                .await;
            });
            let mut attempts = 0;
            let b_ws = loop {
                attempts += 1;
                match open(&b_addr, &token).await {
                    Ok(w) => break Some((Instant::now(), w)),
                    Err(_) if attempts < 50 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => break None,
                }
            };
            let ready_at = b_ws.as_ref().map(|(t, _)| *t);
            let _ = tx.send(Outcome {
                closed_at,
                code,
                error,
                ready_at,
                attempts,
            });
            if let Some((_, mut w)) = b_ws {
                // Hold the socket (answering pings) until the run ends.
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = async { while let Some(Ok(_)) = w.next().await {} } => {}
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let b_rss_before = b.rss_kib()?;
    let mut b_rss_peak = b_rss_before;
    let b_cpu0 = b.cpu_seconds()?;
    let (mut cpu_prev, mut cpu_prev_at) = (b_cpu0, Instant::now());
    let mut b_cpu_peak = 0.0f64;

    let t0 = Instant::now();
    a.terminate();
    let mut exit = None;
    let mut outcomes = Vec::with_capacity(n);
    let deadline = t0 + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        while let Ok(o) = rx.try_recv() {
            outcomes.push(o);
        }
        if exit.is_none() && a.has_exited() {
            exit = Some(t0.elapsed());
        }
        if let Ok(r) = b.rss_kib() {
            b_rss_peak = b_rss_peak.max(r);
        }
        if cpu_prev_at.elapsed() >= Duration::from_millis(250)
            && let Ok(c) = b.cpu_seconds()
        {
            let pct = (c - cpu_prev) / cpu_prev_at.elapsed().as_secs_f64() * 100.0;
            b_cpu_peak = b_cpu_peak.max(pct);
            (cpu_prev, cpu_prev_at) = (c, Instant::now());
        }
        if (outcomes.len() == n && exit.is_some()) || Instant::now() > deadline {
            break;
        }
    }
    let b_cpu = b.cpu_seconds()? - b_cpu0;
    stop.cancel();
    if outcomes.len() < n {
        bail!(
            "window {window} s: only {} of {n} connections were closed within 60 s",
            outcomes.len()
        );
    }

    let mut closes: Vec<Duration> = outcomes.iter().map(|o| o.closed_at - t0).collect();
    closes.sort();
    let mut gaps: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| Some(o.ready_at? - o.closed_at))
        .collect();
    gaps.sort();
    let all_ready = outcomes
        .iter()
        .filter_map(|o| o.ready_at)
        .max()
        .map(|t| t - t0)
        .unwrap_or_default();
    let r = DrainResult {
        window,
        connections: n,
        first_close: closes[0],
        p50_close: pick(&closes, 0.50),
        p95_close: pick(&closes, 0.95),
        last_close: *closes.last().unwrap_or(&Duration::ZERO),
        non_1012: outcomes.iter().filter(|o| o.code != Some(1012)).count(),
        resets: outcomes.iter().filter(|o| o.error).count(),
        other_codes: {
            let mut c: Vec<Option<u16>> = outcomes
                .iter()
                .filter(|o| o.code != Some(1012) && !o.error)
                .map(|o| o.code)
                .collect();
            c.sort();
            c.dedup();
            c
        },
        reconnected: gaps.len(),
        retries: outcomes.iter().map(|o| o.attempts - 1).sum(),
        all_ready,
        reconnect_p50: pick(&gaps, 0.50),
        reconnect_p95: pick(&gaps, 0.95),
        reconnect_max: gaps.last().copied().unwrap_or_default(),
        exit,
        b_rss_before_kib: b_rss_before,
        b_rss_peak_kib: b_rss_peak,
        b_cpu_s: b_cpu,
        b_cpu_peak_pct: b_cpu_peak,
    };
    eprintln!(
        "drain window {window} s: last close {:?}, all ready {:?}, A exit {:?}, non-1012 {} ({} resets before a close frame, other codes {:?})",
        r.last_close, r.all_ready, r.exit, r.non_1012, r.resets, r.other_codes
    );
    drop(a);
    drop(b);
    drop(redis);
    Ok(r)
}

pub(crate) fn pick(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
