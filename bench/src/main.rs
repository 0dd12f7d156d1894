//! `switchboard-bench`: the project's load generator.
//!
//! Each scenario starts the gateway as a separate child process (this same
//! binary, `serve`), so its RSS and CPU time are read cleanly from /proc, and
//! drives it over real WebSockets on loopback. Redis comes from testkit.
//!
//!   switchboard-bench idle --engine redis --connections 10000 [--ws-buffer 131072]
//!   switchboard-bench latency --engine redis --users 1000 --rate 2000 --seconds 10
//!   switchboard-bench latency --engine redis --gateways 2   # every pair split over two gateways
//!   switchboard-bench all        # the set recorded in docs/benchmarks.md
//!   switchboard-bench persist    # worker vs naive INSERTs, and sent→stored lag
//!   switchboard-bench drain --connections 10000 --window-seconds 10,1
//!   switchboard-bench autoscale --runs 10
//!   switchboard-bench fanout --subscribers 20000 --messages 200 --rate 20 --sse-subscribers 2000
//!   switchboard-bench flood --seconds 10   # needs the release switchboard-gateway next to it
//!   switchboard-bench relay --users 200 --rate 500 --seconds 10   # relay mode vs normal
//!   switchboard-bench peer --rounds 2      # against Socket.IO + Redis adapter (node, npm)

//!
//! Layout: [`cli`] the subcommands; one module per scenario with its flags
//! ([`idle`], [`latency`], [`all`], [`persist`], [`reconcile`], [`drain`],
//! [`autoscale`], [`fanout`], [`flood`], [`relay`], [`peer`]); [`serve`] the
//! gateway child process; [`target`] the processes under test; [`client`]
//! WebSocket sessions; [`sio`] the Socket.IO peer process and [`eio`] its
//! framing.

mod all;
mod autoscale;
mod cli;
mod client;
mod drain;
mod eio;
mod fanout;
mod flood;
mod idle;
mod latency;
mod peer;
mod persist;
mod reconcile;
mod relay;
mod serve;
mod sio;
mod target;

use anyhow::Result;
use clap::Parser;

fn main() -> Result<()> {
    let cli = cli::Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cli.cmd.run())
}
