//! `switchboard-testkit`: real servers for tests, started on free ports in
//! temporary directories and cleaned up on drop. No mocks: tests run against
//! the same `redis-server` binaries production uses.
//!
//! The API is synchronous (std processes and sockets) so both sync and async
//! tests can use it; async tests may call it directly during set-up — starting
//! a server blocks for well under a second (a cluster for a few seconds).
//!
//! Feature `kube`: `ControlPlane`, a local Kubernetes control plane (etcd,
//! kube-apiserver, kube-controller-manager) for operator tests.
//!
//! Feature `node` (implies `kube`): [`node::Node`], a one-node cluster on
//! this machine next to the control plane, where pods really run.
//!
//! Feature `tls`: a test CA and a TLS-terminating proxy ([`tls`]).

#[cfg(feature = "kube")]
pub mod controlplane;
pub mod image_names;
#[cfg(feature = "node")]
pub mod node;
mod postgres;
mod reaper;
mod redis;
mod resp;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(feature = "kube")]
pub use controlplane::{ControlPlane, ControlPlaneOptions};

pub use postgres::{Postgres, PostgresOptions};
pub use redis::{RedisCluster, RedisServer, RedisServerOptions};
pub use resp::{resp_command, resp_command_auth};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// Why a test server could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{name} not found on PATH ({hint})")]
    MissingBinary { name: String, hint: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {secs} s; log tail:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("{0}")]
    Other(String),
    #[cfg(feature = "kube")]
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// `rel` (e.g. `e2e/node/build.sh`) in this workspace: testkit/ lives
/// directly in its root.
pub fn workspace_file(rel: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(std::path::Path::new(".."))
        .join(rel)
}

/// Find a binary: the env var `env_var` if set, else `name` on PATH.
pub fn find_binary(name: &str, env_var: &str, install_hint: &str) -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(TestkitError::MissingBinary {
        name: name.into(),
        hint: format!(
            "set {env_var} or install it: {install_hint}, or run ./scripts/test which installs it"
        ),
    })
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free a moment ago and has not been handed out before in
/// this process (parallel tests in one binary never get the same port).
pub fn free_port() -> Result<u16, TestkitError> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
        let port = l.local_addr().map_err(io("local_addr"))?.port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(TestkitError::Other("no free port found".into()))
}
