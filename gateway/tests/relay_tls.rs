//! The fallback relay over HTTPS (`tls: true`, the default), with the
//! shipped `switchboard-gateway` binary: the relay (a Switchboard gateway)
//! sits behind a TLS-terminating proxy whose certificate a test CA signed,
//! trusted the way a deployment trusts a private CA — in the platform's
//! store (`SSL_CERT_FILE`, which the platform verifier reads on Linux; set
//! on the gateway processes only). A message sent while Redis is down
//! crosses from one gateway process to the other through it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::process::{free_addr, gateway_command};
use common::relay::*;
use common::*;
use serde_json::json;
use switchboard_proto::ids::ConvId;
use switchboard_testkit::tls::{TestCa, TlsProxy};
use tokio::process::Child;

/// A gateway process using the relay file `relay`; returns it with its
/// public and metrics addresses once it answers `/readyz`.
async fn gateway(
    redis_url: &str,
    dir: &Path,
    relay: &Path,
    ca_file: &Path,
) -> (Child, SocketAddr, SocketAddr) {
    let (addr, metrics) = (free_addr(), free_addr());
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let child = gateway_command(addr, redis_url, &secret)
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--relay-config")
        .arg(relay)
        .args(["--relay-api-key", RELAY_KEY])
        .env("SSL_CERT_FILE", ca_file)
        .spawn()
        .unwrap();
    until("the gateway process", Duration::from_secs(20), || async {
        readyz_at(addr).await.0 == 200
    })
    .await;
    (child, addr, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_an_https_relay_trusted_through_the_platform_store() {
    let ca = TestCa::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path()).unwrap();
    let relay = start_relay().await;
    let proxy = TlsProxy::start(&ca, relay.local_addr()).await.unwrap();
    let relay_file = dir.path().join("relay.json");
    let host = format!("localhost:{}", proxy.addr().port());
    // No "tls" key: HTTPS is the default.
    std::fs::write(
        &relay_file,
        json!({"hosts": [host], "provider": "switchboard"}).to_string(),
    )
    .unwrap();

    let mut backend = Backend::redis();
    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };
    let url = redis.url();
    let (_p1, gw1, m1) = gateway(&url, dir.path(), &relay_file, &ca_file).await;
    let (_p2, gw2, m2) = gateway(&url, dir.path(), &relay_file, &ca_file).await;
    for m in [m1, m2] {
        until(
            "the relay subscription over TLS",
            Duration::from_secs(10),
            || async { metric_at(m, "relay_subscribed").await == 1 },
        )
        .await;
    }
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&format!("http://{gw1}"), &a).await;
    let tb = login(&format!("http://{gw2}"), &b).await;
    let dm = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let mut wa = Ws::connect_at(gw1, &ta).await;
    let mut wb = Ws::connect_at(gw2, &tb).await;

    redis.kill9();
    until("relay mode", Duration::from_secs(10), || {
        relay_mode_at(gw1, true)
    })
    .await;
    wa.send(json!({"type":"send","conv":&dm,"id":"over-tls","body":"x"}))
        .await;
    assert_eq!(
        next_of(&mut wa, "sent", Duration::from_secs(5)).await["relayed"],
        true
    );
    msgs(&mut wb, &["over-tls"], true).await;
    assert_eq!(metric_at(m1, "relay_published").await, 1);
    assert_eq!(metric_at(m2, "relay_received").await, 1);
    relay.shutdown().await;
}
