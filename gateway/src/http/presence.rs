//! `GET /v1/presence?users=a,b,c`: status and last-seen time of up to 100
//! users, for a contact list.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_proto::rest::{PresenceEntry, PresenceMap};

use super::auth::Authed;
use super::params::{addresses, query};
use super::problem::ApiError;
use crate::service::MAX_PRESENCE_USERS;
use crate::state::AppRef;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// Comma-separated addresses, at most `x-maxAddresses`.
    #[schemars(extend("x-maxAddresses" = MAX_PRESENCE_USERS))]
    users: String,
}

pub async fn presence(
    State(state): State<AppRef>,
    Authed(_): Authed,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<PresenceMap>, ApiError> {
    let q = query(q)?;
    let listed: Vec<&str> = q.users.split(',').filter(|s| !s.is_empty()).collect();
    if listed.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(format!(
            "users must list 1 to {MAX_PRESENCE_USERS} comma-separated addresses"
        )));
    }
    let users = addresses("users", &listed, MAX_PRESENCE_USERS)?;
    let answer = state.chat.presence(users).await?;
    Ok(Json(
        answer
            .into_iter()
            .map(|(u, status, seen)| {
                let entry = PresenceEntry {
                    status,
                    last_seen: (seen > 0).then_some(seen),
                };
                (u.checksummed(), entry)
            })
            .collect(),
    ))
}
