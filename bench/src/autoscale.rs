//! Autoscaler reaction time in the local control plane: from the moment a
//! gateway's live connections cross the ChatCluster's target to the moment a
//! watch sees the gateway Deployment's `spec.replicas` change.
//!
//! Set-up as in `operator/tests/autoscale.rs`: testkit's control plane (no
//! scheduler, no kubelet), the operator in this process with leader election
//! and a short autoscaler sync period, a real redis-server as the cluster's
//! external Redis (Secrets `sb-redis`, `sb-postgres`), one real gateway (the
//! library, in this process) reporting as pod `chat-gateway-a`, whose Pod
//! object is registered and marked Ready through `pods/status`.
//!
//! The runs are a staircase: with `i` replicas and exactly `i × target`
//! connections (steady), after a random pause one more connection
//! authenticates: that `ready` is the crossing (t0). A Deployment watch
//! timestamps the replicas becoming `i + 1` (t1). Then `target − 1` more
//! connections make the next step's baseline. Tolerance is 0 %, so one
//! connection over the target is a crossing. Steps are at least 5.5 s apart
//! so the scale-up limit (4 pods or 100 % per 15 s) never holds one back.
//! A poller on Redis (every 5 ms) also timestamps when the gateway's report
//! first shows the new count, splitting t1 − t0 into "report" and "sync +
//! apply + watch".

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher::{self, Event};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;
use switchboard_core::broker::{BrokerConfig, ClusterRef, GatewayIdentity, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_operator::ChatCluster;
use switchboard_operator::run::{RunConfig, run as run_operator};
use switchboard_proto::auth::token::TokenSigner;
use switchboard_testkit::ControlPlane;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::{Ws, open};
use crate::drain::pick;

const NS: &str = "bench";
const CLUSTER: &str = "chat";
const DEPLOYMENT: &str = "chat-gateway";
const POD: &str = "chat-gateway-a";
const TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &[u8] = b"autoscale-bench-secret-autoscale";

/// When a watch first saw each replica count of the gateway Deployment.
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<i32, Instant>>,
    changed: Notify,
}

impl Seen {
    async fn wait(&self, replicas: i32) -> Result<Instant> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self
                .at
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(&replicas)
            {
                return Ok(*t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("replicas {replicas} not seen within {TIMEOUT:?}");
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

// The `autoscale` subcommand's flags.
#[derive(Args)]
pub struct AutoscaleArgs {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Connections per replica (the ChatCluster's target).
    #[arg(long, default_value_t = 100)]
    target: usize,
    /// The operator's autoscaler sync period.
    #[arg(long, default_value_t = 1000)]
    sync_ms: u64,
    /// The gateway's connection report interval.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
}

pub async fn run(args: AutoscaleArgs) -> Result<()> {
    let AutoscaleArgs {
        runs,
        target,
        sync_ms,
        report_ms,
    } = args;
    let (sync, report) = (
        Duration::from_millis(sync_ms),
        Duration::from_millis(report_ms),
    );
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await?
        .context("start the local control plane (see e2e/controlplane/build.sh)")?;
    let client = cp.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ChatCluster::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("switchboard-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    tokio::time::timeout(
        TIMEOUT,
        await_condition(crds, &crd.name_any(), conditions::is_crd_established()),
    )
    .await??;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let redis = Arc::new(crate::target::bench_redis()?);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for (name, url) in [
        ("sb-redis", redis.url()),
        // Nothing runs the pods: any URL will do.
        ("sb-postgres", "postgres://unused@127.0.0.1:1/unused".into()),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": {"url": url},
        }))?;
        secrets.create(&PostParams::default(), &s).await?;
    }

    let stop = CancellationToken::new();
    let operator = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        let cfg = RunConfig {
            autoscale_interval: sync,
            ..RunConfig::new("bench", TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        async move { run_operator(client, cfg, stop).await }
    });

    let max = i32::try_from(runs + 1)?;
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": CLUSTER, "namespace": NS},
        "spec": {
            "auth": {"domain": "localhost:8080"},
            "gateway": {
                "replicas": {"min": 1, "max": max},
                "autoscaling": {
                    "mode": "operator",
                    "targetConnectionsPerReplica": target,
                    "tolerancePercent": 0,
                    "scaleDownStabilizationSeconds": 600,
                },
            },
            "worker": {"replicas": 1},
            "redis": {"external": {"urlSecretRef": {"name": "sb-redis", "key": "url"}}},
            "postgres": {"external": {"secretRef": {"name": "sb-postgres", "key": "url"}}},
        },
    }))?;
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), NS);
    clusters
        .patch(
            CLUSTER,
            &PatchParams::apply("switchboard-bench").force(),
            &Patch::Apply(&cluster),
        )
        .await?;

    // The watch that timestamps replica counts.
    let seen = Arc::new(Seen::default());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let watch = tokio::spawn({
        let seen = seen.clone();
        let api = deployments.clone();
        async move {
            let cfg = watcher::Config::default().fields(&format!("metadata.name={DEPLOYMENT}"));
            let mut events = watcher::watcher(api, cfg).boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                let d = match ev {
                    Ok(Event::Apply(d) | Event::InitApply(d)) => d,
                    _ => continue,
                };
                if let Some(n) = d.spec.and_then(|s| s.replicas)
                    && let Ok(mut at) = seen.at.lock()
                {
                    at.entry(n).or_insert(now);
                }
                seen.changed.notify_waiters();
            }
        }
    });
    seen.wait(1).await?;

    // The gateway's Pod object, Ready. The namespace's default
    // ServiceAccount appears shortly after the namespace.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": POD, "labels": {
            "app.kubernetes.io/name": "switchboard",
            "app.kubernetes.io/instance": CLUSTER,
            "app.kubernetes.io/component": "gateway",
        }},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "gateway", "image": "switchboard:bench"}],
        },
    }))?;
    let deadline = Instant::now() + TIMEOUT;
    while let Err(e) = pods.create(&PostParams::default(), &pod).await {
        if Instant::now() > deadline {
            bail!("create pod {POD}: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pods.patch_status(
        POD,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }})),
    )
    .await?;

    let cref = ClusterRef::new(NS, CLUSTER)?;
    let key = cref.redis_key();
    let gw = Gateway::start(
        GatewayConfig {
            identity: Some(GatewayIdentity::new(cref, POD)?),
            report_interval: report,
            token_secret: SECRET.to_vec(),
            ..GatewayConfig::default()
        },
        Arc::new(RedisBroker::connect(&redis.url(), BrokerConfig::default()).await?),
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    let addr = gw.local_addr().to_string();
    let signer = TokenSigner::new(SECRET);
    // Held connections must keep reading: the gateway pings idle sockets and
    // closes those that never answer (an unread socket answers no ping), which
    // once made a run stall at step 10, ~60 s in, with most connections gone.
    let holding = CancellationToken::new();
    let hold = |sockets: Vec<Ws>| {
        for mut ws in sockets {
            let holding = holding.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = holding.cancelled() => {}
                    _ = async { while let Some(Ok(_)) = ws.next().await {} } => {}
                }
            });
        }
    };
    let connect = |k: usize| {
        let addr = addr.clone();
        let tokens = crate::client::random_tokens(&signer, k);
        async move {
            let mut out = Vec::with_capacity(tokens.len());
            let mut s = futures_util::stream::iter(tokens.into_iter().map(|t| {
                let addr = addr.clone();
                async move { open(&addr, &t).await }
            }))
            .buffer_unordered(32);
            while let Some(ws) = s.next().await {
                out.push(ws?);
            }
            anyhow::Ok(out)
        }
    };
    hold(connect(target).await?);
    // The autoscaler has taken replicas over and seen the steady load.
    tokio::time::sleep(report + sync + Duration::from_secs(2)).await;
    if deployments
        .get(DEPLOYMENT)
        .await?
        .spec
        .and_then(|s| s.replicas)
        != Some(1)
    {
        bail!("the Deployment is not at 1 replica with {target} connections");
    }

    let mut total = Vec::with_capacity(runs);
    let mut to_report = Vec::with_capacity(runs);
    let mut after_report = Vec::with_capacity(runs);
    let mut last_scale = Instant::now();
    for i in 1..=runs {
        // At least 5.5 s since the last scale-up (see the module docs), then
        // a random phase against the report and sync ticks: the scale-up
        // itself happened on a sync tick, so without it every crossing
        // would land at the same point of both cycles.
        let gap = Duration::from_millis(5500).saturating_sub(last_scale.elapsed());
        let phase = report.max(sync).mul_f64(rand::random::<f64>());
        tokio::time::sleep(gap + phase).await;
        let count = i * target + 1;
        let crossing = connect(1).await?;
        let t0 = Instant::now();
        // When the report in Redis first shows the new count.
        let poll = tokio::task::spawn_blocking({
            let redis = redis.clone();
            let key = key.clone();
            move || -> Option<Instant> {
                let until = Instant::now() + TIMEOUT;
                while Instant::now() < until {
                    if let Ok(v) = redis.command(&["HGET", &key, POD])
                        && v.split(':')
                            .next()
                            .and_then(|c| c.trim().parse::<usize>().ok())
                            .is_some_and(|c| c >= count)
                    {
                        return Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                None
            }
        });
        let want = i32::try_from(i + 1)?;
        let t1 = match seen.wait(want).await {
            Ok(t) => t,
            Err(e) => {
                // Say what the autoscaler thought, not only that it did not act.
                let status = clusters.get(CLUSTER).await?.status.and_then(|s| s.gateway);
                bail!("{e}; autoscaler status: {status:?}");
            }
        };
        let tr = poll
            .await?
            .context("the report never showed the crossing")?;
        last_scale = t1;
        total.push(t1.saturating_duration_since(t0));
        to_report.push(tr.saturating_duration_since(t0));
        after_report.push(t1.saturating_duration_since(tr));
        eprintln!(
            "run {i}: {count} connections (target {target} × {i}) → replicas {want} after {:?} (report after {:?})",
            t1.saturating_duration_since(t0),
            tr.saturating_duration_since(t0)
        );
        hold(crossing);
        hold(connect(target - 1).await?);
    }

    println!(
        "sync period {} ms, report interval {} ms, target {target} connections per replica, tolerance 0 %\n",
        sync.as_millis(),
        report.as_millis()
    );
    println!("| interval | runs | p50 | p95 | max | mean |");
    println!("|---|---|---|---|---|---|");
    for (what, mut d) in [
        ("crossing → replicas changed (watch)", total),
        ("crossing → report in Redis", to_report),
        ("report in Redis → replicas changed", after_report),
    ] {
        d.sort();
        let mean = d.iter().sum::<Duration>() / u32::try_from(d.len().max(1))?;
        println!(
            "| {what} | {} | {} | {} | {} | {} |",
            d.len(),
            ms(pick(&d, 0.50)),
            ms(pick(&d, 0.95)),
            ms(d.last().copied().unwrap_or_default()),
            ms(mean),
        );
    }

    holding.cancel();
    gw.shutdown().await;
    stop.cancel();
    operator.await??;
    watch.abort();
    drop(cp);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
