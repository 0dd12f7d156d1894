//! The shipped `switchboard-gateway` binary as a child process, for the
//! tests of what only the binary does: flags, environment, signals,
//! start-up and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use switchboard_core::env;
use tokio::process::Command;

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_switchboard-gateway");

/// A free local address to listen on.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], switchboard_testkit::free_port().unwrap()))
}

/// `switchboard-gateway` on `listen`, using the Redis at `redis_url` and the
/// token secret in `secret` (written by the gateway if missing). Nothing
/// that would change it comes from the test's environment: the Redis and
/// database URLs, the pod's identity and the worker threads are cleared.
/// Stdin and stdout are closed, stderr is the test's, and the process is
/// killed when the handle drops; callers add flags and environment, and
/// override any of this.
pub fn gateway_command(listen: SocketAddr, redis_url: &str, secret: &Path) -> Command {
    let mut c = Command::new(GATEWAY_BIN);
    c.args(["--listen", &listen.to_string()])
        .args(["--redis-url", redis_url])
        .arg("--token-secret-file")
        .arg(secret)
        .env_remove(env::REDIS_URL)
        .env_remove(env::REDIS_PASSWORD)
        .env_remove(env::DATABASE_URL)
        .env_remove(env::POD_NAME)
        .env_remove(env::POD_NAMESPACE)
        .env_remove(env::REPORT_INTERVAL_SECONDS)
        .env_remove("TOKIO_WORKER_THREADS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}
