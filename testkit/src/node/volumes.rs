//! Dynamic PersistentVolumes for the local node, as kind's local-path
//! provisioner gives them: a default StorageClass ([`STORAGE_CLASS`]) and a
//! provisioner that answers each of its claims with a `hostPath` volume in
//! the node's directory, and deletes the volume and its data once the claim
//! is gone. Without it every StatefulSet the operator makes (Redis,
//! PostgreSQL) would wait forever for its claims.
//!
//! Why not kube-controller-manager's own `--enable-hostpath-provisioner`: it
//! creates the directory `0750` and owned by root, and `fsGroup` does not
//! apply to `hostPath`, so a non-root pod (Redis and PostgreSQL run as uid
//! 999) could not write its volume. Here the directory is world-writable,
//! as local-path's is.
//!
//! It runs in a thread of the test process with its own runtime, watching
//! claims and volumes through the API server like any external provisioner;
//! the binder controller (kube-controller-manager) then binds the pair.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::oneshot;

use crate::TestkitError;

/// The default StorageClass's name (kind's is `standard` too, so a spec that
/// names it runs unchanged on both).
pub const STORAGE_CLASS: &str = "standard";
/// The StorageClass's `provisioner`.
pub const PROVISIONER: &str = "switchboard.dev/local-path";
/// The annotation the binder controller and this provisioner mark their
/// volumes with.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The running provisioner; dropping it stops it.
pub(crate) struct Provisioner {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Provisioner {
    /// Creates the StorageClass, then serves claims until dropped. Returns
    /// once the StorageClass exists (claims made after that get it as their
    /// default).
    /// `kubeconfig`: the admin's, of the node's control plane.
    pub(crate) fn start(kubeconfig: PathBuf, root: PathBuf) -> Result<Provisioner, TestkitError> {
        fs::create_dir_all(&root).map_err(crate::io(format!("create {}", root.display())))?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("local-path".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match client(&kubeconfig).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    if let Err(e) = storage_class(&client).await {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = serve(client, root) => {}
                    }
                });
            })
            .map_err(crate::io("spawn the volume provisioner"))?;
        let provisioner = Provisioner {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(provisioner),
            Ok(Err(e)) => Err(TestkitError::Other(format!("volume provisioner: {e}"))),
            Err(_) => Err(TestkitError::Other(
                "volume provisioner: the StorageClass was not created within 30 s".into(),
            )),
        }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(kubeconfig: &std::path::Path) -> Result<Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("read {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("kubeconfig: {e}"))?;
    Client::try_from(config).map_err(|e| format!("client: {e}"))
}

async fn storage_class(client: &Client) -> Result<(), String> {
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))
    .map_err(|e| format!("StorageClass: {e}"))?;
    Api::<StorageClass>::all(client.clone())
        .patch(
            STORAGE_CLASS,
            &PatchParams::apply("switchboard-testkit").force(),
            &Patch::Apply(&class),
        )
        .await
        .map(drop)
        .map_err(|e| format!("apply StorageClass {STORAGE_CLASS}: {e}"))
}

/// Watches claims (to provision) and volumes (to delete released ones) until
/// the runtime stops. A failed step is logged to stderr and retried on the
/// next event or resync of that object.
async fn serve(client: Client, root: PathBuf) {
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects();
    let volumes = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects();
    let (mut claims, mut volumes) = (Box::pin(claims), Box::pin(volumes));
    let pvs = Api::<PersistentVolume>::all(client);
    loop {
        tokio::select! {
            Some(claim) = claims.next() => {
                if let Ok(claim) = claim
                    && let Err(e) = provision(&pvs, &root, &claim).await
                {
                    eprintln!("local-path: claim {}: {e}", claim.name_any());
                }
            }
            Some(volume) = volumes.next() => {
                if let Ok(volume) = volume
                    && let Err(e) = reclaim(&pvs, &volume).await
                {
                    eprintln!("local-path: volume {}: {e}", volume.name_any());
                }
            }
            else => return,
        }
    }
}

/// The volume's name for a claim: `pvc-<claim uid>`, as external
/// provisioners name theirs.
fn volume_name(claim: &PersistentVolumeClaim) -> Option<String> {
    claim.metadata.uid.as_ref().map(|uid| format!("pvc-{uid}"))
}

async fn provision(
    pvs: &Api<PersistentVolume>,
    root: &std::path::Path,
    claim: &PersistentVolumeClaim,
) -> Result<(), String> {
    let Some(spec) = &claim.spec else {
        return Ok(());
    };
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    if !pending
        || spec.volume_name.is_some()
        || spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || claim.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let (Some(name), Some(ns)) = (volume_name(claim), claim.namespace()) else {
        return Ok(());
    };
    let Some(size) = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    else {
        return Err("no storage request".into());
    };
    let dir = root.join(&name);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // World-writable, as local-path makes it: the pod's user is unknown
    // here and fsGroup does not apply to hostPath.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    let volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                PROVISIONER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
            access_modes: spec.access_modes.clone(),
            volume_mode: spec.volume_mode.clone(),
            storage_class_name: Some(STORAGE_CLASS.into()),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("Directory".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(ns),
                name: Some(claim.name_any()),
                uid: claim.metadata.uid.clone(),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    };
    match pvs.create(&PostParams::default(), &volume).await {
        Ok(_) => Ok(()),
        // Provisioned on an earlier event of the same claim.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("create PersistentVolume {name}: {e}")),
    }
}

/// A released volume of ours (its claim was deleted): its data, then the
/// object.
async fn reclaim(pvs: &Api<PersistentVolume>, volume: &PersistentVolume) -> Result<(), String> {
    let ours = volume
        .annotations()
        .get(PROVISIONED_BY)
        .is_some_and(|p| p == PROVISIONER);
    let released = volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Released");
    if !ours || !released || volume.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    if let Some(path) = volume
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path))
    {
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", path.display())),
        }
    }
    match pvs
        .delete(&volume.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(format!("delete: {e}")),
    }
}
