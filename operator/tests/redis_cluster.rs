//! Redis Cluster bootstrap against real `redis-server --cluster-enabled yes`
//! processes (switchboard-testkit), each started alone: the bootstrap forms
//! the cluster, a second run changes nothing, and a node that lost its data
//! is healed back into its shard.

use std::time::{Duration, Instant};

use switchboard_operator::redis_cluster::{
    BootstrapError, BootstrapOptions, BootstrapReport, Layout, NodeAddr, NodeRole, Role, SLOTS,
    SlotRange, bootstrap, inspect,
};
use switchboard_testkit::{RedisServer, RedisServerOptions};

fn opts() -> BootstrapOptions {
    // `RUST_LOG=switchboard_operator=debug cargo test … -- --nocapture`
    // shows every command and wait.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    BootstrapOptions {
        converge_timeout: Duration::from_secs(30),
        failover_grace: Duration::from_secs(5),
        poll_interval: Duration::from_millis(50),
        ..BootstrapOptions::default()
    }
}

fn start_nodes(n: usize) -> Vec<RedisServer> {
    (0..n)
        .map(|_| RedisServer::start_cluster_node().expect("start redis-server in cluster mode"))
        .collect()
}

fn addrs(nodes: &[RedisServer]) -> Vec<NodeAddr> {
    nodes
        .iter()
        .map(|n| NodeAddr::new("127.0.0.1", n.port()))
        .collect()
}

fn cmd(node: &RedisServer, args: &[&str]) -> String {
    node.command(args)
        .unwrap_or_else(|e| panic!("{args:?} on {}: {e}", node.addr()))
}

/// Waits (up to 20 s) until every replica among `nodes` has its link to its
/// primary up: a bootstrap attaches replicas, but their first sync (a fork
/// and a transfer) finishes later.
async fn replicas_linked(nodes: &[RedisServer]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes {
        loop {
            let info = cmd(n, &["INFO", "replication"]);
            if !info.contains("role:slave") || info.contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {info}", n.addr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn myid(node: &RedisServer) -> String {
    cmd(node, &["CLUSTER", "MYID"])
}

fn info_field(node: &RedisServer, key: &str) -> String {
    cmd(node, &["CLUSTER", "INFO"])
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}:"))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// `(id, flags, primary)` of every line of `CLUSTER NODES` on `node`.
fn table(node: &RedisServer) -> Vec<(String, String, String)> {
    cmd(node, &["CLUSTER", "NODES"])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8).then(|| (f[0].to_string(), f[2].to_string(), f[3].to_string()))
        })
        .collect()
}

/// The primary id `node` replicates, as it says itself.
fn primary_of(node: &RedisServer) -> Option<String> {
    table(node)
        .into_iter()
        .find(|(_, flags, _)| flags.contains("myself"))
        .map(|(_, _, p)| p)
        .filter(|p| p != "-")
}

/// What every node says, checked independently of the bootstrap's own
/// report: `cluster_state:ok`, 16384 slots assigned and ok, `want`
/// primaries each with exactly one replica in every node's table.
fn assert_healthy(nodes: &[RedisServer], primaries: usize, replicas_each: usize) {
    for n in nodes {
        assert_eq!(info_field(n, "cluster_state"), "ok", "{}", n.addr());
        assert_eq!(info_field(n, "cluster_slots_assigned"), "16384");
        assert_eq!(info_field(n, "cluster_slots_ok"), "16384");
        assert_eq!(
            info_field(n, "cluster_known_nodes"),
            nodes.len().to_string(),
            "{} lists stale or foreign nodes",
            n.addr()
        );
        let t = table(n);
        let masters: Vec<&String> = t
            .iter()
            .filter(|(_, f, _)| f.contains("master"))
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(masters.len(), primaries, "{}: {t:?}", n.addr());
        for m in masters {
            let replicas = t.iter().filter(|(_, _, p)| p == m).count();
            assert_eq!(
                replicas,
                replicas_each,
                "{}: replicas of {m}: {t:?}",
                n.addr()
            );
        }
        assert!(
            t.iter()
                .all(|(_, f, _)| !f.contains("fail") && !f.contains("noaddr")),
            "{}: {t:?}",
            n.addr()
        );
    }
}

/// Calls of the cluster-changing commands each node has served so far
/// (`INFO commandstats`), to prove a run sent none.
fn mutations(nodes: &[RedisServer]) -> Vec<u64> {
    const MUTATING: [&str; 7] = [
        "meet",
        "addslots",
        "addslotsrange",
        "replicate",
        "forget",
        "failover",
        "setslot",
    ];
    nodes
        .iter()
        .map(|n| {
            cmd(n, &["INFO", "commandstats"])
                .lines()
                .filter_map(|l| {
                    let (name, stats) =
                        l.trim().strip_prefix("cmdstat_cluster|")?.split_once(':')?;
                    if !MUTATING.contains(&name) {
                        return None;
                    }
                    stats
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))
                        .and_then(|c| c.parse::<u64>().ok())
                })
                .sum()
        })
        .collect()
}

fn assert_no_change(r: &BootstrapReport) {
    assert!(!r.changed(), "second run changed something: {r:#?}");
    assert!(r.ready, "{r:#?}");
    assert_eq!(
        r.summary(),
        "no change; 16384/16384 slots served; cluster ok"
    );
}

fn timed<T>(what: &str, start: Instant, v: T) -> T {
    eprintln!("{what}: {:.2?}", start.elapsed());
    v
}

#[test]
fn layout_is_deterministic() {
    let l = Layout::new(6, 3, 1).expect("layout");
    let slots: Vec<SlotRange> = l.shards.iter().map(|s| s.slots).collect();
    // The split `redis-cli --cluster create` makes.
    assert_eq!(
        slots,
        vec![
            SlotRange::new(0, 5460),
            SlotRange::new(5461, 10922),
            SlotRange::new(10923, 16383)
        ]
    );
    let members: Vec<Vec<usize>> = l.shards.iter().map(|s| s.members().collect()).collect();
    assert_eq!(members, vec![vec![0, 3], vec![1, 4], vec![2, 5]]);
    assert_eq!(
        (0..6).map(|i| l.role_of(i)).collect::<Vec<_>>(),
        [Role::Primary; 3]
            .into_iter()
            .chain([Role::Replica; 3])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        (0..6).map(|i| l.shard_of(i)).collect::<Vec<_>>(),
        vec![0, 1, 2, 0, 1, 2]
    );
    assert_eq!(l.node_count(), 6);

    let l = Layout::new(9, 3, 2).expect("layout");
    assert_eq!(l.shards[1].replicas, vec![4, 7]);

    // Every shard count splits all slots into contiguous, near-equal ranges.
    for shards in [1usize, 2, 3, 5, 7, 100, 16384] {
        let l = Layout::new(shards, shards, 0).expect("layout");
        let mut next = 0u32;
        for s in &l.shards {
            assert_eq!(u32::from(s.slots.first), next);
            let len = s.slots.len();
            let even = u32::from(SLOTS) / shards as u32;
            assert!(len == even || len == even + 1, "{shards}: {s:?}");
            next = u32::from(s.slots.last) + 1;
        }
        assert_eq!(next, u32::from(SLOTS));
    }

    for (nodes, shards, replicas) in [(5, 3, 1), (0, 0, 0), (3, 0, 2), (7, 3, 1)] {
        assert!(
            matches!(
                Layout::new(nodes, shards, replicas),
                Err(BootstrapError::Layout(_))
            ),
            "{nodes} {shards} {replicas}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_a_cluster_is_idempotent_and_heals_a_wiped_replica() {
    let mut nodes = start_nodes(6);
    for n in &nodes {
        assert_eq!(info_field(n, "cluster_known_nodes"), "1");
    }
    let addrs = addrs(&nodes);
    let names: Vec<String> = addrs.iter().map(NodeAddr::to_string).collect();

    let unformed = inspect(&addrs, 3, 1, &opts()).await.expect("inspect");
    assert!(!unformed.ready && !unformed.changed());
    assert_eq!((unformed.slots_assigned, unformed.slots_served), (0, 0));
    assert!(unformed.not_ready_reason.is_some());

    // Form: 3 primaries (0, 1, 2) with one replica each (3, 4, 5).
    let t = Instant::now();
    let r = bootstrap(&addrs, 3, 1, &opts()).await.expect("bootstrap");
    timed("form 3x(1+1)", t, ());
    assert!(r.ready, "{r:#?}");
    assert_eq!(
        (r.slots_assigned, r.slots_ok, r.slots_served),
        (16384, 16384, 16384)
    );
    assert_eq!(r.met.len(), 5, "{r:#?}");
    assert!(r.forgotten.is_empty() && r.promoted.is_empty());
    let added: Vec<(String, Vec<SlotRange>)> = r
        .slots_added
        .iter()
        .map(|s| (s.node.clone(), s.ranges.clone()))
        .collect();
    assert_eq!(
        added,
        vec![
            (names[0].clone(), vec![SlotRange::new(0, 5460)]),
            (names[1].clone(), vec![SlotRange::new(5461, 10922)]),
            (names[2].clone(), vec![SlotRange::new(10923, 16383)]),
        ]
    );
    let set: Vec<(String, String)> = r
        .replicas_set
        .iter()
        .map(|s| (s.node.clone(), s.primary.clone()))
        .collect();
    assert_eq!(
        set,
        vec![
            (names[3].clone(), names[0].clone()),
            (names[4].clone(), names[1].clone()),
            (names[5].clone(), names[2].clone()),
        ]
    );
    for (i, n) in r.nodes.iter().enumerate() {
        let want = if i < 3 {
            NodeRole::Primary {
                slots: [5461, 5462, 5461][i],
            }
        } else {
            NodeRole::Replica {
                of: names[i - 3].clone(),
            }
        };
        assert_eq!(n.role, want, "{n:?}");
        assert_eq!(n.shard, i % 3);
    }
    assert_healthy(&nodes, 3, 1);
    for i in 3..6 {
        assert_eq!(primary_of(&nodes[i]), Some(myid(&nodes[i - 3])));
    }

    // Again: nothing to do, no mutating command.
    let before = mutations(&nodes);
    assert!(before.iter().sum::<u64>() >= 11, "{before:?}");
    let t = Instant::now();
    let again = bootstrap(&addrs, 3, 1, &opts()).await.expect("second run");
    timed("no-op run", t, ());
    assert_no_change(&again);
    assert_eq!(
        mutations(&nodes),
        before,
        "a no-op run sent a mutating command"
    );
    let seen = inspect(&addrs, 3, 1, &opts()).await.expect("inspect");
    assert_eq!(seen.nodes, again.nodes);
    assert!(seen.ready && !seen.changed());

    // Node 4 (replica of shard 1) loses its volume and comes back empty.
    let old_id = myid(&nodes[4]);
    nodes[4].wipe_and_restart().expect("wipe node 4");
    let new_id = myid(&nodes[4]);
    assert_ne!(old_id, new_id);
    assert_eq!(info_field(&nodes[4], "cluster_known_nodes"), "1");

    let t = Instant::now();
    let healed = bootstrap(&addrs, 3, 1, &opts()).await.expect("heal");
    timed("heal a wiped replica", t, ());
    assert!(healed.ready, "{healed:#?}");
    assert_eq!(healed.met, vec![names[4].clone()]);
    assert!(healed.slots_added.is_empty() && healed.promoted.is_empty());
    assert_eq!(
        healed
            .forgotten
            .iter()
            .map(|f| f.id.as_str())
            .collect::<Vec<_>>(),
        vec![old_id.as_str()]
    );
    assert_eq!(healed.replicas_set.len(), 1);
    assert_eq!(healed.replicas_set[0].node, names[4]);
    assert_eq!(healed.replicas_set[0].primary, names[1]);
    assert_eq!(primary_of(&nodes[4]), Some(myid(&nodes[1])));
    assert_healthy(&nodes, 3, 1);
    for n in &nodes {
        assert!(table(n).iter().all(|(id, _, _)| *id != old_id));
    }

    let before = mutations(&nodes);
    let t = Instant::now();
    let again = bootstrap(&addrs, 3, 1, &opts())
        .await
        .expect("run after heal");
    timed("no-op run after heal", t, ());
    assert_no_change(&again);
    assert_eq!(
        mutations(&nodes),
        before,
        "a no-op run sent a mutating command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_primary_is_replaced_by_its_replica_and_rejoins_its_shard() {
    let mut nodes = start_nodes(6);
    let addrs = addrs(&nodes);
    let names: Vec<String> = addrs.iter().map(NodeAddr::to_string).collect();
    bootstrap(&addrs, 3, 1, &opts()).await.expect("bootstrap");
    // WAIT below counts acknowledgements of linked replicas only: one still
    // in its first sync would make it time out (seen on a loaded machine).
    replicas_linked(&nodes).await;

    // A key in shard 0, replicated to node 3 before node 0 is lost.
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            cmd(&nodes[0], &["CLUSTER", "KEYSLOT", k])
                .parse::<u16>()
                .is_ok_and(|s| s <= 5460)
        })
        .expect("a key in shard 0");
    assert_eq!(cmd(&nodes[0], &["SET", &key, "kept"]), "OK");
    assert_eq!(cmd(&nodes[0], &["WAIT", "1", "5000"]), "1");

    let old_id = myid(&nodes[0]);
    nodes[0].wipe_and_restart().expect("wipe node 0");

    let t = Instant::now();
    let r = bootstrap(&addrs, 3, 1, &opts()).await.expect("heal");
    timed("heal a wiped primary with a replica", t, ());
    assert!(r.ready, "{r:#?}");
    // Redis cannot see the old primary fail (its address answers as a new
    // node: `noaddr`), so its replica takes over.
    assert_eq!(r.promoted.len(), 1, "{r:#?}");
    assert_eq!(r.promoted[0].node, names[3]);
    assert_eq!(r.promoted[0].replaced_id, old_id);
    assert_eq!(r.met, vec![names[0].clone()]);
    assert_eq!(r.forgotten.len(), 1);
    assert!(r.slots_added.is_empty(), "no slot moves: {r:#?}");
    assert_eq!(r.replicas_set.len(), 1);
    assert_eq!(r.replicas_set[0].node, names[0]);
    assert_eq!(r.replicas_set[0].primary, names[3]);
    // Shard 0 is served by node 3 now, with its data; node 0 replicates it
    // (no failback).
    assert_eq!(r.nodes[3].role, NodeRole::Primary { slots: 5461 });
    assert_eq!(
        r.nodes[0].role,
        NodeRole::Replica {
            of: names[3].clone()
        }
    );
    assert_eq!(cmd(&nodes[3], &["GET", &key]), "kept");
    assert_healthy(&nodes, 3, 1);

    let again = bootstrap(&addrs, 3, 1, &opts()).await.expect("again");
    assert_no_change(&again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_primary_without_replica_gets_its_slots_back() {
    let mut nodes = start_nodes(3);
    let addrs = addrs(&nodes);
    let names: Vec<String> = addrs.iter().map(NodeAddr::to_string).collect();
    let r = bootstrap(&addrs, 3, 0, &opts()).await.expect("bootstrap");
    assert!(r.ready && r.replicas_set.is_empty(), "{r:#?}");
    assert_healthy(&nodes, 3, 0);

    let old_id = myid(&nodes[1]);
    nodes[1].wipe_and_restart().expect("wipe node 1");

    let t = Instant::now();
    let r = bootstrap(&addrs, 3, 0, &opts()).await.expect("heal");
    timed("heal a wiped primary without replica", t, ());
    assert!(r.ready, "{r:#?}");
    assert_eq!(r.met, vec![names[1].clone()]);
    assert_eq!(r.forgotten.len(), 1);
    assert_eq!(r.forgotten[0].id, old_id);
    assert_eq!(r.slots_added.len(), 1);
    assert_eq!(r.slots_added[0].node, names[1]);
    assert_eq!(r.slots_added[0].ranges, vec![SlotRange::new(5461, 10922)]);
    assert_healthy(&nodes, 3, 0);

    let again = bootstrap(&addrs, 3, 0, &opts()).await.expect("again");
    assert_no_change(&again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_a_clear_error_and_nothing_changes() {
    let nodes = start_nodes(2);
    let mut addrs = addrs(&nodes);
    // A port nobody listens on.
    let dead_port = switchboard_testkit::free_port().expect("port");
    addrs.push(NodeAddr::new("127.0.0.1", dead_port));

    let t = Instant::now();
    let err = bootstrap(&addrs, 3, 0, &opts())
        .await
        .expect_err("a node is down");
    timed("unreachable node error", t, ());
    let dead = format!("127.0.0.1:{dead_port}");
    match &err {
        BootstrapError::Unreachable { node, .. } => assert_eq!(node, &dead),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(err.is_transient());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("Redis node {dead} is unreachable")),
        "{msg}"
    );
    // Nothing was sent to the nodes that are up.
    for n in &nodes {
        assert_eq!(info_field(n, "cluster_known_nodes"), "1");
        assert_eq!(info_field(n, "cluster_slots_assigned"), "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_cluster_mode_is_refused() {
    let plain = RedisServer::start().expect("redis-server");
    let addrs = vec![NodeAddr::new("127.0.0.1", plain.port())];
    let err = bootstrap(&addrs, 1, 0, &opts())
        .await
        .expect_err("not in cluster mode");
    assert!(
        matches!(&err, BootstrapError::ClusterDisabled { node } if *node == plain.addr()),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("cluster-enabled yes"), "{err}");
}

/// The managed Redis requires a password (`requirepass`, `masterauth` for
/// the replicas): the bootstrap authenticates every connection with it and
/// forms the cluster, replicas included. Without it every node refuses, the
/// error says so, and it never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_a_password_protected_cluster() {
    const PASSWORD: &str = "8e7d6c5b4a39281706f5e4d3c2b1a090";
    let nodes: Vec<RedisServer> = (0..6)
        .map(|_| {
            let opts = RedisServerOptions::cluster_node()
                .expect("options")
                .with_password(PASSWORD);
            RedisServer::start_with(opts).expect("start redis-server with a password")
        })
        .collect();
    let addrs = addrs(&nodes);

    let err = bootstrap(&addrs, 3, 1, &opts())
        .await
        .expect_err("no password");
    let msg = err.to_string();
    assert!(err.is_transient(), "{err:?}");
    assert!(msg.to_ascii_uppercase().contains("NOAUTH"), "{msg}");
    let wrong = BootstrapOptions {
        password: Some("wrong-password-0a1b2c".into()),
        ..opts()
    };
    let err = bootstrap(&addrs, 3, 1, &wrong)
        .await
        .expect_err("a wrong password");
    let msg = err.to_string();
    assert!(msg.to_ascii_uppercase().contains("WRONGPASS"), "{msg}");
    assert!(!msg.contains("wrong-password-0a1b2c"), "{msg}");
    assert!(!format!("{wrong:?}").contains("wrong-password-0a1b2c"));
    for n in &nodes {
        assert_eq!(info_field(n, "cluster_known_nodes"), "1");
    }

    let with = BootstrapOptions {
        password: Some(PASSWORD.into()),
        ..opts()
    };
    let report = bootstrap(&addrs, 3, 1, &with).await.expect("bootstrap");
    assert!(report.ready, "{report:?}");
    assert_eq!(report.slots_served, SLOTS as u32);
    // Replicas synced with their primaries: masterauth works.
    replicas_linked(&nodes).await;
    let again = bootstrap(&addrs, 3, 1, &with).await.expect("again");
    assert!(!again.changed(), "{again:?}");
}
