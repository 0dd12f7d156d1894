//! The monitoring bundle's one source, `operator/monitoring/`, checked from
//! every side that reads it:
//!
//! - the rules pass `promtool check rules` (as rendered for a cluster, and
//!   as the operator applies them) and every alert's unit test
//!   (`*.test.yaml`) passes `promtool test rules`;
//! - the chart's PrometheusRule is generated from `operator-rules.yaml`;
//! - the dashboard is JSON with the panels the bundle promises, and every
//!   metric the dashboard and the rules name is served on the `/metrics` of
//!   a gateway, a worker or the operator (scraped over HTTP from the servers
//!   their binaries run), so neither can drift from the code.
//!
//! `promtool` comes from Debian's `prometheus` package (`./scripts/test`
//! installs it); `SWITCHBOARD_PROMTOOL` names another one.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use switchboard_operator::ChatCluster;
use switchboard_operator::build::monitoring::{
    CLUSTER_RULES, DASHBOARD_KEY, OPERATOR_RULES, cluster_rules, dashboard,
    operator_rules_chart_template,
};
use switchboard_operator::build::{self, Generated, Observed};
use switchboard_operator::crd::MonitoringSpec;
use switchboard_testkit::{Postgres, RedisServer};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

fn promtool() -> PathBuf {
    switchboard_testkit::find_binary(
        "promtool",
        "SWITCHBOARD_PROMTOOL",
        "apt-get install prometheus (Debian's package ships promtool)",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs promtool in `dir`; panics with its output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// What `cluster-rules.test.yaml` is written for: ChatCluster chat/demo
/// with the default thresholds (p99 500 ms, backlog 10000).
fn demo_rules() -> String {
    let spec = MonitoringSpec::default();
    assert_eq!(
        (spec.delivery_p99_target_millis, spec.backlog_threshold),
        (500, 10_000),
        "cluster-rules.test.yaml expects these defaults"
    );
    cluster_rules("chat", "demo", &spec)
}

#[test]
fn cluster_rules_pass_promtool_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster-rules.rendered.yaml"), demo_rules()).unwrap();
    std::fs::copy(
        source_dir().join("cluster-rules.test.yaml"),
        dir.path().join("cluster-rules.test.yaml"),
    )
    .unwrap();
    let out = run_promtool(
        dir.path(),
        &["check", "rules", "cluster-rules.rendered.yaml"],
    );
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    run_promtool(dir.path(), &["test", "rules", "cluster-rules.test.yaml"]);
}

#[test]
fn operator_rules_pass_promtool_and_their_unit_tests() {
    let out = run_promtool(&source_dir(), &["check", "rules", "operator-rules.yaml"]);
    assert!(out.contains("SUCCESS: 2 rules found"), "{out}");
    run_promtool(
        &source_dir(),
        &["test", "rules", "operator-rules.test.yaml"],
    );
}

/// Every alert of the sources has a unit test: a rule added without one
/// fails here.
#[test]
fn every_alert_has_a_unit_test() {
    for (rules, tests) in [
        (CLUSTER_RULES, "cluster-rules.test.yaml"),
        (OPERATOR_RULES, "operator-rules.test.yaml"),
    ] {
        let tests = std::fs::read_to_string(source_dir().join(tests)).unwrap();
        let alerts: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .collect();
        assert!(!alerts.is_empty());
        for alert in alerts {
            assert!(
                tests.contains(&format!(
                    "alertname: {alert}\n        exp_alerts:\n          - "
                )),
                "{alert} has no test case where it fires"
            );
        }
    }
}

fn fixture(name: &str) -> ChatCluster {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn generated() -> Generated {
    Generated {
        session_key: vec![0; 32],
        postgres_password: "p".into(),
        redis_password: "r".into(),
    }
}

/// The PrometheusRule the operator applies (the production fixture sets a
/// target of its own) holds rules promtool accepts.
#[test]
fn the_applied_prometheus_rule_passes_promtool() {
    let cluster = fixture("production.yaml");
    let desired = build::desired(&cluster, &Observed::default(), &generated()).unwrap();
    let rule = desired
        .monitoring
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "PrometheusRule"))
        .expect("a PrometheusRule");
    let spec = serde_norway::to_string(&rule.data["spec"]).unwrap();
    assert!(
        spec.contains("> 0.25\n"),
        "the spec's 250 ms target:\n{spec}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("applied.yaml"), spec).unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", "applied.yaml"]);
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    // Disabled: no monitoring object, no dashboard, but the worker Service.
    let minimal = fixture("minimal.yaml");
    let desired = build::desired(&minimal, &Observed::default(), &generated()).unwrap();
    assert!(desired.monitoring.is_empty());
    assert!(desired.config_maps.iter().all(|c| {
        c.data
            .as_ref()
            .is_none_or(|d| !d.contains_key(DASHBOARD_KEY))
    }));
    assert!(
        desired
            .services
            .iter()
            .any(|s| { s.metadata.name.as_deref() == Some("chat-worker") })
    );
}

#[test]
fn the_charts_prometheus_rule_is_generated_from_the_source() {
    let rel = "charts/switchboard-operator/templates/prometheusrule.yaml";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let want = operator_rules_chart_template();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{rel} is out of date with operator/monitoring/operator-rules.yaml; \
         regenerate: UPDATE_GOLDEN=1 cargo test -p switchboard-operator --test monitoring"
    );
}

/// Sample names a `/metrics` text can hold, from its `# TYPE` lines (a
/// labelled family with no series yet has no sample lines).
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
    out
}

/// Label names per sample name, from a `/metrics` text's sample lines.
fn sample_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("switchboard_")) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if let Some(set) = line[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        {
            for pair in set.0.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    out
}

/// Labels Prometheus adds to every series it scrapes through the bundle's
/// PodMonitor (its relabelings add `chatcluster` and `component`).
const TARGET_LABELS: [&str; 8] = [
    "namespace",
    "pod",
    "container",
    "endpoint",
    "job",
    "instance",
    "chatcluster",
    "component",
];

/// The label names an expression groups by or matches on.
fn label_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (open, close, key) in [("by (", ')', false), ("{", '}', true)] {
        let mut rest = expr;
        while let Some(i) = rest.find(open) {
            let tail = &rest[i + open.len()..];
            let end = tail.find(close).unwrap_or(tail.len());
            for part in tail[..end].split(',') {
                let name = if key {
                    part.split(['=', '!']).next().unwrap_or("")
                } else {
                    part
                };
                let name = name.trim();
                if !name.is_empty() {
                    out.push(name.to_string());
                }
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Every metric `expr` names is served, and every label it uses is one
/// those metrics carry (or one the scrape adds).
fn check_expr(what: &str, expr: &str, served: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: {expr} names no metric");
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    for n in &names {
        let Some(have) = served.get(n) else {
            panic!("{what}: {n} is not served; served: {:?}", served.keys());
        };
        labels.extend(have.iter().cloned());
    }
    for l in label_names(expr) {
        assert!(
            labels.contains(&l),
            "{what}: label {l} is on none of {names:?} ({expr})"
        );
    }
    names
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{addr}: {out}");
    out
}

/// One HTTP/1.1 request with a JSON body; the whole response.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Serves `app` on a free local port.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The `switchboard_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("switchboard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip label names and values that merely contain the word.
        let before = rest[..i].chars().last();
        if !matches!(before, Some('"') | Some('_')) {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_name_only_served_metrics() {
    // A gateway, as `switchboard-gateway` runs it (its own metrics listener).
    // A burst of one REST request per address, so the second is refused.
    let mut cfg = switchboard_gateway::GatewayConfig::default();
    cfg.limits.rest_burst = 1;
    cfg.limits.rest_rate = 0.001;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = switchboard_gateway::Gateway::start(
        cfg,
        Arc::new(switchboard_core::broker::MemoryBroker::default()),
        listener,
    )
    .await
    .unwrap();
    // Labelled families show once they have a series: a refused sign-in
    // (`errors{code}`), then a request over the limit (`refusals{limit}`).
    let signin = r#"{"message":"not an EIP-4361 message","signature":"0x00"}"#;
    let first = request(gateway.local_addr(), "POST", "/v1/auth/verify", signin).await;
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    let second = request(gateway.local_addr(), "POST", "/v1/auth/verify", signin).await;
    assert!(second.starts_with("HTTP/1.1 429"), "{second}");
    // A worker, as `switchboard-worker run` serves it, on a real Redis and
    // PostgreSQL.
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let store = switchboard_core::store::PgStore::connect(&pg.url(), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let worker = switchboard_worker::Worker::connect(
        &redis.url(),
        store.clone(),
        switchboard_worker::WorkerConfig::default(),
    )
    .await
    .unwrap();
    let worker_addr = serve(switchboard_worker::http::router(
        switchboard_worker::http::HttpState {
            metrics: worker.metrics(),
            streams: worker.streams(),
            store: Arc::new(store),
        },
    ))
    .await;
    // The operator's metrics server, as `switchboard-operator run` serves it.
    // Its labelled families get their series through the calls the
    // reconciler and the leader's managers make (those need a control
    // plane to fail or decide for real).
    let metrics = Arc::new(switchboard_operator::metrics::Metrics::new());
    metrics.failure("Conflict");
    let reason = || switchboard_operator::metrics::ReasonLabel { reason: "ApiError" };
    metrics.autoscaler_failures.get_or_create(&reason()).inc();
    metrics.partition_failures.get_or_create(&reason()).inc();
    metrics
        .redis_bootstrap_failures
        .get_or_create(&reason())
        .inc();
    metrics
        .autoscaler_scales
        .get_or_create(&switchboard_operator::metrics::DirectionLabel { direction: "up" })
        .inc();
    let demo = switchboard_operator::metrics::ClusterLabel {
        cluster_namespace: "chat".into(),
        chatcluster: "demo".into(),
    };
    metrics.partitions_ready.get_or_create(&demo).set(1);
    metrics.redis_cluster_ok.get_or_create(&demo).set(1);
    let operator_addr = serve(switchboard_operator::server::router(metrics)).await;

    // Sample name -> its label names, over the three.
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (what, addr) in [
        ("gateway", gateway.metrics_addr()),
        ("worker", worker_addr),
        ("operator", operator_addr),
    ] {
        let text = scrape(addr).await;
        let names = sample_names(&text);
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&format!("switchboard_{what}_"))),
            "{what}: {names:?}"
        );
        for n in names {
            served.entry(n).or_default();
        }
        for (n, labels) in sample_labels(&text) {
            served.entry(n).or_default().extend(labels);
        }
    }

    // The dashboard: JSON, every panel queries, every query names served metrics.
    let json: serde_json::Value = serde_json::from_str(&dashboard("chat", "demo")).unwrap();
    let panels = json["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            used.extend(check_expr(
                &format!("dashboard panel {title}"),
                expr,
                &served,
            ));
        }
    }
    // What the bundle promises the dashboard shows.
    for want in [
        "switchboard_gateway_connections",
        "switchboard_gateway_messages_out_total",
        "switchboard_gateway_delivery_latency_seconds_bucket",
        "switchboard_gateway_delivery_retries_total",
        "switchboard_worker_backlog",
        "switchboard_worker_dead_letter_size",
        "switchboard_gateway_relay_mode",
        "switchboard_operator_autoscaler_scales_total",
        "switchboard_operator_reconcile_failures_total",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
    let uid = json["uid"].as_str().expect("a uid");
    assert!(
        uid.len() <= 40,
        "Grafana takes uids of up to 40 characters: {uid}"
    );

    // The rules: every expression names served metrics.
    let rules: serde_json::Value = serde_norway::from_str(&demo_rules()).unwrap();
    let operator: serde_json::Value = serde_norway::from_str(OPERATOR_RULES).unwrap();
    for doc in [rules, operator] {
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let expr = rule["expr"].as_str().unwrap();
                check_expr(&format!("alert {}", rule["alert"]), expr, &served);
            }
        }
    }
    gateway.shutdown().await;
}
