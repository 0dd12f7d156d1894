//! What the worker binary's commands do ([`crate::cli::Cmd`]): `run`
//! (consume the streams and serve `/metrics`, `/healthz`, `/readyz` until
//! SIGTERM), `migrate` and `partitions` (one pass, for containers and cron).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::startup::STARTUP_WAIT;
use switchboard_core::store::partitions;
use switchboard_core::store::{PgStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cmd, DbArgs, PolicyError, RunArgs};
use crate::http::{HttpState, router};
use switchboard_core::broker::RedisTarget;

use crate::run::{Worker, WorkerConfig, WorkerError, consumer_name};

/// Why a command failed. The messages name what to check; the source says
/// what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot connect to PostgreSQL (check --database-url)")]
    Database(#[source] StoreError),
    #[error("migration failed")]
    Migrate(#[source] StoreError),
    #[error("partition maintenance failed")]
    Partitions(#[source] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// `redis` is the target as shown: its password is never in it.
    #[error("cannot connect to Redis at {redis}")]
    Redis {
        redis: String,
        #[source]
        source: WorkerError,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics server task")]
    HttpTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Http(std::io::Error),
}

/// Run one command to its end (for `run`: until SIGTERM or Ctrl-C).
pub async fn execute(cmd: Cmd) -> Result<(), CommandError> {
    match cmd {
        Cmd::Migrate(db) => {
            let store = connect(&db).await?;
            store.migrate().await.map_err(CommandError::Migrate)?;
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
            .map_err(CommandError::Partitions)?;
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

/// The store the arguments name, with the binary's pool size.
/// Waits for PostgreSQL at start-up (see `switchboard_core::startup`).
pub async fn connect(db: &DbArgs) -> Result<PgStore, CommandError> {
    PgStore::connect_within(&db.database_url, 8, STARTUP_WAIT)
        .await
        .map_err(CommandError::Database)
}

/// Consume the streams and serve the HTTP surface until SIGTERM or Ctrl-C;
/// on either, the batch in hand is finished first.
pub async fn run(args: RunArgs) -> Result<(), CommandError> {
    let store = connect(&args.db).await?;
    if args.migrate {
        store.migrate().await.map_err(CommandError::Migrate)?;
    }
    let partitions = match args.partition_maintenance_secs {
        0 => None,
        s => Some((args.policy.policy()?, Duration::from_secs(s))),
    };
    let cfg = WorkerConfig {
        shards: args.shards,
        consumer: consumer_name(args.pod_name.as_deref()),
        batch_size: args.batch_size,
        linger: Duration::from_millis(args.linger_ms),
        max_attempts: args.max_attempts,
        claim_idle: Duration::from_secs(args.claim_idle_secs),
        partitions,
        ..WorkerConfig::default()
    };
    let redis = RedisTarget::new(args.redis_url.clone(), args.redis_password.clone());
    let worker = Worker::connect_within(&redis, store.clone(), cfg, STARTUP_WAIT)
        .await
        .map_err(|source| CommandError::Redis {
            redis: redis.to_string(),
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CommandError::Listen {
            addr: args.listen,
            source,
        })?;
    let app = router(HttpState {
        metrics: worker.metrics(),
        streams: worker.streams(),
        store: Arc::new(store),
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
    http.await
        .map_err(CommandError::HttpTask)?
        .map_err(CommandError::Http)?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what Kubernetes sends), whichever comes first; a
/// signal that cannot be listened for never fires rather than failing.
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
