//! The Ably-compatible subset checked with the official Ably SDK, not only
//! our own code: `tests/ably_sdk/rest.js` drives the npm package `ably`
//! (REST client, key auth, `restHost`/`port`/`tls: false`) against a
//! gateway on a real Redis.
//!
//! Needs Node.js and the package: `scripts/test` installs `ably` into
//! `~/.cache/switchboard/node/ably-<version>` and sets
//! `SWITCHBOARD_ABLY_NODE_PATH` to its `node_modules`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use switchboard_gateway::GatewayConfig;

/// The `ably` npm package version `scripts/test` installs.
const ABLY_JS_VERSION: &str = "2.28.0";

fn node_path() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_ABLY_NODE_PATH") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(format!(
        ".cache/switchboard/node/ably-{ABLY_JS_VERSION}/node_modules"
    ));
    assert!(
        p.join("ably/package.json").exists(),
        "the npm package `ably` is not installed: run scripts/test, or \
         `npm install --prefix ~/.cache/switchboard/node/ably-{ABLY_JS_VERSION} ably@{ABLY_JS_VERSION}`"
    );
    p
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
