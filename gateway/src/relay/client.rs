//! The relay's HTTP API, as Ably serves it and as every Switchboard gateway
//! serves it too (`crate::ably`): publish with `POST /channels/{name}/messages`
//! and subscribe with `GET /sse?channels={name}`, authenticated with HTTP
//! Basic and the API key. Hosts are tried in turn: the primary ones in
//! order, then the fallback ones; the host that last answered is tried
//! first next time, so a dead primary costs one timeout, not one per call.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::config::{RelayConfig, RelayHost};
use super::sse::{SseError, SseParser};
use super::wire::{EVENT_NAME, MAX_ENVELOPE_BYTES};

/// One publish attempt on one host gives up after this long.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting to a host (TCP and TLS) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A subscription that brings nothing, not even a keep-alive, for this
/// long is considered dead (Switchboard sends one every 15 s, Ably too).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay host {host}: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("relay host {host} refused the request with {status}: {message}")]
    Refused {
        host: String,
        status: u16,
        message: String,
    },
    #[error("relay stream from {host}: {detail}")]
    Stream { host: String, detail: String },
    #[error("relay stream from {host} closed: {detail}")]
    Closed { host: String, detail: String },
}

impl RelayError {
    /// Worth trying the next host: the host did not answer, or answered
    /// that it is in trouble. A refusal (bad key, forbidden channel) would be
    /// the same everywhere.
    fn try_next(&self) -> bool {
        match self {
            RelayError::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => true,
        }
    }
}

/// A client of one relay channel.
pub struct RelayClient {
    /// For publishes: each attempt bounded by [`PUBLISH_TIMEOUT`].
    publish: reqwest::Client,
    /// For the long-lived subscription: connect timeout only.
    stream: reqwest::Client,
    /// Primary hosts in order, then the fallback ones.
    hosts: Vec<RelayHost>,
    scheme: &'static str,
    auth: Option<HeaderValue>,
    channel: String,
    /// Index in `hosts` of the one that answered last.
    preferred: AtomicUsize,
}

impl RelayClient {
    pub fn new(cfg: &RelayConfig, channel: String) -> Result<Self, RelayError> {
        let build = |b: reqwest::ClientBuilder| {
            b.connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| RelayError::Unreachable {
                    host: "-".into(),
                    detail: format!("cannot build an HTTP client: {e}"),
                })
        };
        let auth = match cfg.api_key() {
            Some(key) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(key.expose());
                let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
                    RelayError::Refused {
                        host: "-".into(),
                        status: 0,
                        message: "the relay API key cannot be sent in a header".into(),
                    }
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut fallback = cfg.fallback_hosts().to_vec();
        {
            use rand::seq::SliceRandom;
            fallback.shuffle(&mut rand::rng());
        }
        Ok(RelayClient {
            publish: build(reqwest::Client::builder().timeout(PUBLISH_TIMEOUT))?,
            stream: build(reqwest::Client::builder())?,
            hosts: cfg.hosts().iter().cloned().chain(fallback).collect(),
            scheme: if cfg.tls() { "https" } else { "http" },
            auth,
            channel,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Hosts in the order to try them: the one that answered last first.
    fn order(&self) -> impl Iterator<Item = (usize, &RelayHost)> {
        let start = self.preferred.load(Ordering::Relaxed) % self.hosts.len().max(1);
        (0..self.hosts.len()).map(move |i| {
            let at = (start + i) % self.hosts.len();
            (at, &self.hosts[at])
        })
    }

    fn url(&self, host: &RelayHost, path: &str) -> String {
        format!("{}://{host}{path}", self.scheme)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(v) => req.header(AUTHORIZATION, v.clone()),
            None => req,
        }
    }

    /// Publish one envelope (`data`) as the relay message `id` (the relay
    /// keeps one per id, so a retry on another host is harmless).
    pub async fn publish(&self, id: &str, data: &str) -> Result<(), RelayError> {
        let body = json!({"id": id, "name": EVENT_NAME, "data": data});
        let path = format!("/channels/{}/messages", self.channel);
        let mut last = None;
        for (at, host) in self.order() {
            let req = self
                .authorized(self.publish.post(self.url(host, &path)))
                .json(&body);
            let err = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(resp) => refused(host, resp).await,
                Err(e) => unreachable(host, &e),
            };
            if !err.try_next() {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| RelayError::Unreachable {
            host: "-".into(),
            detail: "no relay hosts".into(),
        }))
    }

    /// Open the subscription to the channel (new messages only), on the
    /// first host that accepts it.
    pub async fn subscribe(&self) -> Result<Subscription, RelayError> {
        let path = format!("/sse?channels={}&v=1.2&enveloped=true", self.channel);
        let mut last = None;
        for (at, host) in self.order() {
            let req = self
                .authorized(self.stream.get(self.url(host, &path)))
                .header(ACCEPT, "text/event-stream");
            let err = match req.send().await {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(Subscription {
                        host: host.to_string(),
                        resp,
                        parser: SseParser::new(MAX_ENVELOPE_BYTES + 64 * 1024),
                        ready: VecDeque::new(),
                        closed: None,
                    });
                }
                Ok(resp) => refused(host, resp).await,
                Err(e) => unreachable(host, &e),
            };
            if !err.try_next() {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| RelayError::Unreachable {
            host: "-".into(),
            detail: "no relay hosts".into(),
        }))
    }
}

fn unreachable(host: &RelayHost, e: &reqwest::Error) -> RelayError {
    // reqwest's Display leaves out the cause (connection refused, timeout).
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    RelayError::Unreachable {
        host: host.to_string(),
        detail,
    }
}

/// The relay's refusal, with its message when the body is an Ably
/// `ErrorInfo` (read bounded).
async fn refused(host: &RelayHost, resp: reqwest::Response) -> RelayError {
    #[derive(Deserialize)]
    struct Body {
        error: Info,
    }
    #[derive(Deserialize)]
    struct Info {
        message: String,
    }
    let status = resp.status().as_u16();
    let mut text = Vec::new();
    let mut resp = resp;
    while let Ok(Some(chunk)) = resp.chunk().await {
        text.extend_from_slice(&chunk);
        if text.len() > 4096 {
            break;
        }
    }
    let message = serde_json::from_slice::<Body>(&text)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned());
    RelayError::Refused {
        host: host.to_string(),
        status,
        message,
    }
}

/// An open subscription: yields the `data` of each relay message named
/// [`EVENT_NAME`].
pub struct Subscription {
    host: String,
    resp: reqwest::Response,
    parser: SseParser,
    /// Envelopes read but not yet handed out, oldest first.
    ready: VecDeque<String>,
    /// The relay closed the stream after the envelopes in `ready`.
    closed: Option<RelayError>,
}

impl Subscription {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The next envelope text. An error ends the subscription (the caller
    /// opens a new one).
    pub async fn next(&mut self) -> Result<String, RelayError> {
        #[derive(Deserialize)]
        struct AblyMessage {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            data: Option<serde_json::Value>,
        }
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(d);
            }
            if let Some(e) = self.closed.take() {
                return Err(e);
            }
            let chunk = match tokio::time::timeout(IDLE_TIMEOUT, self.resp.chunk()).await {
                Err(_) => return Err(self.stream_error(format!("nothing for {IDLE_TIMEOUT:?}"))),
                Ok(Err(e)) => return Err(self.stream_error(e.to_string())),
                Ok(Ok(None)) => return Err(self.stream_error("ended".into())),
                Ok(Ok(Some(c))) => c,
            };
            let events = self
                .parser
                .push(&chunk)
                .map_err(|e: SseError| self.stream_error(e.to_string()))?;
            for ev in events {
                match ev.event.as_str() {
                    "message" => {
                        let Ok(m) = serde_json::from_str::<AblyMessage>(&ev.data) else {
                            tracing::warn!(host = %self.host, "unreadable relay message skipped");
                            continue;
                        };
                        if m.name.as_deref() != Some(EVENT_NAME) {
                            continue;
                        }
                        if let Some(serde_json::Value::String(d)) = m.data {
                            self.ready.push_back(d);
                        }
                    }
                    "error" | "close" => {
                        self.closed = Some(RelayError::Closed {
                            host: self.host.clone(),
                            detail: ev.data.chars().take(200).collect(),
                        });
                        break;
                    }
                    _ => {}
                }
            }
        }
    }

    fn stream_error(&self, detail: String) -> RelayError {
        RelayError::Stream {
            host: self.host.clone(),
            detail,
        }
    }
}
