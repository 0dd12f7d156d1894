//! The desired layout of a Redis Cluster, pure: which node ordinal belongs
//! to which shard, with which role, and which slots each shard owns (the
//! rule is in the parent module's docs).

use std::fmt;

use super::BootstrapError;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

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

pub(super) fn ranges_text(ranges: &[SlotRange]) -> String {
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
