//! The command line: one subcommand per scenario, each with its flags in
//! its own module.

use clap::{Parser, Subcommand};

use crate::autoscale::AutoscaleArgs;
use crate::drain::DrainArgs;
use crate::fanout::FanoutArgs;
use crate::flood::FloodArgs;
use crate::idle::IdleArgs;
use crate::latency::LatencyArgs;
use crate::peer::PeerArgs;
use crate::persist::PersistArgs;
use crate::reconcile::ReconcileArgs;
use crate::relay::RelayArgs;
use crate::serve::ServeArgs;

#[derive(Parser)]
#[command(about = "Switchboard load generator and benchmarks")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run a gateway (used as the child process of the scenarios).
    Serve(ServeArgs),
    /// Gateway RSS per idle authenticated connection.
    Idle(IdleArgs),
    /// Delivery latency and gateway CPU per 1,000 deliveries.
    Latency(LatencyArgs),
    /// The standard set for docs/benchmarks.md.
    All,
    /// Worker persistence throughput vs one INSERT per message, and lag.
    Persist(PersistArgs),
    /// Operator reconcile latency in the local control plane: apply → all
    /// children and status, and spec change → converged.
    Reconcile(ReconcileArgs),
    /// Graceful drain of one gateway (SIGTERM) whose clients reconnect to a
    /// second one: close-time spread, reconnect time, exit time.
    Drain(DrainArgs),
    /// Autoscaler reaction time: connections cross the target → the
    /// Deployment's replicas change (local control plane, operator in process).
    Autoscale(AutoscaleArgs),
    /// Channel fan-out: one publisher, subscribers split over two gateways
    /// (WebSocket, then SSE): deliveries, throughput, publish → receive.
    Fanout(FanoutArgs),
    /// One client floods one gateway (the shipped binary, default limits):
    /// nonces, verifies, REST, connections, frames; well-behaved sockets'
    /// ping round trips, baseline vs flood.
    Flood(FloodArgs),
    /// The fallback relay: latency and CPU per delivery in relay mode (Redis
    /// killed) next to normal mode, and the time to enter and leave it.
    Relay(RelayArgs),
    /// Against the peer: the shipped gateway and a Socket.IO 4 server with the
    /// Redis adapter on one Redis, same load, runs alternated: deliveries per
    /// server CPU-second, Redis CPU and calls per delivery, latency, RSS per
    /// idle connection, and the ratios.
    Peer(PeerArgs),
}

impl Cmd {
    /// Run the subcommand's scenario to its end.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Cmd::Serve(a) => crate::serve::run(a).await,
            Cmd::Idle(a) => crate::idle::run(a).await,
            Cmd::Latency(a) => crate::latency::run(a).await,
            Cmd::All => crate::all::run().await,
            Cmd::Persist(a) => crate::persist::run(a).await,
            Cmd::Reconcile(a) => crate::reconcile::run(a).await,
            Cmd::Drain(a) => crate::drain::run(a).await,
            Cmd::Autoscale(a) => crate::autoscale::run(a).await,
            Cmd::Fanout(a) => crate::fanout::run(a).await,
            Cmd::Flood(a) => crate::flood::run(a).await,
            Cmd::Relay(a) => crate::relay::run(a).await,
            Cmd::Peer(a) => crate::peer::run(a).await,
        }
    }
}
