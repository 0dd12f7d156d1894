//! The WebSocket transport (`GET /v1/ws`, protocol v1 in docs/protocol.md).
//!
//! | file | what |
//! |---|---|
//! | `mod` | the upgrade: drain check, bearer auth, buffer limits |
//! | `auth` | the `auth` first frame, when the upgrade carried no token |
//! | `conn` | one socket's task: the select loop, writes, ack tracking and resends |
//! | `dispatch` | one function per client frame type |
//! | `channels` | `subscribe` / `unsubscribe`, and the channel replay behind them |
//! | `sparse` | `SparseMap`, the per-socket map that costs 8 bytes until used |

mod auth;
mod channels;
mod conn;
mod dispatch;
mod sparse;

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use switchboard_proto::frames::{ErrorCode, MAX_FRAME_BYTES};

use crate::http::auth::bearer;
use crate::http::problem::ApiError;
use crate::limits::{ClientAddr, ConnSlot};
use crate::service::Principal;
use crate::state::AppRef;

/// `GET /v1/ws`. The connection caps apply before the upgrade (per
/// address and per gateway, and per user when the upgrade carries a bearer
/// token: `429` with `Retry-After`); a socket that authenticates with its
/// first frame is counted for its user then, and refused with an `error`
/// frame (`rate_limited`) and close 4029.
pub async fn upgrade(
    State(state): State<AppRef>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Not a WebSocket handshake: the usual error body, with the status
    // axum chose (400, or 426 when the connection cannot be upgraded).
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let message = format!("GET /v1/ws takes a WebSocket handshake: {}", e.body_text());
            return ApiError::new(e.status(), ErrorCode::BadRequest, message).into_response();
        }
    };
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("draining; reconnect elsewhere").into_response();
    }
    // A bearer header authenticates the upgrade itself; without one the
    // client must send `auth` as its first frame.
    let pre_auth = match bearer(&parts) {
        Some(token) => match state.chat.authenticate(token).await {
            Ok(user) => Some(user),
            Err(e) => {
                state.metrics.error(ErrorCode::Unauthorized.as_str());
                return ApiError::unauthorized(format!("invalid session token: {e}"))
                    .into_response();
            }
        },
        None => None,
    };
    let addr = client_addr(&parts);
    let slot = match pre_auth {
        Some(caller) => state.limits.connect(addr, caller.user),
        None => state.limits.open(addr),
    };
    let slot = match slot {
        Ok(s) => s,
        Err(refused) => return ApiError::from(refused).into_response(),
    };
    let cfg = &state.cfg;
    ws.read_buffer_size(cfg.ws_read_buffer)
        .write_buffer_size(cfg.ws_write_buffer)
        .max_write_buffer_size(cfg.ws_write_buffer.max(MAX_FRAME_BYTES) * 4)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| run(state, pre_auth, slot, socket))
}

/// One upgraded socket, from its first frame to its close. This future is
/// the task axum spawns per connection, so what it holds across an await is
/// held by every idle connection (sizes: the `sizes` test below). A plain
/// `fn` returning an `async move` block rather than an `async fn`: an async
/// fn's future keeps its arguments twice (as arguments and as the body's
/// locals), here ~460 bytes more per socket.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future would hold its arguments twice (see above)"
)]
fn run(
    state: AppRef,
    pre_auth: Option<Principal>,
    mut slot: ConnSlot,
    mut socket: WebSocket,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Both phases are boxed: the task axum spawns then holds two
        // pointers instead of the largest inline state of either, which
        // saves ~2 KiB per idle connection.
        let caller = match pre_auth {
            Some(c) => c,
            None => match Box::pin(auth::authenticate(&state, &mut socket)).await {
                Some(c) => c,
                None => return,
            },
        };
        if let Err(refused) = slot.bind(caller.user) {
            Box::pin(auth::refuse(&state, &mut socket, refused)).await;
            return;
        }
        Box::pin(conn::serve(state, &mut socket, caller)).await;
        // The slot is released only now, with the connection.
        drop(slot);
    }
}

/// The client address the `admit` middleware found (`0.0.0.0` for a router
/// served without it).
fn client_addr(parts: &Parts) -> ClientAddr {
    parts
        .extensions
        .get::<ClientAddr>()
        .copied()
        .unwrap_or(ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

#[cfg(test)]
mod sizes {
    //! What one idle authenticated socket holds inline, in bytes (the
    //! breakdown in docs/benchmarks.md, "Where an idle connection's bytes
    //! go"). The bounds fail when a change grows a per-connection state.

    use std::future::Future;

    use super::*;

    /// The size of the future `f` returns, without calling it.
    pub(super) fn returned<A, B, C, D, F: Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn per_connection_states_stay_small() {
        let task = returned(run);
        let (serve, conn_loop, conn) = conn::sizes();
        let socket = std::mem::size_of::<WebSocket>();
        println!(
            "ConnHandle: {} B (its Arc block {} B); Principal: {} B; ConnSlot: {} B; Notify: {} B; Sleep: {} B",
            std::mem::size_of::<crate::hub::ConnHandle>(),
            std::mem::size_of::<crate::hub::ConnHandle>() + 16,
            std::mem::size_of::<Principal>(),
            std::mem::size_of::<ConnSlot>(),
            std::mem::size_of::<tokio::sync::Notify>(),
            std::mem::size_of::<tokio::time::Sleep>(),
        );
        println!(
            "run (the spawned future): {task} B; serve (boxed): {serve} B; WebSocket: {socket} B; \
             Conn: {conn} B; Conn::run (inside serve): {conn_loop} B"
        );
        // serve's box must fit mimalloc's 896 B class (the next is 1024);
        // the spawned future holds the WebSocket (368 B) and little else.
        assert!(serve <= 896, "serve's future is {serve} B");
        assert!(task <= 512, "the socket task's future is {task} B");
    }
}
