//! Heap held by the gateway per idle authenticated WebSocket, measured by
//! counting allocations (docs/benchmarks.md, "Where an idle connection's
//! bytes go"). The gateway runs on its own runtime whose threads are an
//! allocation group each (the test's only groups); only blocks allocated in those are counted (and
//! uncounted when freed, on any thread), so the test's clients in the same
//! process do not blur the figure. mimalloc is the allocator underneath, as
//! in the shipped binary; each block is also counted at mimalloc's size class
//! for its requested size (what it occupies in the shipped binary, which
//! has no tracking header).
//!
//! Run with `--nocapture` to see the breakdown by size class.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};

use common::{Backend, SECRET};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use time::OffsetDateTime;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

#[global_allocator]
static ALLOC: Allocator<mimalloc::MiMalloc> = Allocator::from_allocator(mimalloc::MiMalloc);

/// Live blocks by size class: one bucket per 16 bytes up to 16 KiB, the
/// last bucket for anything larger.
const BUCKETS: usize = 1025;
static LIVE: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_CLASS: AtomicI64 = AtomicI64::new(0);

/// mimalloc's size class for `size` bytes (`mi_bin` in its `page-queue.c`:
/// whole words up to 8 words, then four classes per doubling).
fn mi_class(size: usize) -> usize {
    let w = size.div_ceil(8).max(1);
    if w <= 8 {
        return w * 8;
    }
    let b = usize::BITS - 1 - (w - 1).leading_zeros();
    let step = 1usize << (b - 2);
    w.div_ceil(step) * step * 8
}

fn record(size: usize, sign: i64) {
    let class = mi_class(size);
    LIVE[class.div_ceil(16).min(BUCKETS - 1)].fetch_add(sign, Ordering::Relaxed);
    LIVE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
    LIVE_CLASS.fetch_add(sign * class as i64, Ordering::Relaxed);
}

struct Tracker;

impl AllocationTracker for Tracker {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        if group != AllocationGroupId::ROOT {
            record(size, 1);
        }
    }
    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        if source != AllocationGroupId::ROOT {
            record(size, -1);
        }
    }
}

struct Snapshot {
    bytes: i64,
    class: i64,
    blocks: [i64; BUCKETS],
}

fn snapshot() -> Snapshot {
    Snapshot {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        class: LIVE_CLASS.load(Ordering::Relaxed),
        blocks: std::array::from_fn(|i| LIVE[i].load(Ordering::Relaxed)),
    }
}

type Client = WebSocketStream<TcpStream>;

/// An authenticated socket from source address `from` (the gateway's default
/// cap is 100 connections per address), its `ready` read.
async fn open(gw: SocketAddr, from: IpAddr, token: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(gw).await.unwrap();
    // Small client buffers: the clients share the process (not counted, but
    // 128 KiB each would be a lot of memory for nothing).
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{gw}/v1/ws"), stream, Some(cfg))
            .await
            .unwrap();
    let auth = json!({"type": "auth", "token": token}).to_string();
    ws.send(WsMsg::text(auth)).await.unwrap();
    let ready = next_text(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ws
}

async fn next_text(ws: &mut Client) -> Value {
    loop {
        let m = tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("socket open")
            .unwrap();
        if let WsMsg::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Open `n` sockets of fresh users, 20 per source address starting at
/// 127.2.`base`.0, then ping each and await its pong, so every socket's task
/// has gone round its loop once and is waiting, idle.
async fn open_idle(gw: SocketAddr, n: usize, base: u8) -> Vec<Client> {
    let signer = TokenSigner::new(SECRET);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let user = Address(rand::random());
        let (token, _) = signer.issue(
            &user,
            std::time::Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        );
        let from = IpAddr::V4(Ipv4Addr::new(
            127,
            2,
            base + (i / 20 / 250) as u8,
            (i / 20 % 250) as u8 + 1,
        ));
        out.push(open(gw, from, &token).await);
    }
    for ws in &mut out {
        ws.send(WsMsg::Ping(b"p".to_vec().into())).await.unwrap();
    }
    for ws in &mut out {
        loop {
            let m = tokio::time::timeout(common::WAIT, ws.next())
                .await
                .expect("a pong within 5 s")
                .expect("socket open")
                .unwrap();
            if matches!(m, WsMsg::Pong(_)) {
                break;
            }
        }
    }
    out
}

const CONNS: usize = 2000;

/// Heap (at mimalloc size classes) the gateway may hold per idle authenticated
/// socket. Measured 3,838 B (docs/benchmarks.md); a change that grows the
/// per-connection state past this fails here.
const MAX_USABLE_PER_CONN: f64 = 4000.0;

#[test]
fn idle_socket_heap_is_bounded() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    AllocationRegistry::set_global_tracker(Tracker).unwrap();
    AllocationRegistry::enable_tracking();
    let backend = Backend::redis();
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || {
            // Every gateway thread allocates in a group of its own (the
            // only groups there are), for as long as it runs.
            let mut token = AllocationGroupToken::register().unwrap();
            std::mem::forget(token.enter());
        })
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = GatewayConfig {
        token_secret: SECRET.to_vec(),
        ..GatewayConfig::default()
    };
    let (gw, _backend) = client_rt
        .block_on(gw_rt.spawn(async move {
            let gw = common::start_gateway(&backend, cfg).await;
            (gw, backend)
        }))
        .unwrap();
    let addr = gw.local_addr();
    let (before, after, held) = client_rt.block_on(async {
        let warm = open_idle(addr, 50, 0).await;
        let before = snapshot();
        let held = open_idle(addr, CONNS, 10).await;
        let after = snapshot();
        (before, after, (warm, held))
    });
    let n = CONNS as f64;
    let per = |a: i64, b: i64| (a - b) as f64 / n;
    let blocks: i64 = after.blocks.iter().sum::<i64>() - before.blocks.iter().sum::<i64>();
    println!(
        "per idle authenticated socket ({CONNS}): {:.0} B requested, {:.0} B at mimalloc size classes, {:.2} blocks",
        per(after.bytes, before.bytes),
        per(after.class, before.class),
        blocks as f64 / n,
    );
    println!("live blocks per socket by mimalloc size class:");
    for i in 0..BUCKETS {
        let d = per(after.blocks[i], before.blocks[i]);
        if d.abs() >= 0.05 {
            let size = if i == BUCKETS - 1 {
                "> 16384".to_string()
            } else {
                format!("{:>5}", i * 16)
            };
            println!("  {size} B: {d:>5.2} per socket");
        }
    }
    let usable = per(after.class, before.class);
    assert!(
        usable <= MAX_USABLE_PER_CONN,
        "{usable:.0} B of heap per idle socket, over the {MAX_USABLE_PER_CONN} B bound"
    );
    drop(held);
    client_rt.block_on(gw_rt.spawn(gw.shutdown())).unwrap();
}
