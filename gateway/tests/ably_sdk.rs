//! The Ably-compatible subset checked with the official Ably SDK, not only
//! our own code: `tests/ably_sdk/rest.js` drives the npm package `ably`
//! (REST client, key auth, `restHost`/`port`/`tls: false`) against a
//! gateway on a real Redis.
//!
//! The same script then reads the SSE endpoint with a generic EventSource
//! client (npm `eventsource`) and gets what the SDK published.
//!
//! Needs Node.js and the packages: `scripts/test` installs `ably` and
//! `eventsource` into `~/.cache/switchboard/node/<hash>` and sets
//! `SWITCHBOARD_ABLY_NODE_PATH` to its `node_modules`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use switchboard_gateway::GatewayConfig;

/// The npm packages the script needs (`scripts/test` installs them).
const PACKAGES: [&str; 2] = ["ably", "eventsource"];

/// `SWITCHBOARD_ABLY_NODE_PATH`, else an install of both packages under
/// `~/.cache/switchboard/node/` (what `scripts/test` leaves there).
fn node_path() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_ABLY_NODE_PATH") {
        return PathBuf::from(p);
    }
    let root =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/switchboard/node");
    let found = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("node_modules"))
        .find(|m| {
            PACKAGES
                .iter()
                .all(|p| m.join(p).join("package.json").exists())
        });
    found.unwrap_or_else(|| {
        panic!(
            "the npm packages {PACKAGES:?} are not installed: run scripts/test, or \
             `npm install --prefix DIR ably@2.28.0 eventsource@2.0.2` and set \
             SWITCHBOARD_ABLY_NODE_PATH=DIR/node_modules"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_ably_rest_sdk_publishes_and_reads_history() {
    let node_path = node_path();
    let backend = Backend::redis();
    let key = "sdkapp.key1:sdk-secret";
    let cfg = GatewayConfig {
        api_keys: vec![key.parse().unwrap()],
        ..fast_config()
    };
    let gw = start_gateway(&backend, cfg).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ably_sdk/rest.js");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .env("NODE_PATH", &node_path)
        .env("SB_PORT", gw.local_addr().port().to_string())
        .env("SB_KEY", key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK script finishes within 60 s")
        .expect("node runs (install Node.js)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("\"ok\":true"), "{stdout}\n{stderr}");
}
