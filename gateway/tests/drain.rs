//! A gateway process drained under traffic, as in a pod being deleted: two
//! real `switchboard-gateway` processes on a real Redis behind a
//! round-robin balancer (the Service). Gateway A is taken out of the
//! balancer (the preStop delay) and gets SIGTERM: its clients are closed
//! with 1012 in batches spread over the drain window, reconnect through the
//! balancer to B, resync, and miss nothing of what was sent to them
//! meanwhile; A exits within its window plus the close grace.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{free_addr, gateway_command};
use k256::ecdsa::SigningKey;
use serde_json::json;
use switchboard_client::{Client, ClientOptions, Event, Session, SignInOptions, sign_in};
use switchboard_proto::ids::ConvId;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::time::{Instant, timeout};

/// The drain window both gateways run with.
const WINDOW: Duration = Duration::from_secs(2);

/// A round-robin TCP balancer over the gateways still in rotation, like a
/// Kubernetes Service: a pod leaves the endpoints before it gets SIGTERM.
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

/// A `switchboard-gateway` process, ready (its /readyz answers 200).
async fn gateway(redis_url: &str, secret_file: &std::path::Path) -> (Child, SocketAddr) {
    let addr = free_addr();
    let child = gateway_command(addr, redis_url, secret_file)
        .args(["--drain-seconds", &WINDOW.as_secs().to_string()])
        // 40 clients from one address sign in and reconnect within a second
        // or two: ~160 requests, past the default per-address burst (100).
        .args(["--rest-burst", "1000"])
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return (child, addr);
        }
        assert!(Instant::now() < deadline, "gateway on {addr} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wallet() -> SigningKey {
    loop {
        if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

async fn login(base: &str) -> Session {
    sign_in(base, &wallet(), &SignInOptions::default())
        .await
        .unwrap()
}

/// Client timers shortened so reconnects happen within a test's patience.
fn opts() -> ClientOptions {
    ClientOptions {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        send_timeout: Duration::from_secs(2),
        retry_base: Duration::from_millis(50),
        gap_grace: Duration::from_millis(100),
        sync_timeout: Duration::from_secs(2),
        pong_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_to_the_other_gateway_missing_nothing() {
    const PAIRS: usize = 20;
    const PER_SENDER: u64 = 40;
    let redis = switchboard_testkit::RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token-secret");
    // A first: it creates the shared session-token secret B then reads.
    let (mut a, a_addr) = gateway(&redis.url(), &secret).await;
    let (_b, b_addr) = gateway(&redis.url(), &secret).await;
    let lb = Balancer::start(vec![a_addr, b_addr]).await;
    let b_base = format!("http://{b_addr}");

    // Senders sit on B, receivers come through the balancer, which puts
    // every other one on A (one TCP connection per WebSocket).
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..PAIRS {
        let (s, r) = (login(&b_base).await, login(&b_base).await);
        let conv = ConvId::direct(&s.address, &r.address).unwrap();
        senders.push((Client::connect(&b_base, &s, opts()).await.unwrap(), conv));
        receivers.push(Client::connect(&lb.base(), &r, opts()).await.unwrap());
    }

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
    let pid = a.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = timeout(Duration::from_secs(30), a.wait())
        .await
        .expect("A exits after its drain")
        .unwrap();
    let drain_took = drain_started.elapsed();
    assert!(exit.success(), "A exits cleanly after draining: {exit:?}");

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

    // Exactly the receivers on A (every other one) were closed, each once,
    // every time with 1012.
    assert_eq!(closes.len(), PAIRS / 2, "{closes:?}");
    assert!(
        closes.iter().all(|(code, _)| *code == Some(1012)),
        "{closes:?}"
    );
    // Spread out, not all at once: batches ~100 ms apart over 80% of the
    // window (10 sockets over 1.6 s: about one per batch).
    let first = closes.iter().map(|c| c.1).min().unwrap();
    let last = closes.iter().map(|c| c.1).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "closes spread over {:?} only",
        last - first
    );
    assert!(
        drain_took <= WINDOW + switchboard_gateway::server::CLOSE_GRACE + Duration::from_secs(2),
        "{drain_took:?}"
    );
}
