//! The `switchboard-gateway` binary started before its PostgreSQL and Redis
//! answer, as in a fresh cluster where all start together: it waits for
//! them (`switchboard_core::startup`) instead of exiting, then serves. A
//! refused password still stops it at once (`redis_password.rs`).
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use switchboard_core::env;
use switchboard_testkit::{Postgres, RedisServer};
use tokio::process::Command;
use tokio::time::{Instant, sleep};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");

async fn ready(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/readyz");
    matches!(reqwest::get(&url).await, Ok(r) if r.status() == 200)
}

#[tokio::test]
async fn the_gateway_waits_for_postgres_and_redis_at_start() {
    let mut pg = Postgres::start().unwrap();
    let mut redis = RedisServer::start().unwrap();
    // Both down: nothing listens on their ports when the gateway starts.
    pg.stop();
    redis.stop();
    let dir = tempfile::tempdir().unwrap();
    let port = switchboard_testkit::free_port().unwrap();
    let mut gw = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &redis.url()])
        .args(["--database-url", &pg.url()])
        .arg("--token-secret-file")
        .arg(dir.path().join("secret"))
        .env_remove(env::REDIS_URL)
        .env_remove(env::REDIS_PASSWORD)
        .env_remove(env::DATABASE_URL)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Neither answers for longer than one attempt takes (a pool's acquire
    // timeout is 5 s): it keeps waiting.
    sleep(Duration::from_secs(7)).await;
    assert!(gw.try_wait().unwrap().is_none(), "the gateway exited");
    pg.restart().unwrap();
    sleep(Duration::from_secs(2)).await;
    assert!(gw.try_wait().unwrap().is_none(), "the gateway exited");
    assert!(!ready(port).await, "ready without Redis");
    redis.restart().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(port).await {
        if let Some(status) = gw.try_wait().unwrap() {
            let out = gw.wait_with_output().await.unwrap();
            panic!(
                "the gateway exited ({status}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "not ready 20 s after Redis came");
        sleep(Duration::from_millis(100)).await;
    }
    gw.kill().await.unwrap();
    let out = gw.wait_with_output().await.unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for what in ["PostgreSQL at", "Redis at"] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains("is not reachable yet")),
            "no wait logged for {what}: {log}"
        );
    }
}
