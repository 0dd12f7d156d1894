//! `switchboard-worker`: `run` (consume the streams), `migrate` (apply the
//! schema) and `partitions` (one maintenance pass), for containers and cron.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard_core::store::PgStore;
use switchboard_core::store::partitions::{self, PartitionInterval, PartitionPolicy};
use switchboard_worker::http::{HttpState, router};
use switchboard_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "switchboard-worker",
    version,
    about = "Persist Switchboard messages to PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

#[derive(Args)]
struct DbArgs {
    /// PostgreSQL URL (postgres://user:pass@host:port/db)
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL")]
    database_url: String,
}

#[derive(Args)]
struct PolicyArgs {
    /// Partition length: daily, weekly or monthly
    #[arg(long, default_value = "daily")]
    partition_interval: String,
    /// Partitions created ahead of the current one
    #[arg(long, default_value_t = 7)]
    partition_premake: u32,
    /// Days of messages kept; older partitions are dropped
    #[arg(long, default_value_t = 90)]
    retention_days: u64,
    /// Detach expired partitions instead of dropping them
    #[arg(long)]
    detach_expired: bool,
}

impl PolicyArgs {
    fn policy(&self) -> anyhow::Result<PartitionPolicy> {
        let interval: PartitionInterval = self
            .partition_interval
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            self.retention_days > 0,
            "--retention-days must be at least 1"
        );
        Ok(PartitionPolicy {
            interval,
            premake: self.partition_premake,
            retention: Duration::from_secs(self.retention_days * 24 * 3600),
            detach_only: self.detach_expired,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Redis URL (redis://… or redis-cluster://…)
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    redis_url: String,
    /// Address for /metrics, /healthz and /readyz
    #[arg(long, default_value = "0.0.0.0:9091")]
    listen: SocketAddr,
    /// Apply migrations before starting
    #[arg(long)]
    migrate: bool,
    /// Maintain partitions every this many seconds (0: leave it to the operator)
    #[arg(long, default_value_t = 0)]
    partition_maintenance_secs: u64,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Most entries per transaction (a backlog drains in big batches; under
    /// steady load a batch holds what arrived within the linger)
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
    /// Milliseconds a batch waits for more entries
    #[arg(long, default_value_t = 10)]
    linger_ms: u64,
    /// Deliveries after which a failing entry is dead-lettered
    #[arg(long, default_value_t = 5)]
    max_attempts: u64,
    /// Seconds an entry may stay pending before another worker takes it over
    #[arg(long, default_value_t = 30)]
    claim_idle_secs: u64,
    /// Logical broker shards (must match the gateways)
    #[arg(long, default_value_t = 64)]
    shards: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Migrate(db) => {
            let store = connect(&db).await?;
            store.migrate().await.context("migration failed")?;
            println!("migrations applied");
        }
        Cmd::Partitions { db, policy } => {
            let store = connect(&db).await?;
            let r = partitions::maintain(
                store.pool(),
                &policy.policy()?,
                time::OffsetDateTime::now_utc(),
            )
            .await
            .context("partition maintenance failed")?;
            println!(
                "created {:?}, removed {:?}, moved {} rows",
                r.created, r.removed, r.moved_rows
            );
            for p in &r.partitions {
                println!("{}", p.name);
            }
        }
        Cmd::Run(args) => run(args).await?,
    }
    Ok(())
}

async fn connect(db: &DbArgs) -> anyhow::Result<PgStore> {
    PgStore::connect(&db.database_url, 8)
        .await
        .with_context(|| "cannot connect to PostgreSQL (check --database-url)")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let store = connect(&args.db).await?;
    if args.migrate {
        store.migrate().await.context("migration failed")?;
    }
    let partitions = match args.partition_maintenance_secs {
        0 => None,
        s => Some((args.policy.policy()?, Duration::from_secs(s))),
    };
    let cfg = WorkerConfig {
        shards: args.shards,
        batch_size: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        max_attempts: args.max_attempts,
        claim_idle: Duration::from_secs(args.claim_idle_secs),
        partitions,
        ..WorkerConfig::default()
    };
    let worker = Worker::connect(&args.redis_url, store.clone(), cfg)
        .await
        .with_context(|| format!("cannot connect to Redis at {}", args.redis_url))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = router(HttpState {
        metrics: worker.metrics(),
        streams: worker.streams(),
        store: std::sync::Arc::new(store),
    });
    let cancel = CancellationToken::new();
    let http_cancel = cancel.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await
    });
    let signal_cancel = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the batch in hand");
        signal_cancel.cancel();
    });
    worker.run(cancel.clone()).await;
    cancel.cancel();
    http.await.context("metrics server task")??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
