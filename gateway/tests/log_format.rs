//! Every binary's `--log-format` / `SWITCHBOARD_LOG_FORMAT` (one shared
//! definition, `switchboard_core::telemetry::LogArgs`), shown on the
//! `switchboard-gateway` binary: `json` writes one JSON object per line, an
//! unknown format or an invalid `RUST_LOG` stops it with a message; and its
//! `/metrics` carries `switchboard_build_info`.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use switchboard_core::env;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");
const WAIT: Duration = Duration::from_secs(15);

/// The gateway on free ports with the embedded engine.
fn gateway(port: u16, metrics_port: u16) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env_remove(env::REDIS_URL)
        .env_remove(env::DATABASE_URL)
        .env_remove(env::RELAY_CONFIG)
        .env_remove(env::LOG_FORMAT)
        .env(env::LOG, "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn json_log_lines_parse_and_build_info_is_exported() {
    let port = switchboard_testkit::free_port().unwrap();
    let metrics_port = switchboard_testkit::free_port().unwrap();
    let mut gw = gateway(port, metrics_port)
        .args(["--log-format", "json"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines();
    // Every line up to "gateway listening" is a JSON object with the
    // event's level, target and message.
    let listening = timeout(WAIT, async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nafter: {seen:#?}"));
            assert!(event["timestamp"].is_string(), "{line}");
            assert!(event["level"].is_string(), "{line}");
            assert!(event["target"].is_string(), "{line}");
            if event["fields"]["message"] == "gateway listening" {
                return event;
            }
            seen.push(line);
        }
        panic!("the gateway exited: {seen:#?}");
    })
    .await
    .expect("no `gateway listening` line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["addr"], format!("127.0.0.1:{port}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = format!(
        "switchboard_build_info{{version=\"{}\",git_sha=\"{}\"}} 1",
        switchboard_core::telemetry::VERSION,
        switchboard_core::telemetry::git_sha()
    );
    assert!(metrics.contains(&want), "{want} not in:\n{metrics}");
    assert!(
        metrics.contains("switchboard_gateway_connections 0"),
        "{metrics}"
    );
    gw.start_kill().unwrap();
    let _ = gw.wait().await;
}

/// Text stays the default, and the variable works like the flag.
#[tokio::test]
async fn text_is_the_default_and_the_variable_selects_json() {
    for (var, json) in [(None, false), (Some("json"), true), (Some("text"), false)] {
        let mut c = gateway(
            switchboard_testkit::free_port().unwrap(),
            switchboard_testkit::free_port().unwrap(),
        );
        if let Some(v) = var {
            c.env(env::LOG_FORMAT, v);
        }
        let mut gw = c.spawn().unwrap();
        let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines();
        let first = timeout(WAIT, lines.next_line())
            .await
            .expect("a first log line")
            .unwrap()
            .expect("the gateway wrote nothing");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&first).is_ok(),
            json,
            "{var:?}: {first}"
        );
        gw.start_kill().unwrap();
        let _ = gw.wait().await;
    }
}

#[tokio::test]
async fn an_unknown_format_or_filter_is_refused() {
    for (args, rust_log, needle) in [
        (
            &["--log-format", "xml"][..],
            "info",
            "expected `text` or `json`",
        ),
        (
            &[][..],
            "info,switchboard=loud",
            "RUST_LOG is not a valid log filter",
        ),
    ] {
        let out = timeout(
            WAIT,
            gateway(
                switchboard_testkit::free_port().unwrap(),
                switchboard_testkit::free_port().unwrap(),
            )
            .args(args)
            .env(env::LOG, rust_log)
            .output(),
        )
        .await
        .expect("the gateway kept running")
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {rust_log}: started");
        assert!(err.contains(needle), "{args:?} {rust_log}: {err}");
    }
}
