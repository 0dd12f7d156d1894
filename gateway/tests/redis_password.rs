//! The `switchboard-gateway` binary on a Redis that requires a password, as
//! the operator runs it: the URL without a password and the password in
//! `SWITCHBOARD_REDIS_PASSWORD` (from a Secret). With a wrong password it
//! stops with a message that says authentication failed and never shows
//! the password it was given.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use switchboard_core::broker::{Broker, BrokerConfig, ClusterRef, RedisBroker, RedisTarget};
use switchboard_core::env;
use switchboard_testkit::{RedisServer, RedisServerOptions};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");
const WAIT: Duration = Duration::from_secs(15);
const PASSWORD: &str = "4f9c0e1d2b3a49586776a5b4c3d2e1f0";

fn gateway(redis_url: &str, dir: &std::path::Path) -> Command {
    let port = switchboard_testkit::free_port().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", redis_url])
        .arg("--token-secret-file")
        .arg(dir.join("secret"))
        .args(["--report-interval-seconds", "1"])
        .env("POD_NAME", "chat-gateway-0")
        .env("POD_NAMESPACE", "team-a")
        .env("SWITCHBOARD_CLUSTER", "chat")
        .env_remove(env::REDIS_URL)
        .env_remove(env::REDIS_PASSWORD)
        .env_remove(env::DATABASE_URL)
        .env_remove(env::REPORT_INTERVAL_SECONDS)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn gateway_authenticates_with_the_password_variable() {
    let redis = RedisServer::start_with(RedisServerOptions::default().with_password(PASSWORD))
        .expect("redis-server");
    let dir = tempfile::tempdir().unwrap();

    // The password from its variable: the gateway connects and reports.
    let _gw = gateway(&redis.url(), dir.path())
        .env(env::REDIS_PASSWORD, PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = RedisTarget::new(redis.url(), Some(PASSWORD.into()));
    let broker = RedisBroker::connect_to(&target, BrokerConfig::default())
        .await
        .unwrap();
    let cluster = ClusterRef::new("team-a", "chat").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = broker.connection_reports(&cluster).await.unwrap();
        if got.reports.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no report: {got:?}");
        sleep(Duration::from_millis(100)).await;
    }

    // A wrong password, in the variable or in the URL: a clear stop, and
    // the password is in neither output stream.
    let wrong = "wrong-password-5e6f7a8b";
    let in_url = redis.url().replacen("://", &format!("://:{wrong}@"), 1);
    for mut cmd in [
        {
            let mut c = gateway(&redis.url(), dir.path());
            c.env(env::REDIS_PASSWORD, wrong);
            c
        },
        gateway(&in_url, dir.path()),
    ] {
        let out = timeout(WAIT, cmd.output()).await.unwrap().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "started with a wrong password: {text}"
        );
        assert!(text.contains("cannot connect to Redis"), "{text}");
        assert!(text.to_ascii_uppercase().contains("WRONGPASS"), "{text}");
        assert!(
            !text.contains(wrong),
            "the password is in the output: {text}"
        );
    }
}
