//! The conversation REST API on the broker alone (no PostgreSQL): the
//! embedded default answers the same requests from what the broker holds.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

async fn get(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn listing_history_members_without_a_store() {
    for backend in [Backend::memory(), Backend::redis()] {
        let gw = start_gateway(&backend, fast_config()).await;
        let base = http(&gw);
        let (a, b, c) = (Wallet::random(), Wallet::random(), Wallet::random());
        let (ta, tb, tc) = (
            login(&base, &a).await,
            login(&base, &b).await,
            login(&base, &c).await,
        );
        let g = create_group(&base, &ta, &[b.addr]).await;
        let mut wa = Ws::connect(&gw, &ta).await;
        for i in 1..=3 {
            wa.send(json!({"type": "send", "conv": g, "id": format!("m{i}"), "body": {"n": i}}))
                .await;
            wa.recv_type("sent").await;
        }
        let mut wb = Ws::connect(&gw, &tb).await;
        wb.send(json!({"type": "read", "conv": g, "seq": 3})).await;
        let dm = switchboard_proto::ids::ConvId::direct(&a.addr, &b.addr).unwrap();
        wb.send(json!({"type": "send", "conv": dm, "id": "d1", "body": "hi"}))
            .await;
        wb.recv_type("sent").await;

        let (st, list) = get(&base, &ta, "/v1/conversations").await;
        assert_eq!(st, 200, "{list}");
        let convs = list["conversations"].as_array().unwrap();
        assert_eq!(convs.len(), 2, "{list}");
        assert_eq!(convs[0]["id"], dm.as_str());
        assert_eq!(convs[0]["unread"], 1);
        assert_eq!(convs[1]["unread"], 0);

        // Statuses follow b's read mark (it may take a moment to apply).
        let path = format!("/v1/conversations/{g}/messages");
        let mut statuses = vec![];
        for _ in 0..50 {
            let (_, h) = get(&base, &ta, &path).await;
            statuses = h["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["status"].as_str().unwrap().to_string())
                .collect();
            if statuses.iter().all(|s| s == "read") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(statuses, ["read", "read", "read"]);

        // Members: add c, c reads history; c leaves; outsiders get 404.
        let r = reqwest::Client::new()
            .post(format!("{base}{path}").replace("/messages", "/members"))
            .bearer_auth(&ta)
            .json(&json!({"members": [c.addr]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (st, h) = get(&base, &tc, &path).await;
        assert_eq!((st, h["messages"].as_array().unwrap().len()), (200, 3));
        let r = reqwest::Client::new()
            .delete(format!("{base}/v1/conversations/{g}/members/{}", c.addr))
            .bearer_auth(&tc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        let (st, body) = get(&base, &tc, &path).await;
        assert_eq!(st, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        gw.shutdown().await;
    }
}
