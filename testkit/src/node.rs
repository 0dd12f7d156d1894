//! A real one-node Kubernetes cluster on this machine, next to a
//! [`ControlPlane`]: kube-scheduler, containerd (runc, CNI bridge), kubelet
//! and kube-proxy at the control plane's Kubernetes release, built from
//! pinned modules by `e2e/node/build.sh`. Pods run for real: images come
//! from OCI archives made locally ([`write_image_archive`], [`write_image`];
//! the operator's pods' images: [`images`]) and imported with
//! [`Node::import_image`]; no registry is ever contacted.
//!
//! ```no_run
//! # fn demo() -> Result<(), switchboard_testkit::TestkitError> {
//! use switchboard_testkit::{ControlPlane, node};
//! if let Some(why) = node::unsupported() {
//!     eprintln!("no local node here: {why}");
//!     return Ok(());
//! }
//! let cp = ControlPlane::start_with(node::control_plane_options())?;
//! let node = node::Node::start(&cp)?; // Ready when this returns
//! # Ok(()) }
//! ```
//!
//! Needs root (containerd, kubelet and CNI create namespaces, mounts,
//! cgroups, a bridge and iptables rules) and one node per machine at a time
//! (kube-proxy's iptables chains are machine-wide). Everything is removed
//! when the [`Node`] is dropped, or when the process that started it dies:
//! a clean-up process kills kubelet, kube-proxy, the scheduler, containerd,
//! its shims and every container (by cgroup), unmounts whatever was mounted
//! under the node's temp dir (netns, volumes, rootfs), removes the pods'
//! cgroups and the bridge, runs `kube-proxy --cleanup`, and restores the
//! sysctls kubelet, kube-proxy and the bridge plugin change. When that
//! clean-up process is killed too, the next node to start on the machine
//! runs it (the machine lock records it; see `machine.rs`).

pub mod images;
mod machine;
mod oci;
pub mod pods;
mod volumes;

pub use images::{
    LocalImage, PodImages, build_all, operator_image, postgres_image, redis_image,
    switchboard_image,
};
pub use machine::{host_state, reclaim_dead_node};
pub use oci::{
    DEFAULT_PATH, ImageConfig, ImageFile, LayerEntry, oci_arch, write_image, write_image_archive,
};
pub use volumes::{PROVISIONER, STORAGE_CLASS};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::controlplane::probe;
use crate::controlplane::process::{Component, Reaper};
use crate::{ControlPlane, ControlPlaneOptions, TestkitError, free_port, io};

/// Env var naming a directory that holds the node's binaries (what
/// `e2e/node/build.sh` prints).
pub const NODE_BIN_DIR_ENV: &str = "SWITCHBOARD_NODE_BIN_DIR";
/// The binaries the node needs (CNI plugins under `cni/`).
pub const NODE_BINARIES: [&str; 14] = [
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "pause",
    "netcheck",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "coredns",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
    "cni/portmap",
];
/// The cluster's DNS domain: `<service>.<namespace>.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The pod subnet of the node's CNI bridge.
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The sandbox ("pause") image kubelet 1.34 and containerd expect; the node
/// imports one built from `e2e/node/cmd/pause` under this name.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";
/// The containerd namespace the CRI (hence kubelet) uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Host settings kubelet (`setupKernelTunables`), kube-proxy and the CNI
/// bridge plugin may change; saved at start and restored on clean-up.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Why this machine cannot run a node, or `None` when it can. Checks what
/// the node cannot work without: root, overlayfs, the cgroup controllers
/// kubelet requires, bridges with netfilter, `iptables`, `ip`, `mount`.
pub fn unsupported() -> Option<String> {
    let mut missing = vec![];
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if uid.as_deref() != Some("0") {
        missing.push("root (containerd, kubelet and CNI need it)".to_string());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"))
    {
        missing.push("overlayfs in the kernel (containerd's snapshotter)".into());
    }
    let v2 = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    for ctrl in ["cpu", "cpuset", "memory", "pids"] {
        let present = match &v2 {
            Some(c) => c.split_whitespace().any(|x| x == ctrl),
            None => Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("tasks")
                .exists(),
        };
        if !present {
            missing.push(format!("the {ctrl} cgroup controller"));
        }
    }
    if !Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        missing.push("br_netfilter (modprobe br_netfilter)".into());
    }
    for tool in ["iptables", "ip", "mount", "umount"] {
        if !on_path(tool) {
            missing.push(format!(
                "`{tool}` on PATH (apt-get install iptables iproute2 mount)"
            ));
        }
    }
    (!missing.is_empty()).then(|| format!("missing: {}", missing.join("; ")))
}

/// Env var: set, a test that needs a node fails where this machine cannot
/// run one (see [`skip_reason`]) instead of skipping.
pub const NODE_REQUIRED_ENV: &str = "SWITCHBOARD_NODE_REQUIRED";

/// For tests that need a node: `Ok(None)` when this machine can run one,
/// `Ok(Some(why))` when it cannot (the test says why and passes), an error
/// when it cannot but [`NODE_REQUIRED_ENV`] is set.
pub fn skip_reason() -> Result<Option<String>, TestkitError> {
    match unsupported() {
        None => Ok(None),
        Some(why) if std::env::var_os(NODE_REQUIRED_ENV).is_some() => Err(TestkitError::Other(
            format!("{NODE_REQUIRED_ENV} is set but {why}"),
        )),
        Some(why) => Ok(Some(why)),
    }
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Control-plane options for a cluster with a node: the defaults plus the
/// controllers a node needs: node lifecycle (removes the `not-ready` taint
/// kubelet registers with, once the node is Ready; without it nothing is
/// ever scheduled), EndpointSlices (what kube-proxy programs Services
/// from) and the volume binder with its claim and volume protection (binds
/// StatefulSets' claims to the volumes [`STORAGE_CLASS`]'s provisioner
/// makes); and an API server pods can reach (`kubernetes.default.svc`).
pub fn control_plane_options() -> ControlPlaneOptions {
    let mut opts = ControlPlaneOptions::default();
    for c in [
        "node-lifecycle-controller",
        "endpointslice-controller",
        "persistentvolume-binder-controller",
        "persistentvolume-protection-controller",
        "persistentvolumeclaim-protection-controller",
    ] {
        opts.controllers.push(c.to_string());
    }
    // Pods reach the API server (an operator in a pod) at the node's
    // address; without one, Node::start fails with the reason.
    opts.pod_reachable_address = node_ip().ok();
    opts
}

/// `e2e/node/build.sh` in this workspace.
pub fn build_script() -> PathBuf {
    crate::workspace_file("e2e/node/build.sh")
}

/// The directory holding the node's binaries, checked to contain them:
/// `SWITCHBOARD_NODE_BIN_DIR`, else what `e2e/node/build.sh` prints (it runs
/// at most once per process).
pub fn bin_dir() -> Result<PathBuf, TestkitError> {
    static RESOLVED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut resolved = RESOLVED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = resolved.as_ref() {
        return Ok(dir.clone());
    }
    let script = build_script();
    let dir = match std::env::var_os(NODE_BIN_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let out = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(io(format!("run {}", script.display())))?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || dir.is_empty() {
                return Err(TestkitError::Other(format!(
                    "{} failed ({}); run it by hand to see why, or set {NODE_BIN_DIR_ENV}",
                    script.display(),
                    out.status
                )));
            }
            PathBuf::from(dir)
        }
    };
    for name in NODE_BINARIES {
        if !dir.join(name).is_file() {
            return Err(TestkitError::MissingBinary {
                name: name.into(),
                hint: format!(
                    "expected in {} ({NODE_BIN_DIR_ENV} or the output of {})",
                    dir.display(),
                    script.display()
                ),
            });
        }
    }
    *resolved = Some(dir.clone());
    Ok(dir)
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// For the whole start-up, until the Node object is Ready.
    pub ready_timeout: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running node. Dropping it tears everything down (see the module docs).
pub struct Node {
    dir: TempDir,
    name: String,
    bridge: String,
    cgroup_root: String,
    ip: String,
    bins: PathBuf,
    containerd_socket: PathBuf,
    components: Vec<Component>,
    reaper: Reaper,
    /// Stopped before the processes (it talks to the API server).
    volumes: Option<volumes::Provisioner>,
}

impl Node {
    /// Start a node registered with `cp` (started with
    /// [`control_plane_options`]), with [`NodeOptions::default`].
    pub fn start(cp: &ControlPlane) -> Result<Node, TestkitError> {
        Self::start_with(cp, NodeOptions::default())
    }

    pub fn start_with(cp: &ControlPlane, opts: NodeOptions) -> Result<Node, TestkitError> {
        if let Some(why) = unsupported() {
            return Err(TestkitError::Other(format!(
                "cannot run a local node: {why}"
            )));
        }
        let bins = bin_dir()?;
        let deadline = Instant::now() + opts.ready_timeout;
        machine::take()?;
        let dir = tempfile::Builder::new()
            .prefix("sb-node-")
            .tempdir()
            .map_err(io("create temp dir"))?;
        let suffix = format!("{:08x}", rand::random::<u32>());
        let name = format!("sb-node-{suffix}");
        let cgroup_root = format!("switchboard-{suffix}");
        let bridge = format!("sbbr{}", &suffix[..6]);
        let network = format!("switchboard-{suffix}");
        let ip = node_ip()?;
        let d = dir.path().to_path_buf();

        // Read after `machine::take`: a dead node's clean-up restores what
        // it had changed, and these are the values to restore in turn.
        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| TestkitError::Other(format!("{} is not UTF-8", p.display())))
        };
        let mut teardown_args = vec![
            utf8(&d)?,
            cgroup_root.clone(),
            bridge.clone(),
            utf8(&bins.join("kube-proxy"))?,
            network.clone(),
        ];
        for s in SYSCTLS {
            if let Ok(v) = fs::read_to_string(Path::new("/proc/sys").join(s)) {
                teardown_args.push(format!("{s}={}", v.trim()));
            }
        }
        machine::record(&teardown_args)?;
        let args: Vec<&std::ffi::OsStr> = teardown_args.iter().map(std::ffi::OsStr::new).collect();
        let reaper = Reaper::spawn_script(machine::TEARDOWN, machine::TEARDOWN_NAME, &args)?;
        let mut node = Node {
            containerd_socket: d.join("containerd.sock"),
            dir,
            name: name.clone(),
            bridge: bridge.clone(),
            cgroup_root: cgroup_root.clone(),
            ip: ip.clone(),
            bins: bins.clone(),
            components: vec![],
            reaper,
            volumes: None,
        };

        let write = |rel: &str, text: &str| -> Result<PathBuf, TestkitError> {
            let p = d.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
            }
            fs::write(&p, text).map_err(io(format!("write {}", p.display())))?;
            Ok(p)
        };
        let show = |p: &Path| p.display().to_string();

        make_cgroup_root(&cgroup_root)?;

        // containerd with the CRI plugin: runc, overlayfs, the CNI bridge.
        let cni_conf_dir = d.join("cni/net.d");
        write(
            "cni/net.d/10-switchboard.conflist",
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": network,
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": true,
                        "ipMasq": false,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{ "subnet": POD_SUBNET }]],
                            "routes": [{ "dst": "0.0.0.0/0" }],
                            "dataDir": d.join("cni/ipam"),
                        }
                    },
                    { "type": "portmap", "capabilities": { "portMappings": true } }
                ]
            })
            .to_string(),
        )?;
        let containerd_config = write(
            "containerd/config.toml",
            &containerd_config(&d, &bins, &node.containerd_socket, &cni_conf_dir),
        )?;
        node.spawn(
            "containerd",
            vec![format!("--config={}", show(&containerd_config))],
        )?;
        let socket = node.containerd_socket.clone();
        node.wait_until(deadline, "containerd socket", || socket.exists())?;
        let ctr = node.bins.join("ctr");
        node.wait_until(deadline, "containerd answers", || {
            Command::new(&ctr)
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;

        // The sandbox image, from the locally built pause binary.
        let pause_archive = d.join("pause.oci.tar");
        write_image_archive(
            &pause_archive,
            PAUSE_IMAGE,
            &[ImageFile {
                path: "/pause".into(),
                source: bins.join("pause"),
                mode: 0o755,
            }],
            &["/pause"],
        )?;
        node.import_image(&pause_archive)?;

        // kube-scheduler: the control plane has none (no node to schedule on).
        let sched_kubeconfig = write(
            "scheduler.kubeconfig",
            &cp.client_cert_kubeconfig("system:kube-scheduler", None)?,
        )?;
        node.spawn(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={}", show(&sched_kubeconfig)),
                format!("--authentication-kubeconfig={}", show(&sched_kubeconfig)),
                format!("--authorization-kubeconfig={}", show(&sched_kubeconfig)),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--profiling=false".into(),
            ],
        )?;

        // The cluster DNS: CoreDNS as a host process on the node's address
        // (pods reach it through the bridge's gateway), answering the
        // cluster domain from the API server and forwarding other names to
        // this machine's resolver. kubelet puts it in every pod's
        // resolv.conf. Its client is in system:masters: kubeadm's
        // `system:coredns` role would be one more object to create and
        // delete for a node that lives as long as a test.
        let dns_kubeconfig = write(
            "coredns.kubeconfig",
            &cp.client_cert_kubeconfig("switchboard:coredns", Some("system:masters"))?,
        )?;
        let dns_ready = free_port()?;
        let corefile = write(
            "coredns/Corefile",
            &format!(
                "{CLUSTER_DOMAIN}:53 {{
    bind {ip}
    errors
    ready 127.0.0.1:{dns_ready}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig}
    }}
    cache 5
}}
.:53 {{
    bind {ip}
    errors
    forward . /etc/resolv.conf
    cache 30
}}
",
                kubeconfig = show(&dns_kubeconfig),
            ),
        )?;
        node.spawn("coredns", vec![format!("-conf={}", show(&corefile))])?;
        node.wait_until(
            deadline,
            "CoreDNS ready (synced with the API server)",
            || probe::get(dns_ready, "/ready", None, None).is_ok_and(|(status, _)| status == 200),
        )?;

        // kubelet, as `system:node:<name>` (the Node authorizer's user).
        let kubelet_kubeconfig = write(
            "kubelet.kubeconfig",
            &cp.client_cert_kubeconfig(&format!("system:node:{name}"), Some("system:nodes"))?,
        )?;
        let ca = write("ca.crt", cp.ca_cert_pem())?;
        let kubelet_port = free_port()?;
        let kubelet_config = write(
            "kubelet/config.yaml",
            &format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
failCgroupV1: false
failSwapOn: false
address: {ip}
port: {kubelet_port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
podLogsDir: {logs}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerNode: true
serializeImagePulls: false
clusterDNS: [{ip}]
clusterDomain: {CLUSTER_DOMAIN}
",
                socket = show(&node.containerd_socket),
                healthz_port = free_port()?,
                logs = show(&d.join("pod-logs")),
                ca = show(&ca),
            ),
        )?;
        fs::create_dir_all(d.join("pod-logs")).map_err(io("create the pod log dir"))?;
        node.spawn(
            "kubelet",
            vec![
                format!("--config={}", show(&kubelet_config)),
                format!("--kubeconfig={}", show(&kubelet_kubeconfig)),
                format!("--root-dir={}", show(&d.join("kubelet"))),
                format!("--hostname-override={name}"),
                format!("--node-ip={ip}"),
                "--v=1".into(),
            ],
        )?;

        // kube-proxy (iptables mode), as `system:kube-proxy`.
        let proxy_kubeconfig = write(
            "kube-proxy.kubeconfig",
            &cp.client_cert_kubeconfig("system:kube-proxy", None)?,
        )?;
        let proxy_config = write(
            "kube-proxy/config.yaml",
            &format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
hostnameOverride: {name}
clusterCIDR: {POD_SUBNET}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
iptables:
  masqueradeAll: true
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
",
                kubeconfig = show(&proxy_kubeconfig),
                healthz = free_port()?,
                metrics = free_port()?,
            ),
        )?;
        node.spawn(
            "kube-proxy",
            vec![format!("--config={}", show(&proxy_config))],
        )?;

        // Ready as the API server sees it: kubelet registered, runtime and
        // network (CNI config) ready.
        let (port, token) = (cp.port(), cp.token().to_string());
        let tls = cp.tls();
        let path = format!("/api/v1/nodes/{name}");
        node.wait_until(deadline, &format!("Node {name} Ready"), || {
            probe::get(port, &path, Some(&token), Some(&tls))
                .is_ok_and(|(s, body)| s == 200 && node_ready(&body))
        })?;
        // Volumes for claims (StatefulSets): under the node's dir, so they
        // go with it.
        node.volumes = Some(volumes::Provisioner::start(
            cp.kubeconfig_path().to_path_buf(),
            d.join("volumes"),
        )?);
        Ok(node)
    }

    fn spawn(&mut self, name: &'static str, args: Vec<String>) -> Result<(), TestkitError> {
        let log = self.dir.path().join(format!("{name}.log"));
        // containerd finds its shim, and CNI plugins their tools, on PATH.
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bins.display()
        );
        let envs = [("PATH", path)];
        let c = Component::spawn(
            name,
            &self.bins.join(name),
            &args,
            &envs,
            log,
            &mut self.reaper,
        )?;
        self.components.push(c);
        Ok(())
    }

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
            let exited = self.exited_component();
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
            sleep(Duration::from_millis(200));
        }
    }

    /// Import an OCI image archive (e.g. from [`write_image_archive`]) into
    /// containerd's CRI namespace, under the name its index carries.
    pub fn import_image(&self, archive: &Path) -> Result<(), TestkitError> {
        let out = Command::new(self.bins.join("ctr"))
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", CRI_NAMESPACE, "images", "import"])
            .arg(format!("--platform=linux/{}", oci_arch()))
            .arg(archive)
            .stdin(Stdio::null())
            .output()
            .map_err(io("run ctr images import"))?;
        if !out.status.success() {
            return Err(TestkitError::Other(format!(
                "ctr images import {} failed ({}): {}",
                archive.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Give an imported image a second name (`ctr images tag`): the same
    /// content, e.g. for a rolling update to "another" image.
    pub fn tag_image(&self, name: &str, new_name: &str) -> Result<(), TestkitError> {
        let out = Command::new(self.bins.join("ctr"))
            .arg("--address")
            .arg(&self.containerd_socket)
            .args([
                "--namespace",
                CRI_NAMESPACE,
                "images",
                "tag",
                "--force",
                name,
                new_name,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(io("run ctr images tag"))?;
        if !out.status.success() {
            return Err(TestkitError::Other(format!(
                "ctr images tag {name} {new_name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The Node object's name (`sb-node-<random>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pods' Linux bridge.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pods' cgroup root (a directory in every cgroup hierarchy).
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The node's InternalIP (this machine's address on its default route).
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Where the node's binaries are (including `netcheck`, a static HTTP
    /// test program for images).
    pub fn bin_dir(&self) -> &Path {
        &self.bins
    }

    /// Temp dir with configs, state and the components' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// Tear everything down (see the module docs); blocks until done.
    pub fn stop(&mut self) {
        self.volumes = None;
        self.reaper.finish();
        for c in &mut self.components {
            c.kill();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This machine's source address on its default route.
fn node_ip() -> Result<String, TestkitError> {
    let out = Command::new("ip")
        .args(["-j", "-4", "route", "get", "1.1.1.1"])
        .output()
        .map_err(io("run ip route get"))?;
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| TestkitError::Other(format!("ip -j route get: unexpected output ({e})")))?;
    routes
        .get(0)
        .and_then(|r| r.get("prefsrc"))
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            TestkitError::Other(
                "no IPv4 default route: the node needs an address the API server can reach".into(),
            )
        })
}

/// The pods' cgroup root in every mounted hierarchy (kubelet insists it
/// exists); a cgroup v1 cpuset starts empty, so it gets its parent's CPUs
/// and memory nodes.
fn make_cgroup_root(name: &str) -> Result<(), TestkitError> {
    let entries = fs::read_dir("/sys/fs/cgroup").map_err(io("read /sys/fs/cgroup"))?;
    for e in entries.flatten() {
        let hierarchy = e.path();
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let root = hierarchy.join(name);
        fs::create_dir_all(&root).map_err(io(format!("create cgroup {}", root.display())))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(hierarchy.join(f)) {
                fs::write(root.join(f), v.trim())
                    .map_err(io(format!("write {}", root.join(f).display())))?;
            }
        }
    }
    Ok(())
}

fn containerd_config(dir: &Path, bins: &Path, socket: &Path, cni_conf_dir: &Path) -> String {
    let s = |p: &Path| p.display().to_string();
    format!(
        "version = 3
root = '{root}'
state = '{state}'
temp = '{tmp}'
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.internal.v1.tracing']

[grpc]
  address = '{socket}'

[ttrpc]
  address = '{socket}.ttrpc'

[plugins.'io.containerd.internal.v1.opt']
  path = '{opt}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{PAUSE_IMAGE}'

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {restrict_oom}
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{runc}'
        Root = '{runc_root}'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{cni_bin}']
    conf_dir = '{cni_conf}'
    max_conf_num = 1
",
        root = s(&dir.join("containerd/root")),
        state = s(&dir.join("containerd/state")),
        tmp = s(&dir.join("containerd/tmp")),
        socket = s(socket),
        opt = s(&dir.join("containerd/opt")),
        runc = s(&bins.join("runc")),
        runc_root = s(&dir.join("runc")),
        cni_bin = s(&bins.join("cni")),
        cni_conf = s(cni_conf_dir),
        restrict_oom = !has_cap_sys_resource(),
    )
}

/// Whether this process may lower an `oom_score_adj` (CAP_SYS_RESOURCE,
/// bit 24 of CapEff). Some sandboxes (this project's CI machines among them)
/// withhold it even from root; then containerd must not ask for the pod
/// sandbox's usual -998 (runc's `nsexec` fails with EACCES) and keeps every
/// pod at or above its own score (`restrict_oom_score_adj`).
fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Whether a Node object (JSON) has condition Ready=True.
fn node_ready(body: &str) -> bool {
    // probe::get does not decode a chunked body: find the object's start.
    let Some(start) = body.find('{') else {
        return false;
    };
    let Some(end) = body.rfind('}') else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[start..=end]) else {
        return false;
    };
    v.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Ready")
                    && c.get("status").and_then(|s| s.as_str()) == Some("True")
            })
        })
}
