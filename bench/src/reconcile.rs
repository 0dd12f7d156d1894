//! Reconcile latency of the operator in the local control plane (testkit's
//! etcd + kube-apiserver + kube-controller-manager), the operator running in
//! this process with leader election, as in production.
//!
//! Two figures, each over `runs` ChatClusters applied one after another:
//! - **create**: from sending the apply of a new ChatCluster (the minimal
//!   example's spec) to the moment a watch sees its status with
//!   `observedGeneration: 1`. The reconciler writes status only after every
//!   child has been applied, so that instant is "all children created and
//!   status written"; the bench then checks the children really exist.
//! - **change**: from patching `spec.worker.replicas` to a watch seeing
//!   `observedGeneration: 2` (and the worker Deployment then has the new
//!   replica count).
//!
//! A watch, not polling, timestamps the status so the figures are not
//! quantized by a poll interval.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher::{self, Event};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;
use switchboard_operator::ChatCluster;
use switchboard_operator::run::{RunConfig, run as run_operator};
use switchboard_testkit::ControlPlane;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const NS: &str = "bench";
const TIMEOUT: Duration = Duration::from_secs(60);

/// When a watch first saw each (cluster, observedGeneration).
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<(String, i64), Instant>>,
    changed: Notify,
}

impl Seen {
    async fn wait(&self, name: &str, generation: i64) -> Result<Instant> {
        let key = (name.to_string(), generation);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self
                .at
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .get(&key)
            {
                return Ok(*t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{name}: observedGeneration {generation} not seen within {TIMEOUT:?}");
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

// The `reconcile` subcommand's flags.
#[derive(Args)]
pub struct ReconcileArgs {
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

pub async fn run(args: ReconcileArgs) -> Result<()> {
    let ReconcileArgs { runs } = args;
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

    // The watch that timestamps status updates.
    let seen = Arc::new(Seen::default());
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), NS);
    let watch = tokio::spawn({
        let seen = seen.clone();
        let api = api.clone();
        async move {
            let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                let objs = match ev {
                    Ok(Event::Apply(c) | Event::InitApply(c)) => vec![c],
                    _ => continue,
                };
                for c in objs {
                    let Some(g) = c.status.as_ref().and_then(|s| s.observed_generation) else {
                        continue;
                    };
                    if let Ok(mut at) = seen.at.lock() {
                        at.entry((c.name_any(), g)).or_insert(now);
                    }
                    seen.changed.notify_waiters();
                }
            }
        }
    });

    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let stop = CancellationToken::new();
    let operator = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        let cfg = RunConfig::new("bench", listen);
        async move { run_operator(client, cfg, stop).await }
    });

    // Warm-up: the first reconcile also waits for the lease and the caches.
    apply(&api, "warmup").await?;
    seen.wait("warmup", 1).await?;

    let mut create = Vec::with_capacity(runs);
    let mut change = Vec::with_capacity(runs);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for i in 0..runs {
        let name = format!("chat-{i}");
        let t0 = Instant::now();
        apply(&api, &name).await?;
        let t1 = seen.wait(&name, 1).await?;
        create.push(t1.duration_since(t0));
        check_children(&client, &name).await?;

        let t0 = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"worker": {"replicas": 3}}})),
        )
        .await?;
        let t1 = seen.wait(&name, 2).await?;
        change.push(t1.duration_since(t0));
        let worker = deployments.get(&format!("{name}-worker")).await?;
        if worker.spec.and_then(|s| s.replicas) != Some(3) {
            bail!("{name}: observedGeneration 2 but the worker Deployment was not changed");
        }
    }
    let metrics = http_get(listen, "/metrics").await.unwrap_or_default();
    stop.cancel();
    operator.await??;
    watch.abort();

    println!("| phase | runs | p50 | p95 | max |");
    println!("|---|---|---|---|---|");
    for (what, mut d) in [
        ("apply → all children created and status written", create),
        (
            "spec change → children converged and status written",
            change,
        ),
    ] {
        d.sort();
        println!(
            "| {what} | {} | {} | {} | {} |",
            d.len(),
            ms(pick(&d, 0.50)),
            ms(pick(&d, 0.95)),
            ms(d.last().copied().unwrap_or_default()),
        );
    }
    // How much of that is the reconcile itself (API calls from the operator)
    // rather than watch delivery and queueing.
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    if let (Some(sum), Some(count)) = (
        metric("switchboard_operator_reconcile_duration_seconds_sum"),
        metric("switchboard_operator_reconcile_duration_seconds_count"),
    ) && count > 0.0
    {
        println!(
            "\nreconciles: {count:.0} (including requeues and child events), mean duration {:.1} ms",
            sum / count * 1000.0
        );
    }
    Ok(())
}

/// A plain HTTP/1.1 GET (the operator's /metrics), without another dependency.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

async fn apply(api: &Api<ChatCluster>, name: &str) -> Result<()> {
    let cluster: ChatCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": name},
        "spec": {"auth": {"domain": "chat.example.com"}}
    }))?;
    api.patch(
        name,
        &PatchParams::apply("switchboard-bench").force(),
        &Patch::Apply(&cluster),
    )
    .await?;
    Ok(())
}

/// The minimal example's children, labelled with the cluster's instance.
async fn check_children(client: &kube::Client, name: &str) -> Result<()> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
    let d = Api::<Deployment>::namespaced(client.clone(), NS)
        .list(&lp)
        .await?;
    let s = Api::<Service>::namespaced(client.clone(), NS)
        .list(&lp)
        .await?;
    let c = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .list(&lp)
        .await?;
    let x = Api::<Secret>::namespaced(client.clone(), NS)
        .list(&lp)
        .await?;
    // gateway + worker; gateway, redis, postgres; gateway, redis; session (+ postgres).
    if d.items.len() < 2 || s.items.len() < 3 || c.items.len() < 2 || x.items.is_empty() {
        bail!(
            "{name}: children missing after status was written: {} deployments, {} services, {} configmaps, {} secrets",
            d.items.len(),
            s.items.len(),
            c.items.len(),
            x.items.len()
        );
    }
    Ok(())
}

fn pick(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
