//! The Helm chart installed for real into the local control plane, and the
//! `switchboard-operator` binary run with exactly what the chart gives it:
//! the container's args and env from the installed Deployment, and the
//! chart's ServiceAccount token. So this proves the chart installs, its
//! least-privilege RBAC is enough for the operator to do all of its work (and
//! no more), and the examples pass the API server's validation
//! (`kubectl apply --dry-run=server -f examples/`). What the operator's
//! ServiceAccount may not do is checked with `kubectl auth can-i --as`
//! (SubjectAccessReviews): by default it reaches one namespace, and in no
//! mode can it list or watch Secrets. The CRD is the chart's template: an
//! upgrade from a chart with an older CRD updates it in place, and
//! `helm uninstall` keeps it.
//!
//! Needs helm and kubectl: `scripts/check-chart` fetches both into
//! `~/.cache/switchboard/helm` (or set `SWITCHBOARD_HELM` / `SWITCHBOARD_KUBECTL`).
//!
//! `cargo test -p switchboard-operator --features kube --test chart`

#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_operator::ChatCluster;
use switchboard_testkit::ControlPlane;

const CHART: &str = "charts/switchboard-operator";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// helm or kubectl: `$SWITCHBOARD_<NAME>`, else scripts/check-chart's cache.
fn tool(name: &str) -> PathBuf {
    let var = format!("SWITCHBOARD_{}", name.to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let p = Path::new(&home).join(".cache/switchboard/helm").join(name);
    assert!(
        p.is_file(),
        "{name} not found at {}: run scripts/check-chart (it fetches helm and kubectl) or set {var}",
        p.display()
    );
    p
}

/// Runs a CLI tool against the control plane; panics with its output on failure.
fn run_tool(name: &str, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(tool(name))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
        .current_dir(workspace())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl auth can-i VERB RESOURCE` as the ServiceAccount `ns/sa`
/// (impersonated by the admin; the API server's SubjectAccessReview).
/// `ns` `None`: across all namespaces.
fn can_i(
    kubeconfig: &Path,
    sa: (&str, &str),
    verb: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let mut args = vec![
        "auth".to_string(),
        "can-i".into(),
        verb.into(),
        resource.into(),
        format!("--as=system:serviceaccount:{}:{}", sa.0, sa.1),
    ];
    match ns {
        Some(ns) => args.extend(["-n".to_string(), ns.to_string()]),
        None => args.push("--all-namespaces".into()),
    }
    let out = Command::new(tool("kubectl"))
        .args(&args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts each `(verb, resource, namespace, allowed)` for the
/// ServiceAccount, listing every mismatch at once.
fn assert_reach(kubeconfig: &Path, sa: (&str, &str), table: &[(&str, &str, Option<&str>, bool)]) {
    let wrong: Vec<String> = table
        .iter()
        .filter(|(verb, res, ns, want)| can_i(kubeconfig, sa, verb, res, *ns) != *want)
        .map(|(verb, res, ns, want)| {
            format!(
                "{verb} {res} in {}: expected {}",
                ns.unwrap_or("all namespaces"),
                if *want { "allowed" } else { "refused" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}/{}:\n{}", sa.0, sa.1, wrong.join("\n"));
}

/// The operator process, killed on drop; its log is printed if the test fails.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- operator log ({}) ---\n{log}", self.log.display());
        }
    }
}

/// Starts the operator binary as the chart's Deployment would: its
/// container's args and env (downward-API fields resolved as the kubelet
/// would), authenticated as the chart's ServiceAccount.
async fn start_as_chart_pod(
    cp: &ControlPlane,
    client: &Client,
    release_ns: &str,
    deployment: &str,
    work: &Path,
) -> Operator {
    let deploy: Deployment = Api::namespaced(client.clone(), release_ns)
        .get(deployment)
        .await
        .unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let sa = pod
        .service_account_name
        .clone()
        .expect("serviceAccountName");

    // A short-lived token for the chart's ServiceAccount (TokenRequest, as
    // the kubelet's projected volume would get).
    let tr: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), release_ns)
        .create_token_request(&sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = work.join(format!("{deployment}.kubeconfig"));
    std::fs::write(&kubeconfig, cp.kubeconfig_yaml_for(&token)).unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.starts_with("--listen=") {
                format!("--listen=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    let log = work.join(format!("{deployment}.log"));
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"));
    cmd.args(&args)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for e in container.env.clone().unwrap_or_default() {
        let value = match (e.value, e.value_from.and_then(|v| v.field_ref)) {
            (Some(v), _) => v,
            (None, Some(f)) if f.field_path == "metadata.name" => format!("{deployment}-0"),
            (None, Some(f)) if f.field_path == "metadata.namespace" => release_ns.into(),
            (None, other) => panic!("env {} from {other:?} not resolved by the test", e.name),
        };
        cmd.env(e.name, value);
    }
    let child = cmd.spawn().unwrap();
    let op = Operator { child, log };
    // Healthy = started, CRD found, serving /healthz.
    eventually("operator /healthz", || async {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        s.ok().map(|_| ())
    })
    .await;
    op
}

async fn wait_for_children(client: &Client, ns: &str, name: &str) {
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{ns}/{name} reconciled with status"), || async {
        let c = api.get(name).await.ok()?;
        (c.status?.observed_generation == Some(1)).then_some(())
    })
    .await;
    for (kind, child) in [
        ("Deployment", format!("{name}-gateway")),
        ("Deployment", format!("{name}-worker")),
        ("ConfigMap", format!("{name}-gateway")),
        ("Secret", format!("{name}-session")),
    ] {
        let found = match kind {
            "Deployment" => Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&child)
                .await
                .unwrap()
                .is_some(),
            "ConfigMap" => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&child)
                .await
                .unwrap()
                .is_some(),
            _ => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&child)
                .await
                .unwrap()
                .is_some(),
        };
        assert!(found, "{kind} {ns}/{child}");
    }
}

async fn apply_minimal(client: &Client, ns: &str) {
    let text =
        std::fs::read_to_string(workspace().join("examples/chatcluster-minimal.yaml")).unwrap();
    let cluster: ChatCluster = serde_norway::from_str(&text).unwrap();
    Api::<ChatCluster>::namespaced(client.clone(), ns)
        .patch(
            &cluster.name_any(),
            &PatchParams::apply("switchboard-tests").force(),
            &Patch::Apply(&cluster),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_installs_and_its_rbac_is_enough_for_the_operator() {
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap()
        .expect("local control plane");
    let client = cp.client().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin.kubeconfig");
    cp.write_kubeconfig(&admin).unwrap();

    // --- helm install with the default values of an older chart, whose CRD
    // had no Reason column: the operator watches its release namespace only
    // (a Role there), the CRD is one of the chart's templates.
    let old_chart = work.path().join("old-chart");
    copy_dir(&workspace().join(CHART), &old_chart);
    let crd_template = old_chart.join("templates/crd-chatcluster.yaml");
    let text = std::fs::read_to_string(&crd_template).unwrap();
    // The column's four lines: `- description`, `jsonPath`, `name`, `type`.
    let mut lines: Vec<&str> = text.lines().collect();
    let name = lines
        .iter()
        .position(|l| l.trim() == "name: Reason")
        .expect("Reason column in the chart's CRD");
    assert!(lines[name - 2].trim_start().starts_with("- description:"));
    lines.drain(name - 2..=name + 1);
    std::fs::write(&crd_template, lines.join("\n") + "\n").unwrap();
    let notes = run_tool(
        "helm",
        &admin,
        &[
            "install",
            "sb",
            old_chart.to_str().unwrap(),
            "--namespace",
            "switchboard-system",
            "--create-namespace",
        ],
    );
    // NOTES.txt: what to run next, in the watched namespace.
    assert!(
        notes.contains("kubectl -n switchboard-system get chatclusters"),
        "{notes}"
    );
    assert!(
        notes.contains("rollout status deployment/sb-switchboard-operator"),
        "{notes}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = || async {
        let crd = crds.get_opt("chatclusters.switchboard.dev").await.ok()??;
        let established = crd
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(crd)
    };
    let columns = |crd: &CustomResourceDefinition| -> Vec<String> {
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect()
    };
    let old_crd = eventually("CRD established", established).await;
    assert!(!columns(&old_crd).contains(&"Reason".to_string()));
    assert_eq!(
        old_crd
            .annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );

    // --- helm upgrade to this chart updates the CRD in place (same object,
    // new schema): CRDs in templates/, not crds/, which Helm never upgrades.
    run_tool(
        "helm",
        &admin,
        &["upgrade", "sb", CHART, "--namespace", "switchboard-system"],
    );
    let crd = eventually("CRD upgraded with the Reason column", || async {
        let crd = established().await?;
        columns(&crd).contains(&"Reason".to_string()).then_some(crd)
    })
    .await;
    assert_eq!(
        crd.uid(),
        old_crd.uid(),
        "the CRD was recreated, not updated"
    );
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["switchboard".to_string()])
    );
    let status = run_tool(
        "helm",
        &admin,
        &["status", "sb", "-n", "switchboard-system"],
    );
    assert!(status.contains("STATUS: deployed"), "{status}");
    let deploy: Deployment = Api::namespaced(client.clone(), "switchboard-system")
        .get("sb-switchboard-operator")
        .await
        .unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(2));
    // Two replicas: a PodDisruptionBudget keeps one through drains.
    let pdb: PodDisruptionBudget = Api::namespaced(client.clone(), "switchboard-system")
        .get("sb-switchboard-operator")
        .await
        .unwrap();
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(pdb_spec.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb_spec.selector.unwrap().match_labels,
        deploy.spec.as_ref().unwrap().selector.match_labels
    );
    // Restricted, with no fixed UID (OpenShift assigns its own).
    let pod_spec = deploy
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let pod_sc = pod_spec.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.run_as_user, None);
    let sc = pod_spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // Unknown values are refused by the chart's schema, before anything is applied.
    let typo = Command::new(tool("helm"))
        .args([
            "upgrade",
            "sb",
            CHART,
            "-n",
            "switchboard-system",
            "--set",
            "replicaCont=3",
        ])
        .env("KUBECONFIG", &admin)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("'replicaCont' not allowed"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );

    // --- the examples pass the API server's validation (CEL included)
    let dry = run_tool(
        "kubectl",
        &admin,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            "default",
            "-f",
            "examples/",
        ],
    );
    assert!(
        dry.contains("chatcluster.switchboard.dev/chat created (server dry run)"),
        "{dry}"
    );
    assert!(dry.contains("chat-prod created (server dry run)"), "{dry}");
    assert!(
        dry.contains("ingress.networking.k8s.io/chat-prod created (server dry run)"),
        "{dry}"
    );

    // The Prometheus Operator's kinds, as on a cluster that runs it: the
    // operator applies a monitoring bundle only then, and kubectl (below)
    // resolves a resource through discovery to be asked about it.
    for (kind, plural) in [
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
        ("ServiceMonitor", "servicemonitors"),
    ] {
        install_monitoring_crd(&client, kind, plural).await;
    }

    // --- the operator, as the chart runs it, reconciles a ChatCluster in
    // its namespace
    {
        let _op = start_as_chart_pod(
            &cp,
            &client,
            "switchboard-system",
            "sb-switchboard-operator",
            work.path(),
        )
        .await;
        apply_minimal(&client, "switchboard-system").await;
        wait_for_children(&client, "switchboard-system", "chat").await;
        // Leader election through the Role in the release namespace.
        let lease: k8s_openapi::api::coordination::v1::Lease =
            Api::namespaced(client.clone(), "switchboard-system")
                .get("sb-switchboard-operator")
                .await
                .unwrap();
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some("sb-switchboard-operator-0")
        );
        // The monitoring bundle is within the chart's RBAC: switched on, the
        // PodMonitor and PrometheusRule are applied and MonitoringReady
        // turns true (a Forbidden would set Degraded instead).
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), "switchboard-system");
        clusters
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"monitoring": {"enabled": true}}})),
            )
            .await
            .unwrap();
        eventually("MonitoringReady True under the chart's RBAC", || async {
            let c = clusters.get("chat").await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "MonitoringReady" && c.status == "True")
                .then_some(())
        })
        .await;
        let rules: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            "switchboard-system",
            &switchboard_operator::build::monitoring::prometheus_rule_resource(),
        );
        assert!(rules.get_opt("chat-monitoring").await.unwrap().is_some());
    }

    // --- least privilege, by SubjectAccessReview: the default install reaches
    // its namespace only, and no Secret it was not told the name of.
    namespace(&client, "apps").await;
    let sa = ("switchboard-system", "sb-switchboard-operator");
    let home = Some("switchboard-system");
    let apps = Some("apps");
    assert_reach(
        &admin,
        sa,
        &[
            // Secrets: by name in its namespace; never listed or watched,
            // never rewritten, nothing elsewhere.
            ("get", "secrets", home, true),
            ("create", "secrets", home, true),
            ("list", "secrets", home, false),
            ("watch", "secrets", home, false),
            ("patch", "secrets", home, false),
            ("update", "secrets", home, false),
            ("get", "secrets", apps, false),
            ("list", "secrets", None, false),
            // Pods: the autoscaler's deletion costs, in its namespace only.
            ("patch", "pods", home, true),
            ("patch", "pods", apps, false),
            ("delete", "pods", home, false),
            ("create", "pods", home, false),
            ("create", "pods/exec", home, false),
            // Children: in its namespace only.
            ("patch", "deployments.apps", home, true),
            ("patch", "deployments.apps", apps, false),
            ("create", "networkpolicies.networking.k8s.io", home, true),
            ("create", "networkpolicies.networking.k8s.io", apps, false),
            ("list", "chatclusters.switchboard.dev", apps, false),
            ("list", "chatclusters.switchboard.dev", None, false),
            // The monitoring bundle: applied and pruned, never watched.
            ("patch", "podmonitors.monitoring.coreos.com", home, true),
            (
                "delete",
                "prometheusrules.monitoring.coreos.com",
                home,
                true,
            ),
            (
                "watch",
                "prometheusrules.monitoring.coreos.com",
                home,
                false,
            ),
            ("patch", "podmonitors.monitoring.coreos.com", apps, false),
            (
                "patch",
                "servicemonitors.monitoring.coreos.com",
                home,
                false,
            ),
            // Nothing cluster-scoped.
            ("list", "nodes", None, false),
            ("list", "namespaces", None, false),
            (
                "list",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
                false,
            ),
            (
                "create",
                "clusterroles.rbac.authorization.k8s.io",
                None,
                false,
            ),
        ],
    );
    // The same through the API with the ServiceAccount's own token.
    let sa_client = {
        let tr: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
        let token = Api::<ServiceAccount>::namespaced(client.clone(), "switchboard-system")
            .create_token_request("sb-switchboard-operator", &PostParams::default(), &tr)
            .await
            .unwrap()
            .status
            .unwrap()
            .token;
        cp.client_with_token(&token).await.unwrap()
    };
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403);
    // Pods may be listed and patched (the autoscaler), never deleted.
    assert!(forbidden(
        Api::<Pod>::namespaced(sa_client.clone(), "apps")
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Node>::all(sa_client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<CustomResourceDefinition>::all(sa_client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa_client.clone(), "switchboard-system")
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa_client.clone(), "switchboard-system")
            .patch(
                "chat-session",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {}})),
            )
            .await
            .map(|_| ())
    ));

    // --- a second release, opted in to every namespace (a ClusterRole):
    // it reconciles a ChatCluster elsewhere, and still lists no Secret and
    // deletes no pod anywhere.
    namespace(&client, "team").await;
    run_tool(
        "helm",
        &admin,
        &[
            "install",
            "team-sb",
            CHART,
            "--namespace",
            "team-ops",
            "--create-namespace",
            // The first release owns the CRD.
            "--set",
            "crds.install=false",
            "--set",
            "clusterWide=true",
            "--set",
            "replicaCount=1",
        ],
    );
    assert_reach(
        &admin,
        ("team-ops", "team-sb-switchboard-operator"),
        &[
            ("get", "secrets", Some("team"), true),
            ("list", "secrets", Some("team"), false),
            ("list", "secrets", None, false),
            ("watch", "secrets", None, false),
            ("patch", "secrets", Some("team"), false),
            ("patch", "pods", Some("team"), true),
            ("delete", "pods", Some("team"), false),
            ("list", "nodes", None, false),
        ],
    );
    // watchNamespace and clusterWide together are refused at install.
    let both = Command::new(tool("helm"))
        .args([
            "template",
            "x",
            CHART,
            "--set",
            "clusterWide=true",
            "--set",
            "watchNamespace=a",
        ])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("not both"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    {
        let _op = start_as_chart_pod(
            &cp,
            &client,
            "team-ops",
            "team-sb-switchboard-operator",
            work.path(),
        )
        .await;
        apply_minimal(&client, "team").await;
        wait_for_children(&client, "team", "chat").await;

        // An invalid spec becomes a Warning Event (events.k8s.io create).
        let bad: ChatCluster = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "bad"},
            "spec": {"auth": {"domain": "https://chat.example.com"}}
        }))
        .unwrap();
        Api::<ChatCluster>::namespaced(client.clone(), "team")
            .create(&PostParams::default(), &bad)
            .await
            .unwrap();
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), "team");
        let note = eventually("InvalidSpec warning event", || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let about_bad = e.regarding.as_ref()?.name.as_deref() == Some("bad");
                (about_bad
                    && e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("InvalidSpec"))
                .then_some(e.note.unwrap_or_default())
            })
        })
        .await;
        assert!(note.contains("auth.domain"), "{note}");
    }

    // --- helm uninstall removes what it installed; the CRD stays
    // (`helm.sh/resource-policy: keep`), and so do the ChatClusters.
    run_tool("helm", &admin, &["uninstall", "team-sb", "-n", "team-ops"]);
    run_tool(
        "helm",
        &admin,
        &["uninstall", "sb", "-n", "switchboard-system"],
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), "switchboard-system")
            .get_opt("sb-switchboard-operator")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        crds.get_opt("chatclusters.switchboard.dev")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<ChatCluster>::namespaced(client.clone(), "team")
            .get_opt("chat")
            .await
            .unwrap()
            .is_some()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
