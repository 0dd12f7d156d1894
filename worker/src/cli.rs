//! The worker's command line, in the library so other crates can parse the
//! real arguments: the operator's contract test checks the Deployments it
//! builds with `Cli::try_parse_from`. Environment variable names come from
//! [`switchboard_core::env`], the constants the operator writes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard_core::env;
use switchboard_core::store::partitions::{PartitionInterval, PartitionPolicy};

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-worker",
    version,
    about = "Persist Switchboard messages to PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    #[command(flatten)]
    pub log: switchboard_core::telemetry::LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Consume the persistence streams until SIGTERM.
    Run(RunArgs),
    /// Apply the database migrations and exit.
    Migrate(DbArgs),
    /// Run partition maintenance once and print the partitions.
    Partitions {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Args, Debug)]
pub struct DbArgs {
    /// PostgreSQL URL (postgres://user:pass@host:port/db)
    #[arg(long, env = env::DATABASE_URL)]
    pub database_url: String,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Partition length: daily, weekly or monthly
    #[arg(long, default_value = "daily")]
    pub partition_interval: String,
    /// Partitions created ahead of the current one
    #[arg(long, default_value_t = 7)]
    pub partition_premake: u32,
    /// Days of messages kept; older partitions are dropped
    #[arg(long, default_value_t = 90)]
    pub retention_days: u64,
    /// Detach expired partitions instead of dropping them
    #[arg(long)]
    pub detach_expired: bool,
}

/// A partition policy the arguments do not describe.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl PolicyArgs {
    pub fn policy(&self) -> Result<PartitionPolicy, PolicyError> {
        let interval: PartitionInterval = self.partition_interval.parse().map_err(PolicyError)?;
        if self.retention_days == 0 {
            return Err(PolicyError("--retention-days must be at least 1".into()));
        }
        Ok(PartitionPolicy {
            interval,
            premake: self.partition_premake,
            retention: Duration::from_secs(self.retention_days * 24 * 3600),
            detach_only: self.detach_expired,
        })
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Redis URL (redis://… or redis-cluster://…)
    #[arg(long, env = env::REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Redis password, if the URL names none (the operator sets it from the
    /// managed Redis's Secret)
    #[arg(long, env = env::REDIS_PASSWORD, hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Address for /metrics, /healthz and /readyz
    #[arg(long, default_value = "0.0.0.0:9091")]
    pub listen: SocketAddr,
    /// Apply migrations before starting
    #[arg(long)]
    pub migrate: bool,
    /// Maintain partitions every this many seconds (0: leave it to the operator)
    #[arg(long, default_value_t = 0)]
    pub partition_maintenance_secs: u64,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Most entries per transaction (a backlog drains in big batches; under
    /// steady load a batch holds what arrived within the linger)
    #[arg(long, default_value_t = 10_000)]
    pub batch_size: usize,
    /// Milliseconds a batch waits for more entries
    #[arg(long, default_value_t = 10)]
    pub linger_ms: u64,
    /// Deliveries after which a failing entry is dead-lettered
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u64,
    /// Seconds an entry may stay pending before another worker takes it over
    #[arg(long, default_value_t = 30)]
    pub claim_idle_secs: u64,
    /// Logical broker shards (must match the gateways)
    #[arg(long, default_value_t = 64)]
    pub shards: u16,
    /// This pod's name, the start of the worker's consumer name in the
    /// streams' group (default: $HOSTNAME, then "worker")
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses_the_run_command_with_its_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "switchboard-worker",
            "run",
            "--database-url",
            "postgres://db",
            "--redis-url",
            "redis://r",
            "--pod-name",
            "worker-0",
        ])
        .expect("valid arguments");
        let Cmd::Run(args) = cli.cmd else {
            panic!("not run: {:?}", cli.cmd);
        };
        assert_eq!(args.pod_name.as_deref(), Some("worker-0"));
        assert_eq!(
            (args.shards, args.batch_size, args.linger_ms),
            (64, 10_000, 10)
        );
        assert_eq!(args.listen, "0.0.0.0:9091".parse().expect("address"));
        let policy = args.policy.policy().expect("default policy");
        assert_eq!(policy.retention, Duration::from_secs(90 * 24 * 3600));
    }

    #[test]
    fn rejects_a_zero_retention() {
        let policy = PolicyArgs {
            partition_interval: "daily".into(),
            partition_premake: 7,
            retention_days: 0,
            detach_expired: false,
        };
        let err = policy.policy().expect_err("zero retention");
        assert_eq!(err.to_string(), "--retention-days must be at least 1");
    }
}
