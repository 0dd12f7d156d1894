//! The Socket.IO peer as a child process: `bench/peer/socketio/server.mjs`
//! (embedded in this binary) run by `node`, with its pinned npm packages
//! installed once into `~/.cache/switchboard/node/<hash>` the way
//! `scripts/test` installs the Ably SDK (same hash of the package list, same
//! `npm install --prefix`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::target::proc_rss_kib;

/// The peer's npm packages, pinned.
pub const PACKAGES: &[&str] = &[
    "socket.io@4.8.1",
    "@socket.io/redis-adapter@8.3.0",
    "redis@4.7.1",
];

/// The server script, embedded so the bench runs from any directory.
const SERVER_MJS: &str = include_str!("../peer/socketio/server.mjs");

/// `~/.cache/switchboard/node/<first 12 hex digits of sha256("pkg\n"...)>`,
/// the directory `scripts/test` would use for the same package list.
pub fn node_dir(packages: &[&str]) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let mut h = Sha256::new();
    for p in packages {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let hash = hex::encode(h.finalize());
    Ok(PathBuf::from(home)
        .join(".cache/switchboard/node")
        .join(&hash[..12]))
}

/// Install [`PACKAGES`] unless every one is already there; the
/// `node_modules` directory holding them.
pub fn ensure_packages() -> Result<PathBuf> {
    let dir = node_dir(PACKAGES)?;
    let modules = dir.join("node_modules");
    let missing = PACKAGES.iter().any(|p| {
        let name = p.rsplit_once('@').map_or(*p, |(n, _)| n);
        !modules.join(name).join("package.json").is_file()
    });
    if missing {
        std::fs::create_dir_all(&dir)?;
        eprintln!("installing {} into {}", PACKAGES.join(" "), dir.display());
        let status = Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--silent"])
            .args(PACKAGES)
            .status()
            .context("cannot run npm (Node.js >= 18 and npm are needed for the peer)")?;
        if !status.success() {
            bail!("npm install of {} failed: {status}", PACKAGES.join(" "));
        }
    }
    Ok(modules)
}

/// One Socket.IO server process.
pub struct SioProc {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl SioProc {
    pub async fn spawn(
        node: &Path,
        modules: &Path,
        redis_url: &str,
        secret_hex: &str,
    ) -> Result<SioProc> {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("server.mjs");
        std::fs::write(&script, SERVER_MJS)?;
        let addr = format!("127.0.0.1:{}", switchboard_testkit::free_port()?);
        let child = Command::new(node)
            .arg(&script)
            .args(["--listen", &addr, "--redis-url", redis_url])
            .args(["--secret-hex", secret_hex])
            .arg("--node-modules")
            .arg(modules)
            .env("NODE_ENV", "production")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", node.display()))?;
        let mut p = SioProc {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&p.addr).await.is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("the socket.io server exited: {status}");
            }
            if Instant::now() > deadline {
                bail!("socket.io server did not start on {}", p.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> Result<u64> {
        proc_rss_kib(self.child.id())
    }
}

impl Drop for SioProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_dir_hashes_the_package_list_as_scripts_test_does() {
        // printf '%s\n' ably@2.28.0 eventsource@2.0.2 | sha256sum | cut -c1-12
        let d = node_dir(&["ably@2.28.0", "eventsource@2.0.2"]).unwrap();
        assert_eq!(d.file_name().unwrap(), "1088f2dfae23");
    }
}
