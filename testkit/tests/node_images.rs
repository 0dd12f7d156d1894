//! The operator's pods' images, built locally (feature `node`, needs root):
//! Redis and PostgreSQL from this machine's packages, the data plane and
//! the operator from the workspace's binaries (`SWITCHBOARD_E2E_BIN_DIR`,
//! else `target/debug`: `cargo build` first). Each runs on the local node
//! with the security context the operator gives its pods (non-root uid,
//! read-only root filesystem, no capabilities, no privilege escalation,
//! seccomp RuntimeDefault) and the volumes it mounts (Redis and PostgreSQL
//! data on claims of the node's default StorageClass), and serves what it
//! should to this machine (which reaches pod IPs through the node's bridge).
//!
//! Where the machine cannot run a node, the test says why and passes,
//! unless `SWITCHBOARD_NODE_REQUIRED=1` (then it fails).
#![cfg(feature = "node")]
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use switchboard_testkit::node::images::{
    self, LocalImage, SERVICE_UID, SWITCHBOARD_UID, operator_image_name, switchboard_image_name,
};
use switchboard_testkit::node::pods::{pod_finished, pod_ready, pod_report, wait_for_pod};
use switchboard_testkit::node::{self, Node};
use switchboard_testkit::{ControlPlane, resp_command_auth};

const REDIS_PASSWORD: &str = "redis-test-password";
const PG_PASSWORD: &str = "pg-test-password";
/// The role and database the operator's PostgreSQL pods create.
const PG_USER: &str = "switchboard";

/// The operator's pod security context (`build::pod_security`); `uid`
/// `None`: the image's `User` (the chart's operator pod).
fn pod_security(uid: Option<u32>) -> serde_json::Value {
    let mut s = json!({
        "runAsNonRoot": true,
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    if let Some(uid) = uid {
        s["runAsUser"] = json!(uid);
        s["runAsGroup"] = json!(uid);
        s["fsGroup"] = json!(uid);
    }
    s
}

/// The operator's container security context (`build::container_security`).
fn container_security() -> serde_json::Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn pod(name: &str, uid: Option<u32>, mut spec: serde_json::Value) -> Pod {
    spec["securityContext"] = pod_security(uid);
    spec["automountServiceAccountToken"] = json!(false);
    for c in spec["containers"].as_array_mut().unwrap() {
        c["securityContext"] = container_security();
        c["imagePullPolicy"] = json!("Never");
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

fn secret(name: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": data,
    }))
    .unwrap()
}

/// A claim of the node's default StorageClass, as a StatefulSet's
/// `volumeClaimTemplates` make them.
fn claim(name: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } },
        },
    }))
    .unwrap()
}

fn empty_dir(name: &str) -> serde_json::Value {
    json!({ "name": name, "emptyDir": {} })
}

/// `GET path` on `ip:port` from this machine: the status code.
fn http_status(ip: &str, port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect((ip, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {head:?}")))
}

/// `psql` from this machine to `ip` as [`PG_USER`] with `password`.
fn psql(ip: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(format!("postgres://{PG_USER}@{ip}:5432/{PG_USER}"))
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

async fn ready_ip(pods: &Api<Pod>, name: &str, n: &Node) -> String {
    let p = wait_for_pod(pods, name, "Ready", pod_ready, Duration::from_secs(120), n)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    p.status.and_then(|s| s.pod_ip).unwrap()
}

async fn finished(pods: &Api<Pod>, name: &str, n: &Node) -> (String, String) {
    let p = wait_for_pod(
        pods,
        name,
        "finished",
        pod_finished,
        Duration::from_secs(120),
        n,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let logs = pods.logs(name, &LogParams::default()).await.unwrap();
    (p.status.and_then(|s| s.phase).unwrap(), logs)
}

fn size_mb(img: &LocalImage) -> f64 {
    std::fs::metadata(&img.archive).unwrap().len() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_images_run_with_its_security_context() {
    if let Some(why) = node::skip_reason().unwrap_or_else(|e| panic!("{e}")) {
        eprintln!("SKIPPED: this machine cannot run a local node: {why}");
        return;
    }
    let started = Instant::now();
    // The images first: a missing binary fails here, before any node.
    let out = tempfile::tempdir().unwrap();
    let bins = images::workspace_bin_dir();
    let t = Instant::now();
    let built = images::build_all(&bins, out.path()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("built 4 images in {:.1} s", t.elapsed().as_secs_f64());
    for img in built.all() {
        eprintln!("  {}: {:.1} MB", img.name, size_mb(img));
    }
    assert_eq!(built.switchboard.name, switchboard_image_name());
    assert_eq!(built.operator.name, operator_image_name());
    let (redis, postgres, switchboard, operator) = (
        &built.redis,
        &built.postgres,
        &built.switchboard,
        &built.operator,
    );

    let cp =
        ControlPlane::start_with(node::control_plane_options()).unwrap_or_else(|e| panic!("{e}"));
    let n = Node::start(&cp).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    for img in built.all() {
        n.import_image(&img.archive)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("imported them in {:.1} s", t.elapsed().as_secs_f64());

    let client = cp.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // Redis as the operator runs it: its redis.conf from a ConfigMap, the
    // password from a Secret (auth.conf, REDISCLI_AUTH for the probe), AOF
    // in /data on a claimed volume.
    claims.create(&pp, &claim("redis-data")).await.unwrap();
    let conf: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "redis" },
        "data": { "redis.conf": "port 6379\nbind * -::*\nprotected-mode yes\n\
            include /etc/redis/auth/auth.conf\ndir /data\nappendonly yes\n\
            appendfsync everysec\nmaxmemory-policy noeviction\n" },
    }))
    .unwrap();
    config_maps.create(&pp, &conf).await.unwrap();
    let auth = secret(
        "redis-auth",
        json!({
            "password": REDIS_PASSWORD,
            "auth.conf": format!("requirepass {REDIS_PASSWORD}\nmasterauth {REDIS_PASSWORD}\n"),
        }),
    );
    secrets.create(&pp, &auth).await.unwrap();
    let redis_pod = pod(
        "redis",
        Some(SERVICE_UID),
        json!({
            "containers": [{
                "name": "redis",
                "image": redis.name,
                "command": ["redis-server"],
                "args": ["/etc/redis/redis.conf"],
                "env": [{
                    "name": "REDISCLI_AUTH",
                    "valueFrom": { "secretKeyRef": { "name": "redis-auth", "key": "password" } },
                }],
                "readinessProbe": {
                    "exec": { "command": ["redis-cli", "ping"] },
                    "periodSeconds": 1,
                    "timeoutSeconds": 2,
                },
                "volumeMounts": [
                    { "name": "data", "mountPath": "/data" },
                    { "name": "config", "mountPath": "/etc/redis", "readOnly": true },
                    { "name": "auth", "mountPath": "/etc/redis/auth", "readOnly": true },
                ],
            }],
            "volumes": [
                { "name": "data", "persistentVolumeClaim": { "claimName": "redis-data" } },
                { "name": "config", "configMap": { "name": "redis" } },
                { "name": "auth", "secret": { "secretName": "redis-auth", "defaultMode": 0o440 } },
            ],
        }),
    );
    pods.create(&pp, &redis_pod).await.unwrap();

    // PostgreSQL with the operator's env and mounts, data on a claimed
    // volume.
    claims.create(&pp, &claim("postgres-data")).await.unwrap();
    let pg_secret = secret("postgres", json!({ "password": PG_PASSWORD }));
    secrets.create(&pp, &pg_secret).await.unwrap();
    let pg_pod = |name: &str, password: serde_json::Value, data: serde_json::Value| {
        pod(
            name,
            Some(SERVICE_UID),
            json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "postgres",
                    "image": postgres.name,
                    "env": [
                        { "name": "POSTGRES_USER", "value": PG_USER },
                        { "name": "POSTGRES_DB", "value": PG_USER },
                        password,
                        { "name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata" },
                    ],
                    "readinessProbe": {
                        "exec": { "command": ["pg_isready", "-U", PG_USER, "-h", "127.0.0.1"] },
                        "periodSeconds": 1,
                        "timeoutSeconds": 3,
                    },
                    "volumeMounts": [
                        { "name": "data", "mountPath": "/var/lib/postgresql/data" },
                        { "name": "run", "mountPath": "/var/run/postgresql" },
                        { "name": "tmp", "mountPath": "/tmp" },
                    ],
                }],
                "volumes": [data, empty_dir("run"), empty_dir("tmp")],
            }),
        )
    };
    let from_secret = json!({
        "name": "POSTGRES_PASSWORD",
        "valueFrom": { "secretKeyRef": { "name": "postgres", "key": "password" } },
    });
    let pvc = json!({ "name": "data", "persistentVolumeClaim": { "claimName": "postgres-data" } });
    pods.create(&pp, &pg_pod("postgres", from_secret, pvc))
        .await
        .unwrap();
    // Without a password the entrypoint refuses to initialise.
    let empty = json!({ "name": "POSTGRES_PASSWORD", "value": "" });
    pods.create(&pp, &pg_pod("postgres-nopass", empty, empty_dir("data")))
        .await
        .unwrap();

    // The data plane: `switchboard dev` (in-memory broker) as 65532, the
    // session secret mounted like the gateway's, /tmp an emptyDir.
    let session = secret(
        "session",
        json!({ "token-secret": "0123456789abcdef0123456789abcdef" }),
    );
    secrets.create(&pp, &session).await.unwrap();
    let sb_pod = pod(
        "switchboard",
        Some(SWITCHBOARD_UID),
        json!({
            "containers": [{
                "name": "switchboard",
                "image": switchboard.name,
                "command": ["switchboard", "dev", "--listen", "0.0.0.0:8080",
                    "--token-secret-file", "/var/run/switchboard/session/token-secret"],
                "readinessProbe": {
                    "httpGet": { "path": "/readyz", "port": 8080 },
                    "periodSeconds": 1,
                },
                "volumeMounts": [
                    { "name": "session", "mountPath": "/var/run/switchboard/session", "readOnly": true },
                    { "name": "tmp", "mountPath": "/tmp" },
                ],
            }],
            "volumes": [
                { "name": "session", "secret": { "secretName": "session", "defaultMode": 0o440 } },
                empty_dir("tmp"),
            ],
        }),
    );
    pods.create(&pp, &sb_pod).await.unwrap();

    // The operator image, as the chart runs it: no runAsUser (the image's
    // numeric User satisfies runAsNonRoot).
    let op_pod = pod(
        "operator",
        None,
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "operator",
                "image": operator.name,
                "args": ["--version"],
            }],
        }),
    );
    pods.create(&pp, &op_pod).await.unwrap();

    // (1) Redis: Ready through `redis-cli ping`; this machine PINGs it
    // with the password, is refused without, and a write lands in the AOF.
    let ip = ready_ip(&pods, "redis", &n).await;
    let addr = format!("{ip}:6379");
    assert_eq!(
        resp_command_auth(&addr, Some(REDIS_PASSWORD), &["PING"]).unwrap(),
        "PONG"
    );
    assert_eq!(
        resp_command_auth(&addr, Some(REDIS_PASSWORD), &["SET", "k", "v"]).unwrap(),
        "OK"
    );
    let noauth = resp_command_auth(&addr, None, &["GET", "k"]);
    assert!(
        format!("{noauth:?}").contains("NOAUTH"),
        "without the password: {noauth:?}"
    );
    eprintln!("redis Ready after {:.1} s", started.elapsed().as_secs_f64());

    // (2) PostgreSQL: Ready through pg_isready; the password works over
    // TCP, a wrong one is refused; an empty one stops the entrypoint.
    let ip = ready_ip(&pods, "postgres", &n).await;
    let ok = psql(
        &ip,
        PG_PASSWORD,
        "CREATE TABLE t (x int); INSERT INTO t VALUES (42); SELECT x FROM t;",
    );
    let report = || pod_report(&pods, "postgres", &n);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("42"),
        "psql with the password: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        report().await
    );
    // The image has what initdb and the server look for (a missing tool
    // shows as "sh: 1: X: not found", a missing locale as a WARNING).
    let logs = pods.logs("postgres", &LogParams::default()).await.unwrap();
    assert!(
        !logs.contains("not found") && !logs.contains("WARNING"),
        "postgres logs: {logs}"
    );
    let bad = psql(&ip, "wrong", "SELECT 1");
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && bad_err.contains("password authentication failed"),
        "a wrong password: {bad_err}"
    );
    let (phase, logs) = finished(&pods, "postgres-nopass", &n).await;
    assert_eq!(phase, "Failed", "logs: {logs}");
    assert!(
        logs.contains("POSTGRES_PASSWORD is empty or unset"),
        "logs: {logs}"
    );
    eprintln!(
        "postgres Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A restart (as a StatefulSet's pod is replaced) keeps the data: the
    // entrypoint finds PGDATA initialised and starts the server as is. The
    // old pod goes well within its 30 s grace period: SIGTERM reaches
    // postgres (the entrypoint execs it), which shuts down.
    let old = pods.get("postgres").await.unwrap();
    let uid = old.metadata.uid.clone().unwrap();
    let t = Instant::now();
    pods.delete("postgres", &DeleteParams::default())
        .await
        .unwrap();
    let gone = tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(pods.clone(), "postgres", conditions::is_deleted(&uid)),
    )
    .await;
    assert!(
        matches!(gone, Ok(Ok(_))),
        "postgres not gone within 20 s of SIGTERM: {gone:?}\n{}",
        n.log_tails()
    );
    eprintln!("postgres stopped in {:.1} s", t.elapsed().as_secs_f64());
    let pvc = json!({ "name": "data", "persistentVolumeClaim": { "claimName": "postgres-data" } });
    let from_secret = json!({
        "name": "POSTGRES_PASSWORD",
        "valueFrom": { "secretKeyRef": { "name": "postgres", "key": "password" } },
    });
    pods.create(&pp, &pg_pod("postgres", from_secret, pvc))
        .await
        .unwrap();
    let ip = ready_ip(&pods, "postgres", &n).await;
    let again = psql(&ip, PG_PASSWORD, "SELECT x FROM t;");
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).trim() == "42",
        "the table after a restart: {}{}\n{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr),
        pod_report(&pods, "postgres", &n).await
    );
    let logs = pods.logs("postgres", &LogParams::default()).await.unwrap();
    assert!(!logs.contains("initialised"), "initialised again: {logs}");

    // (3) The data plane answers its health and readiness endpoints.
    let ip = ready_ip(&pods, "switchboard", &n).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_status(&ip, 8080, path).unwrap(), 200, "GET {path}");
    }

    // (4) The operator binary runs.
    let (phase, logs) = finished(&pods, "operator", &n).await;
    assert_eq!(phase, "Succeeded", "logs: {logs}");
    assert!(
        logs.contains(concat!("switchboard-operator ", env!("CARGO_PKG_VERSION"))),
        "logs: {logs}"
    );
    drop(n);
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

/// The same files give the same archive (so re-importing it is a no-op):
/// Redis's image built twice, byte for byte. Needs no node (nor root).
#[test]
fn an_image_built_twice_is_the_same() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = images::redis_image(a.path()).unwrap_or_else(|e| panic!("{e}"));
    let second = images::redis_image(b.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.name, second.name);
    assert!(
        std::fs::read(&first.archive).unwrap() == std::fs::read(&second.archive).unwrap(),
        "{} and {} differ",
        first.archive.display(),
        second.archive.display()
    );
}
