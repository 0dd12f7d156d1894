#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

const S: u64 = 1000;

fn policy() -> Policy {
    Policy {
        min: 2,
        max: 50,
        target: 100,
        tolerance_percent: 10,
        stabilization: Duration::from_secs(300),
        stale_after: STALE_AFTER,
        up: ScaleLimit::UP,
        down: ScaleLimit::DOWN,
    }
}

fn pod(i: usize) -> String {
    format!("chat-gateway-{i}")
}

fn pods(n: i32) -> Vec<String> {
    (0..n.max(0) as usize).map(pod).collect()
}

/// Reports of `total` connections spread over the first `n` pods, written
/// `age` ms before `at`.
fn spread(n: usize, total: u64, at: u64, age: u64) -> Vec<Report> {
    (0..n)
        .map(|i| Report {
            pod: pod(i),
            connections: total / n as u64 + u64::from((i as u64) < total % n as u64),
            reported_at: at - age,
        })
        .collect()
}

/// A Deployment that applies every decision: all its pods ready, all
/// reporting (unless told otherwise), one decision per `step`.
struct Sim {
    policy: Policy,
    state: State,
    now: u64,
    current: i32,
}

impl Sim {
    fn new(policy: Policy, current: i32) -> Sim {
        Sim {
            policy,
            state: State::default(),
            now: 1_000_000 * S,
            current,
        }
    }

    /// Advance `secs`, then decide on `total` connections spread evenly.
    fn step(&mut self, secs: u64, total: u64) -> Decision {
        self.now += secs * S;
        let n = self.current.max(1) as usize;
        let reports = spread(n, total, self.now, 0);
        self.decide_with(&reports)
    }

    fn decide_with(&mut self, reports: &[Report]) -> Decision {
        let ready = pods(self.current);
        let d = decide(
            &mut self.state,
            &self.policy,
            &Inputs {
                current: self.current,
                ready_pods: &ready,
                reports,
                read_at: self.now,
            },
            self.now,
        );
        self.current = d.replicas;
        d
    }
}

// ------------------------------------------------------------------ tables

#[test]
fn tolerance_band() {
    // current 4, target 100: the band is [360, 440].
    for (total, want, reason) in [
        (400, 4, Reason::WithinTolerance),
        (440, 4, Reason::WithinTolerance),
        (360, 4, Reason::WithinTolerance),
        (441, 5, Reason::ScaleUp { limited: false }),
        // ceil(3.59) = 4: nothing to do even outside the band.
        (359, 4, Reason::Steady),
        (300, 4, Reason::Stabilizing { held: 4 }),
    ] {
        let mut sim = Sim::new(policy(), 4);
        let d = sim.step(15, total);
        assert_eq!((d.replicas, d.reason), (want, reason), "{total}: {d}");
    }
}

#[test]
fn scale_up_is_immediate_but_stepped() {
    let mut sim = Sim::new(policy(), 2);
    // 3,000 connections want 30 pods: 2 -> 6 (max(4, 100%)).
    let d = sim.step(15, 3000);
    assert_eq!((d.current, d.replicas, d.recommendation), (2, 6, 30), "{d}");
    assert_eq!(d.reason, Reason::ScaleUp { limited: true });
    // Again within the same period: the step is used up.
    let d = sim.step(5, 3000);
    assert_eq!((d.replicas, d.reason), (6, Reason::StepLimitReached), "{d}");
    // Later periods double: 6 -> 12 -> 24 -> 30.
    for want in [12, 24, 30] {
        let d = sim.step(15, 3000);
        assert_eq!(d.replicas, want, "{d}");
    }
    let d = sim.step(15, 3000);
    assert_eq!((d.replicas, d.reason), (30, Reason::WithinTolerance));
    // Never above max.
    let d = sim.step(15, 1_000_000);
    assert_eq!(d.replicas, 50, "{d}");
    let d = sim.step(15, 1_000_000);
    assert_eq!((d.replicas, d.recommendation), (50, 50), "{d}");
}

#[test]
fn scale_down_waits_out_the_window_then_steps() {
    let mut sim = Sim::new(policy(), 10);
    for _ in 0..40 {
        assert_eq!(sim.step(15, 1000).replicas, 10);
    }
    let last_high = sim.now;
    // The load drops to 3 pods' worth: nothing for 300 s.
    let mut first_down = None;
    let mut downs = vec![];
    for _ in 0..200 {
        let before = sim.current;
        let d = sim.step(15, 300);
        if d.replicas < before {
            first_down.get_or_insert(sim.now);
            downs.push((sim.now, before - d.replicas));
            assert!(matches!(d.reason, Reason::ScaleDown { .. }), "{d}");
        } else if sim.current > 3 {
            assert!(
                matches!(
                    d.reason,
                    Reason::Stabilizing { .. } | Reason::StepLimitReached
                ),
                "{d}"
            );
        }
    }
    let first_down = first_down.unwrap();
    assert!(
        first_down > last_high + 300 * S,
        "{first_down} vs {last_high}"
    );
    assert_eq!(first_down, last_high + 315 * S);
    assert_eq!(sim.current, 3);
    // max(1, 10%) per 60 s: one pod at a time, a minute apart.
    assert!(downs.iter().all(|(_, n)| *n == 1), "{downs:?}");
    for w in downs.windows(2) {
        assert!(w[1].0 - w[0].0 >= 60 * S, "{downs:?}");
    }
}

#[test]
fn a_short_dip_scales_nothing_in() {
    let mut sim = Sim::new(policy(), 10);
    for _ in 0..30 {
        sim.step(15, 1000);
    }
    // 200 s of low load, then back up: no pod was removed.
    for _ in 0..13 {
        assert_eq!(sim.step(15, 100).replicas, 10);
    }
    assert_eq!(sim.step(15, 1000).replicas, 10);
}

#[test]
fn a_new_state_observes_a_whole_window_first() {
    // The operator restarted: no history. Low load waits 300 s all the same.
    let mut sim = Sim::new(policy(), 10);
    let start = sim.now;
    loop {
        let d = sim.step(15, 200);
        if d.replicas < 10 {
            assert!(sim.now - start >= 300 * S, "{d}");
            break;
        }
        assert!(sim.now - start < 400 * S, "never scaled down");
    }
}

#[test]
fn missing_reports_never_scale_in() {
    let mut sim = Sim::new(policy(), 4);
    // Two of four ready pods report 10 each: 20 + 2 x 100 assumed = 3 pods.
    for _ in 0..60 {
        sim.now += 15 * S;
        let reports = spread(2, 20, sim.now, 0);
        let d = sim.decide_with(&reports);
        assert_eq!(d.replicas, 4, "{d}");
        assert_eq!(d.reason, Reason::MissingReports { missing: 2 });
        assert_eq!(
            (
                d.load.connections,
                d.load.reporting,
                d.load.missing,
                d.load.estimate
            ),
            (20, 2, 2, 220)
        );
    }
    // But they do not hide an overload: 2 x 500 + 2 x 100 assumed = 12.
    sim.now += 15 * S;
    let reports = spread(2, 1000, sim.now, 0);
    let d = sim.decide_with(&reports);
    assert_eq!((d.recommendation, d.replicas), (12, 8), "{d}");
}

#[test]
fn no_reports_hold_and_count_as_a_recommendation() {
    let mut sim = Sim::new(policy(), 6);
    for _ in 0..40 {
        sim.now += 15 * S;
        let d = sim.decide_with(&[]);
        assert_eq!((d.replicas, d.reason), (6, Reason::NoReports), "{d}");
        assert_eq!(d.to_string(), "holding 6: no fresh connection report");
    }
    // Reports come back low: the hold was a recommendation of 6, so the
    // window starts now.
    let back = sim.now;
    loop {
        let d = sim.step(15, 100);
        if d.replicas < 6 {
            assert!(sim.now - back > 300 * S, "{d}");
            break;
        }
    }
}

#[test]
fn stale_reports_count_as_missing() {
    let p = policy();
    let ready = pods(3);
    let at = 5_000_000;
    let mut reports = spread(3, 30, at, 0);
    reports[0].reported_at = at - 15_000; // just fresh
    reports[1].reported_at = at - 15_001; // stale
    reports[2].reported_at = at + 2_000; // the future: just written
    let l = load(
        &p,
        &Inputs {
            current: 3,
            ready_pods: &ready,
            reports: &reports,
            read_at: at,
        },
    );
    assert_eq!(
        l,
        Load {
            connections: 20,
            reporting: 2,
            missing: 1,
            estimate: 120
        }
    );
}

#[test]
fn only_ready_pods_count() {
    let p = policy();
    let ready = vec![pod(0), pod(1), pod(1)]; // listed twice: counted once
    let at = 5_000_000;
    let mut reports = spread(3, 3000, at, 0); // pod 2 is not ready
    // A pod reported twice: the newer report counts.
    reports.push(Report {
        pod: pod(0),
        connections: 7,
        reported_at: at - 1,
    });
    reports[0].reported_at = at - 10;
    let l = load(
        &p,
        &Inputs {
            current: 3,
            ready_pods: &ready,
            reports: &reports,
            read_at: at,
        },
    );
    assert_eq!((l.connections, l.reporting, l.missing), (1007, 2, 0));
}

#[test]
fn the_range_always_wins() {
    // Above max (the spec shrank): down at once, no window, no step limit.
    let mut sim = Sim::new(policy(), 80);
    let d = sim.step(15, 8000);
    assert_eq!((d.replicas, d.reason), (50, Reason::OutOfRange), "{d}");
    // Below min: up to min at once.
    let mut sim = Sim::new(policy(), 0);
    let d = sim.decide_with(&[]);
    assert_eq!((d.replicas, d.reason), (2, Reason::OutOfRange), "{d}");
    // Below min with load: up by the load, and never less than min.
    let mut p = policy();
    p.min = 10;
    let mut sim = Sim::new(p, 1);
    let d = sim.step(15, 0);
    assert_eq!((d.replicas, d.reason), (10, Reason::OutOfRange), "{d}");
    // No load at all: min.
    let mut sim = Sim::new(policy(), 5);
    for _ in 0..100 {
        sim.step(15, 0);
    }
    assert_eq!(sim.current, 2);
}

#[test]
fn policy_from_the_spec() {
    let p = Policy::from_spec(&GatewaySpec::default());
    assert_eq!(
        p,
        Policy {
            min: 2,
            max: 10,
            target: 10_000,
            tolerance_percent: 10,
            stabilization: Duration::from_secs(300),
            stale_after: Duration::from_secs(15),
            up: ScaleLimit::UP,
            down: ScaleLimit::DOWN,
        }
    );
    assert_eq!(STALE_AFTER, REPORT_INTERVAL * 3);
}

#[test]
fn step_limits() {
    for (base, up, down) in [
        (0, 4, 1),
        (1, 4, 1),
        (4, 4, 1),
        (5, 5, 1),
        (19, 19, 1),
        (20, 20, 2),
        (105, 105, 10),
    ] {
        assert_eq!(ScaleLimit::UP.step(base), up, "{base}");
        assert_eq!(ScaleLimit::DOWN.step(base), down, "{base}");
    }
}

#[test]
fn deletion_costs_rank_the_least_loaded_first() {
    let p = policy();
    let at = 9_000_000;
    let mut reports = vec![
        Report {
            pod: pod(0),
            connections: 120,
            reported_at: at,
        },
        Report {
            pod: pod(1),
            connections: 3,
            reported_at: at - 1000,
        },
        Report {
            pod: pod(2),
            connections: 0,
            reported_at: at - 20_000, // stale
        },
        Report {
            pod: pod(3),
            connections: u64::MAX,
            reported_at: at,
        },
    ];
    reports.push(Report {
        pod: "not-a-pod".into(),
        connections: 1,
        reported_at: at,
    });
    let costs = pod_deletion_costs(&p, &pods(5), &reports, at);
    let want: BTreeMap<String, i32> = [
        (pod(0), 120),
        (pod(1), 3),
        (pod(2), i32::MAX),
        (pod(3), i32::MAX - 1),
        (pod(4), i32::MAX),
    ]
    .into_iter()
    .collect();
    assert_eq!(costs, want);
    assert_eq!(
        POD_DELETION_COST,
        "controller.kubernetes.io/pod-deletion-cost"
    );
}

#[test]
fn reasons_read_well() {
    let mut sim = Sim::new(policy(), 2);
    let d = sim.step(15, 3000);
    assert_eq!(
        d.to_string(),
        "scale up 2 -> 6: 3000 connections on 2 reporting pods, target 100 per pod (step limit)"
    );
    assert!(d.changes());
    let d = sim.step(15, 600);
    assert_eq!(
        d.to_string(),
        "within tolerance at 6: 600 connections on 6 reporting pods, target 100 per pod"
    );
    assert!(!d.changes());
}

// -------------------------------------------------------------- properties

/// One sync of a random scenario.
#[derive(Debug, Clone)]
struct Tick {
    /// Seconds since the last sync.
    secs: u64,
    /// Load in units of 1/4 pod's target.
    quarters: u64,
    /// Ready pods (counted from the first) that have no fresh report.
    missing: usize,
    /// Whether those have a stale report (`true`) or none at all.
    stale: bool,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        0u64..90,
        0u64..300,
        prop_oneof![3 => Just(0usize), 1 => 0usize..6],
        any::<bool>(),
    )
        .prop_map(|(secs, quarters, missing, stale)| Tick {
            secs,
            quarters,
            missing,
            stale,
        })
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (0i32..6, 0i32..40, 1u64..500, 0u32..30, 0u64..600).prop_map(
        |(min, span, target, tolerance_percent, window)| Policy {
            min,
            max: min + span,
            target,
            tolerance_percent,
            stabilization: Duration::from_secs(window),
            ..policy()
        },
    )
}

/// The reports of `sim`'s pods for `t`: even load, the first `t.missing`
/// pods without a fresh report.
fn reports_for(sim: &Sim, t: &Tick) -> Vec<Report> {
    let n = sim.current.max(1) as usize;
    let total = t.quarters * sim.policy.target / 4;
    let mut reports = spread(n, total, sim.now, 0);
    for (i, r) in reports.iter_mut().enumerate().take(t.missing.min(n)) {
        if t.stale {
            r.reported_at = sim.now - ms(STALE_AFTER) - 1 - i as u64;
        } else {
            r.connections = u64::MAX; // marker: drop below
        }
    }
    reports.retain(|r| r.connections != u64::MAX);
    reports
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Replicas never leave [min, max], whatever the start and the load.
    #[test]
    fn within_bounds(p in any_policy(), start in 0i32..80, ticks in prop::collection::vec(tick(), 1..60)) {
        let mut sim = Sim::new(p.clone(), start);
        for t in &ticks {
            sim.now += t.secs * S;
            let reports = reports_for(&sim, t);
            let d = sim.decide_with(&reports);
            prop_assert!(d.replicas >= p.min && d.replicas <= p.max, "{d:?}");
            prop_assert!(d.recommendation >= p.min && d.recommendation <= p.max, "{d:?}");
        }
    }

    /// A scale-down (not forced by `max`) only follows a fully observed
    /// window in which every recommendation was at most the new count, and
    /// moves at most one step.
    #[test]
    fn never_scales_in_inside_the_window(p in any_policy(), start in 0i32..60, ticks in prop::collection::vec(tick(), 1..80)) {
        let mut sim = Sim::new(p.clone(), start);
        let first = sim.now;
        let mut recs: Vec<(u64, i32)> = vec![];
        for t in &ticks {
            sim.now += t.secs * S;
            let reports = reports_for(&sim, t);
            let d = sim.decide_with(&reports);
            recs.push((sim.now, d.recommendation));
            if d.replicas < d.current && d.current <= p.max {
                let w = ms(p.stabilization);
                prop_assert!(sim.now - first >= w, "scaled in {d:?} before a whole window");
                for (at, r) in &recs {
                    if *at + w >= sim.now {
                        prop_assert!(*r <= d.replicas, "{d:?}: recommendation {r} at {at} in the window");
                    }
                }
                prop_assert!(d.current - d.replicas <= p.down.step(d.current), "{d:?}");
            }
            if d.replicas > d.current && d.current >= p.min {
                prop_assert!(d.replicas - d.current <= p.up.step(d.current), "{d:?}");
            }
        }
    }

    /// Stale or missing reports never remove a pod (only `max` can).
    #[test]
    fn stale_reports_never_scale_in(p in any_policy(), start in 0i32..60, ticks in prop::collection::vec(tick(), 1..60)) {
        let mut sim = Sim::new(p.clone(), start);
        for t in &ticks {
            sim.now += t.secs * S;
            let reports = reports_for(&sim, t);
            let d = sim.decide_with(&reports);
            if d.load.missing > 0 || d.load.reporting == 0 {
                prop_assert!(d.replicas >= d.current.min(p.max), "{d:?}");
            }
        }
    }

    /// More load never means fewer replicas, from any history.
    #[test]
    fn monotone_in_load(
        p in any_policy(),
        start in 0i32..60,
        ticks in prop::collection::vec(tick(), 0..40),
        last in tick(),
        extra in prop::collection::vec(0u64..2000, 60),
    ) {
        let mut sim = Sim::new(p.clone(), start);
        for t in &ticks {
            sim.now += t.secs * S;
            let reports = reports_for(&sim, t);
            sim.decide_with(&reports);
        }
        sim.now += last.secs * S;
        let low = reports_for(&sim, &last);
        let mut high = low.clone();
        for (r, e) in high.iter_mut().zip(&extra) {
            r.connections += e;
        }
        let mut other = Sim { state: sim.state.clone(), policy: p.clone(), now: sim.now, current: sim.current };
        let d_low = sim.decide_with(&low);
        let d_high = other.decide_with(&high);
        prop_assert!(d_high.replicas >= d_low.replicas, "{d_low:?} vs {d_high:?}");
        prop_assert!(d_high.recommendation >= d_low.recommendation);
    }
}
