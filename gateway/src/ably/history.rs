//! `GET /channels/{name}/messages`: a channel's history, newest first by
//! default, in pages linked with `Link: <./messages?…>; rel="next"` as Ably
//! clients expect.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::header::LINK;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_proto::frames::Message;

use super::AblyError;
use super::auth::{authenticate, channel_id};
use super::message::{OutMessage, ably_message};
use crate::state::AppRef;

/// Messages per history page, unless asked otherwise.
const DEFAULT_LIMIT: usize = 100;
/// The most one page holds.
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct HistoryQuery {
    /// Messages per page.
    #[schemars(range(min = 1, max = MAX_LIMIT), extend("default" = DEFAULT_LIMIT))]
    limit: Option<usize>,
    /// Newest first (`backwards`, the default) or oldest first.
    #[schemars(extend("enum" = ["backwards", "forwards"]))]
    direction: Option<String>,
    /// Only messages at or after this time (Unix ms).
    start: Option<u64>,
    /// Only messages at or before this time (Unix ms).
    end: Option<u64>,
    /// Page cursor of a `Link: rel="next"` header (a seq, exclusive).
    before_seq: Option<u64>,
    /// Page cursor of a `Link: rel="next"` header (a seq, exclusive).
    after_seq: Option<u64>,
}

/// `GET /channels/{name}/messages`.
pub async fn history(
    State(state): State<AppRef>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, AblyError> {
    let caller = authenticate(&state, &headers).await?;
    let id = channel_id(&name)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AblyError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
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
    let Some(channel) = state.chat.channel(&id).await? else {
        // An unused channel has an empty history.
        return Ok(Json(Vec::<OutMessage>::new()).into_response());
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
            None => state.chat.last_seq(&id).await?.saturating_add(1),
        };
        (before.saturating_sub(limit as u64 + 1), Some(before))
    };
    let page = state.chat.replay(&id, after, limit).await?;
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
    let items: Vec<OutMessage> = msgs.iter().map(ably_message).collect();
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
