//! Waiting for PostgreSQL and Redis at start-up.
//!
//! In a cluster, a ChatCluster's gateways and workers start together with
//! the Redis and PostgreSQL they use: for their first seconds the database's
//! name may not resolve yet (a headless Service has no address before its
//! pod is ready) or nothing listens. Exiting then makes every fresh install
//! a round of CrashLoopBackOff, whose back-off (10 s, 20 s, 40 s, …) delays
//! the cluster well past the moment its dependencies are up. So the
//! binaries wait: they retry what may pass (no route, no name, refused,
//! timed out) for [`STARTUP_WAIT`], logging each miss, and fail at once on
//! what will not (a wrong password, a bad URL). The operator's startup
//! probes leave them that long before liveness applies.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// How long a binary waits at start-up for PostgreSQL or Redis to become
/// reachable before it gives up (and exits with the last error).
pub const STARTUP_WAIT: Duration = Duration::from_secs(90);

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(4);

/// Runs `attempt` until it succeeds, fails with an error `transient` says
/// will not pass, or `wait` has gone by (then its last error). `what` names
/// the dependency in the log lines.
pub async fn wait_for<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    wait: Duration,
    transient: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = Instant::now() + wait;
    let mut pause = FIRST_PAUSE;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !transient(&e) => return Err(e),
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                let left = deadline - now;
                tracing::warn!(
                    "{what} is not reachable yet ({e}); retrying for up to {} s more",
                    left.as_secs()
                );
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// Whether a Redis client error met while connecting may pass: everything
/// but a refused password (or missing one) and an unusable configuration.
pub fn redis_transient(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    !matches!(
        e.kind(),
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::InvalidArgument | ErrorKind::Url
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_what_passes_until_it_succeeds() {
        let mut calls = 0;
        let got = wait_for(
            "db",
            Duration::from_secs(10),
            |e: &&str| *e == "down",
            || {
                calls += 1;
                let c = calls;
                async move { if c < 4 { Err("down") } else { Ok(c) } }
            },
        )
        .await;
        assert_eq!(got, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn fails_at_once_on_what_does_not_pass() {
        let mut calls = 0;
        let got: Result<(), &str> = wait_for(
            "db",
            Duration::from_secs(10),
            |e: &&str| *e == "down",
            || {
                calls += 1;
                async { Err("wrong password") }
            },
        )
        .await;
        assert_eq!(got, Err("wrong password"));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_wait_with_the_last_error() {
        let start = Instant::now();
        let mut calls = 0u32;
        let got: Result<(), String> = wait_for(
            "db",
            Duration::from_secs(10),
            |_: &String| true,
            || {
                calls += 1;
                let e = format!("down {calls}");
                async move { Err(e) }
            },
        )
        .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        assert_eq!(got, Err(format!("down {calls}")));
        // 0.25 + 0.5 + 1 + 2 + 4 s, then 4 s pauses: 7 attempts by 10 s.
        assert_eq!(calls, 7);
    }

    #[test]
    fn a_refused_password_does_not_pass_a_refused_connection_may() {
        use fred::error::{Error, ErrorKind};
        assert!(!redis_transient(&Error::new(ErrorKind::Auth, "WRONGPASS")));
        assert!(!redis_transient(&Error::new(ErrorKind::Config, "bad URL")));
        assert!(redis_transient(&Error::new(
            ErrorKind::IO,
            "connection refused"
        )));
        assert!(redis_transient(&Error::new(
            ErrorKind::Timeout,
            "timed out"
        )));
    }
}
