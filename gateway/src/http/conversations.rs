//! Conversation REST: create and read a group, the caller's list, history
//! with delivery statuses, and membership. The rules (who may, limits, which
//! engine answers) are the chat service's; this file parses and answers.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_proto::ids::ConvKind;
use switchboard_proto::model::{Conversation, ListCursor};
use switchboard_proto::rest::{
    AddMembers, AddedMembers, CreateConversation, HistoryPage, ListPage,
};

use super::auth::Authed;
use super::params::{self, addresses, body, query};
use super::problem::ApiError;
use crate::state::AppRef;

/// `POST /v1/conversations`: a group of the caller and `members`.
pub async fn create(
    State(state): State<AppRef>,
    Authed(user): Authed,
    b: Result<Json<CreateConversation>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let b = body(b)?;
    if b.kind != ConvKind::Group {
        return Err(ApiError::bad_request(
            "only kind \"group\" is created here; direct conversations need no creation (id dm:<addrA>:<addrB>)",
        ));
    }
    let members = addresses("members", &b.members, state.cfg.max_group_members)?;
    let conv = state.chat.create_group(user, members, b.title).await?;
    Ok((StatusCode::CREATED, Json(conv)))
}

/// `GET /v1/conversations/{id}`: members (or, for a channel, readers) only;
/// anyone else gets the same 404 as for a missing conversation.
pub async fn get(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    let id = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    Ok(Json(state.chat.conversation(&id, &user).await?))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Conversations per page.
    #[schemars(range(min = 1, max = params::MAX_LIMIT), extend("default" = params::DEFAULT_LIMIT))]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/conversations`: the caller's conversations, newest activity
/// first, paged by an opaque cursor.
pub async fn list(
    State(state): State<AppRef>,
    Authed(user): Authed,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListPage>, ApiError> {
    let q = query(q)?;
    let limit = params::limit(q.limit)?;
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            ListCursor::decode(c)
                .ok_or_else(|| ApiError::bad_request("cursor is not one this server issued"))?,
        ),
    };
    let (conversations, next) = state.chat.list(&user, cursor.as_ref(), limit).await?;
    Ok(Json(ListPage {
        conversations,
        next_cursor: next.map(|c| c.encode()),
    }))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Messages with a greater seq, oldest first (paging forward).
    after: Option<u64>,
    /// The newest messages with a smaller seq (scrolling up).
    before: Option<u64>,
    /// Messages per page.
    #[schemars(range(min = 1, max = params::MAX_LIMIT), extend("default" = params::DEFAULT_LIMIT))]
    limit: Option<usize>,
}

/// `GET /v1/conversations/{id}/messages`.
pub async fn history(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let conv = params::conv(&id)?;
    let q = query(q)?;
    let limit = params::limit(q.limit)?;
    let page = state
        .chat
        .history_page(&conv, &user, q.after, q.before, limit)
        .await?;
    Ok(Json(page))
}

/// `POST /v1/conversations/{id}/members`: group admins add members.
pub async fn add_members(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path(id): Path<String>,
    b: Result<Json<AddMembers>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let conv = params::conv(&id)?;
    let b = body(b)?;
    let users = addresses("members", &b.members, state.cfg.max_group_members)?;
    if users.is_empty() {
        return Err(ApiError::bad_request(
            "members must name at least one address",
        ));
    }
    let added = state.chat.add_members(&conv, &user, users).await?;
    Ok((StatusCode::OK, Json(AddedMembers { added })))
}

/// `DELETE /v1/conversations/{id}/members/{address}`: anyone may leave; only
/// admins remove others.
pub async fn remove_member(
    State(state): State<AppRef>,
    Authed(user): Authed,
    Path((id, address)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conv = params::conv(&id)?;
    let target = address
        .parse()
        .map_err(|e| ApiError::bad_request(format!("address: {e}")))?;
    state.chat.remove_member(&conv, &user, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}
