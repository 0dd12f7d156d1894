//! A gateway drained under traffic (what SIGTERM does in a pod): its clients
//! are closed with 1012 in batches spread over the drain window, reconnect
//! through the load balancer to the other gateway, resync, and miss nothing
//! of what was sent to them meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_client::Event;
use switchboard_core::broker::MemoryBroker;
use switchboard_core::ids::ConvId;
use switchboard_gateway::GatewayConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// A round-robin TCP balancer over the gateways still in rotation, like a
/// Kubernetes Service: a pod is taken out of the endpoints (the preStop
/// delay) before it gets SIGTERM.
struct Balancer {
    addr: SocketAddr,
    upstreams: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Balancer {
    async fn start(upstreams: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstreams = Arc::new(Mutex::new(upstreams));
        let next = Arc::new(AtomicUsize::new(0));
        let ups = upstreams.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = {
                    let list = ups.lock().unwrap();
                    list[next.fetch_add(1, Ordering::Relaxed) % list.len()]
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Balancer { addr, upstreams }
    }

    fn remove(&self, gw: SocketAddr) {
        self.upstreams.lock().unwrap().retain(|a| *a != gw);
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_clients_reconnect_elsewhere_and_miss_nothing() {
    const PAIRS: usize = 20;
    const PER_SENDER: u64 = 40;
    let window = Duration::from_secs(2);
    let broker = MemoryBroker::default();
    let cfg = || GatewayConfig {
        drain_window: window,
        ..gateway_config()
    };
    let a = start_gateway(&broker, "127.0.0.1:0", cfg()).await;
    let b = start_gateway(&broker, "127.0.0.1:0", cfg()).await;
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let lb = Balancer::start(vec![a_addr, b_addr]).await;

    // Senders sit on B, receivers come through the balancer, which puts
    // every other one on A (one TCP connection per WebSocket).
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..PAIRS {
        let (s, r) = (login(&base(&b)).await, login(&base(&b)).await);
        let conv = ConvId::direct(&s.address, &r.address).unwrap();
        senders.push((connect(&base(&b), &s).await, conv.clone()));
        receivers.push(connect(&lb.base(), &r).await);
    }
    let on_a = a.state().hub.connection_count();
    assert_eq!(on_a, PAIRS / 2);

    // Every sender sends PER_SENDER messages, one every 50 ms (2 s), while
    // gateway A drains from 0.5 s on.
    let send_tasks: Vec<_> = senders
        .into_iter()
        .map(|(c, conv)| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..PER_SENDER {
                    let sent = timeout(Duration::from_secs(20), c.send(&conv, json!({"n": n})))
                        .await
                        .expect("send within 20 s")
                        .expect("send accepted");
                    seqs.push(sent.seq);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                c.close().await;
                seqs
            })
        })
        .collect();
    let recv_tasks: Vec<_> = receivers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut codes = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while (got.len() as u64) < PER_SENDER {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match timeout(left, c.next_event()).await {
                        Ok(Some(Event::Message(m))) => got.push(m.seq),
                        Ok(Some(Event::Disconnected { code, .. })) => {
                            codes.push((code, Instant::now()))
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                // Nothing more may arrive (no duplicates after the resync).
                while let Ok(Some(e)) = timeout(Duration::from_millis(300), c.next_event()).await {
                    if let Event::Message(m) = e {
                        got.push(m.seq);
                    }
                }
                c.close().await;
                (got, codes)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    lb.remove(a_addr);
    let drain_started = Instant::now();
    a.shutdown().await;
    let drain_took = drain_started.elapsed();

    for t in send_tasks {
        let seqs = t.await.unwrap();
        assert_eq!(seqs, (1..=PER_SENDER).collect::<Vec<_>>(), "sender seqs");
    }
    let mut closes = Vec::new();
    for t in recv_tasks {
        let (got, codes) = t.await.unwrap();
        assert_eq!(
            got,
            (1..=PER_SENDER).collect::<Vec<_>>(),
            "every message once, in order"
        );
        closes.extend(codes);
    }

    // Exactly the receivers on A were closed, each once, every time with 1012.
    assert_eq!(closes.len(), on_a, "{closes:?}");
    assert!(
        closes.iter().all(|(code, _)| *code == Some(1012)),
        "{closes:?}"
    );
    // Spread out, not all at once: batches ~100 ms apart (10 sockets, a
    // 1.6 s spread: one per batch, ~0.9 s from first to last).
    let first = closes.iter().map(|c| c.1).min().unwrap();
    let last = closes.iter().map(|c| c.1).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "closes spread over {:?} only",
        last - first
    );
    assert!(
        drain_took <= window + switchboard_gateway::server::CLOSE_GRACE + Duration::from_secs(1),
        "{drain_took:?}"
    );
    b.shutdown().await;
}
