//! The bootstrap's steps (see the parent module's docs): membership, stale
//! node ids, slots, replicas, health. Each step reads every node's view,
//! plans with a pure function of the views, sends only the commands for
//! the differences, and waits (bounded) until every node agrees.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::{debug, info, warn};

use super::conn::{Live, NodeAddr, add_slots, check_distinct, close_all, connect_all};
use super::layout::{Layout, SLOTS, SlotRange, ranges_text};
use super::nodes::{Entry, View};
use super::report::{
    BootstrapReport, Forgotten, NodeReport, NodeRole, Promotion, ReplicaSet, SlotsAdded,
};
use super::{BootstrapError, BootstrapOptions};

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

#[cfg(test)]
mod tests {
    use fred::prelude::Client;

    use super::*;
    use crate::redis_cluster::nodes::{parse_info, parse_nodes};

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
