//! Test harness: real in-process gateways on a shared memory broker, signed-in
//! wallets, and a TCP proxy that can cut, sever or stall a client's connection
//! the way a flaky network would.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k256::ecdsa::SigningKey;
use switchboard_client::{Client, ClientOptions, Event, Message, Session, SignInOptions, sign_in};
use switchboard_core::broker::MemoryBroker;
use switchboard_gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};

pub const SECRET: &[u8] = b"client-test-secret-client-test-s";
pub const WAIT: Duration = Duration::from_secs(5);

/// Gateway timers shortened so retries happen within a test's patience.
pub fn gateway_config() -> GatewayConfig {
    GatewayConfig {
        token_secret: SECRET.to_vec(),
        ack_timeout: Duration::from_millis(300),
        liveness_interval: Duration::from_millis(200),
        members_cache_ttl: Duration::from_millis(200),
        ..GatewayConfig::default()
    }
}

pub async fn start_gateway(broker: &MemoryBroker, addr: &str, cfg: GatewayConfig) -> Gateway {
    let listener = TcpListener::bind(addr).await.unwrap();
    Gateway::start(cfg, Arc::new(broker.clone()), listener)
        .await
        .unwrap()
}

pub async fn gateway() -> (Gateway, MemoryBroker) {
    let broker = MemoryBroker::default();
    (
        start_gateway(&broker, "127.0.0.1:0", gateway_config()).await,
        broker,
    )
}

pub fn base(gw: &Gateway) -> String {
    format!("http://{}", gw.local_addr())
}

pub fn wallet() -> SigningKey {
    loop {
        if let Ok(k) = SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
            return k;
        }
    }
}

pub async fn login(base: &str) -> Session {
    sign_in(base, &wallet(), &SignInOptions::default())
        .await
        .unwrap()
}

/// Client timers shortened for tests.
pub fn fast_opts() -> ClientOptions {
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

pub async fn connect(base: &str, s: &Session) -> Client {
    Client::connect(base, s, fast_opts()).await.unwrap()
}

/// The next event matching `pred` within [`WAIT`]; panics otherwise.
pub async fn wait_for(c: &mut Client, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            c.next_event(),
        )
        .await
        {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(e)) => {
                if std::env::var("DEBUG_EVENTS").is_ok() {
                    eprintln!("skip {e:?}");
                }
            }
            Ok(None) => panic!("events ended while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

/// Exactly `n` messages (panics if fewer arrive within [`WAIT`]), then
/// checks that nothing more arrives for `quiet`.
pub async fn messages(c: &mut Client, n: usize, quiet: Duration) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Message(m) = wait_for(c, "message", |e| matches!(e, Event::Message(_))).await
        {
            out.push(m);
        }
    }
    let extra = messages_within(c, quiet).await;
    assert!(extra.is_empty(), "unexpected extra messages: {extra:?}");
    out
}

/// Every message surfaced within `d`.
pub async fn messages_within(c: &mut Client, d: Duration) -> Vec<Message> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(e)) = timeout(
        deadline.saturating_duration_since(Instant::now()),
        c.next_event(),
    )
    .await
    {
        if let Event::Message(m) = e {
            out.push(m);
        }
    }
    out
}

pub fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

pub fn body(m: &Message) -> serde_json::Value {
    serde_json::from_str(m.body.get()).unwrap()
}

/// A TCP proxy in front of a gateway.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: AbortHandle,
}

struct ProxyState {
    upstream: SocketAddr,
    /// When false, new connections are closed at once.
    open: AtomicBool,
    /// When true, bytes from the client are held back (the server sees no
    /// acks), while the server's bytes still flow.
    stall_up: AtomicBool,
    /// When true, bytes from the server are held back.
    stall_down: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            open: AtomicBool::new(true),
            stall_up: AtomicBool::new(false),
            stall_down: AtomicBool::new(false),
            conns: Mutex::default(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !st.open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let pipe = tokio::spawn(pipe(inbound, st.clone()));
                st.conns.lock().unwrap().push(pipe.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            addr,
            state,
            accept,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drop every connection (no close frame: like a network failure).
    pub fn sever(&self) {
        for c in self.state.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Sever and refuse new connections until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        self.sever();
    }

    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }

    pub fn stall_client_to_server(&self, on: bool) {
        self.state.stall_up.store(on, Ordering::SeqCst);
    }

    pub fn stall_server_to_client(&self, on: bool) {
        self.state.stall_down.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

async fn pipe(inbound: TcpStream, st: Arc<ProxyState>) {
    let Ok(outbound) = TcpStream::connect(st.upstream).await else {
        return;
    };
    let (mut cr, mut cw) = inbound.into_split();
    let (mut sr, mut sw) = outbound.into_split();
    tokio::select! {
        _ = forward(&mut cr, &mut sw, &st.stall_up) => {}
        _ = forward(&mut sr, &mut cw, &st.stall_down) => {}
    }
}

/// Copy bytes until either side closes, holding them while `stall` is set.
async fn forward(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    stall: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stall.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
