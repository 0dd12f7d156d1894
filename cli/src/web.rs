//! The browser chat of `examples/web`, served by `switchboard dev` at
//! `/demo` on the gateway's own origin (so its REST and WebSocket calls need
//! no CORS). The page is built by `examples/web/build.mjs` into one checked-in
//! HTML file (script and styles inline; its test fails when that file is
//! stale) and embedded here at compile time.

use switchboard_gateway::config::StaticFile;

/// The built page, as checked in.
pub const PAGE: &[u8] = include_bytes!("../../examples/web/dist/index.html");

/// Where the page is served: `/demo` and `/demo/`.
pub fn files() -> Vec<StaticFile> {
    ["/demo", "/demo/"]
        .into_iter()
        .map(|path| StaticFile {
            path,
            content_type: "text/html; charset=utf-8",
            body: PAGE,
        })
        .collect()
}
