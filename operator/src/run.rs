//! `switchboard-operator run`: check the CRD, serve /metrics and /healthz,
//! join the leader election and run the controller, the gateway autoscaler,
//! the partition manager and the Redis Cluster manager while leading, until
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ListParams};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ChatCluster;
use crate::autoscaler::Autoscaler;
use crate::leader::Election;
use crate::manager::{self, Shared};
use crate::metrics::Metrics;
use crate::partitions::{PartitionManager, PartitionsConfig};
use crate::reconcile::{Context, run_controller};
use crate::redis_manager::{RedisConfig, RedisManager};

/// Everything `run` needs besides the client.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Watch only this namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Address of /metrics and /healthz.
    pub listen: SocketAddr,
    /// Run for the leader Lease; off only for a single replica or tests.
    pub leader_election: bool,
    /// Namespace and name of the Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's identity in the election and in Events (the pod name).
    pub identity: String,
    /// The namespace the operator's pods run in: the NetworkPolicies it
    /// builds let pods from there reach the managed stores (`None`: any
    /// namespace, matched by the pods' label).
    pub operator_namespace: Option<String>,
    /// Time between two autoscaler syncs ([`crate::autoscaler::DEFAULT_INTERVAL`]).
    pub autoscale_interval: Duration,
    /// Schedule and clock of the partition manager ([`crate::partitions`]).
    pub partitions: PartitionsConfig,
    /// Schedule, timeouts and addressing of the Redis Cluster manager
    /// ([`crate::redis_manager`]).
    pub redis: RedisConfig,
}

impl RunConfig {
    /// Every namespace, leader election on the Lease `default/switchboard-operator`,
    /// default schedules; `identity` and the /metrics address as given.
    pub fn new(identity: impl Into<String>, listen: SocketAddr) -> Self {
        RunConfig {
            namespace: None,
            listen,
            leader_election: true,
            lease_namespace: "default".into(),
            lease_name: "switchboard-operator".into(),
            identity: identity.into(),
            operator_namespace: None,
            autoscale_interval: crate::autoscaler::DEFAULT_INTERVAL,
            partitions: PartitionsConfig::default(),
            redis: RedisConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the ChatCluster CRD (chatclusters.switchboard.dev) is not installed in this cluster; \
         install it first: `switchboard-operator crd | kubectl apply --server-side -f -` \
         (or `kubectl apply --server-side -f crds/chatcluster.yaml`, or install the Helm chart)"
    )]
    CrdMissing,
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Fails with [`RunError::CrdMissing`] when the API server does not serve
/// ChatClusters, instead of letting the controller's watch retry forever.
pub async fn ensure_crd(client: &Client, namespace: Option<&str>) -> Result<(), RunError> {
    let api: Api<ChatCluster> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing),
        Err(e) => Err(e.into()),
    }
}

/// Runs the operator until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    cfg: RunConfig,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    ensure_crd(&client, cfg.namespace.as_deref()).await?;

    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(addr = %cfg.listen, "serving /metrics and /healthz");
    let server = tokio::spawn(std::future::IntoFuture::into_future(
        axum::serve(listener, crate::server::router(metrics.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned()),
    ));

    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some(cfg.identity.clone()))
            .with_operator_namespace(cfg.operator_namespace.clone()),
    );

    if !cfg.leader_election {
        metrics.leader.set(1);
        leader_work(&ctx, &client, &metrics, &cfg, shutdown.clone()).await;
    } else {
        let mut election = Election::join(
            client.clone(),
            &cfg.lease_namespace,
            &cfg.lease_name,
            &cfg.identity,
        )
        .await?;
        tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "waiting for leadership");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = election.acquired() => if !got {
                    tracing::error!("leader election stopped; exiting");
                    break;
                },
            }
            tracing::info!(identity = %cfg.identity, "acquired the leader lease; reconciling");
            metrics.leader.set(1);
            // Stop the controller on shutdown or when the Lease is lost.
            let stop = shutdown.child_token();
            let watcher = {
                let stop = stop.clone();
                let lost = election.lost();
                tokio::spawn(async move {
                    lost.await;
                    stop.cancel();
                })
            };
            leader_work(&ctx, &client, &metrics, &cfg, stop).await;
            watcher.abort();
            metrics.leader.set(0);
            if shutdown.is_cancelled() {
                break;
            }
            tracing::warn!("lost the leader lease; standing by");
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, election.leave())
            .await
            .is_err()
        {
            tracing::warn!("releasing the leader lease timed out; it expires by itself");
        }
    }

    shutdown.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics server stopped with an error"),
        Err(_) => tracing::warn!("metrics server did not stop in time"),
        _ => {}
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// What the leader does until `stop` (shutdown, or the Lease lost): the
/// controller, and next to it the three managers ([`crate::manager`]), all
/// stopping together.
async fn leader_work(
    ctx: &Arc<Context>,
    client: &Client,
    metrics: &Arc<Metrics>,
    cfg: &RunConfig,
    stop: CancellationToken,
) {
    let shared = Shared {
        client: client.clone(),
        metrics: metrics.clone(),
        namespace: cfg.namespace.clone(),
        instance: Some(cfg.identity.clone()),
    };
    let work = async {
        tokio::join!(
            run_controller(
                ctx.clone(),
                cfg.namespace.clone(),
                stop.clone().cancelled_owned()
            ),
            manager::run(
                Autoscaler::new(cfg.autoscale_interval),
                shared.clone(),
                stop.clone()
            ),
            manager::run(
                PartitionManager::new(cfg.partitions.clone()),
                shared.clone(),
                stop.clone()
            ),
            manager::run(RedisManager::new(cfg.redis.clone()), shared, stop.clone()),
        )
    };
    // Once told to stop, the work gets SHUTDOWN_GRACE to finish what it is
    // in (a reconcile's API calls, a Redis bootstrap step); then it is
    // dropped, so a call that never answers cannot keep a stopping (or
    // demoted) operator from exiting or from standing by.
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = work => {}
        _ = deadline => tracing::warn!(grace = ?SHUTDOWN_GRACE, "leader work did not stop in time; abandoned"),
    }
}

/// How long stopping leader work may take (see [`leader_work`]), and each
/// of the other shutdown steps (releasing the Lease, the metrics server).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
