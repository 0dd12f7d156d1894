//! A server the test process never drops (a shared one in a `static`, or
//! a test process that aborts or is killed) stops, and its temp dir goes,
//! once that process is gone: its reaper sees the pipe from it close.
//!
//! Each test runs this binary again as a child (`orphan_child`, with
//! `SB_ORPHAN` naming the server) that starts a server, prints its port and
//! dir, and exits without dropping it.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_testkit::{Postgres, RedisServer};

const CHILD_ENV: &str = "SB_ORPHAN";

/// The child's part; a no-op in a normal run.
#[test]
fn orphan_child() {
    let Ok(which) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (port, dir) = match which.as_str() {
        "redis" => {
            let s = RedisServer::start().unwrap();
            let out = (s.port(), s.dir().to_path_buf());
            std::mem::forget(s);
            out
        }
        "postgres" => {
            let s = Postgres::start().unwrap();
            let out = (s.port(), s.dir().to_path_buf());
            std::mem::forget(s);
            out
        }
        other => panic!("{CHILD_ENV}={other}"),
    };
    println!("ORPHAN {port} {}", dir.display());
    std::process::exit(0);
}

/// Runs the child for `which`; returns the port and dir of the server it
/// left behind.
fn orphan(which: &str) -> (u16, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "orphan_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, which)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("ORPHAN ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no server ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (port, dir) = line.split_once(' ').unwrap();
    (port.parse().unwrap(), dir.to_string())
}

/// Waits (up to 30 s) until nothing listens on `port` and `dir` is gone.
fn assert_cleaned_up(what: &str, port: u16, dir: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listening = TcpStream::connect(("127.0.0.1", port)).is_ok();
        let dir_left = Path::new(dir).exists();
        if !listening && !dir_left {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} of a dead test process: listening {listening}, dir {dir} left {dir_left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_redis_server_stops_with_the_process_that_never_dropped_it() {
    let (port, dir) = orphan("redis");
    assert_cleaned_up("redis-server", port, &dir);
}

#[test]
fn a_postgres_server_stops_with_the_process_that_never_dropped_it() {
    let (port, dir) = orphan("postgres");
    assert_cleaned_up("postgres", port, &dir);
}
