//! Conversation REST: listing, history with delivery status, membership, and
//! bulk presence. With a store (PostgreSQL) it is the source of truth for
//! groups and the listing; without one (the embedded default) the broker
//! answers the same requests from what it holds.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_core::protocol::{ErrorCode, PresenceStatus};
use switchboard_core::store::{
    ConversationSummary, ListCursor, Member, Role, StoreError, UNREAD_CAP,
};
use switchboard_core::time::now_ms;

use crate::history::{HistoryError, replay};
use crate::presence::status_for;
use crate::problem::ApiError;
use crate::rest::{AppRef, Authed};
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;
const MAX_PRESENCE_USERS: usize = 100;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "store call failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "message store unavailable; retry",
        )
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Broker(e) => e.into(),
            HistoryError::Store(e) => e.into(),
        }
    }
}

fn parse_conv(id: &str) -> Result<ConvId, ApiError> {
    id.parse()
        .map_err(|e| ApiError::bad_request(format!("conversation id: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn limit_of(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Members of `conv` with roles and watermarks, or 404 when it does not
/// exist or `user` is not in it (the two are not distinguished).
async fn members_for(
    state: &AppState,
    conv: &ConvId,
    user: &Address,
) -> Result<Vec<Member>, ApiError> {
    let not_found = || ApiError::not_found("no such conversation");
    if conv.kind() == ConvKind::Channel {
        // Channels track no per-reader state: whoever may read gets the
        // history, without delivery statuses.
        return match state.channel(conv).await? {
            Some(c) if c.can_read(user) => Ok(Vec::new()),
            _ => Err(not_found()),
        };
    }
    let mut members: Vec<Member> = match (&state.store, conv.kind()) {
        (Some(store), ConvKind::Group) => store.members(conv).await?.ok_or_else(not_found)?,
        _ => {
            let c = state
                .broker
                .conversation(conv)
                .await?
                .ok_or_else(not_found)?;
            c.members
                .iter()
                .map(|m| Member {
                    user: *m,
                    role: if Some(*m) == c.created_by {
                        Role::Admin
                    } else {
                        Role::Member
                    },
                    delivered_seq: 0,
                    read_seq: 0,
                })
                .collect()
        }
    };
    if !members.iter().any(|m| m.user == *user) {
        return Err(not_found());
    }
    // Watermarks: the broker has them first (the store gets them through
    // the worker), so read them there for direct conversations and for the
    // broker-only case; groups with a store use the store's copy.
    if state.store.is_none() || conv.kind() == ConvKind::Direct {
        for m in &mut members {
            let w = state.broker.watermarks(conv, &m.user).await?;
            m.delivered_seq = w.delivered;
            m.read_seq = w.read;
        }
    }
    Ok(members)
}

// ---------------------------------------------------------------------------
// GET /v1/conversations

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
pub struct ListPage {
    conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppRef>,
    Authed(user): Authed,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListPage>, ApiError> {
    let q = query(q)?;
    let limit = limit_of(q.limit)?;
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            ListCursor::decode(c)
                .ok_or_else(|| ApiError::bad_request("cursor is not one this server issued"))?,
        ),
    };
    let mut items = match &state.store {
        Some(store) => {
            store
                .conversations_of(&user, cursor.as_ref(), limit + 1)
                .await?
        }
        None => broker_list(&state, &user, cursor.as_ref(), limit + 1).await?,
    };
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|c| {
            ListCursor {
                active_at: c.active_at,
                id: c.id.to_string(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Json(ListPage {
        conversations: items,
        next_cursor,
    }))
}

/// The listing from the broker alone (embedded default): every
/// conversation's last seq, the caller's read mark and the newest message
/// time, sorted in memory. Fine for a development server's handful.
async fn broker_list(
    state: &AppState,
    user: &Address,
    before: Option<&ListCursor>,
    limit: usize,
) -> Result<Vec<ConversationSummary>, ApiError> {
    let mut out = Vec::new();
    for id in state.broker.user_conversations(user).await? {
        let Some(c) = state.broker.conversation(&id).await? else {
            continue;
        };
        let page = state.broker.read_log(&id, u64::MAX - 1, 1).await?;
        let last_seq = page.last_seq;
        let newest = state
            .broker
            .read_log(&id, last_seq.saturating_sub(1), 1)
            .await?;
        let read_seq = state.broker.watermarks(&id, user).await?.read;
        let unread = state
            .broker
            .read_log(&id, read_seq, UNREAD_CAP as usize)
            .await?
            .messages
            .iter()
            .filter(|m| m.from != *user)
            .count() as u64;
        out.push(ConversationSummary {
            kind: c.kind,
            title: c.title,
            last_seq,
            read_seq,
            unread,
            active_at: newest.messages.first().map_or(c.created_at, |m| m.ts),
            id,
        });
    }
    out.sort_by(|a, b| (b.active_at, b.id.as_str()).cmp(&(a.active_at, a.id.as_str())));
    if let Some(c) = before {
        out.retain(|s| (s.active_at, s.id.as_str()) < (c.active_at, c.id.as_str()));
    }
    out.truncate(limit);
    Ok(out)
}

// ---------------------------------------------------------------------------
// GET /v1/conversations/{id}/messages

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// Delivery status of the caller's own messages, from the other members'
/// watermarks: `read` when every other member has read it, `delivered` when
/// it reached a device of every other member, else `sent`.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Sent,
    Delivered,
    Read,
}

#[derive(Serialize)]
pub struct HistoryItem {
    conv: ConvId,
    seq: u64,
    id: MsgId,
    from: Address,
    body: Box<RawValue>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(Serialize)]
pub struct HistoryPage {
    messages: Vec<HistoryItem>,
    /// The conversation's last seq.
    last_seq: u64,
}

pub async fn history(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let conv = parse_conv(&id)?;
    let q = query(q)?;
    let limit = limit_of(q.limit)?;
    let members = members_for(&state, &conv, &user).await?;
    if let (Some(a), Some(b)) = (q.after, q.before)
        && b <= a
    {
        return Err(ApiError::bad_request("before must be greater than after"));
    }
    // `after` pages forwards (oldest first); `before` alone, or nothing,
    // gives the newest `limit` messages below it — what a chat view opens on.
    let (after, before) = match (q.after, q.before) {
        (Some(a), b) => (a, b),
        (None, b) => {
            let before = match b {
                Some(b) => b,
                None => {
                    state
                        .broker
                        .read_log(&conv, u64::MAX - 1, 1)
                        .await?
                        .last_seq
                        + 1
                }
            };
            (before.saturating_sub(limit as u64 + 1), Some(before))
        }
    };
    let want = match before {
        Some(b) => limit.min(b.saturating_sub(after + 1) as usize),
        None => limit,
    };
    let page = if want == 0 {
        Default::default()
    } else {
        replay(&state, &conv, after, want).await?
    };
    let others: Vec<&Member> = members.iter().filter(|m| m.user != user).collect();
    let status_of = |seq: u64| {
        if others.iter().all(|m| m.read_seq >= seq) {
            Status::Read
        } else if others
            .iter()
            .all(|m| m.delivered_seq.max(m.read_seq) >= seq)
        {
            Status::Delivered
        } else {
            Status::Sent
        }
    };
    let messages = page
        .messages
        .into_iter()
        .filter(|m| before.is_none_or(|b| m.seq < b))
        .map(|m| HistoryItem {
            status: (m.from == user && conv.kind() != ConvKind::Channel).then(|| status_of(m.seq)),
            conv: m.conv,
            seq: m.seq,
            id: m.id,
            from: m.from,
            body: m.body,
            ts: m.ts,
        })
        .collect();
    Ok(Json(HistoryPage {
        messages,
        last_seq: page.last_seq,
    }))
}

// ---------------------------------------------------------------------------
// POST /v1/conversations/{id}/members, DELETE …/members/{address}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    members: Vec<String>,
}

async fn require_group_admin(
    state: &AppState,
    conv: &ConvId,
    user: &Address,
) -> Result<Vec<Member>, ApiError> {
    if conv.kind() != ConvKind::Group {
        return Err(ApiError::bad_request(
            "direct conversations have exactly their two members",
        ));
    }
    let members = members_for(state, conv, user).await?;
    let admin = members
        .iter()
        .any(|m| m.user == *user && m.role == Role::Admin);
    if !admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "only group admins manage members",
        ));
    }
    Ok(members)
}

pub async fn add_members(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
    b: Result<Json<AddMembers>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let conv = parse_conv(&id)?;
    let b = b
        .map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut users = Vec::with_capacity(b.members.len());
    for (i, m) in b.members.iter().enumerate() {
        let a: Address = m
            .parse()
            .map_err(|e| ApiError::bad_request(format!("members[{i}]: {e}")))?;
        if !users.contains(&a) {
            users.push(a);
        }
    }
    if users.is_empty() {
        return Err(ApiError::bad_request(
            "members must name at least one address",
        ));
    }
    let members = require_group_admin(&state, &conv, &user).await?;
    let new: Vec<Address> = users
        .into_iter()
        .filter(|u| !members.iter().any(|m| m.user == *u))
        .collect();
    if members.len() + new.len() > state.cfg.max_group_members {
        return Err(ApiError::bad_request(format!(
            "a group has at most {} members ({} now, {} to add)",
            state.cfg.max_group_members,
            members.len(),
            new.len()
        )));
    }
    // The store first: it is the source of truth; the broker's set is the
    // cache the send script checks.
    if let Some(store) = &state.store {
        store.add_members(&conv, &new).await?;
    }
    state.broker.add_members(&conv, &new).await?;
    state.invalidate_members(&conv);
    Ok((StatusCode::OK, Json(serde_json::json!({ "added": new }))))
}

pub async fn remove_member(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path((id, address)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conv = parse_conv(&id)?;
    let target: Address = address
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
    // Anyone may leave; only admins remove others.
    if target != user {
        require_group_admin(&state, &conv, &user).await?;
    } else if conv.kind() != ConvKind::Group {
        return Err(ApiError::bad_request(
            "direct conversations have exactly their two members",
        ));
    } else {
        members_for(&state, &conv, &user).await?;
    }
    let removed_store = match &state.store {
        Some(store) => store.remove_member(&conv, &target).await?,
        None => false,
    };
    let removed_broker = state.broker.remove_member(&conv, &target).await?;
    state.invalidate_members(&conv);
    if removed_store || removed_broker {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("not a member of this conversation"))
    }
}

// ---------------------------------------------------------------------------
// GET /v1/presence?users=a,b,c

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    users: String,
}

#[derive(Serialize)]
pub struct PresenceEntry {
    status: PresenceStatus,
    /// Unix ms; absent when never seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

pub async fn presence(
    State(state): State<AppRef>,
    Authed(_): Authed,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<HashMap<String, PresenceEntry>>, ApiError> {
    let q = query(q)?;
    let mut users = Vec::new();
    for (i, u) in q.users.split(',').filter(|s| !s.is_empty()).enumerate() {
        let a: Address = u
            .trim()
            .parse()
            .map_err(|e| ApiError::bad_request(format!("users[{i}]: {e}")))?;
        if !users.contains(&a) {
            users.push(a);
        }
    }
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(format!(
            "users must list 1 to {MAX_PRESENCE_USERS} comma-separated addresses"
        )));
    }
    let seen = state.broker.last_seen(&users).await?;
    let now = now_ms();
    Ok(Json(
        users
            .iter()
            .zip(seen)
            .map(|(u, t)| {
                (
                    u.checksummed(),
                    PresenceEntry {
                        status: status_for(&state.cfg, t, now),
                        last_seen: (t > 0).then_some(t),
                    },
                )
            })
            .collect(),
    ))
}
