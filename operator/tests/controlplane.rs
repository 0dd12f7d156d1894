//! The operator against a real kube-apiserver + etcd + kube-controller-manager
//! (switchboard-testkit's local control plane). There is no scheduler or
//! kubelet, so pods never run: these tests check what the operator writes to
//! the API (children, owner references, status, events, leases), not the
//! data plane.
//!
//! `cargo test -p switchboard-operator --features kube --test controlplane`

#![cfg(feature = "kube")]
// Helpers outside #[test] fns; a failed set-up should panic loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_operator::ChatCluster;
use switchboard_operator::run::{RunConfig, run};
use tokio_util::sync::CancellationToken;

/// Starts an operator in this process; cancel the token to stop it.
fn start_operator(
    client: &Client,
    identity: &str,
    lease_ns: &str,
) -> (CancellationToken, SocketAddr, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let addr = free_addr();
    let cfg = RunConfig {
        lease_namespace: lease_ns.into(),
        ..RunConfig::new(identity, addr)
    };
    let handle = tokio::spawn({
        let client = client.clone();
        let token = token.clone();
        async move { run(client, cfg, token).await.expect("operator runs") }
    });
    (token, addr, handle)
}

fn example(name: &str) -> ChatCluster {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn apply_cluster(api: &Api<ChatCluster>, cluster: &ChatCluster) {
    api.patch(
        &cluster.name_any(),
        &PatchParams::apply("switchboard-tests").force(),
        &Patch::Apply(cluster),
    )
    .await
    .expect("apply ChatCluster");
}

fn owned_by(obj: &impl Resource, cluster: &ChatCluster) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == cluster.metadata.uid.as_ref())
}

async fn exists<K>(client: &Client, ns: &str, name: &str) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get")
}

fn condition(cluster: &ChatCluster, type_: &str) -> Option<(String, String)> {
    cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_chatclusters() {
    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    namespace(&client, "ops").await;
    namespace(&client, "apps").await;
    let (stop, _addr, handle) = start_operator(&client, "op-a", "ops");

    let api: Api<ChatCluster> = Api::namespaced(client.clone(), "apps");

    // --- the minimal example: every child, labelled and owned
    apply_cluster(&api, &example("chatcluster-minimal.yaml")).await;
    let cluster = eventually("observedGeneration 1", || async {
        let c = api.get("chat").await.ok()?;
        (c.status.as_ref()?.observed_generation == Some(1)).then_some(c)
    })
    .await;
    let ns = "apps";
    let gw: Deployment = exists(&client, ns, "chat-gateway").await.expect("gateway");
    assert!(owned_by(&gw, &cluster));
    assert_eq!(
        gw.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("switchboard-operator")
    );
    assert_eq!(gw.spec.as_ref().unwrap().replicas, Some(2));
    for name in ["chat-gateway", "chat-worker"] {
        let d: Deployment = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&d, &cluster), "{name}");
    }
    for name in ["chat-redis", "chat-postgres"] {
        let s: StatefulSet = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&s, &cluster), "{name}");
    }
    for name in ["chat-gateway", "chat-redis", "chat-postgres"] {
        let s: Service = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&s, &cluster), "{name}");
    }
    for name in ["chat-gateway", "chat-redis"] {
        let c: ConfigMap = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&c, &cluster), "{name}");
    }
    for name in ["chat-gateway", "chat-worker", "chat-redis"] {
        let p: PodDisruptionBudget = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&p, &cluster), "{name}");
    }
    let session: Secret = exists(&client, ns, "chat-session").await.expect("session");
    let key = session.data.clone().unwrap()["token-secret"].clone();
    assert_eq!(key.0.len(), 32);
    // The managed Redis's password: generated, owned, 64 hex digits.
    let redis_auth: Secret = exists(&client, ns, "chat-redis")
        .await
        .expect("redis Secret");
    assert!(owned_by(&redis_auth, &cluster));
    let redis_pw = redis_auth.data.clone().unwrap()["password"].clone();
    assert_eq!(redis_pw.0.len(), 64);
    assert!(redis_pw.0.iter().all(u8::is_ascii_hexdigit));
    for name in ["chat-redis", "chat-postgres"] {
        let p: NetworkPolicy = exists(&client, ns, name).await.expect(name);
        assert!(owned_by(&p, &cluster), "{name}");
    }
    // No kubelet: pods never get ready, so the cluster is progressing.
    assert_eq!(
        condition(&cluster, "Progressing").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert_eq!(
        condition(&cluster, "Ready").map(|c| c.0).as_deref(),
        Some("False")
    );
    // `kubectl get cc` says why: the API server's table (what kubectl
    // prints) has a Reason column holding the Ready condition's reason, and
    // `kubectl get switchboard` finds ChatClusters (the CRD's category).
    let (columns, cells) = table_row(&client, "apps", "chat").await;
    let cell = |name: &str| {
        let i = columns.iter().position(|c| c == name);
        i.and_then(|i| cells.get(i)).cloned()
    };
    assert_eq!(
        columns,
        ["Name", "Ready", "Reason", "Gateways", "Connections", "Age"],
        "printer columns"
    );
    assert_eq!(cell("Ready"), Some(json!("False")));
    assert_eq!(
        cell("Reason"),
        Some(json!("ComponentsNotReady")),
        "Reason column of a cluster whose pods never run"
    );
    let discovery: serde_json::Value = client
        .request(
            axum::http::Request::get("/apis/switchboard.dev/v1alpha1")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let resource = discovery["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "chatclusters")
        .cloned()
        .unwrap();
    assert_eq!(resource["categories"], json!(["switchboard"]));
    assert_eq!(resource["shortNames"], json!(["cc"]));

    // --- a spec change converges and bumps observedGeneration
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"worker": {"replicas": 3}}})),
    )
    .await
    .unwrap();
    eventually("worker replicas 3 and observedGeneration 2", || async {
        let d: Deployment = exists(&client, ns, "chat-worker").await?;
        let c = api.get("chat").await.ok()?;
        (d.spec?.replicas == Some(3) && c.status?.observed_generation == Some(2)).then_some(())
    })
    .await;

    // --- a deleted child comes back; the session key is never rotated
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let old_uid = cms.get("chat-gateway").await.unwrap().uid();
    cms.delete("chat-gateway", &DeleteParams::default())
        .await
        .unwrap();
    eventually("gateway ConfigMap recreated", || async {
        let cm = cms.get_opt("chat-gateway").await.ok()??;
        (cm.uid() != old_uid).then_some(())
    })
    .await;
    let again: Secret = exists(&client, ns, "chat-session").await.unwrap();
    assert_eq!(
        again.data.unwrap()["token-secret"],
        key,
        "session key rotated"
    );
    let again: Secret = exists(&client, ns, "chat-redis").await.unwrap();
    assert_eq!(
        again.data.unwrap()["password"],
        redis_pw,
        "Redis password rotated"
    );

    // --- NetworkPolicies are opt-out: switched off, they are deleted
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"networkPolicies": {"enabled": false}}})),
    )
    .await
    .unwrap();
    eventually("NetworkPolicies pruned", || async {
        let gone = exists::<NetworkPolicy>(&client, ns, "chat-redis")
            .await
            .is_none()
            && exists::<NetworkPolicy>(&client, ns, "chat-postgres")
                .await
                .is_none();
        gone.then_some(())
    })
    .await;

    // --- switching managed Redis off deletes its children
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let redis_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis"}, "stringData": {"url": "redis://redis.example:6379"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &redis_secret)
        .await
        .unwrap();
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"redis": {"managed": null,
            "external": {"urlSecretRef": {"name": "redis"}}}}})),
    )
    .await
    .unwrap();
    eventually("redis children pruned", || async {
        let gone = exists::<StatefulSet>(&client, ns, "chat-redis")
            .await
            .is_none()
            && exists::<Service>(&client, ns, "chat-redis").await.is_none()
            && exists::<ConfigMap>(&client, ns, "chat-redis")
                .await
                .is_none()
            && exists::<PodDisruptionBudget>(&client, ns, "chat-redis")
                .await
                .is_none()
            && exists::<Secret>(&client, ns, "chat-redis").await.is_none();
        gone.then_some(())
    })
    .await;
    // Status is written after the pruning, by the same reconcile.
    eventually("RedisReady reason External", || async {
        let c = api.get("chat").await.ok()?;
        (condition(&c, "RedisReady")?.1 == "External").then_some(())
    })
    .await;

    // --- the pause annotation stops changes and says so
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {"switchboard.dev/paused": "true"}},
            "spec": {"worker": {"replicas": 5}}
        })),
    )
    .await
    .unwrap();
    eventually("ReconciliationPaused", || async {
        let c = api.get("chat").await.ok()?;
        (condition(&c, "ReconciliationPaused")?.0 == "True").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d: Deployment = exists(&client, ns, "chat-worker").await.unwrap();
    assert_eq!(
        d.spec.unwrap().replicas,
        Some(3),
        "paused cluster was changed"
    );
    api.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"switchboard.dev/paused": null}}})),
    )
    .await
    .unwrap();
    eventually("unpaused change applied", || async {
        let d: Deployment = exists(&client, ns, "chat-worker").await?;
        (d.spec?.replicas == Some(5)).then_some(())
    })
    .await;

    // --- the production example is accepted and builds a Redis Cluster
    let db: Secret = serde_json::from_value(json!({
        "metadata": {"name": "chat-db"},
        "stringData": {"url": "postgres://u:p@db.example:5432/switchboard"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &db).await.unwrap();
    apply_cluster(&api, &example("chatcluster-production.yaml")).await;
    eventually("production redis StatefulSet with 6 pods", || async {
        let s: StatefulSet = exists(&client, ns, "chat-prod-redis").await?;
        (s.spec?.replicas == Some(6)).then_some(())
    })
    .await;
    assert!(
        exists::<StatefulSet>(&client, ns, "chat-prod-postgres")
            .await
            .is_none()
    );
    assert!(
        exists::<ConfigMap>(&client, ns, "chat-prod-relay")
            .await
            .is_some()
    );

    // --- deleting the ChatCluster lets the garbage collector remove children
    api.delete("chat", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("children garbage-collected", || async {
        let gone = exists::<Deployment>(&client, ns, "chat-gateway")
            .await
            .is_none()
            && exists::<Secret>(&client, ns, "chat-session")
                .await
                .is_none();
        gone.then_some(())
    })
    .await;

    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_with_the_cel_message() {
    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), "default");

    let cases = [
        (
            json!({"auth": {"domain": "a"}, "gateway": {"replicas": {"min": 5, "max": 2}}}),
            "replicas.min must be less than or equal to replicas.max",
        ),
        (
            json!({"auth": {"domain": "a"}, "redis": {}}),
            "set exactly one of redis.managed and redis.external",
        ),
        (
            json!({"auth": {"domain": "a"}, "postgres": {"managed": {},
                "external": {"secretRef": {"name": "x"}}}}),
            "set exactly one of postgres.managed and postgres.external",
        ),
        (
            json!({"auth": {"domain": "a"}, "postgres": {"managed": {},
                "partitioning": {"interval": "weekly", "retentionDays": 7}}}),
            "retentionDays must be longer than one partition interval",
        ),
        (
            json!({"auth": {"domain": "a"}, "redis": {"managed": {"mode": "cluster", "shards": 2}}}),
            "shards must be at least 3 in cluster mode",
        ),
        (
            json!({"auth": {"domain": "a"}, "gateway": {"reservedChannels": ["ok:*", "bad name"]}}),
            "spec.gateway.reservedChannels[1]",
        ),
        (
            json!({"auth": {"domain": "a"}, "gateway": {"cors": {"allowedOrigins":
                ["https://app.example.com", "https://app.example.com/"]}}}),
            "each origin is scheme://host[:port] with no path or trailing slash",
        ),
    ];
    for (i, (spec, message)) in cases.into_iter().enumerate() {
        let obj: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": format!("bad-{i}")}, "spec": spec
        }))
        .unwrap();
        // Send the raw spec: a typed round trip would fill in defaults.
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(message);
        assert!(err.to_string().contains(message), "{message}: {err}");
    }

    // Shard count is immutable.
    let ok: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "shards"},
        "spec": {"auth": {"domain": "a"}, "redis": {"managed": {"mode": "cluster", "shards": 3}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ok).await.unwrap();
    let err = api
        .patch(
            "shards",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"redis": {"managed": {"shards": 4}}}})),
        )
        .await
        .expect_err("shards change refused");
    assert!(err.to_string().contains("shards is immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles() {
    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    namespace(&client, "ops").await;
    let (stop_a, addr_a, handle_a) = start_operator(&client, "op-a", "ops");
    let (stop_b, addr_b, handle_b) = start_operator(&client, "op-b", "ops");

    let leases: Api<Lease> = Api::namespaced(client.clone(), "ops");
    let holder = eventually("a lease holder", || async {
        leases
            .get_opt("switchboard-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    assert!(holder == "op-a" || holder == "op-b", "{holder}");

    // A replica that wrongly believes the Lease is free (both starting at
    // once) cannot take it from the holder: its apply conflicts, because
    // each replica applies as its own field manager.
    let other_identity = if holder == "op-a" { "op-b" } else { "op-a" };
    let stale_take = leases
        .patch(
            "switchboard-operator",
            &PatchParams::apply(&switchboard_operator::leader::field_manager(other_identity)),
            &Patch::Apply(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "spec": {"holderIdentity": other_identity, "leaseDurationSeconds": 15},
            })),
        )
        .await
        .expect_err("a second replica's take conflicts");
    assert!(
        matches!(&stale_take, kube::Error::Api(e) if e.code == 409),
        "{stale_take}"
    );

    // Each replica's /metrics says which build it is.
    let build = format!(
        "switchboard_build_info{{version=\"{}\",git_sha=\"{}\"}} 1",
        switchboard_core::telemetry::VERSION,
        switchboard_core::telemetry::git_sha()
    );
    for addr in [addr_a, addr_b] {
        let body = eventually("operator /metrics", || async {
            let body = reqwest_lite(addr).await;
            body.contains("switchboard_operator_leader").then_some(body)
        })
        .await;
        assert!(body.contains(&build), "{build} not in:\n{body}");
    }

    // Exactly one replica reports leadership.
    let leader_gauge = |addr: SocketAddr| async move {
        let body = reqwest_lite(addr).await;
        body.lines()
            .find(|l| l.starts_with("switchboard_operator_leader "))
            .map(|l| l.ends_with(" 1"))
            .unwrap_or(false)
    };
    let (a, b) = eventually("one leader gauge", || async {
        let a = leader_gauge(addr_a).await;
        let b = leader_gauge(addr_b).await;
        (a != b).then_some((a, b))
    })
    .await;
    assert_eq!(a, holder == "op-a");
    assert_eq!(b, holder == "op-b");

    // The leader's work is visible: a cluster gets children.
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), "default");
    apply_cluster(&api, &example("chatcluster-minimal.yaml")).await;
    eventually("children from the leader", || async {
        exists::<Deployment>(&client, "default", "chat-gateway").await
    })
    .await;

    // Stopping the leader hands over to the other (released, not expired).
    let mut a = Some((stop_a, handle_a));
    let mut b = Some((stop_b, handle_b));
    let (leader, other) = if holder == "op-a" {
        (a.take(), "op-b")
    } else {
        (b.take(), "op-a")
    };
    let (stop_leader, handle_leader) = leader.expect("leader handle");
    stop_leader.cancel();
    handle_leader.await.unwrap();
    eventually("the standby takes over", || async {
        let h = leases
            .get_opt("switchboard-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (h == other).then_some(())
    })
    .await;
    let (stop_other, handle_other) = a.or(b).expect("standby handle");
    stop_other.cancel();
    handle_other.await.unwrap();
}

/// One ChatCluster as the API server's Table (`kubectl get`'s view): the
/// column names and that row's cells.
async fn table_row(client: &Client, ns: &str, name: &str) -> (Vec<String>, Vec<serde_json::Value>) {
    let req = axum::http::Request::get(format!(
        "/apis/switchboard.dev/v1alpha1/namespaces/{ns}/chatclusters/{name}"
    ))
    .header(
        axum::http::header::ACCEPT,
        "application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    .body(Vec::new())
    .unwrap();
    let table: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(table["kind"], "Table", "{table}");
    let columns = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let cells = table["rows"][0]["cells"].as_array().unwrap().clone();
    (columns, cells)
}

/// Tiny HTTP GET of /metrics without another dependency.
async fn reqwest_lite(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// `spec.monitoring`: without the Prometheus Operator's CRDs the dashboard
/// ConfigMap and the worker Service are applied and `MonitoringReady` says
/// what is missing; once the CRDs exist the PodMonitor and PrometheusRule
/// follow and the condition turns true; switched off, the bundle is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_bundle_follows_the_crds() {
    use kube::api::DynamicObject;
    use switchboard_operator::build::monitoring;

    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    namespace(&client, "ops").await;
    namespace(&client, "mon").await;
    let (stop, _addr, handle) = start_operator(&client, "op-a", "ops");
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), "mon");
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "obs", "namespace": "mon"},
        "spec": {"auth": {"domain": "chat.example.com"},
                 "monitoring": {"enabled": true, "labels": {"release": "prom"}}}
    }))
    .unwrap();
    apply_cluster(&api, &cluster).await;

    // No CRDs: a false condition that names them, and Ready not held up by it.
    let (_, reason) = eventually("MonitoringReady false", || async {
        let c = api.get("obs").await.ok()?;
        condition(&c, "MonitoringReady").filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "MonitoringCRDsMissing");
    let c = api.get("obs").await.unwrap();
    let message = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "MonitoringReady"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("podmonitors, prometheusrules"),
        "{message}"
    );
    let dashboard: ConfigMap = exists(&client, "mon", "obs-dashboard")
        .await
        .expect("dashboard ConfigMap");
    assert!(owned_by(&dashboard, &c));
    assert_eq!(
        dashboard
            .labels()
            .get("grafana_dashboard")
            .map(String::as_str),
        Some("1")
    );
    let json: serde_json::Value =
        serde_json::from_str(&dashboard.data.as_ref().unwrap()[monitoring::DASHBOARD_KEY]).unwrap();
    assert_eq!(json["title"], "Switchboard mon/obs");
    let worker_svc: Service = exists(&client, "mon", "obs-worker")
        .await
        .expect("worker Service");
    assert_eq!(
        worker_svc.spec.unwrap().ports.unwrap()[0].name.as_deref(),
        Some("metrics")
    );

    // The CRDs arrive: the next reconcile (here, woken by a touch of the
    // object; otherwise the periodic one) applies the rest.
    install_monitoring_crd(&client, "PodMonitor", "podmonitors").await;
    install_monitoring_crd(&client, "PrometheusRule", "prometheusrules").await;
    api.patch(
        "obs",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": "1"}}})),
    )
    .await
    .unwrap();
    eventually("MonitoringReady true", || async {
        let c = api.get("obs").await.ok()?;
        condition(&c, "MonitoringReady").filter(|(s, _)| s == "True")
    })
    .await;
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "mon", &monitoring::pod_monitor_resource());
    let rules: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "mon",
        &monitoring::prometheus_rule_resource(),
    );
    let pm = monitors.get("obs-monitoring").await.expect("PodMonitor");
    assert!(owned_by(&pm, &c));
    assert_eq!(pm.labels().get("release").map(String::as_str), Some("prom"));
    assert_eq!(pm.data["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let rule = rules.get("obs-monitoring").await.expect("PrometheusRule");
    assert!(owned_by(&rule, &c));
    let alerts: Vec<&str> = rule.data["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    assert!(
        rule.data["spec"]["groups"][0]["rules"][0]["expr"]
            .as_str()
            .unwrap()
            .contains(r#"namespace="mon",chatcluster="obs""#)
    );

    // Switched off: the bundle goes (the worker Service stays) and so does
    // the condition.
    api.patch(
        "obs",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"monitoring": {"enabled": false}}})),
    )
    .await
    .unwrap();
    eventually("monitoring pruned", || async {
        let gone = monitors.get_opt("obs-monitoring").await.ok()?.is_none()
            && rules.get_opt("obs-monitoring").await.ok()?.is_none()
            && exists::<ConfigMap>(&client, "mon", "obs-dashboard")
                .await
                .is_none();
        gone.then_some(())
    })
    .await;
    eventually("MonitoringReady removed", || async {
        let c = api.get("obs").await.ok()?;
        condition(&c, "MonitoringReady").is_none().then_some(())
    })
    .await;
    assert!(
        exists::<Service>(&client, "mon", "obs-worker")
            .await
            .is_some()
    );

    stop.cancel();
    handle.await.unwrap();
}

/// `pod` overrides reach the pod templates through the API server (their
/// schema is the CRD's), the operator's labels and config hash survive
/// them, and the defaults hold where nothing is overridden: gateways spread
/// over zones, Redis pods one per node preferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_overrides_reach_the_pods() {
    let (_cp, client) = control_plane().await;
    install_crd(&client).await;
    namespace(&client, "ops").await;
    namespace(&client, "pods").await;
    let (stop, _addr, handle) = start_operator(&client, "op-a", "ops");
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), "pods");
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
        "metadata": {"name": "ov", "namespace": "pods"},
        "spec": {
            "auth": {"domain": "chat.example.com"},
            "gateway": {"pod": {
                "imagePullSecrets": [{"name": "regcred"}],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "chat", "effect": "NoSchedule"}],
                "priorityClassName": "chat-critical",
                "labels": {"team": "chat", "app.kubernetes.io/component": "not-ours"},
                "annotations": {"example.com/owner": "platform"}
            }},
            "postgres": {"managed": {"pod": {"nodeSelector": {"disk": "ssd"}}}}
        }
    }))
    .unwrap();
    apply_cluster(&api, &cluster).await;
    let gw: Deployment = eventually("gateway Deployment", || async {
        exists::<Deployment>(&client, "pods", "ov-gateway").await
    })
    .await;
    let template = gw.spec.unwrap().template;
    let meta = template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["team"], "chat");
    assert_eq!(labels["app.kubernetes.io/component"], "gateway", "ours win");
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["example.com/owner"], "platform");
    assert!(annotations.contains_key("switchboard.dev/config-hash"));
    let pod = template.spec.unwrap();
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
    assert_eq!(pod.tolerations.unwrap()[0].value.as_deref(), Some("chat"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("chat-critical"));
    // Not overridden: the defaults.
    let spread = pod.topology_spread_constraints.unwrap();
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());

    let redis: StatefulSet = exists(&client, "pods", "ov-redis").await.expect("redis");
    let redis_pod = redis.spec.unwrap().template.spec.unwrap();
    let term = &redis_pod
        .affinity
        .unwrap()
        .pod_anti_affinity
        .unwrap()
        .preferred_during_scheduling_ignored_during_execution
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    let pg: StatefulSet = exists(&client, "pods", "ov-postgres")
        .await
        .expect("postgres");
    assert_eq!(
        pg.spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .node_selector
            .unwrap()["disk"],
        "ssd"
    );

    // A label the API server would refuse on a pod is refused with the field
    // named (the operator's check; the CRD schema only bounds the count).
    api.patch(
        "ov",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"worker": {"pod": {"labels": {"bad key!": "x"}}}}})),
    )
    .await
    .unwrap();
    eventually("InvalidSpec", || async {
        let c = api.get("ov").await.ok()?;
        condition(&c, "Degraded").filter(|(s, r)| s == "True" && r == "InvalidSpec")
    })
    .await;

    stop.cancel();
    handle.await.unwrap();
}
