//! `switchboard dev`: one gateway in this process, on the memory broker or on
//! Redis — with `--database-url` also PostgreSQL (migrations applied) and an
//! embedded worker — until Ctrl-C / SIGTERM, then a graceful drain. The
//! gateway's flags and start-up are the `switchboard-gateway` binary's
//! (`switchboard_gateway::args`, `switchboard_gateway::launch`); this adds
//! the worker and the browser chat at `/demo` (`crate::web`).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use switchboard_core::broker::RedisTarget;
use switchboard_core::store::partitions::PartitionPolicy;
use switchboard_gateway::args::GatewayArgs;
use switchboard_gateway::launch;
use switchboard_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct DevArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let args = args.gateway;
    let mut cfg = launch::config(&args)?;
    // The browser chat at /demo, same origin as the API it calls.
    cfg.static_files = crate::web::files();
    let mut engines = launch::connect(&args, true).await?;

    let worker_stop = CancellationToken::new();
    let mut worker_task = None;
    if let (Some(store), Some(redis_url)) = (&engines.store, &args.redis_url) {
        let wcfg = WorkerConfig {
            shards: engines.broker_config.shards,
            partitions: Some((PartitionPolicy::default(), Duration::from_secs(3600))),
            ..WorkerConfig::default()
        };
        let redis = RedisTarget::new(redis_url.as_str(), args.redis_password.clone());
        let worker = Worker::connect_to(&redis, store.clone(), wcfg)
            .await
            .context("cannot start the embedded worker")?;
        let stop = worker_stop.clone();
        worker_task = Some(tokio::spawn(async move { worker.run(stop).await }));
        engines.describe.push_str(", embedded worker");
    }

    launch::serve(&args, cfg, engines, "switchboard dev").await?;
    // The worker finishes the batch in hand after the gateway stopped
    // producing, so what was sent before the drain is stored.
    worker_stop.cancel();
    if let Some(t) = worker_task {
        let _ = t.await;
    }
    Ok(())
}
