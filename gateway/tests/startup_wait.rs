//! The `switchboard-gateway` binary started before its PostgreSQL and Redis
//! answer, as in a fresh cluster where all start together: it waits for
//! them (`switchboard_core::startup`) instead of exiting, then serves. A
//! refused password still stops it at once (`redis_password.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{free_addr, gateway_command};
use switchboard_testkit::{Postgres, RedisServer};
use tokio::time::{Instant, sleep};

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
    let listen = free_addr();
    let port = listen.port();
    let mut gw = gateway_command(listen, &redis.url(), &dir.path().join("secret"))
        .args(["--database-url", &pg.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
