//! The managed Redis's configuration, run for real: every fixture's and
//! example's `redis.conf` (the ConfigMap) with the `auth.conf` of its
//! generated Secret, started with `redis-server` as the pod would (paths
//! and port moved into a temp dir). The server refuses clients without the
//! password, accepts the password the gateways and workers get from the
//! Secret, runs with `maxmemory` below the container's memory limit and
//! `noeviction`, and a full Redis refuses a send with `unavailable` instead
//! of growing.
#![allow(clippy::unwrap_used)]

mod clusters;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::value::RawValue;
use switchboard_core::broker::{Broker, BrokerConfig, BrokerError, RedisBroker, RedisTarget};
use switchboard_operator::build::{self, Generated, Observed};
use switchboard_operator::crd::RedisMode;
use switchboard_proto::ids::{Address, ConvId, ConvKind};
use switchboard_proto::model::Conversation;
use switchboard_testkit::{find_binary, free_port, resp_command, resp_command_auth};

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` with the operator's config, moved into a temp dir.
fn start(conf: &str, auth_conf: &[u8]) -> Server {
    let bin = find_binary(
        "redis-server",
        "REDIS_SERVER_BIN",
        "apt-get install -y redis-server",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::write(dir.path().join("auth.conf"), auth_conf).unwrap();
    let port = free_port().unwrap();
    let conf = conf
        .replace("port 6379", &format!("port {port}"))
        .replace("bind * -::*", "bind 127.0.0.1")
        .replace("/etc/redis/auth/auth.conf", &format!("{d}/auth.conf"))
        .replace("/data", &d);
    assert!(conf.contains(&format!("include {d}/auth.conf")), "{conf}");
    let path = dir.path().join("redis.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .arg(&path)
        .args(["--daemonize", "no", "--logfile", ""])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while resp_command(&addr, &["PING"]).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        addr,
        _dir: dir,
    }
}

fn secret_key(s: &Secret, key: &str) -> Vec<u8> {
    s.data.as_ref().unwrap()[key].0.clone()
}

#[test]
fn every_managed_redis_requires_its_password_and_caps_its_memory() {
    let mut checked = 0;
    for (path, cluster) in clusters::clusters() {
        let Some(managed) = cluster.spec.redis.managed.clone() else {
            continue;
        };
        let at = path.display().to_string();
        let generated = Generated::random();
        let d = build::desired(&cluster, &Observed::default(), &generated).unwrap();
        let name = format!("{}-redis", cluster.metadata.name.clone().unwrap());
        let cm: &ConfigMap = d
            .config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(&name))
            .unwrap();
        let conf = &cm.data.as_ref().unwrap()["redis.conf"];
        assert!(
            !conf.contains(&generated.redis_password),
            "{at}: the ConfigMap holds the password"
        );
        let secret = d
            .generated_secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&name))
            .unwrap_or_else(|| panic!("{at}: no Secret {name}"));
        let password = String::from_utf8(secret_key(secret, "password")).unwrap();
        assert_eq!(password, generated.redis_password, "{at}");

        let server = start(conf, &secret_key(secret, "auth.conf"));
        let no_auth = resp_command(&server.addr, &["GET", "x"]).unwrap();
        assert!(no_auth.starts_with("-NOAUTH"), "{at}: {no_auth}");
        let ask = |args: &[&str]| resp_command_auth(&server.addr, Some(&password), args).unwrap();
        assert_eq!(ask(&["PING"]), "PONG", "{at}");
        assert_eq!(
            ask(&["CONFIG", "GET", "masterauth"]),
            format!("masterauth\n{password}")
        );
        let want = build::redis::maxmemory(&managed).unwrap();
        assert_eq!(
            ask(&["CONFIG", "GET", "maxmemory"]),
            format!("maxmemory\n{want}")
        );
        assert_eq!(
            ask(&["CONFIG", "GET", "maxmemory-policy"]),
            "maxmemory-policy\nnoeviction"
        );
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} managed Redis configs checked");
}

/// `noeviction` at work: once Redis is full a send is refused with
/// `unavailable` (nothing is evicted, the server does not grow).
#[tokio::test]
async fn a_full_redis_refuses_sends_as_unavailable() {
    let (path, cluster) = clusters::clusters()
        .into_iter()
        .find(|(_, c)| {
            c.spec
                .redis
                .managed
                .as_ref()
                .is_some_and(|m| m.mode == RedisMode::Standalone)
        })
        .unwrap();
    let generated = Generated::random();
    let d = build::desired(&cluster, &Observed::default(), &generated).unwrap();
    let name = format!("{}-redis", cluster.metadata.name.clone().unwrap());
    let cm = d
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&name))
        .unwrap();
    let secret = d
        .generated_secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&name))
        .unwrap();
    let server = start(
        &cm.data.as_ref().unwrap()["redis.conf"],
        &secret_key(secret, "auth.conf"),
    );
    let password = generated.redis_password.clone();
    // The built maxmemory is the container's (hundreds of MiB); lower it to
    // just above what the empty server uses so the test fills it quickly.
    let info = resp_command_auth(&server.addr, Some(&password), &["INFO", "memory"]).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cap = (used + 512 * 1024).to_string();
    resp_command_auth(
        &server.addr,
        Some(&password),
        &["CONFIG", "SET", "maxmemory", &cap],
    )
    .unwrap();

    let target = RedisTarget::new(format!("redis://{}", server.addr), Some(password));
    let b = RedisBroker::connect_to(&target, BrokerConfig::default())
        .await
        .unwrap();
    let x = Address(rand::random());
    let conv = Conversation {
        id: ConvId::new_group(),
        kind: ConvKind::Group,
        title: None,
        members: vec![x],
        created_by: Some(x),
        created_at: 1,
        publishers: Vec::new(),
        visibility: None,
    };
    b.create_group(&conv).await.unwrap();
    let text = format!("{{\"t\":\"{}\"}}", "x".repeat(16 * 1024));
    let mut refused = None;
    for i in 0..1000u32 {
        let req = switchboard_core::broker::SendRequest {
            conv: conv.id.clone(),
            id: format!("00000000-0000-4000-8000-{i:012}").parse().unwrap(),
            from: x,
            body: RawValue::from_string(text.clone()).unwrap(),
            privileged: false,
        };
        if let Err(e) = b.send(req).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.unwrap_or_else(|| panic!("{}: 16 MiB of sends into 512 KiB", path.display()));
    assert!(matches!(e, BrokerError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("OOM"), "{e}");
    b.quit().await;
}
