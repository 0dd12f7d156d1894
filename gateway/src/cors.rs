//! CORS: which web pages on other origins may call the REST API, the SSE
//! streams and the Ably-compatible endpoints (`--cors-origin`, see
//! [`switchboard_core::cors`]). tower-http's [`CorsLayer`] answers
//! preflights (`OPTIONS`) and adds the headers to every other answer.
//!
//! - No origin configured (the default): no layer, no CORS headers at all;
//!   browsers then let same-origin pages only read answers.
//! - An `Origin` that is not allowed gets no `Access-Control-Allow-Origin`,
//!   so the browser keeps the answer from the page. The header is compared
//!   byte for byte with the configured (normalized) origins; nothing in it
//!   is parsed, so a huge or malformed value is merely not allowed.
//! - Credentials are never allowed (`Access-Control-Allow-Credentials` is
//!   not sent): the API takes bearer tokens, never cookies, so a page must
//!   hold a token to act, and `*` is safe to offer.
//!
//! Where it sits (see [`crate::server::router`]): outside the admission
//! middleware ([`crate::admit`]), so a `429` refusal carries the CORS
//! headers and a page can read its status and `Retry-After`; and inside
//! [`crate::admit::preflight`], which counts each preflight against the
//! client address's REST rate like any other request (a preflight carries
//! no token, so no user limit applies). A browser treats a refused
//! preflight as a network error whatever its headers, so that refusal only
//! sheds the flood.

use std::time::Duration;

use axum::http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, LINK, RETRY_AFTER,
};
use axum::http::{HeaderMap, Method};
use switchboard_core::cors::CorsOrigin;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer (Chromium caps it at
/// 2 h, Firefox at 24 h). Pages that call the API often then preflight once
/// per URL an hour, which matters because preflights count against the
/// address's REST rate.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// Request headers pages may send: the bearer token and JSON bodies
/// (native API), `Last-Event-ID` (EventSource on reconnect), and what the
/// Ably SDK adds to every request.
pub const ALLOW_HEADERS: [HeaderName; 7] = [
    AUTHORIZATION,
    CONTENT_TYPE,
    ACCEPT,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("x-ably-version"),
    HeaderName::from_static("ably-agent"),
    HeaderName::from_static("x-ably-clientid"),
];

/// Response headers pages may read beyond the safelisted ones: paging
/// (`Link`, Ably history), `Retry-After` on 429 and 503, and Ably's error
/// headers.
pub const EXPOSE_HEADERS: [HeaderName; 4] = [
    LINK,
    RETRY_AFTER,
    HeaderName::from_static("x-ably-errorcode"),
    HeaderName::from_static("x-ably-errormessage"),
];

/// The methods the routes answer.
pub const ALLOW_METHODS: [Method; 3] = [Method::GET, Method::POST, Method::DELETE];

/// Which origins are allowed, for the layer and for the preflight refusal.
#[derive(Debug, Clone)]
pub enum Allowed {
    Any,
    List(Vec<HeaderValue>),
}

impl Allowed {
    /// `None` when no origin is configured (no CORS at all).
    pub fn new(origins: &[CorsOrigin]) -> Option<Allowed> {
        if origins.is_empty() {
            return None;
        }
        if origins.contains(&CorsOrigin::Any) {
            return Some(Allowed::Any);
        }
        let list = origins
            .iter()
            .filter_map(|o| match o {
                // A parsed origin is ASCII without control characters, so
                // always a valid header value; a failure would only drop it.
                CorsOrigin::Exact(s) => HeaderValue::from_str(s).ok(),
                CorsOrigin::Any => None,
            })
            .collect();
        Some(Allowed::List(list))
    }

    /// The `Access-Control-Allow-Origin` value for a request's headers.
    pub fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(axum::http::header::ORIGIN)?;
        match self {
            Allowed::Any => Some(HeaderValue::from_static("*")),
            Allowed::List(list) => list.contains(origin).then(|| origin.clone()),
        }
    }

    /// The layer answering preflights and marking answers.
    pub fn layer(&self) -> CorsLayer {
        let origin = match self {
            Allowed::Any => AllowOrigin::any(),
            Allowed::List(list) => AllowOrigin::list(list.clone()),
        };
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(ALLOW_METHODS)
            .allow_headers(ALLOW_HEADERS)
            .expose_headers(EXPOSE_HEADERS)
            .max_age(MAX_AGE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Vec<CorsOrigin> {
        list.iter().map(|o| o.parse().unwrap()).collect()
    }

    fn with_origin(o: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::ORIGIN,
            HeaderValue::from_bytes(o).unwrap(),
        );
        h
    }

    #[test]
    fn allowed_origins_are_matched_exactly() {
        assert!(Allowed::new(&[]).is_none());
        let a = Allowed::new(&origins(&["https://app.example", "http://localhost:5173"])).unwrap();
        assert_eq!(
            a.allow_origin(&with_origin(b"https://app.example")),
            Some(HeaderValue::from_static("https://app.example"))
        );
        for o in [
            &b"https://app.example.evil"[..],
            b"https://APP.example",
            b"http://app.example",
            b"null",
            b"\xff\xfe",
        ] {
            assert_eq!(a.allow_origin(&with_origin(o)), None, "{o:?}");
        }
        assert_eq!(a.allow_origin(&HeaderMap::new()), None);
        let any = Allowed::new(&origins(&["https://a.example", "*"])).unwrap();
        assert_eq!(
            any.allow_origin(&with_origin(b"https://whoever.example")),
            Some(HeaderValue::from_static("*"))
        );
    }
}
