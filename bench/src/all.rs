//! `switchboard-bench all`: the standard set recorded in
//! docs/benchmarks.md (idle memory and latency runs), with ratios.

use anyhow::Result;

use crate::idle::idle;
use crate::latency::{latency, ratio_line};
use crate::target::Engine;

pub async fn run() -> Result<()> {
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
