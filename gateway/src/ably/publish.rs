//! `POST /channels/{name}/messages`: one message or a batch, idempotent by
//! message id, to a channel created on first use.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::broker::SendRequest;
use switchboard_proto::frames::MAX_FRAME_BYTES;
use switchboard_proto::ids::MsgId;

use super::AblyError;
use super::auth::{Caller, authenticate, channel_id};
use super::message::{msg_id_of, parse_publish};
use crate::state::AppRef;

/// Largest publish body: a full batch of small messages, or a few large
/// ones (each message is at most 32 KiB of JSON).
pub const MAX_PUBLISH_BYTES: usize = 1024 * 1024;

/// The answer to a publish.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Published {
    pub channel: String,
    /// The first message's id.
    #[serde(rename = "messageId")]
    pub message_id: String,
    /// Each message's seq, as text.
    pub serials: Vec<String>,
}

/// `POST /channels/{name}/messages`.
pub async fn publish(
    State(state): State<AppRef>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AblyError> {
    let caller = authenticate(&state, &headers).await?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AblyError::new(
                40009,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_PUBLISH_BYTES} bytes"),
            )
        } else {
            AblyError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    })?;
    let id = channel_id(&name)?;
    let list = parse_publish(&body)?;
    if let Caller::Key(k) = &caller
        && !k.allows(&name)
    {
        // Refused before the channel would be created.
        return Err(AblyError::refused(format!(
            "{} may not publish to channel {name}",
            caller.describe()
        )));
    }
    let channel = state.chat.channel_or_create(&id, caller.creator()).await?;
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
        if text.len() > MAX_FRAME_BYTES / 2 {
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
        let out = state.chat.send(req).await?;
        serials.push(out.message.seq.to_string());
        state.chat.fan_out(out, None).await;
    }
    let answer = Published {
        channel: name,
        message_id: first_id.unwrap_or_default(),
        serials,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
