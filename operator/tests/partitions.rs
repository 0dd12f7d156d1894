//! Partition maintenance driven by the operator: a local control plane, a
//! real PostgreSQL as the ChatCluster's external database, the operator in
//! this process with a one-second schedule and an injected clock that the
//! test moves forward by days.
//!
//! `cargo test -p switchboard-operator --features kube --test partitions`

#![cfg(feature = "kube")]
// Helpers outside #[test] fns; a failed set-up should panic loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_core::store::partitions;
use switchboard_operator::ChatCluster;
use switchboard_operator::partitions::{FIELD_MANAGER, PartitionsConfig};
use switchboard_operator::run::{RunConfig, run};
use switchboard_testkit::Postgres;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const NS: &str = "apps";
const CLUSTER: &str = "chat";
/// The injected clock's day zero: 2026-03-10 12:00 UTC.
const BASE_UNIX: i64 = 1_773_144_000;

async fn set_secret(client: &Client, name: &str, url: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let s = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "data": {"url": base64_encode(url)},
    });
    api.patch(
        name,
        &PatchParams::apply("switchboard-tests").force(),
        &Patch::Apply(&s),
    )
    .await
    .expect("secret");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn cluster() -> ChatCluster {
    serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": CLUSTER, "namespace": NS},
        "spec": {
            "auth": {"domain": "localhost:8080"},
            "gateway": {"replicas": {"min": 1, "max": 1}, "autoscaling": {"mode": "disabled"}},
            "worker": {"replicas": 1},
            "redis": {"external": {"urlSecretRef": {"name": "sb-redis", "key": "url"}}},
            "postgres": {
                "external": {"secretRef": {"name": "sb-postgres", "key": "url"}},
                "partitioning": {"interval": "daily", "premake": 3, "retentionDays": 5},
            },
        },
    }))
    .unwrap()
}

fn condition(c: &ChatCluster, t: &str) -> Option<Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == t)
        .cloned()
}

fn range(c: &ChatCluster) -> (Option<String>, Option<String>) {
    let pg = c.status.as_ref().and_then(|s| s.postgres.clone());
    (
        pg.as_ref().and_then(|p| p.oldest_partition.clone()),
        pg.and_then(|p| p.newest_partition),
    )
}

async fn names(pool: &sqlx::PgPool) -> Vec<String> {
    partitions::list(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Waits until the status names `oldest..newest` with PartitionsReady True.
async fn wait_range(api: &Api<ChatCluster>, oldest: &str, newest: &str) -> ChatCluster {
    let want = (Some(oldest.to_string()), Some(newest.to_string()));
    eventually(&format!("status range {oldest}..{newest}"), || async {
        let c = api.get(CLUSTER).await.ok()?;
        let ready = condition(&c, "PartitionsReady")?;
        (range(&c) == want && ready.status == "True").then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_maintains_partitions_on_its_schedule() {
    let cp = tokio::task::spawn_blocking(switchboard_testkit::ControlPlane::start)
        .await
        .unwrap()
        .expect("local control plane");
    let client = cp.client().await.expect("client");
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .expect("postgres");
    install_crd(&client).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .unwrap();
    set_secret(&client, "sb-postgres", &pg.url()).await;
    // Nothing connects to Redis: autoscaling is disabled.
    set_secret(&client, "sb-redis", "redis://127.0.0.1:1").await;

    let days = Arc::new(AtomicI64::new(0));
    let now = {
        let days = days.clone();
        Arc::new(move || {
            OffsetDateTime::from_unix_timestamp(BASE_UNIX).unwrap()
                + time::Duration::days(days.load(Ordering::SeqCst))
        })
    };
    let stop = CancellationToken::new();
    let metrics_addr = free_addr();
    let cfg = RunConfig {
        partitions: PartitionsConfig {
            interval: Duration::from_secs(1),
            now,
        },
        ..RunConfig::new("op-partitions", metrics_addr)
    };
    let operator = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        async move { run(client, cfg, stop).await.expect("operator runs") }
    });

    let api: Api<ChatCluster> = Api::namespaced(client.clone(), NS);
    api.patch(
        CLUSTER,
        &PatchParams::apply("switchboard-tests").force(),
        &Patch::Apply(&cluster()),
    )
    .await
    .expect("apply ChatCluster");

    // --- at start: migrations applied, today + 3 premade.
    let c = wait_range(&api, "messages_p20260310", "messages_p20260313").await;
    let ready = condition(&c, "PartitionsReady").unwrap();
    assert_eq!(ready.reason, "PartitionsMaintained");
    // The alert's gauge follows the condition (set with the same verdict).
    let gauge = |v: u8| {
        format!(
            "switchboard_operator_partitions_ready{{cluster_namespace=\"{NS}\",chatcluster=\"{CLUSTER}\"}} {v}\n"
        )
    };
    let text = scrape(metrics_addr).await;
    assert!(text.contains(&gauge(1)), "{text}");
    assert!(
        ready
            .message
            .contains("messages_p20260310 to messages_p20260313"),
        "{}",
        ready.message
    );
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    assert_eq!(
        names(&pool).await,
        [
            "messages_p20260310",
            "messages_p20260311",
            "messages_p20260312",
            "messages_p20260313"
        ]
    );

    // --- the reconciler's status applies leave the partition fields alone:
    // both managers' conditions are there, side by side, a while later.
    let c = eventually("reconciler and partition conditions together", || async {
        let c = api.get(CLUSTER).await.ok()?;
        (condition(&c, "GatewayReady").is_some() && condition(&c, "PartitionsReady").is_some())
            .then_some(c)
    })
    .await;
    let mf = c.metadata.managed_fields.clone().unwrap_or_default();
    let ours = mf
        .iter()
        .find(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER)
                && m.subresource.as_deref() == Some("status")
        })
        .expect("status fields owned by switchboard-partitions");
    let fields = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(fields.contains("f:oldestPartition"), "{fields}");
    assert!(
        fields.contains(r#"k:{\"type\":\"PartitionsReady\"}"#),
        "{fields}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = api.get(CLUSTER).await.unwrap();
    assert_eq!(
        range(&c),
        (
            Some("messages_p20260310".into()),
            Some("messages_p20260313".into())
        )
    );
    assert_eq!(condition(&c, "PartitionsReady").unwrap().status, "True");

    // --- a week later (2026-03-17 12:00; retention 5 days → cutoff
    // 2026-03-12 12:00): 0310 and 0311 are dropped, 0317..0320 premade.
    days.store(7, Ordering::SeqCst);
    wait_range(&api, "messages_p20260312", "messages_p20260320").await;
    assert_eq!(
        names(&pool).await,
        [
            "messages_p20260312",
            "messages_p20260313",
            "messages_p20260317",
            "messages_p20260318",
            "messages_p20260319",
            "messages_p20260320"
        ]
    );
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    eventually("a PartitionsMaintained event", || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PartitionsMaintained")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("messages_p20260310"))
            })
            .then_some(())
    })
    .await;

    // --- PostgreSQL unreachable: PartitionsReady False, one Warning Event,
    // the last known range kept.
    set_secret(
        &client,
        "sb-postgres",
        "postgres://postgres@127.0.0.1:1/postgres",
    )
    .await;
    let c = eventually("PartitionsReady False", || async {
        let c = api.get(CLUSTER).await.ok()?;
        let cond = condition(&c, "PartitionsReady")?;
        (cond.status == "False").then_some(c)
    })
    .await;
    let cond = condition(&c, "PartitionsReady").unwrap();
    assert_eq!(cond.reason, "PartitionsDatabaseUnavailable", "{cond:?}");
    let text = scrape(metrics_addr).await;
    assert!(text.contains(&gauge(0)), "{text}");
    assert!(!cond.message.contains("postgres://"), "{}", cond.message);
    assert_eq!(
        range(&c),
        (
            Some("messages_p20260312".into()),
            Some("messages_p20260320".into())
        )
    );
    let warning = |e: &Event| {
        e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("PartitionsDatabaseUnavailable")
    };
    eventually("a Warning Event", || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        l.items.iter().any(warning).then_some(())
    })
    .await;
    // Retries (every second here) do not publish the same error again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let l = events.list(&ListParams::default()).await.unwrap();
    let warnings: Vec<&Event> = l.items.iter().filter(|e| warning(e)).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].series.is_none(),
        "published more than once: {:?}",
        warnings[0].series
    );

    // --- back: True again.
    set_secret(&client, "sb-postgres", &pg.url()).await;
    wait_range(&api, "messages_p20260312", "messages_p20260320").await;
    eventually("partitions_ready 1 again", || async {
        scrape(metrics_addr).await.contains(&gauge(1)).then_some(())
    })
    .await;

    // --- the cluster deleted: its series goes with it (no alert on a
    // cluster that no longer exists).
    api.delete(CLUSTER, &Default::default()).await.unwrap();
    eventually("partitions_ready series removed", || async {
        let text = scrape(metrics_addr).await;
        (text.contains("# EOF") && !text.contains("switchboard_operator_partitions_ready{"))
            .then_some(())
    })
    .await;

    stop.cancel();
    tokio::time::timeout(WAIT, operator)
        .await
        .expect("operator stops")
        .unwrap();
    drop(cp);
}
