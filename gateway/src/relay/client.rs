//! The relay's HTTP API, as Ably serves it and as every Switchboard gateway
//! serves it too (`crate::ably`): publish with `POST /channels/{name}/messages`
//! and subscribe with `GET /sse?channels={name}`, authenticated with HTTP
//! Basic and the API key. Hosts are tried in turn: the primary ones in
//! order, then the fallback ones; the host that last answered is tried
//! first next time, so a dead primary costs one timeout, not one per call.
//!
//! HTTP is hyper's client with rustls (ring) and the platform's trust store,
//! the same choices as the Rust SDK (docs/architecture.md says why not
//! reqwest).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;

use super::config::{RelayConfig, RelayHost};
use super::sse::{SseError, SseParser};
use super::wire::{EVENT_NAME, MAX_ENVELOPE_BYTES};

type Http = LegacyClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    http: Http,
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
        let setup = |detail: String| RelayError::Unreachable {
            host: "-".into(),
            detail,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(format!("TLS versions: {e}")))?;
        let tls = if cfg.tls() {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| setup(format!("no trusted CA certificates for the relay: {e}")))?;
            versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        } else {
            // `tls: false`: URLs are http://, this is never used.
            versions
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let auth = match cfg.api_key() {
            Some(key) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(key.expose());
                let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| setup("the relay API key cannot be sent in a header".into()))?;
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
            http: LegacyClient::builder(TokioExecutor::new()).build(connector),
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

    fn request(
        &self,
        method: Method,
        host: &RelayHost,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, RelayError> {
        let mut req = Request::builder().method(method).uri(self.url(host, path));
        if let Some(v) = &self.auth {
            req = req.header(AUTHORIZATION, v.clone());
        }
        req = if body.is_some() {
            req.header(CONTENT_TYPE, "application/json")
        } else {
            req.header(ACCEPT, "text/event-stream")
        };
        req.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RelayError::Unreachable {
                host: host.to_string(),
                detail: format!("bad request: {e}"),
            })
    }

    /// Publish one envelope (`data`) as the relay message `id` (the relay
    /// keeps one per id, so a retry on another host is harmless).
    pub async fn publish(&self, id: &str, data: &str) -> Result<(), RelayError> {
        let body = json!({"id": id, "name": EVENT_NAME, "data": data}).to_string();
        let path = format!("/channels/{}/messages", self.channel);
        self.first_answer(Method::POST, &path, Some(body.as_bytes()), |s| {
            s.is_success()
        })
        .await
        .map(|_| ())
    }

    /// Open the subscription to the channel (new messages only), on the
    /// first host that accepts it.
    pub async fn subscribe(&self) -> Result<Subscription, RelayError> {
        let path = format!("/sse?channels={}&v=1.2&enveloped=true", self.channel);
        let (host, resp) = self
            .first_answer(Method::GET, &path, None, |s| s == StatusCode::OK)
            .await?;
        Ok(Subscription {
            host,
            body: resp.into_body(),
            parser: SseParser::new(MAX_ENVELOPE_BYTES + 64 * 1024),
            ready: VecDeque::new(),
            closed: None,
        })
    }

    /// Send the request to the hosts in turn until one answers with a
    /// status `ok` accepts (it becomes the preferred host); a refusal that
    /// would be the same everywhere ends the round at once.
    async fn first_answer(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        ok: impl Fn(StatusCode) -> bool,
    ) -> Result<(String, Response<Incoming>), RelayError> {
        let mut last = None;
        for (at, host) in self.order() {
            let req = self.request(method.clone(), host, path, body.map(<[u8]>::to_vec))?;
            let err = match tokio::time::timeout(PUBLISH_TIMEOUT, self.http.request(req)).await {
                Ok(Ok(resp)) if ok(resp.status()) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok((host.to_string(), resp));
                }
                Ok(Ok(resp)) => refused(host, resp).await,
                Ok(Err(e)) => unreachable(host, &e),
                Err(_) => RelayError::Unreachable {
                    host: host.to_string(),
                    detail: format!("no answer within {PUBLISH_TIMEOUT:?}"),
                },
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

fn unreachable(host: &RelayHost, e: &(dyn StdError + 'static)) -> RelayError {
    // The client's Display leaves out the cause (connection refused, a
    // certificate the platform does not trust).
    let mut detail = e.to_string();
    let mut source = e.source();
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
async fn refused(host: &RelayHost, resp: Response<Incoming>) -> RelayError {
    #[derive(Deserialize)]
    struct Body {
        error: Info,
    }
    #[derive(Deserialize)]
    struct Info {
        message: String,
    }
    let status = resp.status().as_u16();
    let read = Limited::new(resp.into_body(), 4096).collect();
    let text = match tokio::time::timeout(PUBLISH_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
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
    body: Incoming,
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
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, self.body.frame()).await {
                Err(_) => return Err(self.stream_error(format!("nothing for {IDLE_TIMEOUT:?}"))),
                Ok(Some(Err(e))) => return Err(self.stream_error(e.to_string())),
                Ok(None) => return Err(self.stream_error("ended".into())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
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
