//! The gateway autoscaler's decision, as pure functions: connection reports
//! and the gateway Deployment's pods in, a replica count and its reason out.
//! No API calls and no clock: the caller reads the reports from the broker
//! (`Broker::connection_reports`), lists the pods, passes the time, and
//! applies the result. Only used in `autoscaling.mode: operator`.
//!
//! The rule, per decision (one per sync, typically every 15 s):
//!
//! 1. **Load.** Only reports of *ready* pods of the Deployment count, and only
//!    *fresh* ones: a report older than [`STALE_AFTER`] (three report
//!    intervals, the TTL gateways write with) is stale. A ready pod with no
//!    fresh report is *missing* and assumed to carry exactly the target,
//!    so it pushes neither up nor down. Reports of pods that are not ready
//!    (starting, terminating, gone) are ignored.
//! 2. **Recommendation.** `ceil(load / targetConnectionsPerReplica)`, but the
//!    current count when the load is within `tolerancePercent` (default 10%)
//!    of `current × target` (as the HPA does), clamped to `[min, max]`.
//!    Stale or missing reports never cause scale-in: with any ready pod
//!    missing, a lower recommendation is raised to the current count; with
//!    no fresh report at all, the recommendation is the current count.
//! 3. **Scale up at once**, by at most `max(4 pods, 100% of replicas)` per
//!    15 s ([`ScaleLimit`]), so a burst of reconnects doubles the fleet per
//!    step rather than jumping to `max` on one sample.
//! 4. **Scale down only after the stabilization window** (default 300 s):
//!    to the highest recommendation made within the window, only when it is
//!    lower than the current count, and by at most `max(1 pod, 10% of
//!    replicas)` per 60 s, so sockets move to other pods a few at a time. The
//!    window must be fully observed: for one window after the operator
//!    (re)starts, or the policy's state is new, nothing scales down.
//! 5. Replicas outside `[min, max]` (the spec changed) are brought into the
//!    range at once; the range always wins over the limits above.
//!
//! [`pod_deletion_costs`] ranks pods for scale-in: the ReplicaSet controller
//! removes the pods with the lowest `controller.kubernetes.io/pod-deletion-cost`
//! first, so the least loaded pods (fewest sockets to move) go first.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::crd::GatewaySpec;

/// How often gateways report by default
/// (`switchboard-gateway --report-interval-seconds`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// A report older than this is stale: three report intervals, the TTL the
/// gateways write their reports with.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// The annotation the ReplicaSet controller reads to pick pods for removal.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One gateway pod's last report (`ConnectionReport` of switchboard-core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub pod: String,
    pub connections: u64,
    /// Unix ms, on the broker's clock.
    pub reported_at: u64,
}

/// How far replicas may move within one period: at most
/// `max(pods, percent% of the replicas at the period's start)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleLimit {
    pub pods: i32,
    pub percent: i32,
    pub period: Duration,
}

impl ScaleLimit {
    /// Default scale-up limit: 4 pods or 100% per 15 s, whichever is more.
    pub const UP: ScaleLimit = ScaleLimit {
        pods: 4,
        percent: 100,
        period: Duration::from_secs(15),
    };
    /// Default scale-down limit: 1 pod or 10% per 60 s, whichever is more.
    pub const DOWN: ScaleLimit = ScaleLimit {
        pods: 1,
        percent: 10,
        period: Duration::from_secs(60),
    };

    /// Pods allowed to move in one period starting at `base` replicas.
    pub fn step(&self, base: i32) -> i32 {
        let pct = i64::from(base.max(0)) * i64::from(self.percent.max(0)) / 100;
        i64::from(self.pods.max(1))
            .max(pct)
            .min(i64::from(i32::MAX)) as i32
    }
}

/// Everything the decision depends on besides the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: i32,
    pub max: i32,
    /// Connections one pod should carry (at least 1).
    pub target: u64,
    /// No change while the load is within this percentage of the target.
    pub tolerance_percent: u32,
    /// Scale-down uses the highest recommendation of this window.
    pub stabilization: Duration,
    /// Reports older than this are ignored.
    pub stale_after: Duration,
    pub up: ScaleLimit,
    pub down: ScaleLimit,
}

impl Policy {
    /// The policy a ChatCluster's gateway spec asks for.
    pub fn from_spec(spec: &GatewaySpec) -> Policy {
        let a = &spec.autoscaling;
        let min = spec.replicas.min.max(0);
        Policy {
            min,
            max: spec.replicas.max.max(min),
            target: u64::try_from(a.target_connections_per_replica)
                .unwrap_or(1)
                .max(1),
            tolerance_percent: u32::try_from(a.tolerance_percent.clamp(0, 100)).unwrap_or(0),
            stabilization: Duration::from_secs(
                u64::try_from(a.scale_down_stabilization_seconds).unwrap_or(0),
            ),
            stale_after: STALE_AFTER,
            up: ScaleLimit::UP,
            down: ScaleLimit::DOWN,
        }
    }

    fn range(&self) -> (i32, i32) {
        let min = self.min.max(0);
        (min, self.max.max(min))
    }
}

/// What the autoscaler observed this sync.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The gateway Deployment's `spec.replicas`.
    pub current: i32,
    /// Names of its ready, non-terminating pods: each should be reporting.
    pub ready_pods: &'a [String],
    /// The cluster's reports, as read from the broker.
    pub reports: &'a [Report],
    /// The broker's clock when the reports were read (Unix ms): reports are
    /// aged against it, so operator/Redis clock skew does not matter.
    pub read_at: u64,
}

/// The load the decision was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Connections in fresh reports of ready pods (for `status.connections`).
    pub connections: u64,
    /// Ready pods with a fresh report.
    pub reporting: usize,
    /// Ready pods without one (never reported, withdrawn, or stale).
    pub missing: usize,
    /// `connections` plus the target for each missing pod.
    pub estimate: u64,
}

/// Measure the load of ready pods from their fresh reports (rule 1).
pub fn load(policy: &Policy, inputs: &Inputs<'_>) -> Load {
    let fresh = fresh_reports(policy, inputs.reports, inputs.read_at);
    let ready: BTreeSet<&str> = inputs.ready_pods.iter().map(String::as_str).collect();
    let mut l = Load::default();
    for pod in ready {
        match fresh.get(pod) {
            Some(r) => {
                l.reporting += 1;
                l.connections = l.connections.saturating_add(r.connections);
            }
            None => l.missing += 1,
        }
    }
    l.estimate = l
        .connections
        .saturating_add(policy.target.saturating_mul(l.missing as u64));
    l
}

/// The newest fresh report of each pod.
fn fresh_reports<'a>(
    policy: &Policy,
    reports: &'a [Report],
    now: u64,
) -> HashMap<&'a str, &'a Report> {
    let max_age = u64::try_from(policy.stale_after.as_millis()).unwrap_or(u64::MAX);
    let mut out: HashMap<&str, &Report> = HashMap::new();
    for r in reports {
        // A report from the future (clock trouble) counts as just written.
        if now.saturating_sub(r.reported_at) > max_age {
            continue;
        }
        let e = out.entry(r.pod.as_str()).or_insert(r);
        if r.reported_at > e.reported_at {
            *e = r;
        }
    }
    out
}

/// What the autoscaler remembers between decisions, per ChatCluster. Lost
/// on an operator restart, which only delays scale-down by one window.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// `(at, recommendation)` of the stabilization window, as a sliding
    /// window maximum: values strictly decrease from front to back, so the
    /// front is the window's highest and the length stays small.
    recommendations: VecDeque<(u64, i32)>,
    /// The first decision's time: the window counts only once it is covered.
    since: Option<u64>,
    /// `(at, from, to)` of the changes decided within the rate-limit periods.
    changes: VecDeque<(u64, i32, i32)>,
}

impl State {
    fn prune(&mut self, policy: &Policy, now: u64) {
        let window = now.saturating_sub(ms(policy.stabilization));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| *at < window)
        {
            self.recommendations.pop_front();
        }
        let period = now.saturating_sub(ms(policy.up.period.max(policy.down.period)));
        while self.changes.front().is_some_and(|(at, _, _)| *at < period) {
            self.changes.pop_front();
        }
    }

    fn record(&mut self, now: u64, rec: i32) {
        // An older, lower (or equal) recommendation can never be the window's
        // highest again.
        while self.recommendations.back().is_some_and(|(_, r)| *r <= rec) {
            self.recommendations.pop_back();
        }
        self.recommendations.push_back((now, rec));
    }

    /// Highest recommendation within the window (including this sync's).
    fn window_max(&self) -> Option<i32> {
        self.recommendations.front().map(|(_, r)| *r)
    }

    /// Pods added (`up`) or removed (`!up`) by the changes made less than
    /// `period` ago.
    fn moved(&self, now: u64, period: Duration, up: bool) -> i32 {
        let since = now.saturating_sub(ms(period));
        self.changes
            .iter()
            .filter(|(at, _, _)| *at > since)
            .map(|(_, from, to)| if up { to - from } else { from - to })
            .filter(|d| *d > 0)
            .fold(0i32, i32::saturating_add)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why the replicas are what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// At the recommendation already.
    Steady,
    /// The load is within the tolerance of the target.
    WithinTolerance,
    /// No ready pod has a fresh report: hold.
    NoReports,
    /// The load is lower, but `missing` ready pods did not report: hold.
    MissingReports { missing: usize },
    /// The load is lower, but the window holds a recommendation of `held`.
    Stabilizing { held: i32 },
    /// More load: scaled up (`limited`: by the step limit, not all the way).
    ScaleUp { limited: bool },
    /// Lower load through the whole window: scaled down.
    ScaleDown { limited: bool },
    /// A change is due, but the step limit of its period is used up.
    StepLimitReached,
    /// Replicas were outside `[min, max]`.
    OutOfRange,
}

/// The outcome of one sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Replicas to apply: always within `[min, max]`.
    pub replicas: i32,
    /// This sync's recommendation (before stabilization and step limits).
    pub recommendation: i32,
    /// Replicas before the decision.
    pub current: i32,
    pub load: Load,
    pub reason: Reason,
    /// The target the load was divided by.
    pub target: u64,
}

impl Decision {
    /// Whether the decision changes the replica count.
    pub fn changes(&self) -> bool {
        self.replicas != self.current
    }
}

/// One line for `status.gateway.lastScaleReason` and Events.
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (from, to, l) = (self.current, self.replicas, &self.load);
        let load = format!(
            "{} connections on {} reporting pods, target {} per pod",
            l.connections, l.reporting, self.target
        );
        match self.reason {
            Reason::Steady => write!(f, "steady at {to}: {load}"),
            Reason::WithinTolerance => write!(f, "within tolerance at {to}: {load}"),
            Reason::NoReports => write!(f, "holding {to}: no fresh connection report"),
            Reason::MissingReports { missing } => write!(
                f,
                "holding {to}: {missing} ready pods have no fresh report ({load}); no scale-in on partial data"
            ),
            Reason::Stabilizing { held } => write!(
                f,
                "holding {to}: {load} needs {}; scale-down waits out the stabilization window (it holds {held})",
                self.recommendation
            ),
            Reason::ScaleUp { limited } => write!(
                f,
                "scale up {from} -> {to}: {load}{}",
                if limited { " (step limit)" } else { "" }
            ),
            Reason::ScaleDown { limited } => write!(
                f,
                "scale down {from} -> {to}: {load} through the stabilization window{}",
                if limited { " (step limit)" } else { "" }
            ),
            Reason::StepLimitReached => write!(
                f,
                "holding {to}: {load} needs {}, but this period's step limit is used up",
                self.recommendation
            ),
            Reason::OutOfRange => write!(f, "{from} -> {to}: replicas brought into [min, max]"),
        }
    }
}

/// Decide the gateway replicas at `now` (Unix ms, the operator's clock;
/// any monotone clock works) and remember what the window needs.
pub fn decide(state: &mut State, policy: &Policy, inputs: &Inputs<'_>, now: u64) -> Decision {
    let (min, max) = policy.range();
    let target = policy.target.max(1);
    let current = inputs.current.max(0);
    let load = load(policy, inputs);
    state.prune(policy, now);
    let since = *state.since.get_or_insert(now);

    // Rule 2: the recommendation.
    let mut why = Reason::Steady;
    let rec = if load.reporting == 0 {
        why = Reason::NoReports;
        current
    } else {
        let desired = i32::try_from(load.estimate.div_ceil(target)).unwrap_or(i32::MAX);
        let capacity = u128::from(target) * current as u128;
        let drift = u128::from(load.estimate).abs_diff(capacity);
        let rec = if current > 0 && drift * 100 <= u128::from(policy.tolerance_percent) * capacity {
            why = Reason::WithinTolerance;
            current
        } else {
            desired
        };
        if load.missing > 0 && rec < current {
            why = Reason::MissingReports {
                missing: load.missing,
            };
            current
        } else {
            rec
        }
    };
    let rec = rec.clamp(min, max);
    state.record(now, rec);

    let (want, why) = if current > max {
        // Rule 5: the spec's range shrank under the current count.
        (max, Reason::OutOfRange)
    } else if rec > current {
        // Rule 3: scale up at once, within the step limit.
        let base = current.saturating_sub(state.moved(now, policy.up.period, true));
        let limit = base.saturating_add(policy.up.step(base));
        if current < min && rec == min {
            (rec, Reason::OutOfRange)
        } else if rec <= limit {
            (rec, Reason::ScaleUp { limited: false })
        } else if limit > current {
            (limit, Reason::ScaleUp { limited: true })
        } else {
            (current, Reason::StepLimitReached)
        }
    } else if rec < current {
        // Rule 4: down to the window's highest recommendation, if lower.
        let window_seen = now.saturating_sub(since) >= ms(policy.stabilization);
        let highest = state.window_max().unwrap_or(rec);
        let held = if window_seen {
            highest
        } else {
            highest.max(current)
        };
        if held >= current {
            (current, Reason::Stabilizing { held })
        } else {
            let base = current.saturating_add(state.moved(now, policy.down.period, false));
            let limit = base.saturating_sub(policy.down.step(base));
            if held >= limit {
                (held, Reason::ScaleDown { limited: false })
            } else if limit < current {
                (limit, Reason::ScaleDown { limited: true })
            } else {
                (current, Reason::StepLimitReached)
            }
        }
    } else {
        (current, why)
    };
    // Rule 5: the range wins over the step limit (replicas below `min`).
    let replicas = want.clamp(min, max);
    let why = if replicas == want {
        why
    } else {
        Reason::OutOfRange
    };
    if replicas != current {
        state.changes.push_back((now, current, replicas));
    }
    Decision {
        replicas,
        recommendation: rec,
        current,
        load,
        reason: why,
        target,
    }
}

/// `controller.kubernetes.io/pod-deletion-cost` for each of `pods`: its fresh
/// reported connections, so the ReplicaSet removes the least loaded pods
/// first. A pod without a fresh report ranks as the most loaded
/// (`i32::MAX`): it is never removed first on a guess. Set these on the
/// pods just before lowering `replicas`.
pub fn pod_deletion_costs(
    policy: &Policy,
    pods: &[String],
    reports: &[Report],
    read_at: u64,
) -> BTreeMap<String, i32> {
    let fresh = fresh_reports(policy, reports, read_at);
    pods.iter()
        .map(|pod| {
            let cost = match fresh.get(pod.as_str()) {
                // Below i32::MAX, so a known pod always ranks under an unknown one.
                Some(r) => i32::try_from(r.connections)
                    .unwrap_or(i32::MAX)
                    .min(i32::MAX - 1),
                None => i32::MAX,
            };
            (pod.clone(), cost)
        })
        .collect()
}

#[cfg(test)]
mod tests;
