//! The `switchboard-gateway` binary reads the fallback relay configuration the
//! operator mounts (`SWITCHBOARD_RELAY_CONFIG` → relay.json, the key in
//! `SWITCHBOARD_RELAY_API_KEY`): a good file is logged and exported on
//! `/metrics` (never the key); a missing or invalid one stops the process
//! with a message naming the file and the problem.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");
const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "n0t-f0r-l0gs";

/// What the operator writes for `examples/chatcluster-production.yaml`.
const ABLY: &str = r#"{"apiKeyEnv":"SWITCHBOARD_RELAY_API_KEY","fallbackHosts":["main.a.fallback.ably-realtime.com","main.b.fallback.ably-realtime.com"],"hosts":["main.realtime.ably.net"],"provider":"ably"}"#;

fn gateway(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--token-secret-file")
        .arg(dir.join("secret"))
        .env_remove("SWITCHBOARD_REDIS_URL")
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_RELAY_CONFIG")
        .env_remove("SWITCHBOARD_RELAY_API_KEY")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("SWITCHBOARD_CLUSTER")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Start with `file` as the relay config; the process must fail with every
/// `needles` in stderr.
async fn fails(file: &Path, key: Option<&str>, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = gateway(dir.path(), switchboard_testkit::free_port().unwrap());
    c.arg("--relay-config").arg(file);
    if let Some(k) = key {
        c.env("SWITCHBOARD_RELAY_API_KEY", k);
    }
    let out = timeout(WAIT, c.output())
        .await
        .expect("the gateway kept running with a bad relay config")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains(SECRET), "the key leaked: {err}");
}

#[tokio::test]
async fn bad_relay_configs_stop_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let write = |name: &str, text: &str| {
        std::fs::write(path(name), text).unwrap();
        path(name)
    };
    let shown = |name: &str| path(name).display().to_string();

    let missing = path("missing.json");
    fails(
        &missing,
        None,
        &[
            &format!("error: cannot read relay config {}", shown("missing.json")),
            "No such file or directory",
        ],
    )
    .await;

    let f = write(
        "empty-hosts.json",
        r#"{"hosts":[],"provider":"switchboard"}"#,
    );
    fails(
        &f,
        None,
        &[&format!(
            "error: invalid relay config {}: `hosts` is empty",
            shown("empty-hosts.json")
        )],
    )
    .await;

    let f = write("not-json.json", "hosts: [a]");
    fails(
        &f,
        None,
        &[&format!(
            "error: invalid relay config {}: not a valid relay.json: expected value at line 1 column 1",
            shown("not-json.json")
        )],
    )
    .await;

    let f = write(
        "unknown.json",
        r#"{"hosts":["a.example"],"provider":"switchboard","apiKey":"x"}"#,
    );
    fails(&f, None, &["unknown.json", "unknown field `apiKey`"]).await;

    let f = write(
        "bad-host.json",
        r#"{"hosts":["https://relay.example"],"provider":"switchboard"}"#,
    );
    fails(
        &f,
        None,
        &[
            "bad-host.json",
            "`hosts[0]` \"https://relay.example\" has a scheme",
        ],
    )
    .await;

    // The operator's file with the Secret not mapped into the pod.
    let f = write("ably.json", ABLY);
    fails(
        &f,
        None,
        &[
            "ably.json",
            "no relay API key was given, but `apiKeyEnv` says it is in SWITCHBOARD_RELAY_API_KEY",
        ],
    )
    .await;
    fails(
        &f,
        Some(SECRET),
        &["ably.json", "not an Ably key: expected `name:secret`"],
    )
    .await;
}

#[tokio::test]
async fn a_valid_relay_config_is_logged_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.json");
    std::fs::write(&file, ABLY).unwrap();
    let port = switchboard_testkit::free_port().unwrap();
    let metrics_port = switchboard_testkit::free_port().unwrap();
    // As the operator's Deployment passes it: both through the environment.
    let mut gw = gateway(dir.path(), port)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("SWITCHBOARD_RELAY_CONFIG", &file)
        .env("SWITCHBOARD_RELAY_API_KEY", format!("app.key:{SECRET}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines();
    let logged = timeout(WAIT, async {
        let mut seen = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(!line.contains(SECRET), "the key leaked: {line}");
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("relay configured") {
                return line;
            }
        }
        panic!("the gateway exited: {seen}");
    })
    .await
    .expect("no relay line in the log");
    assert!(logged.contains("fallback relay configured"), "{logged}");
    assert!(logged.contains("provider=ably"), "{logged}");
    assert!(logged.contains("hosts=main.realtime.ably.net"), "{logged}");
    assert!(logged.contains("api_key=\"set\""), "{logged}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // Not on the public port: /metrics has a listener of its own.
    let public = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(public.status().as_u16(), 404);
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_gateway_relay_configured 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"switchboard_gateway_relay_info{provider="ably",hosts="main.realtime.ably.net",fallback_hosts="main.a.fallback.ably-realtime.com,main.b.fallback.ably-realtime.com"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(SECRET));
    gw.start_kill().unwrap();
    let _ = gw.wait().await;
}
