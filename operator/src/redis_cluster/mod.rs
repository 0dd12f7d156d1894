//! Redis Cluster bootstrap over the Redis protocol: the data-plane step that
//! turns the managed Redis StatefulSet's pods (started with
//! `cluster-enabled yes`, each alone) into one healthy Redis Cluster, and
//! heals it when a pod comes back empty. No `pods/exec`, no `redis-cli`: one
//! plain (non-cluster) connection per node and `CLUSTER …` commands.
//!
//! # Layout
//!
//! [`Layout::new`] maps node ordinals to shards deterministically: ordinal
//! `i` belongs to shard `i % shards`; ordinals `0..shards` are the intended
//! primaries and the rest replicas, so with 3 shards and 1 replica each
//! pods 0, 1, 2 are primaries and pods 3, 4, 5 replicate 0, 1, 2. Shard `k`
//! owns the contiguous slot range starting at `round(k * 16384 / shards)`,
//! the same split `redis-cli --cluster create` makes (0-5460, 5461-10922,
//! 10923-16383 for three shards).
//!
//! # Steps ([`bootstrap`])
//!
//! 1. Connect to every node (all must answer: an unreachable node is an
//!    error before anything is changed) and read `CLUSTER MYID`,
//!    `CLUSTER NODES` and `CLUSTER INFO`.
//! 2. Membership: pick a reference node (the one that knows the most nodes
//!    and slots) and `CLUSTER MEET` every node it does not know, by IP (the
//!    host names are resolved first) and the node's own cluster-bus port.
//!    Wait until every node knows every other.
//! 3. Stale node ids (see below): a stale primary that still owns slots and
//!    has a live replica is replaced by that replica (`CLUSTER FAILOVER
//!    TAKEOVER`, after giving Redis's own failover a grace period when Redis
//!    can detect the failure itself); then every node `CLUSTER FORGET`s the
//!    stale ids (a forgotten primary's slots become unassigned).
//! 4. Slots: once all nodes agree on slot owners, the unassigned slots of
//!    each shard's range go to the node already serving part of that range,
//!    else to the first member of the shard (intended primary first) that is
//!    a primary without slots: `CLUSTER ADDSLOTSRANGE` (Redis 7), falling
//!    back to `CLUSTER ADDSLOTS` batches on older servers.
//! 5. Replicas: every other member of a shard that does not serve slots
//!    `CLUSTER REPLICATE`s the node serving the shard's first slot.
//! 6. If anything changed, wait until every node reports `cluster_state:ok`,
//!    all 16,384 slots served by healthy nodes, and the same view of slots
//!    and roles; then report.
//!
//! Every wait is bounded ([`BootstrapOptions::converge_timeout`]) and fails
//! with [`BootstrapError::NotConverged`] naming the node that disagrees.
//!
//! # Idempotency
//!
//! Every step compares the observed state with the layout and only issues a
//! command for a difference, so on a formed, healthy cluster a run sends no
//! mutating command and its report says [`BootstrapReport::changed`] is
//! false. Roles inside a shard are *not* restored after a failover: the member
//! that serves the slots stays primary (no failback), the others replicate it.
//!
//! # No resharding
//!
//! Slots that are assigned are never moved: only unassigned slots are handed
//! out. Changing the shard count of a formed cluster is not automated.
//!
//! # Stale node ids
//!
//! A node that lost its data (wiped volume, lost `nodes.conf`) comes back
//! with a fresh node id, while the others still list its old id. An id is
//! *stale*, and forgotten, only when all of these hold:
//! - it is not the current id of any of the given nodes (which all answered);
//! - it is flagged `noaddr` (Redis sets this when the id's address answered
//!   with another node id) and any host name it announced is one of the given
//!   hosts, or it is flagged `fail` and its last address (IP and port, or
//!   announced host name) is one of the given nodes — which now answers with
//!   another id.
//!
//! An old id still listed at one of the given addresses but not flagged yet
//! (Redis flags `noaddr` within a second once the others reconnect, `fail`
//! after about two node timeouts) is waited for, so a run right after a
//! restart does not leave it behind. Unknown ids that do not match are left
//! alone and listed in [`BootstrapReport::foreign`]. Redis bans a forgotten id
//! for 60 s per node, so the forget is sent to every node that lists it, in
//! one go.
//!
//! Why a takeover: when a node restarts empty on the *same* address, the
//! others mark its old id `noaddr` and stop pinging it, so Redis never flags
//! it `fail`, never fails over, and keeps reporting `cluster_state:ok` while
//! its slots are unreachable. The address answering as another id is proof
//! the old primary is gone, so its replica with the most data (highest
//! replication offset) is promoted. This is also why
//! [`BootstrapReport::ready`] counts slots served by healthy given nodes
//! rather than trusting `cluster_slots_ok`.
//!
//! # Where things are
//!
//! - `layout`: the desired layout, pure: shards, their slot ranges, roles.
//! - `nodes`: the `CLUSTER NODES` and `CLUSTER INFO` parsers and one node's
//!   view of the cluster, pure.
//! - `conn`: node addresses and the connection to one node (commands and
//!   their errors).
//! - `run`: [`bootstrap`] and [`inspect`], the steps above over those
//!   connections; the planning steps are pure functions of the views.
//! - `report`: what a run did and the state it left.
//!
//! The Redis Cluster manager ([`crate::redis_manager`]) calls [`bootstrap`]
//! with the StatefulSet pods' stable names under the headless Service, in
//! ordinal order, and maps the report to `status.redis`; [`inspect`] gives
//! the same report without changing anything. A failed run is retried as a
//! whole ([`BootstrapError::is_transient`] tells waiting from a spec
//! problem).

mod conn;
mod layout;
mod nodes;
mod report;
mod run;

use std::time::Duration;

use fred::prelude::Error as RedisError;

pub use self::conn::NodeAddr;
pub use self::layout::{Layout, Role, SLOTS, Shard, SlotRange};
pub use self::report::{
    BootstrapReport, Forgotten, NodeReport, NodeRole, Promotion, ReplicaSet, SlotsAdded,
};
pub use self::run::{bootstrap, inspect};

/// Why a bootstrap could not finish. Nothing is rolled back: every step is
/// safe to run again, so the caller retries the whole bootstrap later.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("invalid Redis Cluster layout: {0}")]
    Layout(String),
    #[error("invalid Redis node address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("Redis node address {node} is given twice")]
    DuplicateNode { node: String },
    #[error("cannot resolve Redis node {node}: {source}")]
    Resolve {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Redis node {node} is unreachable: {source}")]
    Unreachable {
        node: String,
        #[source]
        source: RedisError,
    },
    #[error("Redis node {node} does not run in cluster mode (start it with `cluster-enabled yes`)")]
    ClusterDisabled { node: String },
    #[error("`{command}` on Redis node {node} failed: {source}")]
    Command {
        node: String,
        command: String,
        #[source]
        source: RedisError,
    },
    #[error("unexpected reply from Redis node {node} to `{command}`: {detail}")]
    Reply {
        node: String,
        command: String,
        detail: String,
    },
    #[error(
        "Redis node {node} serves slots {slots} but is not part of the cluster {reference} belongs to; refusing to merge two clusters"
    )]
    SplitCluster {
        node: String,
        reference: String,
        slots: String,
    },
    #[error(
        "no member of shard {shard} can take its unassigned slots {slots}: each is a replica or serves other slots"
    )]
    NoPrimaryCandidate { shard: usize, slots: String },
    #[error(
        "Redis Cluster did not converge within {secs} s waiting for {stage}: node {node} {detail}"
    )]
    NotConverged {
        stage: &'static str,
        node: String,
        detail: String,
        secs: u64,
    },
}

impl BootstrapError {
    /// Whether retrying later may succeed without a spec or operator change
    /// (nodes starting, gossip still spreading).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BootstrapError::Resolve { .. }
                | BootstrapError::Unreachable { .. }
                | BootstrapError::Command { .. }
                | BootstrapError::NotConverged { .. }
        )
    }
}

/// Timeouts of a bootstrap, and the nodes' password.
#[derive(Clone)]
pub struct BootstrapOptions {
    /// The password every node requires (`requirepass`), if any: each
    /// connection authenticates with it. Never shown by `Debug`.
    pub password: Option<String>,
    /// TCP connect timeout per node.
    pub connect_timeout: Duration,
    /// Timeout of each command.
    pub command_timeout: Duration,
    /// Longest wait for the cluster to agree after a change (gossip, slot
    /// ownership, replicas, `cluster_state:ok`).
    pub converge_timeout: Duration,
    /// How long Redis's own failover may take before a stale primary that it
    /// can detect as failed is replaced with `CLUSTER FAILOVER TAKEOVER`.
    pub failover_grace: Duration,
    /// Delay between two reads while waiting.
    pub poll_interval: Duration,
}

impl std::fmt::Debug for BootstrapOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapOptions")
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("converge_timeout", &self.converge_timeout)
            .field("failover_grace", &self.failover_grace)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            password: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            converge_timeout: Duration::from_secs(60),
            failover_grace: Duration::from_secs(15),
            poll_interval: Duration::from_millis(100),
        }
    }
}
