//! A real PostgreSQL server: `initdb` into a temp dir, `postgres` on a free
//! port on 127.0.0.1 (TCP only, trust auth for the `postgres` role).
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI
//! containers), the data directory is handed to the `postgres` system user and
//! the server runs under it through `setpriv`, which execs in place: the child
//! we hold *is* the postmaster, so `kill9` really kills the database.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::reaper::Reaper;
use crate::{TestkitError, free_port, io};

const INSTALL: &str = "apt-get install -y postgresql";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The system user that runs the server when we are root.
const SERVICE_USER: &str = "postgres";

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Production durability (`fsync` and `full_page_writes` on). Off by
    /// default: tests only kill processes, never the OS, so they lose
    /// nothing without it and run much faster. Benchmarks turn it on so
    /// per-commit costs are what production pays.
    pub durable: bool,
}

/// One PostgreSQL cluster on 127.0.0.1 with its own data directory.
pub struct Postgres {
    bin_dir: PathBuf,
    port: u16,
    dir: TempDir,
    as_service_user: bool,
    opts: PostgresOptions,
    child: Option<Child>,
    /// Kills the server's process group and removes `dir` however the
    /// test process ends (a `static` server is never dropped).
    reaper: Reaper,
}

impl Postgres {
    /// `initdb` a fresh cluster and start it on a free port.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(PostgresOptions::default())
    }

    pub fn start_with(opts: PostgresOptions) -> Result<Self, TestkitError> {
        let bin_dir = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("sb-pg-")
            .tempdir()
            .map_err(io("create temp dir"))?;
        let as_service_user = running_as_root();
        if as_service_user {
            chown_to_service_user(dir.path())?;
        }
        let mut pg = Postgres {
            bin_dir,
            port: free_port()?,
            reaper: Reaper::spawn(dir.path())?,
            dir,
            as_service_user,
            opts,
            child: None,
        };
        pg.initdb()?;
        pg.spawn()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server binaries, run as the service user
    /// when we are root.
    fn command(&self, bin: &str) -> Command {
        let path = self.bin_dir.join(bin);
        if self.as_service_user {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                SERVICE_USER,
                "--regid",
                SERVICE_USER,
                "--init-groups",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn initdb(&self) -> Result<(), TestkitError> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale", "C"])
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("run {}/initdb", self.bin_dir.display())))?;
        if !out.status.success() {
            return Err(TestkitError::Other(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("open postgres.log"))?;
        let log2 = log.try_clone().map_err(io("clone log handle"))?;
        let mut child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            // A process crash (kill -9) keeps what the OS already has, so
            // skipping fsync loses nothing the tests can observe, and makes
            // them much faster. synchronous_commit stays on: a commit is in
            // the OS before the client hears about it.
            .args(if self.opts.durable {
                ["-c", "fsync=on", "-c", "full_page_writes=on"]
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off"]
            })
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .spawn()
            .map_err(io(format!("spawn {}/postgres", self.bin_dir.display())))?;
        // The postmaster leads its group, its backends in it.
        if let Err(e) = self.reaper.watch(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = Command::new(self.bin_dir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                return Err(TestkitError::NotReady {
                    what: format!("postgres on port {}", self.port),
                    secs: READY_TIMEOUT.as_secs(),
                    log: self.log_tail(),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db` as the `postgres` superuser.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL with `psql` against `db`; returns the unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, TestkitError> {
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(io("run psql"))?;
        if !out.status.success() {
            return Err(TestkitError::Other(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Create a fresh database and return its URL (one per test keeps tests
    /// that share a server independent).
    pub fn create_database(&self, name: &str) -> Result<String, TestkitError> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Fast shutdown (SIGINT semantics through `pg_ctl stop -m fast`):
    /// open transactions roll back, clients are disconnected.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let stopped = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "-t", "20"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Kill -9 the postmaster. Its backends notice and exit; the next start
    /// runs crash recovery from the WAL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Orphaned backends hold the shared memory segment; give them a
            // moment to notice the postmaster is gone before a restart.
            sleep(Duration::from_millis(200));
        }
    }

    /// Start again on the same port with the same data directory.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        if self.child.is_some() {
            self.stop();
        }
        // After a kill -9 a stale postmaster.pid may remain; postgres removes
        // it itself when the recorded process is gone.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The temp dir holding `data/` and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Give the temp dir to the service user so initdb can create `data/` in it.
fn chown_to_service_user(dir: &Path) -> Result<(), TestkitError> {
    let ok = Command::new("chown")
        .arg(format!("{SERVICE_USER}:{SERVICE_USER}"))
        .arg(dir)
        .status()
        .map_err(io("run chown"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(TestkitError::Other(format!(
            "running as root, and the `{SERVICE_USER}` user (created by the postgresql \
             package) could not own {}: {INSTALL}",
            dir.display()
        )))
    }
}

/// The directory holding `initdb` and `postgres`: `PG_BIN_DIR`, else the one
/// holding `initdb` on PATH, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps the server binaries off PATH).
pub(crate) fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    if let Some(p) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        // Resolve symlinks: the real directory also holds pg_ctl, pg_isready
        // and psql, which a PATH directory of links may not.
        let initdb = dir.join("initdb");
        if initdb.is_file()
            && let Some(real) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            && real.join("postgres").is_file()
        {
            return Ok(real);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| TestkitError::MissingBinary {
            name: "initdb/postgres".into(),
            hint: format!("set PG_BIN_DIR or install it: {INSTALL}, or run ./scripts/test"),
        })
}
