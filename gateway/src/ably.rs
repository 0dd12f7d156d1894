//! The Ably-compatible REST subset, so any Ably REST client can publish to
//! and read history from a Switchboard channel (and another cluster can use
//! this gateway as its fallback relay). What is served:
//!
//! - `POST /channels/{name}/messages`: one message object or an array; the
//!   fields `id`, `name`, `data`, `encoding`, `clientId`, `extras` are kept
//!   (others, such as the SDK's `action` and `size`, are ignored); idempotent
//!   by message `id`; answers `201 {"channel", "messageId", "serials"}`.
//! - `GET /channels/{name}/messages`: history, `limit` (1–1000, default
//!   100), `direction` (`backwards`, the default, or `forwards`), `start` /
//!   `end` (Unix ms, inclusive), pages linked with `Link: <./messages?…>;
//!   rel="next"` as Ably clients expect.
//! - `GET /sse` (and `/event-stream`): Ably's SSE subscribe to one or more
//!   channels, with `rewind` and resume by `lastEvent` / `Last-Event-ID`
//!   (the stream itself is `crate::sse`'s, in its Ably format).
//!
//! **Auth**: HTTP Basic with an API key `keyName:keySecret` from the
//! gateway's configuration (`--api-key`, repeatable). A key may publish to
//! and subscribe to every channel — whatever its publishers and visibility:
//! keys are the operator's, trusted like the server — unless it was
//! configured as `keyName:keySecret:pattern|pattern…` (a channel name, or a
//! prefix ending in `*`), which limits it to matching channels (else 40160).
//! A channel named here that does not exist yet is created as a public
//! channel owned by the caller. `Authorization: Bearer <session token>` (or
//! base64 of it, as Ably SDKs send tokens; `accessToken=` for SSE) calls as
//! the signed-in wallet, with exactly its channel rights. A key acts as the address
//! `keccak256("switchboard-api-key:" + keyName)[12..]` (its messages'
//! `from`). Errors are Ably `ErrorInfo` bodies (`{"error": {"code",
//! "statusCode", "message", "href"}}`, content type exactly
//! `application/json`, plus `x-ably-errorcode` / `x-ably-errormessage`
//! headers): 40101 bad or missing credentials, 40400 unknown key, 40160 the
//! key may not publish to that channel, 40000 bad request, 50000 / 50003
//! server trouble.
//!
//! **Names**: the Ably channel `name` is the Switchboard channel
//! `ch:<name>`, so names are 1–64 characters of `[A-Za-z0-9_.:-]`.
//!
//! **Bodies**: a message published here is stored with a body holding its
//! Ably fields (`{"id","name","data","encoding","clientId","extras"}`, absent
//! ones left out), which is also what WebSocket and SSE subscribers get.
//! History returns such bodies as they were; a message sent over WebSocket
//! comes back as `{"id": <its id>, "data": <its body as JSON text>,
//! "encoding": "json"}`. Each has `timestamp` (the seq's server time) and
//! `serial` (the seq, as text).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LINK};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sha3::{Digest, Keccak256};
use switchboard_core::broker::{BrokerError, Conversation, SendRequest, Visibility};
use switchboard_core::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_core::protocol::Message;
use switchboard_core::time::now_ms;

use crate::rest::AppRef;
use crate::state::AppState;

/// An API key: `keyName:keySecret`, optionally `:pattern|pattern…` to
/// limit it to some channels (a pattern is a channel name, or a prefix
/// ending in `*`). Without patterns it may publish to and subscribe to every
/// channel.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    secret: String,
    /// `None`: every channel.
    channels: Option<Vec<String>>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "ApiKey({})", self.name)
    }
}

/// Why an API key string was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "an API key is keyName:keySecret[:channel|prefix*…], name and secret non-empty and without ':'"
)]
pub struct ApiKeyError;

impl std::str::FromStr for ApiKey {
    type Err = ApiKeyError;
    fn from_str(s: &str) -> Result<Self, ApiKeyError> {
        let mut parts = s.splitn(3, ':');
        let (name, secret) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if name.is_empty() || secret.is_empty() {
            return Err(ApiKeyError);
        }
        let channels = match parts.next() {
            None => None,
            Some(list) => {
                let pats: Vec<String> = list.split('|').map(str::to_string).collect();
                let valid = |p: &str| {
                    let name = p.strip_suffix('*').unwrap_or(p);
                    (p.ends_with('*') && name.is_empty()) || ConvId::channel(name).is_ok()
                };
                if pats.iter().any(|p| !valid(p)) {
                    return Err(ApiKeyError);
                }
                Some(pats)
            }
        };
        Ok(ApiKey {
            name: name.to_string(),
            secret: secret.to_string(),
            channels,
        })
    }
}

impl ApiKey {
    /// The address this key acts as.
    pub fn address(&self) -> Address {
        let h = Keccak256::digest(format!("switchboard-api-key:{}", self.name).as_bytes());
        let mut a = [0u8; 20];
        a.copy_from_slice(&h[12..32]);
        Address(a)
    }

    /// Whether the key may use the channel `name` (publish and subscribe).
    pub fn allows(&self, name: &str) -> bool {
        self.channels.as_ref().is_none_or(|pats| {
            pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => p == name,
            })
        })
    }

    fn secret_matches(&self, secret: &str) -> bool {
        // Length and content compared without an early exit.
        let (a, b) = (self.secret.as_bytes(), secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// An Ably `ErrorInfo` answer.
#[derive(Debug)]
pub struct AblyError {
    code: u32,
    status: StatusCode,
    message: String,
}

impl AblyError {
    fn new(code: u32, status: StatusCode, message: impl Into<String>) -> Self {
        AblyError {
            code,
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(40000, StatusCode::BAD_REQUEST, message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(40101, StatusCode::UNAUTHORIZED, message)
    }
    fn refused(message: impl Into<String>) -> Self {
        Self::new(40160, StatusCode::UNAUTHORIZED, message)
    }
}

impl From<BrokerError> for AblyError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NotMember | BrokerError::NotPublisher => {
                AblyError::refused("the key is not allowed to publish to this channel")
            }
            BrokerError::Unavailable(m) => {
                tracing::warn!(error = %m, "broker unavailable");
                AblyError::new(
                    50003,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "message broker unavailable; retry",
                )
            }
            other => {
                tracing::error!(error = %other, "ably endpoint failed");
                AblyError::new(50000, StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<crate::history::HistoryError> for AblyError {
    fn from(e: crate::history::HistoryError) -> Self {
        match e {
            crate::history::HistoryError::Broker(e) => e.into(),
            crate::history::HistoryError::Store(e) => {
                tracing::warn!(error = %e, "history read failed");
                AblyError::new(
                    50003,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "message history unavailable; retry",
                )
            }
        }
    }
}

impl IntoResponse for AblyError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "statusCode": self.status.as_u16(),
            "message": self.message,
            "href": format!("https://help.ably.io/error/{}", self.code),
        }});
        let mut r = (self.status, body.to_string()).into_response();
        let h = r.headers_mut();
        // Ably clients read the body only for exactly this content type.
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-ably-errorcode", HeaderValue::from(self.code));
        if let Ok(v) = HeaderValue::from_str(&self.message) {
            h.insert("x-ably-errormessage", v);
        }
        r
    }
}

/// Who calls an Ably endpoint: a configured API key, or a signed-in wallet
/// with its session token (Ably's token auth).
#[derive(Debug, Clone)]
enum Caller {
    Key(ApiKey),
    User(Address),
}

impl Caller {
    /// The address it publishes and subscribes as.
    fn address(&self) -> Address {
        match self {
            Caller::Key(k) => k.address(),
            Caller::User(a) => *a,
        }
    }

    fn describe(&self) -> String {
        match self {
            Caller::Key(k) => format!("API key {}", k.name),
            Caller::User(a) => format!("wallet {a}"),
        }
    }

    /// Whether it may publish to `channel` (named `name`): a key by its
    /// patterns, a wallet as a publisher.
    fn may_publish(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(a) => channel.can_publish(a),
        }
    }

    /// Whether it may subscribe to / read `channel`.
    fn may_read(&self, name: &str, channel: &Conversation) -> bool {
        match self {
            Caller::Key(k) => k.allows(name),
            Caller::User(a) => channel.can_read(a),
        }
    }
}

/// The caller of a request: `Authorization: Basic` with an API key, or
/// `Bearer` with a session token (as issued by `/v1/auth/verify`; Ably SDKs
/// send a token base64-encoded, which is accepted too).
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, AblyError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AblyError::unauthorized(
                "no credentials: use HTTP Basic with an API key, or Bearer with a session token",
            )
        })?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return session(state, token.trim());
    }
    let encoded = value.strip_prefix("Basic ").ok_or_else(|| {
        AblyError::unauthorized("use HTTP Basic with an API key, or Bearer with a session token")
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| AblyError::unauthorized("malformed Basic credentials"))?;
    key_of(state, &decoded).map(Caller::Key)
}

/// A session token, as given or base64-encoded.
fn session(state: &AppState, token: &str) -> Result<Caller, AblyError> {
    let now = time::OffsetDateTime::now_utc();
    let err = match state.tokens.verify(token, now) {
        Ok(user) => return Ok(Caller::User(user)),
        Err(e) => e,
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(user) = decoded.and_then(|t| state.tokens.verify(&t, now).ok()) {
        return Ok(Caller::User(user));
    }
    let msg = format!("invalid session token: {err}");
    // Ably's code for an expired token, so SDKs know to renew it.
    let code = if msg.contains("expired") {
        40142
    } else {
        40101
    };
    Err(AblyError::new(code, StatusCode::UNAUTHORIZED, msg))
}

fn channel_id(name: &str) -> Result<ConvId, AblyError> {
    ConvId::channel(name).map_err(|e| AblyError::new(40010, StatusCode::BAD_REQUEST, e.to_string()))
}

/// The channel, created (public, owned by the caller) if it does not exist.
async fn channel_for(
    state: &AppState,
    id: &ConvId,
    caller: &Caller,
) -> Result<Conversation, AblyError> {
    if let Some(c) = state.channel(id).await? {
        return Ok(c);
    }
    let conv = Conversation {
        id: id.clone(),
        kind: ConvKind::Channel,
        title: None,
        members: Vec::new(),
        created_by: Some(caller.address()),
        created_at: now_ms(),
        publishers: Vec::new(),
        visibility: Some(Visibility::Public),
    };
    match state.create_channel(&conv).await {
        // Created by a concurrent request: read theirs.
        Ok(()) | Err(BrokerError::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    state
        .channel(id)
        .await?
        .ok_or_else(|| AblyError::new(50000, StatusCode::INTERNAL_SERVER_ERROR, "channel vanished"))
}

/// One message as an Ably client publishes it.
#[derive(Debug, Deserialize, Serialize)]
struct InMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
    #[serde(default, rename = "clientId", skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extras: Option<Value>,
}

/// The idempotency key of an Ably message id: itself when it fits
/// [`MsgId`]'s alphabet, else a hash of it (Ably ids are base64 and may hold
/// `+` and `/`).
fn msg_id_of(ably_id: &str) -> MsgId {
    ably_id.parse::<MsgId>().unwrap_or_else(|_| {
        let h = Keccak256::digest(ably_id.as_bytes());
        let hex: String = h.iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("a.{hex}")
            .parse()
            .unwrap_or_else(|_| MsgId::random())
    })
}

#[derive(Serialize)]
struct Published {
    channel: String,
    #[serde(rename = "messageId")]
    message_id: String,
    serials: Vec<String>,
}

/// `POST /channels/{name}/messages`.
pub async fn publish(
    State(state): State<AppRef>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AblyError> {
    let caller = authenticate(&state, &headers)?;
    let id = channel_id(&name)?;
    let parsed: Value = serde_json::from_slice(&body)
        .map_err(|e| AblyError::bad_request(format!("the body is not JSON: {e}")))?;
    let list: Vec<InMessage> = match parsed {
        Value::Array(items) => items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>(),
        one @ Value::Object(_) => serde_json::from_value(one).map(|m| vec![m]),
        _ => {
            return Err(AblyError::bad_request(
                "the body must be a message or an array of messages",
            ));
        }
    }
    .map_err(|e| AblyError::bad_request(format!("invalid message: {e}")))?;
    if list.is_empty() {
        return Err(AblyError::bad_request("no messages to publish"));
    }
    if let Caller::Key(k) = &caller
        && !k.allows(&name)
    {
        // Refused before the channel would be created.
        return Err(AblyError::refused(format!(
            "{} may not publish to channel {name}",
            caller.describe()
        )));
    }
    let channel = channel_for(&state, &id, &caller).await?;
    if !caller.may_publish(&name, &channel) {
        return Err(AblyError::refused(format!(
            "{} may not publish to channel {name}",
            caller.describe()
        )));
    }
    let from = caller.address();
    // Messages without ids get `<random>:<index>`, as Ably's SDKs do, so a
    // batch's parts stay distinct.
    let base = MsgId::random();
    let mut serials = Vec::with_capacity(list.len());
    let mut first_id = None;
    for (i, mut m) in list.into_iter().enumerate() {
        let ably_id = m.id.clone().unwrap_or_else(|| format!("{base}:{i}"));
        m.id = Some(ably_id.clone());
        first_id.get_or_insert_with(|| ably_id.clone());
        let text = serde_json::to_string(&m)
            .map_err(|e| AblyError::bad_request(format!("invalid message: {e}")))?;
        if text.len() > switchboard_core::protocol::MAX_FRAME_BYTES / 2 {
            return Err(AblyError::new(
                40009,
                StatusCode::BAD_REQUEST,
                "message too large (at most 32 KiB of JSON)",
            ));
        }
        let body = RawValue::from_string(text)
            .map_err(|e| AblyError::bad_request(format!("invalid message: {e}")))?;
        let req = SendRequest {
            conv: id.clone(),
            id: msg_id_of(&ably_id),
            from,
            body,
            // A key publishes everywhere its patterns allow (checked above);
            // a wallet is held to the channel's publishers by the broker.
            privileged: matches!(caller, Caller::Key(_)),
        };
        let out = crate::history::send(&state, req).await?;
        if !out.duplicate {
            state.metrics.messages_in.inc();
            crate::conn::publish_channel(&state, out.message.clone()).await;
        }
        serials.push(out.message.seq.to_string());
    }
    let answer = Published {
        channel: name,
        message_id: first_id.unwrap_or_default(),
        serials,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
    direction: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    /// Page cursors of the `Link` headers (seq bounds, exclusive).
    before_seq: Option<u64>,
    after_seq: Option<u64>,
}

/// `GET /channels/{name}/messages`.
pub async fn history(
    State(state): State<AppRef>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, AblyError> {
    let caller = authenticate(&state, &headers)?;
    let id = channel_id(&name)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AblyError::bad_request("limit must be 1 to 1000"));
    }
    let forwards = match q.direction.as_deref() {
        None | Some("backwards") => false,
        Some("forwards") => true,
        Some(other) => {
            return Err(AblyError::bad_request(format!(
                "direction must be backwards or forwards, not {other:?}"
            )));
        }
    };
    let (start, end) = (q.start.unwrap_or(0), q.end.unwrap_or(u64::MAX));
    if start > end {
        return Err(AblyError::bad_request("start must not be after end"));
    }
    let Some(channel) = state.channel(&id).await? else {
        // An unused channel has an empty history.
        return Ok(Json(Vec::<Value>::new()).into_response());
    };
    if !caller.may_read(&name, &channel) {
        return Err(AblyError::refused(format!(
            "{} may not read channel {name}",
            caller.describe()
        )));
    }
    let (after, before) = if forwards {
        (q.after_seq.unwrap_or(0), None)
    } else {
        let before = match q.before_seq {
            Some(b) => b,
            None => state.broker.read_log(&id, u64::MAX - 1, 1).await?.last_seq + 1,
        };
        (before.saturating_sub(limit as u64 + 1), Some(before))
    };
    let page = crate::history::replay(&state, &id, after, limit).await?;
    let mut msgs: Vec<Message> = page
        .messages
        .into_iter()
        .filter(|m| before.is_none_or(|b| m.seq < b))
        .collect();
    // The page's seq range decides the next cursor; the time window only
    // filters what is shown.
    let lowest = msgs.first().map(|m| m.seq);
    let highest = msgs.last().map(|m| m.seq);
    let full = msgs.len() >= limit;
    msgs.retain(|m| m.ts >= start && m.ts <= end);
    if !forwards {
        msgs.reverse();
    }
    let items: Vec<Value> = msgs.iter().map(ably_message).collect();
    let mut r = Json(items).into_response();
    let mut keep = vec![format!("limit={limit}")];
    keep.push(format!(
        "direction={}",
        if forwards { "forwards" } else { "backwards" }
    ));
    if let Some(s) = q.start {
        keep.push(format!("start={s}"));
    }
    if let Some(e) = q.end {
        keep.push(format!("end={e}"));
    }
    let next = if forwards {
        highest.filter(|_| full).map(|h| format!("after_seq={h}"))
    } else {
        lowest.filter(|l| *l > 1).map(|l| format!("before_seq={l}"))
    };
    // The time window ends the paging too: nothing older than `start` (or
    // newer than `end`) can follow.
    let past_window = if forwards {
        msgs.last().is_some_and(|m| m.ts > end)
    } else {
        msgs.last().is_some_and(|m| m.ts < start)
    };
    if let Some(cursor) = next.filter(|_| !past_window) {
        let link = format!("<./messages?{}&{cursor}>; rel=\"next\"", keep.join("&"));
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(LINK, v);
        }
    }
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct SseQuery {
    channels: Option<String>,
    channel: Option<String>,
    key: Option<String>,
    #[serde(rename = "accessToken")]
    access_token: Option<String>,
    #[serde(rename = "lastEvent")]
    last_event: Option<String>,
    rewind: Option<u64>,
    enveloped: Option<bool>,
    /// The protocol version Ably clients send (`1.2`); accepted, unused.
    #[serde(rename = "v")]
    _v: Option<String>,
}

/// Channels one Ably SSE stream may follow.
pub const MAX_SSE_CHANNELS: usize = 100;

/// `GET /sse` and `GET /event-stream`: Ably's SSE subscribe. `channels`
/// (comma list, or `channel`), `key` (or Basic auth), `lastEvent` (or the
/// `Last-Event-ID` header) to resume, `rewind=N` to start N messages back
/// per channel, `enveloped` (default true). Without `lastEvent` or `rewind`
/// only new messages come.
pub async fn sse(
    State(state): State<AppRef>,
    Query(q): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, AblyError> {
    let caller = match (&q.key, &q.access_token) {
        (Some(k), _) => Caller::Key(key_of(&state, k)?),
        (None, Some(t)) => session(&state, t)?,
        (None, None) => authenticate(&state, &headers)?,
    };
    let list = q
        .channels
        .as_deref()
        .or(q.channel.as_deref())
        .ok_or_else(|| AblyError::bad_request("no channels: pass channels=a,b"))?;
    let names: Vec<&str> = list.split(',').filter(|n| !n.is_empty()).collect();
    if names.is_empty() || names.len() > MAX_SSE_CHANNELS {
        return Err(AblyError::bad_request(format!(
            "1 to {MAX_SSE_CHANNELS} channels per stream"
        )));
    }
    if state.shutdown.is_cancelled() {
        return Err(AblyError::new(
            50003,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining; reconnect elsewhere",
        ));
    }
    // Where each channel resumes: the cursor of the last event (a header
    // wins over the query, as EventSource sends it on reconnect).
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event.clone());
    let resume: std::collections::HashMap<&str, u64> = last_event
        .as_deref()
        .map(|c| {
            c.split('|')
                .filter_map(|part| part.rsplit_once('@'))
                .filter_map(|(n, seq)| Some((n, seq.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut feeds = Vec::with_capacity(names.len());
    for name in &names {
        let id = channel_id(name)?;
        if let Caller::Key(k) = &caller
            && !k.allows(name)
        {
            return Err(AblyError::refused(format!(
                "{} may not subscribe to channel {name}",
                caller.describe()
            )));
        }
        let channel = channel_for(&state, &id, &caller).await?;
        if !caller.may_read(name, &channel) {
            return Err(AblyError::refused(format!(
                "{} may not subscribe to channel {name}",
                caller.describe()
            )));
        }
        let after = match resume.get(name) {
            Some(seq) => *seq,
            None => {
                let last = state.broker.read_log(&id, u64::MAX - 1, 1).await?.last_seq;
                last.saturating_sub(if last_event.is_none() {
                    q.rewind.unwrap_or(0)
                } else {
                    0
                })
            }
        };
        feeds.push((id, after));
    }
    let format = crate::sse::Format::Ably {
        enveloped: q.enveloped.unwrap_or(true),
    };
    let reader = crate::sse::Reader::open(state.clone(), caller.address(), feeds, format).await?;
    Ok(crate::sse::sse(reader).into_response())
}

/// The configured key `keyName:keySecret` names.
fn key_of(state: &AppState, given: &str) -> Result<ApiKey, AblyError> {
    let (name, secret) = given
        .split_once(':')
        .ok_or_else(|| AblyError::unauthorized("an API key is keyName:keySecret"))?;
    let key = state
        .cfg
        .api_keys
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| AblyError::new(40400, StatusCode::UNAUTHORIZED, "no such API key"))?;
    if !key.secret_matches(secret) {
        return Err(AblyError::unauthorized("invalid API key secret"));
    }
    Ok(key.clone())
}

/// A stored message as an Ably message.
pub(crate) fn ably_message(m: &Message) -> Value {
    let fields = ["id", "name", "data", "encoding", "clientId", "extras"];
    let body: Option<Map<String, Value>> = serde_json::from_str(m.body.get()).ok();
    let mut out = match body {
        // Published through this API: its Ably fields as they came.
        Some(obj) if obj.contains_key("id") && obj.keys().all(|k| fields.contains(&k.as_str())) => {
            obj
        }
        // Anything else: the body as JSON text, which Ably clients decode.
        _ => {
            let mut o = Map::new();
            o.insert("id".into(), json!(m.id.as_str()));
            o.insert("data".into(), json!(m.body.get()));
            o.insert("encoding".into(), json!("json"));
            o
        }
    };
    out.insert("timestamp".into(), json!(m.ts));
    out.insert("serial".into(), json!(m.seq.to_string()));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_print_their_secret() {
        let k: ApiKey = "app.key1:s3cret".parse().unwrap();
        assert_eq!(k.name, "app.key1");
        assert!(k.secret_matches("s3cret"));
        assert!(!k.secret_matches("s3cre"));
        assert!(!format!("{k:?}").contains("s3cret"));
        for bad in ["", "nokey", ":x", "x:"] {
            assert!(bad.parse::<ApiKey>().is_err(), "{bad}");
        }
        assert_eq!(
            k.address(),
            "app.key1:other".parse::<ApiKey>().unwrap().address()
        );
        assert!(k.allows("anything"));
        let limited: ApiKey = "k:s:news|live-*".parse().unwrap();
        assert!(limited.allows("news") && limited.allows("live-42"));
        assert!(!limited.allows("newsy") && !limited.allows("sport"));
        assert!("k:s:bad name".parse::<ApiKey>().is_err());
        assert!("k:s:".parse::<ApiKey>().is_err());
    }

    #[test]
    fn ably_ids_become_message_ids() {
        assert_eq!(msg_id_of("Y03VYTCePv8q:0").as_str(), "Y03VYTCePv8q:0");
        let hashed = msg_id_of("a+b/c==:1");
        assert!(hashed.as_str().starts_with("a."), "{hashed}");
        assert_eq!(hashed, msg_id_of("a+b/c==:1"), "stable");
    }
}
