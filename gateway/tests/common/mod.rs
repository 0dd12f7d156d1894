//! Test harness: real gateways on real brokers, and a raw protocol client that
//! speaks the documented JSON frames over a real WebSocket.
#![allow(dead_code, clippy::unwrap_used)]

pub mod process;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use switchboard_core::broker::{BrokerConfig, DynBroker, MemoryBroker, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_proto::auth::eip191::{address_of, sign_personal};
use switchboard_proto::auth::siwe::{SignInParams, build_message};
use switchboard_proto::ids::Address;
use switchboard_testkit::{RedisCluster, RedisServer};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMsg;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-sec";

/// Which engine a test runs on. Holds the servers so they live as long as the test.
pub enum Backend {
    Memory(MemoryBroker),
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory(MemoryBroker::default())
    }
    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start().expect("redis-server"))
    }
    pub fn cluster() -> Self {
        Backend::Cluster(RedisCluster::start(3, 1).expect("redis cluster"))
    }
    /// A broker handle; each call on Redis opens a new connection pool, as a
    /// separate gateway process would.
    pub async fn broker(&self) -> DynBroker {
        match self {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Redis(r) => Arc::new(
                RedisBroker::connect(&r.url(), BrokerConfig::default())
                    .await
                    .unwrap(),
            ),
            Backend::Cluster(c) => Arc::new(
                RedisBroker::connect(&c.url(), BrokerConfig::default())
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Short timers so retry and presence tests run in well under a second each.
pub fn fast_config() -> GatewayConfig {
    GatewayConfig {
        token_secret: SECRET.to_vec(),
        ack_timeout: Duration::from_millis(300),
        online_within: Duration::from_millis(400),
        away_within: Duration::from_millis(1200),
        typing_interval: Duration::from_millis(500),
        liveness_interval: Duration::from_millis(500),
        members_cache_ttl: Duration::from_millis(200),
        ..GatewayConfig::default()
    }
}

pub async fn start_gateway(backend: &Backend, cfg: GatewayConfig) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Gateway::start(cfg, backend.broker().await, listener)
        .await
        .unwrap()
}

pub fn http(gw: &Gateway) -> String {
    format!("http://{}", gw.local_addr())
}

pub struct Wallet {
    pub key: SigningKey,
    pub addr: Address,
}

impl Wallet {
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        let key = SigningKey::from_slice(&bytes).unwrap();
        let addr = address_of(key.verifying_key());
        Wallet { key, addr }
    }
}

pub fn siwe_message(domain: &str, addr: Address, nonce: &str, chain_id: u64) -> String {
    build_message(&SignInParams {
        domain: domain.into(),
        address: addr,
        statement: Some("Sign in to Switchboard".into()),
        uri: format!("http://{domain}/"),
        chain_id,
        nonce: nonce.into(),
        issued_at: OffsetDateTime::now_utc(),
        expiration_time: Some(OffsetDateTime::now_utc() + time::Duration::minutes(10)),
    })
}

pub async fn nonce(base: &str) -> String {
    let v: Value = reqwest::get(format!("{base}/v1/auth/nonce"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["nonce"].as_str().unwrap().to_owned()
}

/// POST /v1/auth/verify; returns (status, body).
pub async fn verify(base: &str, message: &str, signature: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/auth/verify"))
        .json(&json!({"message": message, "signature": signature}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Full sign-in; returns the session token.
pub async fn login(base: &str, w: &Wallet) -> String {
    let n = nonce(base).await;
    let msg = siwe_message("localhost", w.addr, &n, 1);
    let sig = sign_personal(&w.key, msg.as_bytes());
    let (status, body) = verify(base, &msg, &sig).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub async fn create_group(base: &str, token: &str, members: &[Address]) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/conversations"))
        .bearer_auth(token)
        .json(&json!({"kind": "group", "members": members, "title": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// A raw protocol client.
pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Ws {
    pub async fn open(gw: &Gateway) -> Ws {
        Ws::open_at(gw.local_addr()).await
    }

    /// Open a socket to the gateway listening on `addr` (one in another
    /// process).
    pub async fn open_at(addr: std::net::SocketAddr) -> Ws {
        let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .unwrap();
        Ws { inner }
    }

    /// Open and authenticate; consumes the `ready` frame.
    pub async fn connect(gw: &Gateway, token: &str) -> Ws {
        Ws::connect_at(gw.local_addr(), token).await
    }

    /// [`Ws::connect`] to the gateway listening on `addr`.
    pub async fn connect_at(addr: std::net::SocketAddr, token: &str) -> Ws {
        let mut ws = Ws::open_at(addr).await;
        ws.send(json!({"type": "auth", "token": token})).await;
        let ready = ws.recv().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        ws
    }

    pub async fn send(&mut self, v: Value) {
        self.inner.send(WsMsg::text(v.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, s: &str) {
        self.inner.send(WsMsg::text(s.to_owned())).await.unwrap();
    }

    /// Next JSON frame; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// Next JSON frame within `d`, or `None`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(d, self.inner.next())
                .await
                .ok()??
                .ok()?;
            match m {
                WsMsg::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                WsMsg::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Next frame of `ty`, skipping others (presence, receipts, ...).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await {
                Some(v) if v["type"] == ty => return v,
                Some(_) => continue,
                None => panic!("no {ty} frame within {WAIT:?}"),
            }
        }
    }

    /// Frames of `ty` arriving within `d`.
    pub async fn collect_type(&mut self, ty: &str, d: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = vec![];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.try_recv(left).await {
                Some(v) if v["type"] == ty => out.push(v),
                Some(_) => {}
                None => return out,
            }
        }
    }

    /// Wait for the server's close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.inner.next()).await.ok()? {
                Some(Ok(WsMsg::Close(Some(CloseFrame { code, .. })))) => return Some(code.into()),
                Some(Ok(WsMsg::Close(None))) | None => return None,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return None,
            }
        }
    }

    pub async fn ack(&mut self, msg: &Value) {
        self.send(json!({"type": "ack", "conv": msg["conv"], "seq": msg["seq"]}))
            .await;
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// An open Server-Sent Events response, parsed as it arrives.
pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
}

impl SseStream {
    /// GET `url` as `text/event-stream`; a non-200 answer comes back as
    /// its status and JSON body.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<SseStream, (u16, Value)> {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            return Err((status, body));
        }
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Ok(SseStream {
            resp,
            buf: String::new(),
        })
    }

    /// The answer's headers.
    pub fn headers(&self) -> &reqwest::header::HeaderMap {
        self.resp.headers()
    }

    /// The next event (comments such as `:keepalive` are skipped).
    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                if ev.event.is_empty() && data.is_empty() {
                    continue; // a comment
                }
                ev.data = data.join("\n");
                return ev;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an SSE event within 10 s")
                .unwrap()
                .expect("the stream is still open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}
