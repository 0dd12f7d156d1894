//! A socket that upgraded without `Authorization: Bearer` must send `auth`
//! first, within `auth_timeout`.

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use switchboard_proto::auth::AuthError;
use switchboard_proto::frames::{ClientFrame, ErrorCode, ServerFrame, close};

use crate::limits::Refusal;
use crate::service::Principal;
use crate::state::AppState;

/// Wait for the `auth` frame. Returns the user, or `None` after telling the
/// client why and closing with 4001.
pub async fn authenticate(state: &AppState, socket: &mut WebSocket) -> Option<Principal> {
    let first = tokio::time::timeout(state.cfg.auth_timeout, socket.recv()).await;
    let reason = match first {
        Err(_) => "no auth frame within the time limit",
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(WsMessage::Text(t)))) => match ClientFrame::from_json(&t) {
            Ok(ClientFrame::Auth { token }) => match state.chat.authenticate(&token).await {
                Ok(caller) => return Some(caller),
                Err(AuthError::TokenRevoked) => "session revoked: sign in again",
                Err(_) => "invalid or expired token",
            },
            _ => "the first frame must be auth {token}",
        },
        Ok(Some(Ok(_))) => "the first frame must be auth {token}",
    };
    state.metrics.error(ErrorCode::Unauthorized.as_str());
    let frame = ServerFrame::error(ErrorCode::Unauthorized, reason, None);
    let _ = socket.send(WsMessage::Text(frame.to_json().into())).await;
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: close::UNAUTHORIZED,
            reason: "unauthorized".into(),
        })))
        .await;
    None
}

/// The user's connection cap refused this socket after its `auth` frame:
/// an `error` frame (`rate_limited`), then close 4029.
pub async fn refuse(state: &AppState, socket: &mut WebSocket, refused: Refusal) {
    state.metrics.error(ErrorCode::RateLimited.as_str());
    let frame = ServerFrame::error(ErrorCode::RateLimited, refused.message(), None);
    let _ = socket.send(WsMessage::Text(frame.to_json().into())).await;
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code: close::TOO_MANY_CONNECTIONS,
            reason: "too many connections".into(),
        })))
        .await;
}
