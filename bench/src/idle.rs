//! `switchboard-bench idle`: gateway RSS per idle authenticated connection.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use futures_util::StreamExt;
use switchboard_proto::ids::Address;

use crate::client::open;
use crate::target::{Engine, Target};

// The `idle` subcommand's flags.
#[derive(Args)]
pub struct IdleArgs {
    #[arg(long, value_enum, default_value = "redis")]
    engine: Engine,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// WebSocket buffer size for the gateway under test.
    #[arg(long)]
    ws_buffer: Option<usize>,
}

/// One run, printed as a row of the results table.
pub async fn run(args: IdleArgs) -> Result<()> {
    let r = idle(args.engine, args.connections, args.ws_buffer).await?;
    println!("{}", r.row());
    Ok(())
}

pub struct IdleResult {
    engine: Engine,
    ws_buffer: Option<usize>,
    connections: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

impl IdleResult {
    pub fn per_conn_kib(&self) -> f64 {
        (self.rss_after_kib.saturating_sub(self.rss_before_kib)) as f64 / self.connections as f64
    }
    pub fn row(&self) -> String {
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

pub async fn idle(
    engine: Engine,
    connections: usize,
    ws_buffer: Option<usize>,
) -> Result<IdleResult> {
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
