//! `switchboard-gateway --worker-threads N` runs its async runtime on N
//! worker threads, as `/metrics` reports; without the flag it uses the CPUs
//! the process may use; 0 is refused with a clear message.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{GATEWAY_BIN, free_addr, gateway_command};
use switchboard_testkit::RedisServer;
use tokio::process::Command;
use tokio::time::{Instant, sleep};

/// Start the gateway with `extra` flags; once ready, the worker threads its
/// `/metrics` reports.
async fn workers_reported(redis: &RedisServer, extra: &[&str]) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_addr();
    let mut gw = gateway_command(free_addr(), &redis.url(), &dir.path().join("secret"))
        .args(extra)
        .args(["--metrics-listen", &metrics.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let url = format!("http://{metrics}/metrics");
        if let Ok(r) = reqwest::get(&url).await
            && r.status() == 200
        {
            break r.text().await.unwrap();
        }
        assert!(gw.try_wait().unwrap().is_none(), "the gateway exited");
        assert!(Instant::now() < deadline, "no /metrics within 20 s");
        sleep(Duration::from_millis(100)).await;
    };
    gw.kill().await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("switchboard_gateway_runtime_worker_threads "))
        .unwrap_or_else(|| panic!("no worker threads gauge in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn worker_threads_follow_the_flag() {
    let redis = RedisServer::start().unwrap();
    assert_eq!(
        workers_reported(&redis, &["--worker-threads", "1"]).await,
        1
    );
    assert_eq!(
        workers_reported(&redis, &["--worker-threads", "3"]).await,
        3
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers_reported(&redis, &[]).await, cpus as i64);
}

#[tokio::test]
async fn zero_worker_threads_is_refused() {
    let out = Command::new(GATEWAY_BIN)
        .args(["--worker-threads", "0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--worker-threads") && err.contains('0'),
        "{err}"
    );
}
