//! The middleware in front of every route but the probes (`/healthz`,
//! `/readyz`, `/metrics`): it finds the client's address
//! ([`crate::limits::Limits::client_addr`]), applies the REST rate limits —
//! per address, and per user when the request carries a valid session
//! token — before any handler runs (so before sign-in's signature
//! recovery), and hands the address on as a [`crate::limits::ClientAddr`]
//! extension for the connection caps of the WebSocket upgrade and the SSE
//! streams. A refusal is answered in the route's own error format: problem JSON, or
//! Ably's `ErrorInfo`; both `429` with `Retry-After`.
//!
//! With CORS on, [`preflight`] admits the preflights (`OPTIONS`) the CORS
//! layer answers by itself (see [`crate::cors`] for the order).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, VARY};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use switchboard_proto::ids::Address;

use crate::ably::AblyError;
use crate::cors::Allowed;
use crate::http::auth::bearer_token;
use crate::http::problem::ApiError;
use crate::limits::Refusal;
use crate::state::AppRef;

/// For the native routes: refusals as problem JSON.
pub async fn native(State(state): State<AppRef>, req: Request, next: Next) -> Response {
    match admit(&state, req) {
        Ok(req) => next.run(req).await,
        Err(r) => ApiError::from(r).into_response(),
    }
}

/// For the Ably-compatible routes: refusals as Ably `ErrorInfo` (42910).
pub async fn ably(State(state): State<AppRef>, req: Request, next: Next) -> Response {
    match admit(&state, req) {
        Ok(req) => next.run(req).await,
        Err(r) => AblyError::from(r).into_response(),
    }
}

/// In front of the CORS layer: a preflight (`OPTIONS`) counts against the
/// client address's REST rate like any request; other requests pass on to
/// [`native`] / [`ably`]. A refused preflight is `429` problem JSON, with
/// `Access-Control-Allow-Origin` for an allowed origin.
pub async fn preflight(
    State((state, allowed)): State<(AppRef, Allowed)>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::OPTIONS {
        return next.run(req).await;
    }
    let origin = allowed.allow_origin(req.headers());
    match admit(&state, req) {
        Ok(req) => next.run(req).await,
        Err(r) => {
            let mut resp = ApiError::from(r).into_response();
            if let Some(o) = origin {
                resp.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, o);
                resp.headers_mut()
                    .insert(VARY, HeaderValue::from_static("origin"));
            }
            resp
        }
    }
}

fn admit(state: &AppRef, mut req: Request) -> Result<Request, Refusal> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let addr = state.limits.client_addr(peer, req.headers());
    // The address first: a refused flood never gets as far as a token's
    // HMAC and JSON.
    state.limits.admit_address(addr)?;
    if let Some(user) = session_user(state, &req) {
        state.limits.admit_user(&user)?;
    }
    req.extensions_mut().insert(addr);
    Ok(req)
}

/// The user of a request's session token (`Authorization: Bearer`, or the
/// `access_token` / `accessToken` query parameter of the streams), if it
/// is valid.
fn session_user(state: &AppRef, req: &Request) -> Option<Address> {
    let token = match bearer_token(req.headers()) {
        Some(t) => t.to_owned(),
        None => query_token(req.uri())?,
    };
    state.chat.verify_token(&token).ok()
}

fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?;
    let Query(mut q) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
    q.remove("access_token").or_else(|| q.remove("accessToken"))
}
