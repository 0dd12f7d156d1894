//! A real, local Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager built from pinned Go modules by
//! `e2e/controlplane/build.sh`, started on free ports in a temp dir. There is
//! no kubelet, so pods are created but never run; everything else (RBAC,
//! admission, server-side apply, garbage collection, namespace deletion,
//! service accounts, Deployments → ReplicaSets → Pods) is the real thing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_testkit::TestkitError> {
//! use switchboard_testkit::ControlPlane;
//! // One per test binary, started on first use and cleaned up at exit:
//! let cp = ControlPlane::shared()?;
//! let client = cp.client().await?; // a fresh kube::Client for this runtime
//! # Ok(()) }
//! ```
//!
//! Binaries: `SWITCHBOARD_K8S_BIN_DIR`, else `e2e/controlplane/build.sh` (a
//! cold build takes ~10 min once; later runs reuse the cache).

mod binaries;
pub(crate) mod pki;
pub(crate) mod probe;
pub(crate) mod process;

pub use binaries::{BIN_DIR_ENV, bin_dir, build_script};

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::ClientConfig;
use tempfile::TempDir;

use crate::{TestkitError, free_port, io};
use pki::Pki;
use process::{Component, Reaper};

/// The controllers started by default: what Switchboard's operator and its
/// tests rely on (ownership GC, namespace deletion, service accounts and their
/// tokens, `kube-root-ca.crt`, aggregated ClusterRoles, workloads).
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "job-controller",
    "disruption-controller",
];

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// kube-controller-manager `--controllers` (names as in its `--help`).
    pub controllers: Vec<String>,
    /// More kube-apiserver flags, e.g. `--feature-gates=...`.
    pub extra_apiserver_args: Vec<String>,
    /// More kube-controller-manager flags.
    pub extra_controller_manager_args: Vec<String>,
    /// For the whole start-up (etcd, apiserver, controller-manager).
    pub ready_timeout: Duration,
    /// An address of this machine that pods can reach (a node's InternalIP).
    /// With it the API server listens on every address (clients here keep
    /// using 127.0.0.1), advertises this one as the `kubernetes` Service's
    /// endpoint and has it in its certificate: what in-cluster clients (an
    /// operator in a pod) connect to. Without it the API server is
    /// loopback-only and the `kubernetes` Service has no endpoints.
    pub pod_reachable_address: Option<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            controllers: DEFAULT_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            extra_apiserver_args: vec![],
            extra_controller_manager_args: vec![],
            ready_timeout: Duration::from_secs(120),
            pod_reachable_address: None,
        }
    }
}

/// A running control plane. Dropping it kills every process (with anything
/// they started) and removes its temp dir; so does the death of the process
/// that started it (see [`ControlPlane::shared`]).
pub struct ControlPlane {
    dir: TempDir,
    port: u16,
    admin_token: String,
    ca_pem: String,
    kubeconfig: PathBuf,
    tls: Arc<ClientConfig>,
    ca_issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    components: Vec<Component>,
    reaper: Reaper,
}

/// The user every [`ControlPlane::token`] authenticates as (group `system:masters`).
pub const ADMIN_USER: &str = "switchboard-admin";
const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";

impl ControlPlane {
    /// Start with [`ControlPlaneOptions::default`]. Blocks until the API
    /// server is ready and the controller-manager has created the `default`
    /// ServiceAccount (a few seconds with cached binaries).
    pub fn start() -> Result<ControlPlane, TestkitError> {
        Self::start_with(ControlPlaneOptions::default())
    }

    pub fn start_with(opts: ControlPlaneOptions) -> Result<ControlPlane, TestkitError> {
        let bins = bin_dir()?;
        let deadline = Instant::now() + opts.ready_timeout;
        let dir = tempfile::Builder::new()
            .prefix("sb-k8s-")
            .tempdir()
            .map_err(io("create temp dir"))?;
        let reaper = Reaper::spawn(dir.path())?;
        let pki = Pki::generate(opts.pod_reachable_address.as_deref())?;
        let tls = probe::tls_config(&pki.ca_der)?;
        let admin_token = random_token();
        let write_later = |d: &Path, name: &str, text: &str| -> Result<PathBuf, TestkitError> {
            let p = d.join(name);
            fs::write(&p, text).map_err(io(format!("write {}", p.display())))?;
            Ok(p)
        };
        let kubelet_client_cert = write_later(
            dir.path(),
            "apiserver-kubelet-client.crt",
            &pki.kubelet_client_cert,
        )?;
        let kubelet_client_key = write_later(
            dir.path(),
            "apiserver-kubelet-client.key",
            &pki.kubelet_client_key,
        )?;
        let mut cp = ControlPlane {
            port: free_port()?,
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            admin_token,
            ca_pem: pki.ca_cert.clone(),
            tls,
            ca_issuer: pki.ca_issuer,
            components: vec![],
            reaper,
        };

        let d = cp.dir.path().to_path_buf();
        let write = |name: &str, text: &str| -> Result<PathBuf, TestkitError> {
            let p = d.join(name);
            fs::write(&p, text).map_err(io(format!("write {}", p.display())))?;
            Ok(p)
        };
        let ca = write("ca.crt", &pki.ca_cert)?;
        let serving_cert = write("serving.crt", &pki.serving_cert)?;
        let serving_key = write("serving.key", &pki.serving_key)?;
        let sa_pub = write("sa.pub", &pki.sa_public_key)?;
        let sa_key = write("sa.key", &pki.sa_private_key)?;
        let front_proxy_ca = write("front-proxy-ca.crt", &pki.front_proxy_ca_cert)?;
        let front_proxy_cert = write("front-proxy-client.crt", &pki.front_proxy_client_cert)?;
        let front_proxy_key = write("front-proxy-client.key", &pki.front_proxy_client_key)?;
        let kcm_token = random_token();
        // token,user,uid,"group1,group2"
        let tokens = write(
            "tokens.csv",
            &format!(
                "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
                 {kcm_token},{CONTROLLER_MANAGER_USER},{CONTROLLER_MANAGER_USER}\n",
                cp.admin_token
            ),
        )?;
        write("kubeconfig", &cp.kubeconfig_yaml_for(&cp.admin_token))?;
        let kcm_kubeconfig = write(
            "controller-manager.kubeconfig",
            &cp.kubeconfig_yaml_for(&kcm_token),
        )?;

        // etcd: in-memory speed (no fsync: a crash loses a test's data, fine).
        let etcd_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let etcd_args = vec![
            "--name=switchboard".to_string(),
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=switchboard={peer_url}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        cp.spawn("etcd", &bins, etcd_args)?;
        cp.wait_until(deadline, "etcd", || {
            probe::get(etcd_port, "/health", None, None)
                .is_ok_and(|(s, body)| s == 200 && body.contains("true"))
        })?;

        let p = |path: &Path| path.display().to_string();
        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={}", cp.port),
            format!("--cert-dir={}", d.join("apiserver").display()),
            format!("--tls-cert-file={}", p(&serving_cert)),
            format!("--tls-private-key-file={}", p(&serving_key)),
            format!("--client-ca-file={}", p(&ca)),
            format!("--token-auth-file={}", p(&tokens)),
            // Node: what a kubelet of the local node (crate::node) may read
            // and write, as in any cluster; RBAC for everyone else.
            "--authorization-mode=Node,RBAC".into(),
            // Logs/exec: the API server reaches a kubelet at its InternalIP
            // (a node's hostname need not resolve here), with a client
            // certificate the kubelet checks against this CA.
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--kubelet-client-certificate={}", p(&kubelet_client_cert)),
            format!("--kubelet-client-key={}", p(&kubelet_client_key)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&sa_pub)),
            format!("--service-account-signing-key-file={}", p(&sa_key)),
            format!("--service-cluster-ip-range={}", pki::SERVICE_CIDR),
            // The aggregation layer (front proxy), as kubeadm configures it.
            format!("--requestheader-client-ca-file={}", p(&front_proxy_ca)),
            format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CLIENT),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p(&front_proxy_cert)),
            format!("--proxy-client-key-file={}", p(&front_proxy_key)),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        match &opts.pod_reachable_address {
            Some(addr) => apiserver_args.extend([
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={addr}"),
            ]),
            None => apiserver_args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The `kubernetes` Service's endpoints would be 127.0.0.1,
                // which Endpoints validation rejects (loopback); without
                // pods nothing needs them.
                "--endpoint-reconciler-type=none".into(),
            ]),
        }
        apiserver_args.extend(opts.extra_apiserver_args);
        cp.spawn("kube-apiserver", &bins, apiserver_args)?;
        let (port, token, tls) = (cp.port, cp.admin_token.clone(), Arc::clone(&cp.tls));
        cp.wait_until(deadline, "kube-apiserver /readyz", || {
            probe::get(port, "/readyz", Some(&token), Some(&tls)).is_ok_and(|(s, _)| s == 200)
        })?;

        let kcm_port = free_port()?;
        let mut kcm_args = vec![
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authentication-kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authorization-kubeconfig={}", p(&kcm_kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--tls-cert-file={}", p(&serving_cert)),
            format!("--tls-private-key-file={}", p(&serving_key)),
            "--leader-elect=false".into(),
            // As kubeadm does: each controller acts as its own service account
            // under the bootstrap RBAC policy.
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p(&sa_key)),
            format!("--root-ca-file={}", p(&ca)),
            format!("--controllers={}", opts.controllers.join(",")),
            "--profiling=false".into(),
        ];
        kcm_args.extend(opts.extra_controller_manager_args);
        cp.spawn("kube-controller-manager", &bins, kcm_args)?;
        let tls = Arc::clone(&cp.tls);
        cp.wait_until(deadline, "kube-controller-manager /healthz", || {
            probe::get(kcm_port, "/healthz", None, Some(&tls)).is_ok_and(|(s, _)| s == 200)
        })?;
        // The serviceaccount controller at work: proof the controllers run,
        // and pods in `default` can be admitted from here on.
        let tls = Arc::clone(&cp.tls);
        cp.wait_until(deadline, "ServiceAccount default/default", || {
            probe::get(
                port,
                "/api/v1/namespaces/default/serviceaccounts/default",
                Some(&token),
                Some(&tls),
            )
            .is_ok_and(|(s, _)| s == 200)
        })?;
        Ok(cp)
    }

    /// One control plane per process (per test binary), started on first
    /// use. Tests sharing it should work in namespaces of their own. It is
    /// never dropped; the reaper process removes it when the process exits.
    pub fn shared() -> Result<&'static ControlPlane, TestkitError> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(|| ControlPlane::start().map_err(|e| e.to_string())) {
            Ok(cp) => Ok(cp),
            Err(e) => Err(TestkitError::Other(format!(
                "the shared control plane failed to start: {e}"
            ))),
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        bins: &Path,
        args: Vec<String>,
    ) -> Result<(), TestkitError> {
        let log = self.dir.path().join(format!("{name}.log"));
        let c = Component::spawn(name, &bins.join(name), &args, &[], log, &mut self.reaper)?;
        self.components.push(c);
        Ok(())
    }

    /// Poll `ready` until it holds; fail early if a component exits.
    fn wait_until(
        &mut self,
        deadline: Instant,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            let exited = self
                .components
                .iter_mut()
                .find_map(|c| c.has_exited().then_some(c.name));
            if exited.is_some() || Instant::now() > deadline {
                let what = match exited {
                    Some(name) => format!("{what} ({name} exited)"),
                    None => what.to_string(),
                };
                return Err(TestkitError::NotReady {
                    what,
                    secs: started.elapsed().as_secs(),
                    log: self.log_tails(),
                });
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every component's log, for error messages.
    pub fn log_tails(&self) -> String {
        self.components
            .iter()
            .map(|c| format!("--- {} ({})\n{}", c.name, c.log.display(), c.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The name of a component that has exited, if any.
    pub fn exited_component(&mut self) -> Option<&'static str> {
        self.components
            .iter_mut()
            .find_map(|c| c.has_exited().then_some(c.name))
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bearer token of [`ADMIN_USER`], in group `system:masters`.
    pub fn token(&self) -> &str {
        &self.admin_token
    }

    /// A TLS client configuration trusting this control plane's CA (for
    /// the node's kubelet, the only user).
    #[cfg(feature = "node")]
    pub(crate) fn tls(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// PEM of the CA that signed the API server's certificate.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for the admin (lives in the temp dir).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Write the admin kubeconfig somewhere else too (mode 0600: it holds
    /// the admin token).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), TestkitError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io(format!("create {}", path.display())))?;
        f.write_all(self.kubeconfig_yaml_for(&self.admin_token).as_bytes())
            .map_err(io(format!("write {}", path.display())))
    }

    /// Temp dir with the certificates, etcd data and the components' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kubeconfig YAML for this server, authenticating with `token`.
    pub fn kubeconfig_yaml_for(&self, token: &str) -> String {
        let token = token.replace('\\', "\\\\").replace('"', "\\\"");
        self.kubeconfig_with_user(&format!("    token: \"{token}\"\n"))
    }

    /// A kubeconfig (YAML) for user `user` in `group`, authenticating with a
    /// client certificate this control plane's CA signs now (e.g.
    /// `system:node:NAME` in `system:nodes` for a kubelet).
    pub fn client_cert_kubeconfig(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<String, TestkitError> {
        let (cert, key) = pki::client_cert(&self.ca_issuer, user, group)?;
        Ok(self.kubeconfig_with_user(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            BASE64.encode(cert),
            BASE64.encode(key)
        )))
    }

    /// Kubeconfig YAML for this server and its CA, with `credentials` (the
    /// lines under `user:`, indented four spaces) as the one user.
    fn kubeconfig_with_user(&self, credentials: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: switchboard-local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: switchboard-local
  user:
{credentials}contexts:
- name: switchboard-local
  context:
    cluster: switchboard-local
    user: switchboard-local
current-context: switchboard-local
",
            server = self.server_url(),
            ca = BASE64.encode(&self.ca_pem),
        )
    }

    /// A `kube::Config` for the admin.
    pub async fn kube_config(&self) -> Result<kube::Config, TestkitError> {
        self.kube_config_with_token(&self.admin_token).await
    }

    /// A `kube::Config` authenticating with any bearer token (e.g. a
    /// ServiceAccount's, to test RBAC).
    pub async fn kube_config_with_token(&self, token: &str) -> Result<kube::Config, TestkitError> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig_yaml_for(token))
            .map_err(kube_err("parse the generated kubeconfig"))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(kube_err("load the generated kubeconfig"))
    }

    /// A new admin client. Call it in the runtime that uses it (a client
    /// outlives no tokio runtime, and each `#[tokio::test]` has its own).
    pub async fn client(&self) -> Result<kube::Client, TestkitError> {
        self.client_with_token(&self.admin_token).await
    }

    /// A new client authenticating with `token`.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, TestkitError> {
        let config = self.kube_config_with_token(token).await?;
        kube::Client::try_from(config).map_err(kube_err("build a kube client"))
    }

    /// Kill every process (with anything it started) and remove the temp dir.
    pub fn stop(&mut self) {
        // The reaper kills the process groups while their leaders are still
        // unreaped (so no group id can have been reused), then removes the dir.
        self.reaper.finish();
        for c in &mut self.components {
            c.kill();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kube_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> TestkitError {
    move |e| TestkitError::Kube {
        what: what.into(),
        source: Box::new(e),
    }
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}
