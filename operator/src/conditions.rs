//! Status conditions, computed from what the reconciler observed.
//!
//! Everything here is pure. `lastTransitionTime` only moves when a
//! condition's status flips: re-reconciling an unchanged cluster produces a
//! byte-identical status, so the status write is a no-op and does not wake the
//! controller again (no hot loop), and `kubectl describe` shows when things
//! actually changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const GATEWAY_READY: &str = "GatewayReady";
pub const WORKER_READY: &str = "WorkerReady";
pub const REDIS_READY: &str = "RedisReady";
pub const POSTGRES_READY: &str = "PostgresReady";
pub const PAUSED: &str = "ReconciliationPaused";
/// Whether the monitoring bundle is in place (only with
/// `spec.monitoring.enabled`; it never holds up `Ready`).
pub const MONITORING_READY: &str = "MonitoringReady";
/// Written by the partition manager ([`crate::partitions`]), not the reconciler.
pub const PARTITIONS_READY: &str = "PartitionsReady";

/// The condition types this operator's reconciler owns. `PartitionsReady` is
/// left to the partition manager, which writes it with its own field manager.
pub const OWNED: [&str; 9] = [
    READY,
    PROGRESSING,
    DEGRADED,
    GATEWAY_READY,
    WORKER_READY,
    REDIS_READY,
    POSTGRES_READY,
    MONITORING_READY,
    PAUSED,
];

/// A condition before timestamps: what the reconciler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Fresh {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Fresh {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Desired and ready pods of one workload, from its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pods {
    pub desired: i32,
    pub ready: i32,
}

impl Pods {
    fn is_ready(self) -> bool {
        self.desired > 0 && self.ready >= self.desired
    }
}

/// A component as observed: not run by us (external), missing, its pods,
/// or (managed Redis in cluster mode) its pods and whether they form a
/// complete cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    External,
    Missing,
    Running(Pods),
    Cluster(Pods, ClusterView),
}

/// The Redis Cluster manager's last verdict, read back from
/// `status.redis.{clusterState, clusterMessage}` (see
/// [`crate::redis_manager`]): ready pods are not yet a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// All 16384 slots are served and every node agrees.
    pub ready: bool,
    /// What the manager says (empty before its first run).
    pub message: String,
}

/// What the reconciler saw after applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub gateway: Component,
    pub worker: Component,
    pub redis: Component,
    pub postgres: Component,
    pub monitoring: Monitoring,
}

/// The monitoring bundle as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Monitoring {
    /// `spec.monitoring.enabled` is false: no condition.
    Disabled,
    /// PodMonitor, PrometheusRule and dashboard applied.
    Applied,
    /// The API server does not serve these `monitoring.coreos.com`
    /// resources: only the dashboard ConfigMap was applied.
    CrdsMissing(Vec<String>),
}

fn monitoring(m: &Monitoring) -> Option<Fresh> {
    match m {
        Monitoring::Disabled => None,
        Monitoring::Applied => Some(Fresh::new(
            MONITORING_READY,
            true,
            "MonitoringApplied",
            "PodMonitor, PrometheusRule and Grafana dashboard ConfigMap applied",
        )),
        Monitoring::CrdsMissing(missing) => Some(Fresh::new(
            MONITORING_READY,
            false,
            "MonitoringCRDsMissing",
            format!(
                "the API server does not serve monitoring.coreos.com/v1 {}: install the Prometheus Operator's CRDs; \
                 until then only the Grafana dashboard ConfigMap is applied",
                missing.join(", ")
            ),
        )),
    }
}

fn component(type_: &'static str, what: &str, c: Component) -> Fresh {
    match c {
        Component::External => Fresh::new(
            type_,
            true,
            "External",
            format!("{what} is external; the operator does not monitor it"),
        ),
        Component::Missing => Fresh::new(
            type_,
            false,
            "NotCreated",
            format!("no {what} workload yet"),
        ),
        Component::Running(p) | Component::Cluster(p, _) if !p.is_ready() => Fresh::new(
            type_,
            false,
            "ReplicasNotReady",
            format!("{}/{} {what} pods ready", p.ready, p.desired),
        ),
        Component::Running(p) => Fresh::new(
            type_,
            true,
            "AllReplicasReady",
            format!("{}/{} {what} pods ready", p.ready, p.desired),
        ),
        Component::Cluster(p, view) if view.ready => Fresh::new(
            type_,
            true,
            "ClusterReady",
            format!(
                "{}/{} {what} pods ready; {}",
                p.ready, p.desired, view.message
            ),
        ),
        Component::Cluster(p, view) => Fresh::new(
            type_,
            false,
            "ClusterNotReady",
            format!(
                "{}/{} {what} pods ready; {}",
                p.ready,
                p.desired,
                if view.message.is_empty() {
                    "waiting for the operator to form the Redis Cluster"
                } else {
                    &view.message
                }
            ),
        ),
    }
}

/// Conditions after a successful reconcile.
pub fn healthy(obs: &Observation) -> Vec<Fresh> {
    let parts = [
        component(GATEWAY_READY, "gateway", obs.gateway.clone()),
        component(WORKER_READY, "worker", obs.worker.clone()),
        component(REDIS_READY, "redis", obs.redis.clone()),
        component(POSTGRES_READY, "postgres", obs.postgres.clone()),
    ];
    let waiting: Vec<&str> = parts
        .iter()
        .filter(|c| !c.status)
        .map(|c| c.type_)
        .collect();
    let mut out = Vec::with_capacity(8);
    if waiting.is_empty() {
        out.push(Fresh::new(
            READY,
            true,
            "AllComponentsReady",
            "every component is ready",
        ));
        out.push(Fresh::new(
            PROGRESSING,
            false,
            "Converged",
            "children match the spec",
        ));
    } else {
        let msg = format!("waiting for {}", waiting.join(", "));
        out.push(Fresh::new(READY, false, "ComponentsNotReady", msg.clone()));
        out.push(Fresh::new(PROGRESSING, true, "RollingOut", msg));
    }
    out.push(Fresh::new(
        DEGRADED,
        false,
        "ReconcileSucceeded",
        "children applied",
    ));
    out.extend(parts);
    out.extend(monitoring(&obs.monitoring));
    out.push(not_paused());
    out
}

/// Conditions for a spec the operator refuses. Components keep their last
/// known state; the cluster is not Ready until the spec is fixed.
pub fn invalid(previous: &[Condition], problems: &[String]) -> Vec<Fresh> {
    let msg = format!("invalid spec: {}", problems.join("; "));
    let mut out = carry(previous);
    set(
        &mut out,
        Fresh::new(READY, false, "InvalidSpec", msg.clone()),
    );
    set(
        &mut out,
        Fresh::new(
            PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for a spec change",
        ),
    );
    set(&mut out, Fresh::new(DEGRADED, true, "InvalidSpec", msg));
    set(&mut out, not_paused());
    out
}

/// Conditions after a failed reconcile (API error, conflict, ...).
pub fn failed(previous: &[Condition], reason: &str, message: &str) -> Vec<Fresh> {
    let mut out = carry(previous);
    set(&mut out, Fresh::new(DEGRADED, true, reason, message));
    set(&mut out, not_paused());
    out
}

/// Conditions while the pause annotation is set: everything else as it was.
pub fn paused(previous: &[Condition]) -> Vec<Fresh> {
    let mut out = carry(previous);
    set(
        &mut out,
        Fresh::new(
            PAUSED,
            true,
            "PausedByAnnotation",
            "switchboard.dev/paused is \"true\"; children are not changed",
        ),
    );
    out
}

fn not_paused() -> Fresh {
    Fresh::new(PAUSED, false, "NotPaused", "reconciling")
}

/// The owned conditions of `previous` as [`Fresh`] values, in `OWNED` order.
fn carry(previous: &[Condition]) -> Vec<Fresh> {
    OWNED
        .iter()
        .filter_map(|t| previous.iter().find(|c| c.type_ == *t).map(|c| (t, c)))
        .map(|(t, c)| Fresh::new(t, c.status == "True", &c.reason, c.message.clone()))
        .collect()
}

fn set(list: &mut Vec<Fresh>, c: Fresh) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(slot) => *slot = c,
        None => list.push(c),
    }
}

/// Timestamps `fresh` against `previous`: a condition whose status did not
/// change keeps its `lastTransitionTime`; a new or flipped one gets `now`.
pub fn stamp(
    previous: &[Condition],
    fresh: Vec<Fresh>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    fresh
        .into_iter()
        .map(|f| {
            let status = if f.status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == f.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: f.type_.to_string(),
                status: status.to_string(),
                reason: f.reason,
                message: f.message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn running(desired: i32, ready: i32) -> Component {
        Component::Running(Pods { desired, ready })
    }

    fn obs(gateway_ready: i32) -> Observation {
        Observation {
            gateway: running(2, gateway_ready),
            worker: running(2, 2),
            redis: running(1, 1),
            postgres: Component::External,
            monitoring: Monitoring::Applied,
        }
    }

    fn get<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn monitoring_is_reported_but_never_holds_up_ready() {
        let missing = Observation {
            monitoring: Monitoring::CrdsMissing(vec![
                "podmonitors".into(),
                "prometheusrules".into(),
            ]),
            ..obs(2)
        };
        let cs = stamp(&[], healthy(&missing), Some(1), &t(100));
        let m = get(&cs, MONITORING_READY);
        assert_eq!(
            (m.status.as_str(), m.reason.as_str()),
            ("False", "MonitoringCRDsMissing")
        );
        assert!(
            m.message.contains("podmonitors, prometheusrules"),
            "{}",
            m.message
        );
        assert_eq!(get(&cs, READY).status, "True");
        let off = Observation {
            monitoring: Monitoring::Disabled,
            ..obs(2)
        };
        let cs = stamp(&[], healthy(&off), Some(1), &t(100));
        assert!(cs.iter().all(|c| c.type_ != MONITORING_READY), "{cs:?}");
    }

    #[test]
    fn all_ready_means_ready_and_converged() {
        let cs = stamp(&[], healthy(&obs(2)), Some(3), &t(100));
        assert_eq!(get(&cs, READY).status, "True");
        assert_eq!(get(&cs, PROGRESSING).status, "False");
        assert_eq!(get(&cs, DEGRADED).status, "False");
        assert_eq!(get(&cs, POSTGRES_READY).reason, "External");
        assert_eq!(get(&cs, READY).observed_generation, Some(3));
        assert_eq!(cs.len(), OWNED.len());
    }

    #[test]
    fn a_missing_pod_is_progressing() {
        let cs = stamp(&[], healthy(&obs(1)), Some(1), &t(100));
        assert_eq!(get(&cs, READY).status, "False");
        assert_eq!(get(&cs, PROGRESSING).status, "True");
        assert_eq!(get(&cs, GATEWAY_READY).message, "1/2 gateway pods ready");
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let first = stamp(&[], healthy(&obs(1)), Some(1), &t(100));
        // Same observation later: nothing moves, the status is identical.
        let again = stamp(&first, healthy(&obs(1)), Some(1), &t(200));
        assert_eq!(first, again);
        // The gateway becomes ready: Ready and GatewayReady flip, the rest stay.
        let ready = stamp(&again, healthy(&obs(2)), Some(1), &t(300));
        assert_eq!(get(&ready, READY).last_transition_time, t(300));
        assert_eq!(get(&ready, GATEWAY_READY).last_transition_time, t(300));
        assert_eq!(get(&ready, DEGRADED).last_transition_time, t(100));
        assert_eq!(get(&ready, REDIS_READY).last_transition_time, t(100));
    }

    #[test]
    fn invalid_spec_keeps_components_and_degrades() {
        let before = stamp(&[], healthy(&obs(2)), Some(1), &t(100));
        let cs = stamp(
            &before,
            invalid(&before, &["gateway.replicas: min must be ≤ max".into()]),
            Some(2),
            &t(200),
        );
        assert_eq!(get(&cs, DEGRADED).status, "True");
        assert_eq!(get(&cs, DEGRADED).reason, "InvalidSpec");
        assert!(get(&cs, READY).message.contains("min must be"));
        assert_eq!(get(&cs, GATEWAY_READY).status, "True");
        assert_eq!(get(&cs, GATEWAY_READY).last_transition_time, t(100));
    }

    #[test]
    fn paused_only_adds_the_pause() {
        let before = stamp(&[], healthy(&obs(2)), Some(1), &t(100));
        let cs = stamp(&before, paused(&before), Some(1), &t(200));
        assert_eq!(get(&cs, PAUSED).status, "True");
        assert_eq!(get(&cs, READY).status, "True");
        assert_eq!(get(&cs, READY).last_transition_time, t(100));
    }

    /// `PartitionsReady` belongs to the partition manager: the reconciler
    /// never produces it, so its status apply (a list map keyed by `type`)
    /// leaves the manager's entry alone, whatever path it takes.
    #[test]
    fn the_reconciler_never_writes_partitions_ready() {
        assert!(!OWNED.contains(&PARTITIONS_READY));
        let mut before = stamp(&[], healthy(&obs(2)), Some(1), &t(100));
        before.push(Condition {
            type_: PARTITIONS_READY.into(),
            status: "True".into(),
            reason: "PartitionsMaintained".into(),
            message: "4 partitions".into(),
            observed_generation: Some(1),
            last_transition_time: t(50),
        });
        for fresh in [
            healthy(&obs(1)),
            invalid(&before, &["x".into()]),
            failed(&before, "ApplyFailed", "boom"),
            paused(&before),
        ] {
            let cs = stamp(&before, fresh, Some(2), &t(200));
            assert!(cs.iter().all(|c| c.type_ != PARTITIONS_READY), "{cs:?}");
        }
    }

    /// In cluster mode ready pods are not enough: RedisReady (and so
    /// Ready) waits for the Redis Cluster manager's verdict.
    #[test]
    fn a_redis_cluster_is_ready_only_when_formed() {
        let with = |pods: Pods, ready: bool, message: &str| Observation {
            redis: Component::Cluster(
                pods,
                ClusterView {
                    ready,
                    message: message.into(),
                },
            ),
            ..obs(2)
        };
        let all = Pods {
            desired: 6,
            ready: 6,
        };
        let cs = stamp(&[], healthy(&with(all, false, "")), Some(1), &t(1));
        let redis = get(&cs, REDIS_READY);
        assert_eq!(
            (redis.status.as_str(), redis.reason.as_str()),
            ("False", "ClusterNotReady")
        );
        assert!(
            redis.message.contains("waiting for the operator"),
            "{redis:?}"
        );
        assert_eq!(get(&cs, READY).status, "False");

        let cs = stamp(
            &[],
            healthy(&with(all, true, "16384/16384 slots served")),
            Some(1),
            &t(1),
        );
        assert_eq!(get(&cs, REDIS_READY).status, "True");
        assert_eq!(get(&cs, REDIS_READY).reason, "ClusterReady");
        assert_eq!(get(&cs, READY).status, "True");

        // A pod down: not ready, whatever the manager said last.
        let five = Pods {
            desired: 6,
            ready: 5,
        };
        let cs = stamp(&[], healthy(&with(five, true, "ok")), Some(1), &t(1));
        assert_eq!(get(&cs, REDIS_READY).reason, "ReplicasNotReady");
    }

    #[test]
    fn failure_sets_degraded_with_the_reason() {
        let cs = stamp(&[], failed(&[], "ApplyFailed", "boom"), None, &t(1));
        assert_eq!(get(&cs, DEGRADED).reason, "ApplyFailed");
        assert_eq!(get(&cs, DEGRADED).status, "True");
    }
}
