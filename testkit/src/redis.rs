//! Real `redis-server` processes: standalone (AOF on by default), a Redis
//! Cluster formed with `redis-cli --cluster create`, and cluster-enabled
//! nodes left unjoined (for code that forms the cluster itself).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::reaper::Reaper;
use crate::resp::resp_command_auth;
use crate::{TestkitError, find_binary, free_port, io};

const INSTALL: &str = "apt-get install -y redis-server";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a server.
#[derive(Debug, Clone)]
pub struct RedisServerOptions {
    /// Append-only file on (`appendfsync always`): data survives kill -9.
    pub persistence: bool,
    /// More `--name value` arguments.
    pub extra_args: Vec<String>,
    /// `requirepass` and `masterauth` (replicas authenticate to their
    /// primary with it); [`RedisServer::command`] authenticates with it.
    pub password: Option<String>,
}

impl RedisServerOptions {
    /// A Redis Cluster node that has joined no cluster yet: cluster mode on
    /// (`nodes.conf` in the data directory), its own free cluster-bus port,
    /// a 2 s node timeout, announcing 127.0.0.1, AOF on. The bus port is
    /// chosen here, so a restart keeps it.
    pub fn cluster_node() -> Result<Self, TestkitError> {
        Ok(RedisServerOptions {
            persistence: true,
            extra_args: vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--cluster-port".into(),
                free_port()?.to_string(),
                "--cluster-announce-ip".into(),
                "127.0.0.1".into(),
            ],
            password: None,
        })
    }

    /// The same options with a password (`requirepass` + `masterauth`).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
}

impl Default for RedisServerOptions {
    fn default() -> Self {
        RedisServerOptions {
            persistence: true,
            extra_args: vec![],
            password: None,
        }
    }
}

/// One `redis-server` on 127.0.0.1 with its own data directory.
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    opts: RedisServerOptions,
    child: Option<Child>,
    /// Kills the server's process group and removes `dir` however the
    /// test process ends (a `static` server is never dropped).
    reaper: Reaper,
}

impl RedisServer {
    /// Start with AOF persistence on a free port.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(RedisServerOptions::default())
    }

    pub fn start_with(opts: RedisServerOptions) -> Result<Self, TestkitError> {
        let bin = find_binary("redis-server", "REDIS_SERVER_BIN", INSTALL)?;
        let dir = tempfile::Builder::new()
            .prefix("sb-redis-")
            .tempdir()
            .map_err(io("create temp dir"))?;
        let mut s = RedisServer {
            bin,
            port: free_port()?,
            reaper: Reaper::spawn(dir.path())?,
            dir,
            opts,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    /// A cluster-enabled server that has joined no cluster (see
    /// [`RedisServerOptions::cluster_node`]).
    pub fn start_cluster_node() -> Result<Self, TestkitError> {
        Self::start_with(RedisServerOptions::cluster_node()?)
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let dir = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--appendonly",
                if self.opts.persistence { "yes" } else { "no" },
            ])
            .args(["--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(&self.opts.extra_args)
            .args(
                self.opts
                    .password
                    .iter()
                    .flat_map(|p| ["--requirepass", p.as_str(), "--masterauth", p.as_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(io(format!("spawn {}", self.bin.display())))?;
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
            if self.command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                return Err(TestkitError::NotReady {
                    what: format!("redis-server on port {}", self.port),
                    secs: READY_TIMEOUT.as_secs(),
                    log: self.log_tail(),
                });
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The temp dir holding the data files and `redis.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run one command and return the reply as text (see
    /// [`crate::resp_command`]).
    /// Authenticates first when the server has a password.
    pub fn command(&self, args: &[&str]) -> Result<String, TestkitError> {
        resp_command_auth(&self.addr(), self.opts.password.as_deref(), args)
            .map_err(io(format!("redis command {args:?}")))
    }

    /// The password the server requires, if any.
    pub fn password(&self) -> Option<&str> {
        self.opts.password.as_deref()
    }

    /// Graceful stop (SIGTERM: Redis flushes and exits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if sigterm(c.id()) {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill -9: no chance to flush anything beyond what AOF already wrote.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same data directory.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn()
    }

    /// A node that lost its volume: kill -9, delete everything in the data
    /// directory but the log (AOF, RDB, `nodes.conf`), and start again on
    /// the same port with the same options.
    pub fn wipe_and_restart(&mut self) -> Result<(), TestkitError> {
        self.kill9();
        let entries = fs::read_dir(self.dir.path()).map_err(io("read data dir"))?;
        for entry in entries {
            let entry = entry.map_err(io("read data dir"))?;
            let path = entry.path();
            if entry.file_name() == "redis.log" {
                continue;
            }
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(io(format!("remove {}", path.display())))?;
        }
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// SIGTERM through the `kill` command: std only offers SIGKILL, and the
/// workspace forbids `unsafe` (so no direct `libc::kill`).
fn sigterm(pid: u32) -> bool {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A Redis Cluster of `primaries` primaries with `replicas` replicas each.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    primaries: usize,
}

impl RedisCluster {
    pub fn start(primaries: usize, replicas: usize) -> Result<Self, TestkitError> {
        Self::start_with_password(primaries, replicas, None)
    }

    /// A cluster whose every node requires `password` (`requirepass` and
    /// `masterauth`), when given.
    pub fn start_with_password(
        primaries: usize,
        replicas: usize,
        password: Option<&str>,
    ) -> Result<Self, TestkitError> {
        let cli = find_binary(
            "redis-cli",
            "REDIS_CLI_BIN",
            "apt-get install -y redis-tools",
        )?;
        let mut nodes = vec![];
        for _ in 0..primaries * (1 + replicas) {
            let mut opts = RedisServerOptions::cluster_node()?;
            opts.password = password.map(str::to_string);
            nodes.push(RedisServer::start_with(opts)?);
        }
        let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();
        let mut cmd = Command::new(&cli);
        if let Some(p) = password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(io("run redis-cli --cluster create"))?;
        if !out.status.success() {
            return Err(TestkitError::Other(format!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = RedisCluster { nodes, primaries };
        cluster.wait_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Wait until every node reports `cluster_state:ok` with all slots assigned.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let all_ok = self.nodes.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                })
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestkitError::NotReady {
                    what: "redis cluster".into(),
                    secs: timeout.as_secs(),
                    log: self
                        .nodes
                        .first()
                        .map(RedisServer::log_tail)
                        .unwrap_or_default(),
                });
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// fred's cluster URL: `redis-cluster://first?node=second&node=...`.
    pub fn url(&self) -> String {
        let mut addrs = self
            .nodes
            .iter()
            .take(self.primaries)
            .map(RedisServer::addr);
        let first = addrs.next().unwrap_or_default();
        let rest: Vec<String> = addrs.map(|a| format!("node={a}")).collect();
        if rest.is_empty() {
            format!("redis-cluster://{first}")
        } else {
            format!("redis-cluster://{first}?{}", rest.join("&"))
        }
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    pub fn primary_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .take(self.primaries)
            .map(RedisServer::addr)
            .collect()
    }
}
