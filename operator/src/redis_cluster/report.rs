//! What a bootstrap did and the state it left.

use super::layout::{Role, SLOTS, SlotRange};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
