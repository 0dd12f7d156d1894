//! `switchboard-bench relay`: the fallback relay under load. Two gateways
//! on one Redis with a third gateway (memory engine, an API key) as their
//! relay, every conversation split over the two; the same load first with
//! Redis up (normal mode), then with Redis killed (relay mode: every
//! delivery crosses the relay). Prints both rows, the ratios, the relay's
//! own CPU, and how long entering and leaving relay mode took (leaving
//! includes sequencing every message held during the outage).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::latency::{Load, ratio_line};
use crate::target::{Engine, GatewayProc, Target};

const KEY: &str = "bench.relay:relay-secret";

// The `relay` subcommand's flags.
#[derive(Args)]
pub struct RelayArgs {
    #[arg(long, default_value_t = 200)]
    users: usize,
    #[arg(long, default_value_t = 500)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// `/readyz`'s body, or `None` while the gateway does not answer.
async fn readyz(http: &reqwest::Client, addr: &str) -> Option<String> {
    let r = http
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

/// Time until every gateway's `/readyz` satisfies `want`.
async fn until_all(t: &Target, what: &str, want: impl Fn(&str) -> bool) -> Result<Duration> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..t.gateway_count() {
        loop {
            if readyz(&http, t.addr(i)).await.is_some_and(|b| want(&b)) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("gateway {i} not {what} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(started.elapsed())
}

pub async fn run(args: RelayArgs) -> Result<()> {
    let RelayArgs {
        users,
        rate,
        seconds,
    } = args;
    let relay_secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let relay = GatewayProc::spawn_with(
        &relay_secret,
        None,
        None,
        &["--api-key".to_string(), KEY.to_string()],
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("relay.json");
    let doc = json!({"hosts": [relay.addr], "provider": "switchboard", "tls": false});
    std::fs::write(&file, doc.to_string())?;
    let extra = [
        "--relay-config".to_string(),
        file.to_str().context("temp path")?.to_string(),
        "--relay-api-key".to_string(),
        KEY.to_string(),
    ];
    let mut t = Target::start_many_with(Engine::Redis, 2, None, &extra).await?;
    let load = Load::open(&t, users).await?;
    // The gateways' relay subscriptions open within milliseconds of start.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let normal = load.run(&t, Engine::Redis, 2, rate, seconds).await?;
    println!("normal mode: {}", normal.row());

    let redis = t.redis_mut().context("the relay scenario runs on Redis")?;
    redis.kill9();
    let enter = until_all(&t, "in relay mode", |b| b.contains("relay mode")).await?;
    let relay_cpu0 = relay.cpu_seconds()?;
    let relayed = load
        .run_marked(&t, Engine::Redis, 2, rate, seconds, true)
        .await?;
    let relay_cpu = relay.cpu_seconds()? - relay_cpu0;
    println!("relay mode:  {}", relayed.row());

    let redis = t.redis_mut().context("Redis")?;
    redis.restart()?;
    let leave = until_all(&t, "back to normal", |b| b == "ready").await?;
    println!(
        "relay process CPU: {:.3} CPU-s per 1,000 relayed deliveries",
        if relayed.delivered() == 0 {
            0.0
        } else {
            relay_cpu / relayed.delivered() as f64 * 1000.0
        }
    );
    println!(
        "enter relay mode (kill -9 Redis → every gateway's /readyz says relay mode): {:.2} s; leave (Redis restarted → every gateway ready again, {} held messages sequenced): {:.2} s",
        enter.as_secs_f64(),
        relayed.sent(),
        leave.as_secs_f64()
    );
    println!(
        "{}",
        ratio_line("relay mode over normal", &relayed, &normal)
    );
    Ok(())
}
