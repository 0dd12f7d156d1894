//! The system under test: gateway child processes (this binary's `serve`),
//! whose RSS and CPU time are read from /proc, and their Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use switchboard_proto::auth::token::TokenSigner;
use switchboard_proto::ids::Address;
use switchboard_testkit::RedisServer;
use tokio::net::TcpStream;

use crate::client::token;

/// The broker engine of the gateways under test.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Engine {
    Memory,
    Redis,
}

/// One gateway child process.
pub struct GatewayProc {
    child: Child,
    pub addr: String,
}

impl GatewayProc {
    /// Start `serve` (Redis engine with `redis_url`, else memory) with
    /// extra `serve` arguments, and wait until it listens.
    pub async fn spawn_with(
        secret_hex: &str,
        redis_url: Option<&str>,
        ws_buffer: Option<usize>,
        extra: &[String],
    ) -> Result<GatewayProc> {
        let port = switchboard_testkit::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = match std::env::var("SB_BENCH_WRAP") {
            // e.g. SB_BENCH_WRAP="valgrind --tool=massif" to profile the gateway.
            Ok(wrap) if !wrap.is_empty() => {
                let mut parts = wrap.split_whitespace();
                let mut c = Command::new(parts.next().unwrap_or("env"));
                c.args(parts).arg(std::env::current_exe()?);
                c
            }
            _ => Command::new(std::env::current_exe()?),
        };
        cmd.args(["serve", "--listen", &addr, "--secret-hex", secret_hex]);
        if let Some(url) = redis_url {
            cmd.args(["--redis-url", url]);
        }
        if let Some(b) = ws_buffer {
            cmd.args(["--ws-buffer", &b.to_string()]);
        }
        cmd.args(extra);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?;
        // From here on, Drop stops the child even if it never comes up.
        let g = GatewayProc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&g.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("gateway did not start on {}", g.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(g)
    }

    /// SIGINT: the gateway drains and exits (and a profiler wrapper gets to
    /// write its report).
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }

    /// Whether the process has exited (without waiting for it).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, as Kubernetes sends it: the gateway drains and exits.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        proc_rss_kib(self.child.id())
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        proc_cpu_seconds(self.child.id())
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        // SIGINT first (again, if `Target` already sent it: harmless); SIGKILL
        // if it lingers.
        self.interrupt();
        let deadline = Instant::now() + Duration::from_secs(20);
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

/// The system under test: one or more gateway child processes sharing one
/// token secret (so one token works on each) and, for the Redis engine, one
/// Redis. Fields drop in order: the gateways stop before their Redis does.
pub struct Target {
    gateways: Vec<GatewayProc>,
    signer: TokenSigner,
    redis: Option<RedisServer>,
}

impl Target {
    pub async fn start(engine: Engine, ws_buffer: Option<usize>) -> Result<Target> {
        Target::start_many(engine, 1, ws_buffer).await
    }

    pub async fn start_many(engine: Engine, n: usize, ws_buffer: Option<usize>) -> Result<Target> {
        Target::start_many_with(engine, n, ws_buffer, &[]).await
    }

    /// As [`Target::start_many`], with extra `serve` arguments for every
    /// gateway.
    pub async fn start_many_with(
        engine: Engine,
        n: usize,
        ws_buffer: Option<usize>,
        extra: &[String],
    ) -> Result<Target> {
        if n == 0 {
            bail!("at least one gateway");
        }
        if engine == Engine::Memory && n > 1 {
            // The memory broker lives inside one process: separate gateway
            // processes could not reach each other's users.
            bail!("the memory engine runs one gateway; use --engine redis for several");
        }
        let redis = match engine {
            Engine::Redis => Some(bench_redis()?),
            Engine::Memory => None,
        };
        let secret: [u8; 32] = rand::random();
        let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let url = redis.as_ref().map(RedisServer::url);
        let mut t = Target {
            gateways: Vec::with_capacity(n),
            signer: TokenSigner::new(&secret),
            redis,
        };
        for _ in 0..n {
            let g = GatewayProc::spawn_with(&secret_hex, url.as_deref(), ws_buffer, extra).await?;
            t.gateways.push(g);
        }
        Ok(t)
    }

    /// The Redis under the gateways, to stop and start it.
    pub fn redis_mut(&mut self) -> Option<&mut RedisServer> {
        self.redis.as_mut()
    }

    /// The number of gateways.
    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    /// The address of gateway `i` (wrapping around).
    pub fn addr(&self, i: usize) -> &str {
        &self.gateways[i % self.gateways.len()].addr
    }

    pub fn token(&self, user: &Address) -> String {
        token(&self.signer, user)
    }

    /// Resident set size in KiB, summed over the gateways.
    pub fn rss_kib(&self) -> Result<u64> {
        self.gateways.iter().map(GatewayProc::rss_kib).sum()
    }

    /// User + system CPU seconds so far, summed over the gateways.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.gateways.iter().map(GatewayProc::cpu_seconds).sum()
    }

    /// User + system CPU seconds of Redis so far (`INFO cpu`), if any.
    pub fn redis_cpu_seconds(&self) -> Result<Option<f64>> {
        self.redis.as_ref().map(redis_cpu_seconds).transpose()
    }

    /// `PUBLISH` calls Redis has served so far (`INFO commandstats`), if any:
    /// shows whether deliveries crossed pub/sub or took the local short cut.
    pub fn redis_publishes(&self) -> Result<Option<u64>> {
        let Some(r) = &self.redis else {
            return Ok(None);
        };
        Ok(Some(
            redis_commandstats(r)?.get("publish").copied().unwrap_or(0),
        ))
    }
}

/// User + system CPU seconds `r` has used so far (`INFO cpu`: the server's
/// own getrusage, as /proc/<pid>/stat counts it).
pub fn redis_cpu_seconds(r: &RedisServer) -> Result<f64> {
    let info = r.command(&["INFO", "cpu"])?;
    let field = |name: &str| -> Result<f64> {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO cpu: no {name}"))
    };
    Ok(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Calls per command `r` has served so far (`INFO commandstats`, lines
/// `cmdstat_<name>:calls=N,usec=...`; a command appears after its first call).
pub fn redis_commandstats(r: &RedisServer) -> Result<std::collections::BTreeMap<String, u64>> {
    let info = r.command(&["INFO", "commandstats"])?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

impl Drop for Target {
    fn drop(&mut self) {
        // Let every gateway start draining at once; each one's Drop then
        // waits for it (SIGKILL after 20 s).
        for g in &self.gateways {
            g.interrupt();
        }
    }
}

/// A redis-server for benchmarks of the gateway: no AOF (fsync-always would
/// measure the disk).
pub fn bench_redis() -> Result<RedisServer, switchboard_testkit::TestkitError> {
    RedisServer::start_with(switchboard_testkit::RedisServerOptions {
        persistence: false,
        ..Default::default()
    })
}

/// The shipped gateway as a child process.
pub struct GatewayBin {
    child: Child,
    pub addr: String,
    /// Its `/metrics` (a listener of its own, not `addr`).
    pub metrics_addr: String,
    _secret_dir: tempfile::TempDir,
}

impl GatewayBin {
    pub async fn spawn(
        bin: &PathBuf,
        redis_url: Option<&str>,
        secret: &[u8],
        extra: &str,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, secret)?;
        let port = switchboard_testkit::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let metrics_addr = format!("127.0.0.1:{}", switchboard_testkit::free_port()?);
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &addr])
            .args(["--metrics-listen", &metrics_addr])
            .arg("--token-secret-file")
            .arg(&secret_file);
        if let Some(url) = redis_url {
            cmd.args(["--redis-url", url]);
        }
        cmd.args(extra.split_whitespace());
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let g = GatewayBin {
            child,
            addr,
            metrics_addr,
            _secret_dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&g.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("gateway did not start on {}", g.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(g)
    }

    /// The process id (for `/proc` and profilers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        proc_rss_kib(self.child.id())
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        proc_cpu_seconds(self.child.id())
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/<pid>/status).
pub fn proc_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// User + system CPU seconds of process `pid` so far (utime + stime of
/// /proc/<pid>/stat, in 100 Hz clock ticks).
pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let t = proc_cpu_times(pid)?;
    Ok(t.user + t.system)
}

/// CPU seconds a process has used, in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + o.user,
            system: self.system + o.system,
        }
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - o.user,
            system: self.system - o.system,
        }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(it: I) -> CpuTimes {
        it.fold(CpuTimes::default(), |a, b| a + b)
    }
}

/// utime and stime of process `pid` (/proc/<pid>/stat, in clock ticks of
/// 1/100 s).
pub fn proc_cpu_times(pid: u32) -> Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_times(&stat)
}

fn parse_cpu_times(stat: &str) -> Result<CpuTimes> {
    // Fields after the parenthesised command name (which may hold spaces
    // and parentheses); utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let t: u64 = f
            .get(i)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("stat: field {} is not a tick count", i + 3))?;
        Ok(t as f64 / 100.0)
    };
    Ok(CpuTimes {
        user: ticks(11)?,
        system: ticks(12)?,
    })
}

impl Drop for GatewayBin {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
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

pub fn default_gateway_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .context("the bench binary has no directory")?
        .join("switchboard-gateway");
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p switchboard-gateway -p switchboard-bench",
            bin.display()
        );
    }
    Ok(bin)
}

#[cfg(test)]
mod cpu_times_tests {
    use super::{CpuTimes, parse_cpu_times};

    #[test]
    fn utime_and_stime_after_a_command_name_with_spaces_and_parens() {
        let stat =
            "4242 (gw (x) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 125 0 0 20 0 4 0 99 1000 50";
        assert_eq!(
            parse_cpu_times(stat).expect("parses"),
            CpuTimes {
                user: 2.5,
                system: 1.25
            }
        );
        assert!(parse_cpu_times("4242 (gw) S 1 2").is_err(), "too short");
        assert!(parse_cpu_times("no parens").is_err());
    }
}
