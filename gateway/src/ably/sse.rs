//! `GET /sse` and `GET /event-stream`: Ably's SSE subscribe, on the shared
//! SSE reader with Ably's event format: `id:` a cursor over every channel
//! of the stream (`<name>@<seq>|…`, what a reconnect passes back as
//! `lastEvent` / `Last-Event-ID`), `data:` the Ably message with its
//! `channel` (enveloped), or only its `data`.

use std::collections::HashMap;

use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use switchboard_proto::frames::ServerFrame;

use super::AblyError;
use super::auth::{Caller, authenticate, channel_id, key_of, session};
use super::message::ably_message;
use crate::limits::ClientAddr;
use crate::sse::{EventFormat, Feed, Reader};
use crate::state::AppRef;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SseQuery {
    /// Comma-separated channel names, at most `x-maxChannels`.
    #[schemars(extend("x-maxChannels" = MAX_SSE_CHANNELS))]
    channels: Option<String>,
    /// One channel name (instead of `channels`).
    channel: Option<String>,
    /// An API key `keyName:keySecret` (instead of Basic auth).
    key: Option<String>,
    /// A session token (instead of a Bearer header).
    #[serde(rename = "accessToken")]
    access_token: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header wins).
    #[serde(rename = "lastEvent")]
    last_event: Option<String>,
    /// Start this many messages back on each channel.
    rewind: Option<u64>,
    /// Each event's data is the message with its channel (true, the
    /// default), or only the message's data.
    enveloped: Option<bool>,
    /// The protocol version Ably clients send (`1.2`); accepted, unused.
    #[serde(rename = "v")]
    _v: Option<String>,
}

/// Channels one Ably SSE stream may follow.
pub const MAX_SSE_CHANNELS: usize = 100;

/// Channels one SSE request may create (the rest must exist).
pub const MAX_SSE_CREATES: usize = 10;

/// `GET /sse` and `GET /event-stream`: Ably's SSE subscribe. `channels`
/// (comma list, or `channel`), `key` (or Basic auth), `lastEvent` (or the
/// `Last-Event-ID` header) to resume, `rewind=N` to start N messages back
/// per channel, `enveloped` (default true). Without `lastEvent` or `rewind`
/// only new messages come.
pub async fn sse(
    State(state): State<AppRef>,
    Extension(addr): Extension<ClientAddr>,
    Query(q): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, AblyError> {
    let caller = match (&q.key, &q.access_token) {
        (Some(k), _) => Caller::Key(key_of(&state, k)?),
        (None, Some(t)) => session(&state, t).await?,
        (None, None) => authenticate(&state, &headers).await?,
    };
    // The connection caps, before any channel is read or created. An API
    // key is the operator's (trusted like the server): its streams count
    // against the address and the gateway, not a per-user cap.
    let slot = match &caller {
        Caller::Key(_) => state.limits.open(addr)?,
        Caller::User(p) => state.limits.connect(addr, p.user)?,
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
    let resume: HashMap<&str, u64> = last_event
        .as_deref()
        .map(|c| {
            c.split('|')
                .filter_map(|part| part.rsplit_once('@'))
                .filter_map(|(n, seq)| Some((n, seq.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut feeds = Vec::with_capacity(names.len());
    let mut created = 0;
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
        let channel = match state.chat.channel(&id).await? {
            Some(c) => c,
            None => {
                // Creating is the expensive part (a store row, a broker
                // copy): a stream names at most a few channels that are new.
                created += 1;
                if created > MAX_SSE_CREATES {
                    return Err(AblyError::bad_request(format!(
                        "at most {MAX_SSE_CREATES} new channels per stream request"
                    )));
                }
                state.chat.channel_or_create(&id, caller.creator()).await?
            }
        };
        if !caller.may_read(name, &channel) {
            return Err(AblyError::refused(format!(
                "{} may not subscribe to channel {name}",
                caller.describe()
            )));
        }
        let after = match resume.get(name) {
            Some(seq) => *seq,
            None => {
                let last = state.chat.last_seq(&id).await?;
                last.saturating_sub(if last_event.is_none() {
                    q.rewind.unwrap_or(0)
                } else {
                    0
                })
            }
        };
        feeds.push((id, after));
    }
    let format = AblyFormat {
        enveloped: q.enveloped.unwrap_or(true),
    };
    let reader = Reader::open(
        &state,
        slot,
        caller.address(),
        caller.session(),
        feeds,
        format,
    )
    .await?;
    Ok(reader.into_response().into_response())
}

/// Ably's events: the message (enveloped with its channel, or its `data`
/// alone), with the stream's cursor as the event id.
struct AblyFormat {
    enveloped: bool,
}

impl EventFormat for AblyFormat {
    fn message(&self, feeds: &[Feed], i: usize, _seq: u64, frame: &str) -> Option<Event> {
        let Ok(ServerFrame::Msg(m)) = ServerFrame::from_json(frame) else {
            return None;
        };
        let name = feeds[i].conv.channel_name().unwrap_or_default();
        let mut out = ably_message(&m);
        let data = if self.enveloped {
            out.channel = Some(name.to_string());
            serde_json::to_string(&out).unwrap_or_default()
        } else {
            match out.fields.data {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            }
        };
        Some(
            Event::default()
                .id(cursor(feeds))
                .event("message")
                .data(data),
        )
    }

    fn synced_after_replay(&self) -> bool {
        false
    }
}

/// Where every feed stands, `<name>@<seq>|…`: the id a reconnect passes back.
fn cursor(feeds: &[Feed]) -> String {
    feeds
        .iter()
        .map(|f| {
            format!(
                "{}@{}",
                f.conv.channel_name().unwrap_or_default(),
                f.cursor.last()
            )
        })
        .collect::<Vec<_>>()
        .join("|")
}
