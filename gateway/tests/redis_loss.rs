//! Redis restarting empty under connected users (issue 13, finding 5): the
//! registry that routes messages to gateways is gone, and the sockets stay
//! open. Each gateway notices on its next liveness refresh that Redis no
//! longer lists it and registers its users again, so delivery resumes over
//! the same sockets within seconds. (Before, a user was registered only when
//! their first socket opened: the open sockets never received again.)
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchboard_proto::ids::ConvId;

/// Send fresh messages from `from` until `to` gets one of them live (the
/// first sends may be refused or go unrouted while Redis comes back and the
/// gateways notice), or panic after `within`. A message accepted before its
/// recipient was registered again is not lost: it is in the log, and the
/// recipient's next `msg` shows the gap its `sync` fills.
async fn deliver(from: &mut Ws, to: &mut Ws, conv: &str, tag: &str, within: Duration) {
    let deadline = Instant::now() + within;
    for attempt in 0.. {
        let id = format!("{tag}-{attempt}");
        from.send(json!({"type":"send","conv":conv,"id":id,"body":id}))
            .await;
        if let Some(got) = wait_for(to, &id, Duration::from_millis(700)).await {
            to.ack(&got).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing from {tag} delivered within {within:?}"
        );
    }
}

/// The `msg` with id `id` on `ws` within `d`, skipping other frames.
async fn wait_for(ws: &mut Ws, id: &str, d: Duration) -> Option<Value> {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let frame = ws.try_recv(left).await?;
        if frame["type"] == "msg" && frame["id"] == id {
            return Some(frame);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_on_the_same_sockets_after_redis_restarts_empty() {
    let mut backend = Backend::redis();
    let (gw1, gw2) = (
        start_gateway(&backend, fast_config()).await,
        start_gateway(&backend, fast_config()).await,
    );
    let (a, b) = (Wallet::random(), Wallet::random());
    let ta = login(&http(&gw1), &a).await;
    let tb = login(&http(&gw2), &b).await;
    let conv = ConvId::direct(&a.addr, &b.addr).unwrap().to_string();
    let mut wa = Ws::connect(&gw1, &ta).await;
    let mut wb = Ws::connect(&gw2, &tb).await;
    deliver(&mut wa, &mut wb, &conv, "before", Duration::from_secs(5)).await;

    let Backend::Redis(redis) = &mut backend else {
        unreachable!()
    };
    redis.wipe_and_restart().unwrap();

    // Both directions, over the sockets opened before the restart: each
    // gateway had to register its own user again.
    deliver(&mut wa, &mut wb, &conv, "after-1", Duration::from_secs(10)).await;
    deliver(&mut wb, &mut wa, &conv, "after-2", Duration::from_secs(10)).await;
    for gw in [&gw1, &gw2] {
        let metrics = reqwest::get(format!("http://{}/metrics", gw.metrics_addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let reasserted: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_gateway_registrations_reasserted_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(reasserted >= 1, "{metrics}");
    }
    gw1.shutdown().await;
    gw2.shutdown().await;
}
