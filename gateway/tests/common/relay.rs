//! Helpers of the fallback relay tests: a Switchboard gateway as the relay,
//! gateways configured to use it, and readers of what their sockets,
//! metrics and `/readyz` say.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_gateway::config::LimitsConfig;
use switchboard_gateway::{Gateway, GatewayConfig, RelayConfig};

use super::*;

pub const RELAY_KEY: &str = "relay.key:relay-secret";

/// The relay: a memory-engine gateway with an API key (its own token
/// secret: it is another cluster).
pub async fn start_relay() -> Gateway {
    let cfg = GatewayConfig {
        token_secret: b"the relay cluster's own secret".to_vec(),
        api_keys: vec![RELAY_KEY.parse().unwrap()],
        limits: LimitsConfig::off(),
        ..fast_config()
    };
    start_gateway(&Backend::memory(), cfg).await
}

pub fn relayed_config(relay_addr: &str) -> GatewayConfig {
    let file = json!({"hosts": [relay_addr], "provider": "switchboard", "tls": false});
    GatewayConfig {
        relay: Some(RelayConfig::parse(&file.to_string(), Some(RELAY_KEY.into())).unwrap()),
        ..fast_config()
    }
}

pub async fn metric(gw: &Gateway, name: &str) -> u64 {
    metric_at(gw.metrics_addr(), name).await
}

/// A counter or gauge from the metrics listener at `addr` (0 when absent
/// or unreachable).
pub async fn metric_at(addr: std::net::SocketAddr, name: &str) -> u64 {
    let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    let prefix = format!("switchboard_gateway_{name} ");
    let total = format!("switchboard_gateway_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).or_else(|| l.strip_prefix(&total)))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn readyz(gw: &Gateway) -> (u16, String) {
    readyz_at(gw.local_addr()).await
}

pub async fn readyz_at(addr: std::net::SocketAddr) -> (u16, String) {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Wait until `check` holds, polling; panics with `what` after `within`.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next frame of type `ty` on `ws` within `d`, skipping others.
pub async fn next_of(ws: &mut Ws, ty: &str, d: Duration) -> Value {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no {ty} frame within {d:?}"));
        let f = ws
            .try_recv(left)
            .await
            .unwrap_or_else(|| panic!("no {ty} frame within {d:?}"));
        if f["type"] == ty {
            return f;
        }
        assert!(
            f["type"] != "error",
            "an error frame while waiting for {ty}: {f}"
        );
    }
}

/// `msg` frames on `ws` until every id in `ids` came in the wanted form
/// (`relayed` or sequenced); acks the sequenced ones. Returns them by id.
pub async fn msgs(ws: &mut Ws, ids: &[&str], relayed: bool) -> HashMap<String, Value> {
    msgs_and_errors(ws, ids, relayed, &mut Vec::new()).await
}

/// Like [`msgs`], keeping the `error` frames seen on the way in `errors`.
pub async fn msgs_and_errors(
    ws: &mut Ws,
    ids: &[&str],
    relayed: bool,
    errors: &mut Vec<Value>,
) -> HashMap<String, Value> {
    let mut got: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.iter().any(|id| !got.contains_key(*id)) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| {
                panic!("missing {ids:?} (relayed: {relayed}); got {:?}", got.keys())
            });
        let Some(f) = ws.try_recv(left).await else {
            panic!("missing {ids:?} (relayed: {relayed}); got {:?}", got.keys());
        };
        if f["type"] == "error" {
            errors.push(f.clone());
        }
        if f["type"] != "msg" {
            continue;
        }
        let is_relayed = f["relayed"] == true;
        if is_relayed {
            assert_eq!(f["seq"], 0, "a relayed msg has no seq: {f}");
        } else {
            ws.ack(&f).await;
        }
        if is_relayed == relayed {
            let id = f["id"].as_str().unwrap().to_string();
            match got.get(&id) {
                // The gateway's resend of a sequenced msg not acked within
                // the ack timeout (the test may have been busy elsewhere,
                // e.g. polling the other gateway's relay mode, while it
                // arrived): the same (conv, seq), which clients drop. A
                // second seq for one id would be a message stored twice.
                Some(earlier) if !is_relayed && earlier["seq"] == f["seq"] => {}
                Some(earlier) => panic!("{id} delivered twice: {earlier} then {f}"),
                None => {
                    got.insert(id, f.clone());
                }
            }
        }
    }
    got
}

/// History of `conv` as `token` sees it: (id, seq) oldest first.
pub async fn history(gw: &Gateway, token: &str, conv: &str) -> Vec<(String, u64)> {
    let r: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{conv}/messages?limit=100",
            http(gw)
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, u64)> = r["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort_by_key(|(_, s)| *s);
    out
}

pub async fn relay_mode(gw: &Gateway, on: bool) -> bool {
    relay_mode_at(gw.local_addr(), on).await
}

/// Whether the gateway at `addr` says (on `/readyz`) it is in relay mode
/// (`on`) or plainly ready (`!on`).
pub async fn relay_mode_at(addr: std::net::SocketAddr, on: bool) -> bool {
    let (status, body) = readyz_at(addr).await;
    status == 200 && body.contains("Redis unreachable") == on && (on || body == "ready")
}
