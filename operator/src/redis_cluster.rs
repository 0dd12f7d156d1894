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
//! # Not wired here
//!
//! The reconciler (not wired yet) is meant to call [`bootstrap`] with the
//! StatefulSet pods' stable names under the headless Service, in ordinal
//! order, and map the report to `status.redis.slotsAssigned` and the
//! `RedisReady` condition ([`BootstrapReport::summary`] as its message);
//! [`inspect`] gives the same report without changing anything. A failed run
//! is retried as a whole ([`BootstrapError::is_transient`] tells waiting from
//! a spec problem).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as RedisError, FromValue, ServerConfig,
};
use fred::types::CustomCommand;
use futures_util::future::join_all;
use tracing::{debug, info, warn};

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Slots per `CLUSTER ADDSLOTS` call when `ADDSLOTSRANGE` is not available.
const ADDSLOTS_BATCH: usize = 1000;

// ------------------------------------------------------------------ addresses

/// A node's address: `host:port`, where `host` is a name (in Kubernetes the
/// pod's stable name under the headless Service) or an IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        NodeAddr {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NodeAddr {
    type Err = BootstrapError;

    /// `host:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BootstrapError::Address {
            addr: s.to_string(),
            reason: reason.to_string(),
        };
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(NodeAddr::new(host, port))
    }
}

// --------------------------------------------------------------------- layout

/// An inclusive range of hash slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
}

impl SlotRange {
    pub fn new(first: u16, last: u16) -> Self {
        SlotRange { first, last }
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range holds at least its first slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, slot: u16) -> bool {
        (self.first..=self.last).contains(&slot)
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

fn ranges_text(ranges: &[SlotRange]) -> String {
    ranges
        .iter()
        .map(SlotRange::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A node's intended role in the [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One shard: its slot range and its members by ordinal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub slots: SlotRange,
    /// The intended primary (ordinal `index`).
    pub primary: usize,
    /// The intended replicas (ordinals `index + shards`, `index + 2 * shards`, …).
    pub replicas: Vec<usize>,
}

impl Shard {
    /// The intended primary, then the replicas.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.primary).chain(self.replicas.iter().copied())
    }
}

/// Where each node ordinal belongs; see the module docs for the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub shards: Vec<Shard>,
}

impl Layout {
    /// The layout of `nodes` nodes as `shards` primaries with
    /// `replicas_per_shard` replicas each (`nodes` must be
    /// `shards * (1 + replicas_per_shard)`).
    pub fn new(
        nodes: usize,
        shards: usize,
        replicas_per_shard: usize,
    ) -> Result<Layout, BootstrapError> {
        if shards == 0 || shards > usize::from(SLOTS) {
            return Err(BootstrapError::Layout(format!(
                "shards must be between 1 and {SLOTS}, got {shards}"
            )));
        }
        let want = shards
            .checked_mul(replicas_per_shard.saturating_add(1))
            .ok_or_else(|| BootstrapError::Layout("too many replicas".into()))?;
        if nodes != want {
            return Err(BootstrapError::Layout(format!(
                "{shards} shards with {replicas_per_shard} replicas each need {want} nodes, got {nodes}"
            )));
        }
        // round(k * SLOTS / shards), in integers: (2k·SLOTS + shards) / 2shards.
        let start = |k: usize| -> u16 {
            let v = (2 * k * usize::from(SLOTS) + shards) / (2 * shards);
            u16::try_from(v).unwrap_or(SLOTS)
        };
        let shards = (0..shards)
            .map(|k| Shard {
                index: k,
                slots: SlotRange::new(start(k), start(k + 1) - 1),
                primary: k,
                replicas: (1..=replicas_per_shard).map(|r| k + r * shards).collect(),
            })
            .collect();
        Ok(Layout { shards })
    }

    pub fn node_count(&self) -> usize {
        self.shards.len() * (1 + self.shards.first().map_or(0, |s| s.replicas.len()))
    }

    /// The shard ordinal `i` belongs to.
    pub fn shard_of(&self, ordinal: usize) -> usize {
        ordinal % self.shards.len().max(1)
    }

    /// The intended role of ordinal `i`.
    pub fn role_of(&self, ordinal: usize) -> Role {
        if ordinal < self.shards.len() {
            Role::Primary
        } else {
            Role::Replica
        }
    }
}

// --------------------------------------------------------------------- errors

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

// -------------------------------------------------------------------- options

/// Timeouts of a bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
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

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            converge_timeout: Duration::from_secs(60),
            failover_grace: Duration::from_secs(15),
            poll_interval: Duration::from_millis(100),
        }
    }
}

// --------------------------------------------------------------------- report

/// What one node is, as it says itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// A primary serving this many slots (0: an empty primary).
    Primary { slots: u32 },
    /// A replica of the node with this address (or id, if it is not one of
    /// the given nodes).
    Replica { of: String },
}

/// One given node after the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub addr: String,
    pub id: String,
    pub shard: usize,
    pub intended: Role,
    pub role: NodeRole,
}

/// Slots handed to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotsAdded {
    pub node: String,
    pub ranges: Vec<SlotRange>,
}

/// A `CLUSTER REPLICATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    pub node: String,
    pub primary: String,
}

/// A `CLUSTER FAILOVER TAKEOVER` that replaced a stale primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub node: String,
    pub replaced_id: String,
}

/// A stale node id removed with `CLUSTER FORGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub id: String,
    pub reason: String,
}

/// What a bootstrap did and the state it left. The reconciler puts
/// [`slots_assigned`](Self::slots_assigned) in `status.redis.slotsAssigned`,
/// sets `RedisReady` from [`ready`](Self::ready) and can use
/// [`summary`](Self::summary) as a condition message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootstrapReport {
    /// Nodes introduced with `CLUSTER MEET`.
    pub met: Vec<String>,
    /// Stale primaries replaced by one of their replicas.
    pub promoted: Vec<Promotion>,
    /// Stale node ids forgotten.
    pub forgotten: Vec<Forgotten>,
    /// Unassigned slots handed out.
    pub slots_added: Vec<SlotsAdded>,
    /// Replicas (re)attached.
    pub replicas_set: Vec<ReplicaSet>,
    /// Unknown node ids left alone (not given, not provably stale).
    pub foreign: Vec<String>,
    /// Every given node, in the order given.
    pub nodes: Vec<NodeReport>,
    /// Least `cluster_slots_assigned` over all nodes.
    pub slots_assigned: u32,
    /// Least `cluster_slots_ok` over all nodes.
    pub slots_ok: u32,
    /// Least number of slots, over all nodes' views, owned by a given node
    /// that is not flagged failing. Unlike `slots_ok` this does not count
    /// slots of a primary that Redis cannot see is gone.
    pub slots_served: u32,
    /// Every node reports `cluster_state:ok`.
    pub state_ok: bool,
    /// The cluster is complete: every node says `cluster_state:ok`, sees all
    /// 16,384 slots served by healthy given nodes and agrees with the others
    /// on slots and roles.
    pub ready: bool,
    /// Why `ready` is false, naming a node.
    pub not_ready_reason: Option<String>,
}

impl BootstrapReport {
    /// Whether this run changed the cluster (any mutating command was sent).
    pub fn changed(&self) -> bool {
        !(self.met.is_empty()
            && self.promoted.is_empty()
            && self.forgotten.is_empty()
            && self.slots_added.is_empty()
            && self.replicas_set.is_empty())
    }

    /// One line for a condition message or a log.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let n = |v: usize, what: &str| format!("{v} {what}");
        if !self.met.is_empty() {
            parts.push(n(self.met.len(), "node(s) met"));
        }
        if !self.promoted.is_empty() {
            parts.push(n(self.promoted.len(), "replica(s) promoted"));
        }
        if !self.forgotten.is_empty() {
            parts.push(n(self.forgotten.len(), "stale node(s) forgotten"));
        }
        if !self.slots_added.is_empty() {
            let slots: u32 = self
                .slots_added
                .iter()
                .flat_map(|s| &s.ranges)
                .map(SlotRange::len)
                .sum();
            parts.push(n(slots as usize, "slot(s) assigned"));
        }
        if !self.replicas_set.is_empty() {
            parts.push(n(self.replicas_set.len(), "replica(s) attached"));
        }
        if parts.is_empty() {
            parts.push("no change".into());
        }
        let state = match &self.not_ready_reason {
            None => "cluster ok".to_string(),
            Some(r) => format!("not ready: {r}"),
        };
        format!(
            "{}; {}/{SLOTS} slots served; {state}",
            parts.join(", "),
            self.slots_served
        )
    }
}

// ----------------------------------------------------------- CLUSTER NODES

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: String,
    /// Empty when unknown (`noaddr`, or a node that never learnt its IP).
    ip: String,
    port: u16,
    cport: u16,
    hostname: Option<String>,
    myself: bool,
    master: bool,
    pfail: bool,
    fail: bool,
    handshake: bool,
    noaddr: bool,
    /// The primary's id for a replica.
    primary: Option<String>,
    slots: Vec<SlotRange>,
}

impl Entry {
    fn failing(&self) -> bool {
        self.pfail || self.fail || self.noaddr || self.handshake
    }

    fn slot_count(&self) -> u32 {
        self.slots.iter().map(SlotRange::len).sum()
    }

    fn flags_text(&self) -> String {
        let mut f = vec![if self.master { "master" } else { "replica" }];
        for (on, name) in [
            (self.pfail, "pfail"),
            (self.fail, "fail"),
            (self.handshake, "handshake"),
            (self.noaddr, "noaddr"),
        ] {
            if on {
                f.push(name);
            }
        }
        f.join(",")
    }
}

/// Parse `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname[,aux=v…]]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.
fn parse_nodes(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line {line:?}"));
        }
        let mut addr_parts = fields[1].split(',');
        let addr = addr_parts.next().unwrap_or_default();
        let hostname = addr_parts
            .next()
            .filter(|h| !h.is_empty() && !h.contains('='))
            .map(str::to_string);
        let (ip_port, cport) = match addr.split_once('@') {
            Some((a, c)) => (a, c.parse().unwrap_or(0)),
            None => (addr, 0),
        };
        let (ip, port) = ip_port
            .rsplit_once(':')
            .ok_or_else(|| format!("bad address {:?} in {line:?}", fields[1]))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("bad port in {:?}", fields[1]))?;
        let flags: HashSet<&str> = fields[2].split(',').collect();
        let primary = Some(fields[3])
            .filter(|m| *m != "-" && !m.is_empty())
            .map(str::to_string);
        let mut slots = Vec::new();
        for s in &fields[8..] {
            if s.starts_with('[') {
                continue; // a migrating/importing slot, not an owned one
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let a: u16 = a.parse().map_err(|_| format!("bad slot {s:?}"))?;
            let b: u16 = b.parse().map_err(|_| format!("bad slot {s:?}"))?;
            if a > b || b >= SLOTS {
                return Err(format!("bad slot range {s:?}"));
            }
            slots.push(SlotRange::new(a, b));
        }
        out.push(Entry {
            id: fields[0].to_string(),
            ip: ip.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            cport,
            hostname,
            myself: flags.contains("myself"),
            master: flags.contains("master"),
            pfail: flags.contains("fail?"),
            fail: flags.contains("fail"),
            handshake: flags.contains("handshake"),
            noaddr: flags.contains("noaddr"),
            primary,
            slots,
        });
    }
    Ok(out)
}

/// Parse `CLUSTER INFO` (`key:value` lines).
fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One node's view of the cluster.
#[derive(Debug, Clone)]
struct View {
    entries: Vec<Entry>,
    info: HashMap<String, String>,
}

impl View {
    fn myself(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.myself)
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Knows `id` past the handshake, with an address.
    fn knows(&self, id: &str) -> bool {
        self.get(id).is_some_and(|e| !e.handshake && !e.noaddr)
    }

    /// Owner id of every slot.
    fn owners(&self) -> Vec<Option<&str>> {
        let mut owners = vec![None; usize::from(SLOTS)];
        for e in &self.entries {
            for r in &e.slots {
                for s in r.first..=r.last {
                    owners[usize::from(s)] = Some(e.id.as_str());
                }
            }
        }
        owners
    }

    fn info_u32(&self, key: &str) -> u32 {
        self.info
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn state_ok(&self) -> bool {
        self.info.get("cluster_state").map(|s| s.trim()) == Some("ok")
    }

    /// Known nodes past the handshake, and slots assigned: how "formed"
    /// this view is.
    fn weight(&self) -> (u32, usize) {
        let known = self
            .entries
            .iter()
            .filter(|e| !e.handshake && !e.noaddr)
            .count();
        (self.entries.iter().map(Entry::slot_count).sum(), known)
    }
}

// ---------------------------------------------------------------- connections

/// A given node, connected.
struct Live {
    ordinal: usize,
    addr: NodeAddr,
    name: String,
    ip: IpAddr,
    client: Client,
    id: String,
}

fn cmd_text(name: &str, args: &[String]) -> String {
    std::iter::once(name)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Live {
    async fn call<R: FromValue>(
        &self,
        name: &'static str,
        args: &[String],
    ) -> Result<R, BootstrapError> {
        call(&self.client, &self.name, name, args).await
    }

    async fn text(&self, name: &'static str, args: &[&str]) -> Result<String, BootstrapError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.call::<String>(name, &args).await
    }

    async fn view(&self) -> Result<View, BootstrapError> {
        let nodes = self.text("CLUSTER", &["NODES"]).await?;
        let info = self.text("CLUSTER", &["INFO"]).await?;
        let entries = parse_nodes(&nodes).map_err(|detail| BootstrapError::Reply {
            node: self.name.clone(),
            command: "CLUSTER NODES".into(),
            detail,
        })?;
        let view = View {
            entries,
            info: parse_info(&info),
        };
        if view.myself().is_none_or(|m| m.id != self.id) {
            return Err(BootstrapError::Reply {
                node: self.name.clone(),
                command: "CLUSTER NODES".into(),
                detail: format!("no `myself` line with this node's id {}", self.id),
            });
        }
        Ok(view)
    }

    /// Replication offset (`master_repl_offset` of `INFO replication`).
    async fn repl_offset(&self) -> Result<i64, BootstrapError> {
        let info = self.text("INFO", &["replication"]).await?;
        Ok(parse_info(&info)
            .get("master_repl_offset")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

async fn call<R: FromValue>(
    client: &Client,
    node: &str,
    name: &'static str,
    args: &[String],
) -> Result<R, BootstrapError> {
    let cmd = CustomCommand::new_static(name, None, false);
    client
        .custom::<R, String>(cmd, args.to_vec())
        .await
        .map_err(|source| {
            if source
                .details()
                .to_ascii_lowercase()
                .contains("cluster support disabled")
            {
                BootstrapError::ClusterDisabled {
                    node: node.to_string(),
                }
            } else {
                BootstrapError::Command {
                    node: node.to_string(),
                    command: cmd_text(name, args),
                    source,
                }
            }
        })
}

async fn resolve(addr: &NodeAddr) -> Result<IpAddr, BootstrapError> {
    if let Ok(ip) = addr.host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let name = addr.to_string();
    let mut found = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(|source| BootstrapError::Resolve {
            node: name.clone(),
            source,
        })?;
    // IPv4 first: MEET needs one address, and single-stack IPv4 is the
    // common case; dual-stack pods listen on both.
    let ips: Vec<IpAddr> = found.by_ref().map(|sa| sa.ip()).collect();
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
        .ok_or_else(|| BootstrapError::Resolve {
            node: name,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        })
}

async fn connect(
    ordinal: usize,
    addr: &NodeAddr,
    opts: &BootstrapOptions,
) -> Result<Live, BootstrapError> {
    let name = addr.to_string();
    let ip = resolve(addr).await?;
    let config = Config {
        server: ServerConfig::new_centralized(addr.host.clone(), addr.port),
        ..Config::default()
    };
    let mut builder = Builder::from_config(config);
    // No reconnect policy: a node that goes away mid-bootstrap fails the
    // run, which the caller retries as a whole.
    builder.with_connection_config(|c| {
        c.connection_timeout = opts.connect_timeout;
        c.internal_command_timeout = opts.command_timeout;
        c.max_command_attempts = 1;
    });
    builder.with_performance_config(|p| p.default_command_timeout = opts.command_timeout);
    let client = builder
        .build()
        .map_err(|source| BootstrapError::Unreachable {
            node: name.clone(),
            source,
        })?;
    client
        .init()
        .await
        .map_err(|source| BootstrapError::Unreachable {
            node: name.clone(),
            source,
        })?;
    let id = match call::<String>(&client, &name, "CLUSTER", &["MYID".to_string()]).await {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        Ok(_) => {
            let _ = client.quit().await;
            return Err(BootstrapError::Reply {
                node: name,
                command: "CLUSTER MYID".into(),
                detail: "empty node id".into(),
            });
        }
        Err(e) => {
            let _ = client.quit().await;
            return Err(e);
        }
    };
    debug!(node = %name, %ip, %id, "connected to redis node");
    Ok(Live {
        ordinal,
        addr: addr.clone(),
        name,
        ip,
        client,
        id,
    })
}

/// Connect to all nodes; on any failure close the others and return the
/// first failure in node order.
async fn connect_all(
    nodes: &[NodeAddr],
    opts: &BootstrapOptions,
) -> Result<Vec<Live>, BootstrapError> {
    let results = join_all(
        nodes
            .iter()
            .enumerate()
            .map(|(i, addr)| connect(i, addr, opts)),
    )
    .await;
    let mut live = Vec::with_capacity(results.len());
    let mut first_err = None;
    for r in results {
        match r {
            Ok(l) => live.push(l),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        close_all(&live).await;
        return Err(e);
    }
    // Two addresses reaching the same node (e.g. a name and its IP).
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for l in &live {
        if let Some(other) = seen.insert(&l.id, &l.name) {
            let err = BootstrapError::Layout(format!(
                "{} and {other} are the same Redis node ({})",
                l.name, l.id
            ));
            close_all(&live).await;
            return Err(err);
        }
    }
    Ok(live)
}

async fn close_all(live: &[Live]) {
    join_all(live.iter().map(|l| l.client.quit())).await;
}

// ------------------------------------------------------------------ bootstrap

/// Form or heal the cluster of `nodes` (ordinal = position) as `shards`
/// primaries with `replicas_per_shard` replicas each. See the module docs.
pub async fn bootstrap(
    nodes: &[NodeAddr],
    shards: usize,
    replicas_per_shard: usize,
    opts: &BootstrapOptions,
) -> Result<BootstrapReport, BootstrapError> {
    let layout = Layout::new(nodes.len(), shards, replicas_per_shard)?;
    check_distinct(nodes)?;
    let live = connect_all(nodes, opts).await?;
    let mut run = Run {
        live: &live,
        layout: &layout,
        opts,
        report: BootstrapReport::default(),
    };
    let result = run.execute().await;
    close_all(&live).await;
    match &result {
        Ok(r) if r.changed() => info!(summary = %r.summary(), "redis cluster bootstrap"),
        Ok(r) => debug!(summary = %r.summary(), "redis cluster bootstrap"),
        Err(e) => warn!(error = %e, "redis cluster bootstrap failed"),
    }
    result
}

/// Read-only: connect to `nodes` and report the cluster's state as
/// [`bootstrap`] would, without changing anything.
pub async fn inspect(
    nodes: &[NodeAddr],
    shards: usize,
    replicas_per_shard: usize,
    opts: &BootstrapOptions,
) -> Result<BootstrapReport, BootstrapError> {
    let layout = Layout::new(nodes.len(), shards, replicas_per_shard)?;
    check_distinct(nodes)?;
    let live = connect_all(nodes, opts).await?;
    let mut run = Run {
        live: &live,
        layout: &layout,
        opts,
        report: BootstrapReport::default(),
    };
    let result = async {
        let views = run.read_views().await?;
        run.finish(&views);
        Ok(run.report.clone())
    }
    .await;
    close_all(&live).await;
    result
}

fn check_distinct(nodes: &[NodeAddr]) -> Result<(), BootstrapError> {
    let mut seen = HashSet::new();
    for n in nodes {
        let key = (n.host.to_ascii_lowercase(), n.port);
        if !seen.insert(key) {
            return Err(BootstrapError::DuplicateNode {
                node: n.to_string(),
            });
        }
    }
    Ok(())
}

/// Why a wait is not over yet: the node (ordinal) that disagrees and how.
type Pending = (usize, String);

/// Node ids that no given node answers as; see [`Run::classify`].
#[derive(Default)]
struct Classified {
    stale: BTreeMap<String, String>,
    pending: BTreeMap<String, Pending>,
    foreign: BTreeSet<String>,
}

struct Run<'a> {
    live: &'a [Live],
    layout: &'a Layout,
    opts: &'a BootstrapOptions,
    report: BootstrapReport,
}

impl Run<'_> {
    async fn execute(&mut self) -> Result<BootstrapReport, BootstrapError> {
        let views = self.read_views().await?;
        let views = self.membership(views).await?;
        let views = self.settle_stale(views).await?;
        let views = self.replace_stale_primaries(views).await?;
        let views = self.forget_stale(views).await?;
        let views = self.assign_slots(views).await?;
        let views = self.attach_replicas(views).await?;
        // Ids skipped above because they were still some node's primary.
        let mut views = self.forget_stale(views).await?;
        if self.report.changed() {
            views = self
                .wait("a healthy cluster", self.opts.converge_timeout, |v| {
                    self.healthy(v)
                })
                .await?;
        }
        self.finish(&views);
        Ok(self.report.clone())
    }

    async fn read_views(&self) -> Result<Vec<View>, BootstrapError> {
        join_all(self.live.iter().map(Live::view))
            .await
            .into_iter()
            .collect()
    }

    fn name_of(&self, id: &str) -> String {
        self.live
            .iter()
            .find(|l| l.id == id)
            .map_or_else(|| id.to_string(), |l| l.name.clone())
    }

    /// Poll until `check` passes; on timeout, a [`BootstrapError::NotConverged`]
    /// naming the node `check` last complained about.
    async fn wait(
        &self,
        stage: &'static str,
        timeout: Duration,
        check: impl Fn(&[View]) -> Result<(), Pending>,
    ) -> Result<Vec<View>, BootstrapError> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.read_views().await?;
            match check(&views) {
                Ok(()) => return Ok(views),
                Err((i, detail)) => {
                    if Instant::now() >= deadline {
                        return Err(BootstrapError::NotConverged {
                            stage,
                            node: self
                                .live
                                .get(i)
                                .map_or_else(|| format!("#{i}"), |l| l.name.clone()),
                            detail,
                            secs: timeout.as_secs(),
                        });
                    }
                    debug!(stage, node = i, %detail, "waiting for redis cluster");
                }
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }

    // ------------------------------------------------------------ membership

    async fn membership(&mut self, views: Vec<View>) -> Result<Vec<View>, BootstrapError> {
        let reference = (0..views.len())
            .max_by_key(|&i| (views[i].weight(), std::cmp::Reverse(i)))
            .unwrap_or(0);
        let (Some(rnode), Some(rview)) = (self.live.get(reference), views.get(reference)) else {
            return Ok(views);
        };
        let mut met = false;
        for (l, view) in self.live.iter().zip(&views) {
            if l.ordinal == reference || rview.knows(&l.id) {
                continue;
            }
            let me = view.myself();
            let slots: Vec<SlotRange> = me.map(|m| m.slots.clone()).unwrap_or_default();
            // Listed without an address (noaddr) or mid-handshake: a MEET
            // fixes the address. Not listed at all and serving slots: it
            // belongs to another cluster.
            if rview.get(&l.id).is_none() && !slots.is_empty() {
                return Err(BootstrapError::SplitCluster {
                    node: l.name.clone(),
                    reference: rnode.name.clone(),
                    slots: ranges_text(&slots),
                });
            }
            let mut args = vec![
                "MEET".to_string(),
                l.ip.to_string(),
                l.addr.port.to_string(),
            ];
            if let Some(cport) = me.map(|m| m.cport).filter(|c| *c != 0) {
                args.push(cport.to_string());
            }
            info!(node = %l.name, via = %rnode.name, "CLUSTER MEET");
            rnode.call::<()>("CLUSTER", &args).await?;
            self.report.met.push(l.name.clone());
            met = true;
        }
        let check = |v: &[View]| self.all_know_each_other(v);
        if !met && check(&views).is_ok() {
            return Ok(views);
        }
        self.wait(
            "every node to know every other",
            self.opts.converge_timeout,
            check,
        )
        .await
    }

    fn all_know_each_other(&self, views: &[View]) -> Result<(), Pending> {
        for (i, v) in views.iter().enumerate() {
            for other in self.live {
                if other.ordinal != i && !v.knows(&other.id) {
                    return Err((i, format!("does not know {} ({})", other.name, other.id)));
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ stale ids

    /// Sort the ids no given node answers as: stale (per the rule in the
    /// module docs, with the reason), pending (last seen at one of our
    /// addresses, which answers as another node, but Redis has not flagged
    /// it `noaddr` or `fail` yet) or foreign (left alone).
    fn classify(&self, views: &[View]) -> Classified {
        let live_ids: HashSet<&str> = self.live.iter().map(|l| l.id.as_str()).collect();
        let host_eq = |a: &str, b: &str| {
            a.trim_end_matches('.')
                .eq_ignore_ascii_case(b.trim_end_matches('.'))
        };
        let mut c = Classified::default();
        for (i, v) in views.iter().enumerate() {
            for e in &v.entries {
                if e.myself || e.handshake || live_ids.contains(e.id.as_str()) {
                    continue;
                }
                if c.stale.contains_key(&e.id) {
                    continue;
                }
                let by_host = |port_must_match: bool| {
                    e.hostname.as_deref().and_then(|h| {
                        self.live.iter().find(|l| {
                            host_eq(h, &l.addr.host) && (!port_must_match || l.addr.port == e.port)
                        })
                    })
                };
                let by_ip = e.ip.parse::<IpAddr>().ok().and_then(|ip| {
                    self.live
                        .iter()
                        .find(|l| l.ip == ip && l.addr.port == e.port)
                });
                let same_addr = by_ip.or_else(|| by_host(true));
                if e.noaddr && (e.hostname.is_none() || by_host(false).is_some()) {
                    c.stale.insert(
                        e.id.clone(),
                        "noaddr: its address answered with another node id".to_string(),
                    );
                } else if let Some(l) = same_addr {
                    if e.fail {
                        c.stale.insert(
                            e.id.clone(),
                            format!("failed, and its address {} is now node {}", l.name, l.id),
                        );
                    } else {
                        c.pending.entry(e.id.clone()).or_insert((
                            i,
                            format!(
                                "lists {} at {}, which is now node {}, but not yet as failed",
                                e.id, l.name, l.id
                            ),
                        ));
                    }
                } else {
                    c.foreign.insert(e.id.clone());
                }
            }
        }
        for id in c.stale.keys() {
            c.pending.remove(id);
            c.foreign.remove(id);
        }
        c
    }

    /// Record foreign ids in the report (once each).
    fn note_foreign(&mut self, c: &Classified) {
        for id in &c.foreign {
            if !self.report.foreign.contains(id) {
                warn!(%id, "redis cluster lists a node that is not one of ours; leaving it alone");
                self.report.foreign.push(id.clone());
            }
        }
    }

    /// Wait until Redis has flagged every old id at one of our addresses
    /// (`noaddr` comes within a second as the others reconnect; `fail`
    /// after about two node timeouts), so it can be classified.
    async fn settle_stale(&mut self, views: Vec<View>) -> Result<Vec<View>, BootstrapError> {
        let check = |v: &[View]| match self.classify(v).pending.into_values().next() {
            Some(p) => Err(p),
            None => Ok(()),
        };
        let views = if check(&views).is_ok() {
            views
        } else {
            self.wait(
                "old node ids to be flagged noaddr or fail",
                self.opts.converge_timeout,
                check,
            )
            .await?
        };
        let c = self.classify(&views);
        self.note_foreign(&c);
        Ok(views)
    }

    /// A stale primary that still owns slots and has a live replica: let
    /// Redis fail over (if it can see the failure), else take over.
    async fn replace_stale_primaries(
        &mut self,
        mut views: Vec<View>,
    ) -> Result<Vec<View>, BootstrapError> {
        let stale = self.classify(&views).stale;
        for id in stale.keys() {
            let owns_slots = |v: &[View]| {
                v.iter()
                    .find_map(|view| view.get(id).filter(|e| !e.slots.is_empty()))
                    .is_some()
            };
            if !owns_slots(&views) {
                continue;
            }
            let replicas: Vec<&Live> = self
                .live
                .iter()
                .filter(|l| {
                    views[l.ordinal]
                        .myself()
                        .is_some_and(|m| m.primary.as_deref() == Some(id.as_str()))
                })
                .collect();
            if replicas.is_empty() {
                // Forgetting it unassigns its slots; assign_slots hands them out.
                continue;
            }
            let detectable = views
                .iter()
                .any(|v| v.get(id).is_some_and(|e| e.fail && !e.noaddr));
            let gone = |v: &[View]| match v
                .iter()
                .position(|view| view.get(id).is_some_and(|e| !e.slots.is_empty()))
            {
                Some(i) => Err((i, format!("still sees stale primary {id} owning slots"))),
                None => Ok(()),
            };
            if detectable {
                match self
                    .wait("Redis's own failover", self.opts.failover_grace, gone)
                    .await
                {
                    Ok(v) => {
                        views = v;
                        continue;
                    }
                    Err(BootstrapError::NotConverged { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            // The replica with the most data.
            let mut best: Option<(&Live, i64)> = None;
            for r in &replicas {
                let off = r.repl_offset().await?;
                if best.is_none_or(|(_, b)| off > b) {
                    best = Some((r, off));
                }
            }
            let Some((r, _)) = best else { continue };
            info!(node = %r.name, replaced = %id, "CLUSTER FAILOVER TAKEOVER (primary lost its data)");
            r.text("CLUSTER", &["FAILOVER", "TAKEOVER"]).await?;
            self.report.promoted.push(Promotion {
                node: r.name.clone(),
                replaced_id: id.clone(),
            });
            views = self
                .wait("the takeover to spread", self.opts.converge_timeout, gone)
                .await?;
        }
        Ok(views)
    }

    /// `CLUSTER FORGET` every stale id on every node that lists it (except
    /// as its own primary), until none does; re-sent if gossip brings one
    /// back to a node that had not listed it yet.
    async fn forget_stale(&mut self, mut views: Vec<View>) -> Result<Vec<View>, BootstrapError> {
        let deadline = Instant::now() + self.opts.converge_timeout;
        loop {
            let stale = self.classify(&views).stale;
            let mut todo: Vec<(&Live, &String, &String)> = Vec::new();
            for (id, reason) in &stale {
                // A primary with slots and a live replica is for
                // replace_stale_primaries (next run): forgetting it here
                // would unassign slots its replica still serves from.
                let owns_slots = views
                    .iter()
                    .any(|v| v.get(id).is_some_and(|e| !e.slots.is_empty()));
                let followed = self.live.iter().any(|l| {
                    views[l.ordinal]
                        .myself()
                        .is_some_and(|m| m.primary.as_deref() == Some(id.as_str()))
                });
                if owns_slots && followed {
                    continue;
                }
                for l in self.live {
                    let view = &views[l.ordinal];
                    let primary = view.myself().and_then(|m| m.primary.as_deref());
                    // "Can't forget my master": attach_replicas re-points it first.
                    if view.get(id).is_some() && primary != Some(id.as_str()) {
                        todo.push((l, id, reason));
                    }
                }
            }
            let Some((first, first_id, _)) = todo.first() else {
                return Ok(views);
            };
            if Instant::now() >= deadline {
                return Err(BootstrapError::NotConverged {
                    stage: "stale nodes to be forgotten",
                    node: first.name.clone(),
                    detail: format!("still lists stale node {first_id}"),
                    secs: self.opts.converge_timeout.as_secs(),
                });
            }
            for (l, id, reason) in todo {
                info!(node = %l.name, %id, %reason, "CLUSTER FORGET");
                match l.text("CLUSTER", &["FORGET", id]).await {
                    Ok(_) => {}
                    Err(BootstrapError::Command { source, .. })
                        if source.details().contains("Unknown node") => {}
                    Err(e) => return Err(e),
                }
                if !self.report.forgotten.iter().any(|f| &f.id == id) {
                    self.report.forgotten.push(Forgotten {
                        id: id.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            tokio::time::sleep(self.opts.poll_interval).await;
            views = self.read_views().await?;
        }
    }

    // ------------------------------------------------------------------ slots

    fn slots_agree(&self, views: &[View]) -> Result<(), Pending> {
        let Some(first) = views.first() else {
            return Ok(());
        };
        let base = first.owners();
        for (i, v) in views.iter().enumerate().skip(1) {
            let owners = v.owners();
            if let Some(s) = (0..base.len()).find(|&s| owners[s] != base[s]) {
                let name =
                    |o: Option<&str>| o.map_or_else(|| "nobody".to_string(), |id| self.name_of(id));
                return Err((
                    i,
                    format!(
                        "sees slot {s} owned by {}, {} sees {}",
                        name(owners[s]),
                        self.live.first().map_or("", |l| l.name.as_str()),
                        name(base[s])
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Which node gets which unassigned slots (never assigned ones).
    fn slot_plan(&self, views: &[View]) -> Result<Vec<(usize, Vec<SlotRange>)>, BootstrapError> {
        let Some(view) = views.first() else {
            return Ok(Vec::new());
        };
        let owners = view.owners();
        let mut plan: Vec<(usize, Vec<SlotRange>)> = Vec::new();
        for shard in &self.layout.shards {
            let mut free = Vec::new();
            let mut run: Option<SlotRange> = None;
            for s in shard.slots.first..=shard.slots.last {
                if owners[usize::from(s)].is_none() {
                    match &mut run {
                        Some(r) if r.last + 1 == s => r.last = s,
                        _ => {
                            free.extend(run.take());
                            run = Some(SlotRange::new(s, s));
                        }
                    }
                }
            }
            free.extend(run);
            if free.is_empty() {
                continue;
            }
            let is_empty_primary = |l: &Live| {
                views[l.ordinal]
                    .myself()
                    .is_some_and(|m| m.master && m.slots.is_empty())
            };
            // A given primary already serving part of the range…
            let serving = self.live.iter().find(|l| {
                views[l.ordinal].myself().is_some_and(|m| m.master)
                    && (shard.slots.first..=shard.slots.last)
                        .any(|s| owners[usize::from(s)] == Some(l.id.as_str()))
            });
            // …else the first empty primary among the shard's members.
            let chosen = serving.map(|l| l.ordinal).or_else(|| {
                shard.members().find(|&o| {
                    self.live.get(o).is_some_and(is_empty_primary)
                        && !plan.iter().any(|(p, _)| *p == o)
                })
            });
            match chosen {
                Some(o) => plan.push((o, free)),
                None => {
                    return Err(BootstrapError::NoPrimaryCandidate {
                        shard: shard.index,
                        slots: ranges_text(&free),
                    });
                }
            }
        }
        Ok(plan)
    }

    async fn assign_slots(&mut self, views: Vec<View>) -> Result<Vec<View>, BootstrapError> {
        let views = if self.slots_agree(&views).is_ok() {
            views
        } else {
            self.wait(
                "agreement on slot owners",
                self.opts.converge_timeout,
                |v| self.slots_agree(v),
            )
            .await?
        };
        let plan = self.slot_plan(&views)?;
        if plan.is_empty() {
            return Ok(views);
        }
        for (ordinal, ranges) in plan {
            let Some(l) = self.live.get(ordinal) else {
                continue;
            };
            info!(node = %l.name, slots = %ranges_text(&ranges), "CLUSTER ADDSLOTSRANGE");
            add_slots(l, &ranges).await?;
            self.report.slots_added.push(SlotsAdded {
                node: l.name.clone(),
                ranges,
            });
        }
        let assigned = |v: &[View]| {
            self.slots_agree(v)?;
            for (i, view) in v.iter().enumerate() {
                let owned: u32 = view.entries.iter().map(Entry::slot_count).sum();
                let want: u32 = self.layout.shards.iter().map(|s| s.slots.len()).sum();
                if owned < want {
                    return Err((i, format!("sees only {owned} of {want} slots assigned")));
                }
            }
            Ok(())
        };
        self.wait(
            "the new slots to spread",
            self.opts.converge_timeout,
            assigned,
        )
        .await
    }

    // --------------------------------------------------------------- replicas

    /// (ordinal, primary id) for every member that should replicate and does not.
    fn replica_plan(&self, views: &[View]) -> Vec<(usize, String)> {
        let Some(view) = views.first() else {
            return Vec::new();
        };
        let owners = view.owners();
        let mut plan = Vec::new();
        for shard in &self.layout.shards {
            let Some(target) = owners[usize::from(shard.slots.first)] else {
                continue;
            };
            for o in shard.members() {
                let (Some(l), Some(me)) = (self.live.get(o), views.get(o).and_then(View::myself))
                else {
                    continue;
                };
                let serves = owners.contains(&Some(l.id.as_str()));
                if l.id == target || serves || me.primary.as_deref() == Some(target) {
                    continue;
                }
                plan.push((o, target.to_string()));
            }
        }
        plan
    }

    async fn attach_replicas(&mut self, views: Vec<View>) -> Result<Vec<View>, BootstrapError> {
        let plan = self.replica_plan(&views);
        if plan.is_empty() {
            return Ok(views);
        }
        for (ordinal, target) in &plan {
            let Some(l) = self.live.get(*ordinal) else {
                continue;
            };
            let primary = self.name_of(target);
            info!(node = %l.name, %primary, "CLUSTER REPLICATE");
            l.text("CLUSTER", &["REPLICATE", target]).await?;
            self.report.replicas_set.push(ReplicaSet {
                node: l.name.clone(),
                primary,
            });
        }
        let attached = |v: &[View]| {
            for (ordinal, target) in &plan {
                for (i, view) in v.iter().enumerate() {
                    let Some(l) = self.live.get(*ordinal) else {
                        continue;
                    };
                    let seen = view.get(&l.id).and_then(|e| e.primary.as_deref());
                    if seen != Some(target.as_str()) {
                        return Err((
                            i,
                            format!(
                                "does not yet see {} replicating {}",
                                l.name,
                                self.name_of(target)
                            ),
                        ));
                    }
                }
            }
            Ok(())
        };
        self.wait(
            "the replicas to attach",
            self.opts.converge_timeout,
            attached,
        )
        .await
    }

    // ---------------------------------------------------------------- health

    /// The readiness rule of [`BootstrapReport::ready`].
    fn healthy(&self, views: &[View]) -> Result<(), Pending> {
        self.all_know_each_other(views)?;
        self.slots_agree(views)?;
        for (i, v) in views.iter().enumerate() {
            if !v.state_ok() {
                return Err((i, "reports cluster_state:fail".into()));
            }
            let served = self.served(v);
            if served < u32::from(SLOTS) {
                return Err((
                    i,
                    format!("sees only {served} of {SLOTS} slots served by healthy nodes"),
                ));
            }
            for l in self.live {
                let Some(e) = v.get(&l.id) else { continue };
                if e.failing() {
                    return Err((i, format!("flags {} as {}", l.name, e.flags_text())));
                }
                let own = views
                    .get(l.ordinal)
                    .and_then(View::myself)
                    .and_then(|m| m.primary.clone());
                if e.primary != own {
                    return Err((i, format!("disagrees with {} about its primary", l.name)));
                }
            }
        }
        Ok(())
    }

    /// Slots owned, in `view`, by a given node not flagged failing.
    fn served(&self, view: &View) -> u32 {
        let live: HashSet<&str> = self.live.iter().map(|l| l.id.as_str()).collect();
        view.entries
            .iter()
            .filter(|e| live.contains(e.id.as_str()) && !e.failing())
            .map(Entry::slot_count)
            .sum()
    }

    fn finish(&mut self, views: &[View]) {
        let min = |f: &dyn Fn(&View) -> u32| views.iter().map(f).min().unwrap_or(0);
        self.report.slots_assigned = min(&|v| v.info_u32("cluster_slots_assigned"));
        self.report.slots_ok = min(&|v| v.info_u32("cluster_slots_ok"));
        self.report.slots_served = min(&|v| self.served(v));
        self.report.state_ok = !views.is_empty() && views.iter().all(View::state_ok);
        let health = self.healthy(views);
        self.report.ready = health.is_ok();
        self.report.not_ready_reason = health.err().map(|(i, d)| {
            let node = self.live.get(i).map_or("?", |l| l.name.as_str());
            format!("{node} {d}")
        });
        self.report.nodes = self
            .live
            .iter()
            .map(|l| {
                let me = views.get(l.ordinal).and_then(View::myself);
                let role = match me.and_then(|m| m.primary.as_deref()) {
                    Some(p) => NodeRole::Replica {
                        of: self.name_of(p),
                    },
                    None => NodeRole::Primary {
                        slots: me.map_or(0, Entry::slot_count),
                    },
                };
                NodeReport {
                    addr: l.name.clone(),
                    id: l.id.clone(),
                    shard: self.layout.shard_of(l.ordinal),
                    intended: self.layout.role_of(l.ordinal),
                    role,
                }
            })
            .collect();
    }
}

/// `CLUSTER ADDSLOTSRANGE` (Redis 7), or `CLUSTER ADDSLOTS` in batches when
/// the server does not know it.
async fn add_slots(l: &Live, ranges: &[SlotRange]) -> Result<(), BootstrapError> {
    let mut args = vec!["ADDSLOTSRANGE".to_string()];
    for r in ranges {
        args.push(r.first.to_string());
        args.push(r.last.to_string());
    }
    match l.call::<()>("CLUSTER", &args).await {
        Ok(()) => return Ok(()),
        Err(BootstrapError::Command { source, .. })
            if source
                .details()
                .to_ascii_lowercase()
                .contains("unknown subcommand") =>
        {
            debug!(node = %l.name, "no CLUSTER ADDSLOTSRANGE; using ADDSLOTS");
        }
        Err(e) => return Err(e),
    }
    let slots: Vec<u16> = ranges.iter().flat_map(|r| r.first..=r.last).collect();
    for batch in slots.chunks(ADDSLOTS_BATCH) {
        let mut args = vec!["ADDSLOTS".to_string()];
        args.extend(batch.iter().map(u16::to_string));
        l.call::<()>("CLUSTER", &args).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
b05a 127.0.0.1:17001@18001 myself,master - 0 1796221935000 2 connected 5461-10922
5f85 127.0.0.1:17005@18005 slave b05a 0 1796221935139 2 connected
049a :0@0 master,noaddr - 1796221934132 1796221933127 1 disconnected 0-5460
d6d9 10.0.0.7:6379@16379,redis-2.redis.ns.svc.cluster.local,shard-id=ab master,fail - 0 0 3 connected 10923 10924-16383 [10923->-abcd]
aaaa 10.0.0.8:6379@16379,,shard-id=ab slave,fail? d6d9 0 0 3 connected
";
        let e = parse_nodes(text).expect("parse");
        assert_eq!(e.len(), 5);
        assert!(e[0].myself && e[0].master && e[0].primary.is_none());
        assert_eq!(e[0].slots, vec![SlotRange::new(5461, 10922)]);
        assert_eq!(
            (e[0].ip.as_str(), e[0].port, e[0].cport),
            ("127.0.0.1", 17001, 18001)
        );
        assert_eq!(e[1].primary.as_deref(), Some("b05a"));
        assert!(!e[1].master);
        assert!(e[2].noaddr && e[2].ip.is_empty() && e[2].port == 0);
        assert_eq!(
            e[3].hostname.as_deref(),
            Some("redis-2.redis.ns.svc.cluster.local")
        );
        assert!(e[3].fail && !e[3].pfail);
        assert_eq!(e[3].slot_count(), 16384 - 10923);
        assert!(e[4].pfail && !e[4].fail && e[4].hostname.is_none());
        assert!(parse_nodes("abc 127.0.0.1:1@2 master").is_err());
        assert!(parse_nodes("a 1.2.3.4:1@2 master - 0 0 1 connected 10-5").is_err());
    }

    #[test]
    fn parses_cluster_info() {
        let info = parse_info("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n");
        assert_eq!(info.get("cluster_state").map(String::as_str), Some("ok"));
        let v = View {
            entries: vec![],
            info,
        };
        assert!(v.state_ok());
        assert_eq!(v.info_u32("cluster_slots_assigned"), 16384);
        assert_eq!(v.info_u32("missing"), 0);
    }

    #[test]
    fn parses_addresses() {
        let a: NodeAddr = "redis-0.redis.ns.svc:6379".parse().expect("addr");
        assert_eq!(a, NodeAddr::new("redis-0.redis.ns.svc", 6379));
        let b: NodeAddr = "[::1]:7000".parse().expect("v6");
        assert_eq!(b.host, "::1");
        assert_eq!(b.to_string(), "[::1]:7000");
        for bad in ["nohost", ":6379", "h:0", "h:x", "h:70000"] {
            assert!(bad.parse::<NodeAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn report_summary() {
        let mut r = BootstrapReport {
            slots_served: 16384,
            ..BootstrapReport::default()
        };
        assert!(!r.changed());
        assert_eq!(
            r.summary(),
            "no change; 16384/16384 slots served; cluster ok"
        );
        r.met.push("a:1".into());
        r.slots_added.push(SlotsAdded {
            node: "a:1".into(),
            ranges: vec![SlotRange::new(0, 9), SlotRange::new(20, 20)],
        });
        assert!(r.changed());
        assert!(
            r.summary()
                .starts_with("1 node(s) met, 11 slot(s) assigned;")
        );
    }

    /// Given nodes `name:6379` with the given IPs and ids (no connection is
    /// made: the planning functions only read views).
    fn live(nodes: &[(&str, &str, &str)]) -> Vec<Live> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, (host, ip, id))| Live {
                ordinal: i,
                addr: NodeAddr::new(*host, 6379),
                name: format!("{host}:6379"),
                ip: ip.parse().expect("ip"),
                client: Client::default(),
                id: id.to_string(),
            })
            .collect()
    }

    /// One view per node: the same table with `myself` on that node's line.
    fn views(live: &[Live], table: &str) -> Vec<View> {
        live.iter()
            .map(|l| {
                let text: String = table
                    .lines()
                    .map(|line| {
                        let mut f: Vec<String> =
                            line.split_whitespace().map(str::to_string).collect();
                        if f.first() == Some(&l.id) {
                            f[2] = format!("myself,{}", f[2]);
                        }
                        f.join(" ") + "\n"
                    })
                    .collect();
                View {
                    entries: parse_nodes(&text).expect("table"),
                    info: parse_info("cluster_state:ok"),
                }
            })
            .collect()
    }

    fn run<'a>(live: &'a [Live], layout: &'a Layout, opts: &'a BootstrapOptions) -> Run<'a> {
        Run {
            live,
            layout,
            opts,
            report: BootstrapReport::default(),
        }
    }

    #[test]
    fn classifies_unknown_ids() {
        let live = live(&[
            ("redis-0.redis.ns.svc", "10.0.0.1", "A"),
            ("redis-1.redis.ns.svc", "10.0.0.2", "B"),
        ]);
        let table = "\
A 10.0.0.1:6379@16379,redis-0.redis.ns.svc master - 0 0 1 connected
B 10.0.0.2:6379@16379,redis-1.redis.ns.svc master - 0 0 2 connected
X 10.0.0.9:6379@16379,redis-1.redis.ns.svc. master,fail - 0 0 3 disconnected
Y :0@0,redis-0.redis.ns.svc slave,noaddr A 0 0 1 disconnected
Q :0@0 slave,noaddr A 0 0 1 disconnected
Z :0@0,elsewhere.example slave,noaddr A 0 0 1 disconnected
W 10.0.0.2:6379@16379 slave,fail? B 0 0 2 disconnected
V 10.0.0.50:6379@16379 master,fail - 0 0 4 disconnected
U 10.0.0.1:6379@16379 master,handshake - 0 0 0 connected
";
        let layout = Layout::new(2, 2, 0).expect("layout");
        let opts = BootstrapOptions::default();
        let r = run(&live, &layout, &opts);
        let c = r.classify(&views(&live, table));
        // Failed at a pod's announced host name; noaddr with our host name
        // or with none.
        assert_eq!(c.stale.keys().collect::<Vec<_>>(), vec!["Q", "X", "Y"]);
        assert!(c.stale["X"].contains("redis-1.redis.ns.svc:6379 is now node B"));
        // At a pod's address, but Redis has not flagged it failed yet.
        assert_eq!(c.pending.keys().collect::<Vec<_>>(), vec!["W"]);
        // Someone else's host name; an address that is none of ours.
        assert_eq!(c.foreign.iter().collect::<Vec<_>>(), vec!["V", "Z"]);
    }

    #[test]
    fn plans_only_unassigned_slots_and_missing_replicas() {
        let live = live(&[
            ("r0", "10.0.0.1", "A"),
            ("r1", "10.0.0.2", "B"),
            ("r2", "10.0.0.3", "C"),
            ("r3", "10.0.0.4", "D"),
            ("r4", "10.0.0.5", "E"),
            ("r5", "10.0.0.6", "F"),
        ]);
        let layout = Layout::new(6, 3, 1).expect("layout");
        let opts = BootstrapOptions::default();
        let r = run(&live, &layout, &opts);
        // Shard 0 failed over to D (A replicates it now); shard 1 lost its
        // only copy: B is empty, E too; shard 2 is complete but for 16000-16383.
        let table = "\
A 10.0.0.1:6379@16379 slave D 0 0 7 connected
B 10.0.0.2:6379@16379 master - 0 0 0 connected
C 10.0.0.3:6379@16379 master - 0 0 3 connected 10923-15999
D 10.0.0.4:6379@16379 master - 0 0 7 connected 0-5460
E 10.0.0.5:6379@16379 master - 0 0 0 connected
F 10.0.0.6:6379@16379 slave C 0 0 3 connected
";
        let v = views(&live, table);
        let plan = r.slot_plan(&v).expect("plan");
        assert_eq!(
            plan,
            vec![
                (1, vec![SlotRange::new(5461, 10922)]),
                (2, vec![SlotRange::new(16000, 16383)]),
            ]
        );
        // After those slots are assigned: E replicates B; A stays on D (no
        // failback), F stays on C.
        let table = table
            .replace("0 0 0 connected\nC", "0 0 8 connected 5461-10922\nC")
            .replace("10923-15999", "10923-16383");
        let v = views(&live, &table);
        assert!(r.slot_plan(&v).expect("plan").is_empty());
        assert_eq!(r.replica_plan(&v), vec![(4, "B".to_string())]);

        // A shard whose members are all replicas elsewhere cannot get slots.
        let table = "\
A 10.0.0.1:6379@16379 master - 0 0 1 connected 0-5460
B 10.0.0.2:6379@16379 slave A 0 0 1 connected
C 10.0.0.3:6379@16379 master - 0 0 3 connected 10923-16383
D 10.0.0.4:6379@16379 slave A 0 0 1 connected
E 10.0.0.5:6379@16379 slave C 0 0 3 connected
F 10.0.0.6:6379@16379 slave C 0 0 3 connected
";
        let err = r.slot_plan(&views(&live, table)).expect_err("no candidate");
        assert!(
            matches!(&err, BootstrapError::NoPrimaryCandidate { shard: 1, slots } if slots == "5461-10922"),
            "{err:?}"
        );
    }

    #[test]
    fn health_needs_every_slot_served_by_a_healthy_given_node() {
        let live = live(&[("r0", "10.0.0.1", "A"), ("r1", "10.0.0.2", "B")]);
        let layout = Layout::new(2, 2, 0).expect("layout");
        let opts = BootstrapOptions::default();
        let r = run(&live, &layout, &opts);
        let ok = "\
A 10.0.0.1:6379@16379 master - 0 0 1 connected 0-8191
B 10.0.0.2:6379@16379 master - 0 0 2 connected 8192-16383
";
        assert_eq!(r.healthy(&views(&live, ok)), Ok(()));
        // What Redis shows after B restarted empty on the same address:
        // cluster_state:ok, but B's slots belong to an id nobody answers as.
        let lost = "\
A 10.0.0.1:6379@16379 master - 0 0 1 connected 0-8191
B 10.0.0.2:6379@16379 master - 0 0 0 connected
O :0@0 master,noaddr - 0 0 2 disconnected 8192-16383
";
        let (node, why) = r.healthy(&views(&live, lost)).expect_err("not healthy");
        assert_eq!(node, 0);
        assert!(why.contains("8192 of 16384"), "{why}");
    }
}
