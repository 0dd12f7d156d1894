//! `POST /v1/channels`: create the channel `ch:<name>`, owned (and
//! publishable) by the caller.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use switchboard_proto::rest::CreateChannel;

use super::auth::Authed;
use super::params::{addresses, body};
use super::problem::ApiError;
use crate::service::{Creator, MAX_PUBLISHERS, NewChannel};
use crate::state::AppRef;

pub async fn create(
    State(state): State<AppRef>,
    Authed(user): Authed,
    b: Result<Json<CreateChannel>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let b = body(b)?;
    let new = NewChannel {
        publishers: addresses("publishers", &b.publishers, MAX_PUBLISHERS)?,
        members: addresses("members", &b.members, state.cfg.max_group_members)?,
        name: b.name,
        title: b.title,
        visibility: b.visibility,
    };
    let created = state
        .chat
        .create_channel(Creator::Wallet(user), new)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}
