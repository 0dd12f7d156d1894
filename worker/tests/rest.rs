//! The conversation REST API with PostgreSQL as the source of truth:
//! listing with unread counts and pagination, history with delivery status,
//! membership management, bulk presence, and every refusal.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use switchboard_core::broker::{Broker, Mark, RedisBroker};
use switchboard_gateway::{Gateway, GatewayConfig};
use switchboard_proto::ids::{Address, ConvId, MsgId};
use switchboard_testkit::{Postgres, RedisServer};
use switchboard_worker::Worker;
use tokio_util::sync::CancellationToken;

struct Api {
    http: Client,
    base: String,
    gw: Gateway,
}

impl Api {
    fn token(&self, u: &Address) -> String {
        self.gw
            .state()
            .chat
            .tokens
            .issue(u, Duration::from_secs(60), time::OffsetDateTime::now_utc())
            .0
    }
    async fn get(&self, u: &Address, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token(u))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, u: &Address, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token(u))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn delete(&self, u: &Address, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(self.token(u))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn assert_error(got: &(StatusCode, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0.as_u16(), status, "{:?}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{:?}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn conversations_history_members_and_presence() {
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "rest").await;
    let broker = Arc::new(
        RedisBroker::connect(&redis.url(), broker_config())
            .await
            .unwrap(),
    );
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start_with_store(
        GatewayConfig::default(),
        broker.clone(),
        Some(Arc::new(store.clone())),
        listener,
    )
    .await
    .unwrap();
    let api = Api {
        http: Client::new(),
        base: format!("http://{}", gw.local_addr()),
        gw,
    };
    let (a, b, c, outsider) = (addr(), addr(), addr(), addr());

    // a creates a group with b: PostgreSQL holds it, a is admin.
    let (st, g) = api
        .post(
            &a,
            "/v1/conversations",
            json!({"kind": "group", "members": [b.to_string()], "title": "team"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    let g: ConvId = g["id"].as_str().unwrap().parse().unwrap();
    let members = store_members(&store, &g).await;
    assert_eq!(members.len(), 2);
    assert!(members.contains(&(a.lower(), "admin".into())));

    // Traffic: 3 group messages from a, then 2 direct messages b → a.
    let dm = ConvId::direct(&a, &b).unwrap();
    let mut sent = Sent::new();
    for i in 1..=3 {
        send(
            &broker,
            &mut sent,
            &g,
            a,
            &MsgId::random(),
            &format!(r#"{{"g":{i}}}"#),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 1..=2 {
        send(
            &broker,
            &mut sent,
            &dm,
            b,
            &MsgId::random(),
            &format!(r#"{{"d":{i}}}"#),
        )
        .await
        .unwrap();
    }
    // b has read the group up to 2 and received 3.
    broker.mark(&g, &b, Mark::Delivered, 3).await.unwrap();
    broker.mark(&g, &b, Mark::Read, 2).await.unwrap();
    drained(&streams, Duration::from_secs(20)).await;

    // Listing: newest first, unread counts others' messages only.
    let (st, list) = api.get(&a, "/v1/conversations").await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let convs = list["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 2, "{list}");
    assert_eq!(convs[0]["id"], dm.as_str());
    assert_eq!(
        (convs[0]["last_seq"].as_u64(), convs[0]["unread"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(convs[1]["id"], g.as_str());
    assert_eq!(convs[1]["unread"], 0, "own messages are not unread");
    assert_eq!(convs[1]["title"], "team");
    // Pagination: one per page, then the cursor.
    let (_, p1) = api.get(&a, "/v1/conversations?limit=1").await;
    assert_eq!(p1["conversations"][0]["id"], dm.as_str());
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = api
        .get(&a, &format!("/v1/conversations?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(p2["conversations"][0]["id"], g.as_str());
    assert!(p2.get("next_cursor").is_none(), "{p2}");
    let (_, b_list) = api.get(&b, "/v1/conversations").await;
    assert_eq!(b_list["conversations"][1]["unread"], 1, "{b_list}");
    assert_error(
        &api.get(&a, "/v1/conversations?limit=0").await,
        400,
        "bad_request",
        "limit",
    );
    assert_error(
        &api.get(&a, "/v1/conversations?limit=201").await,
        400,
        "bad_request",
        "at most 200",
    );
    assert_error(
        &api.get(&a, "/v1/conversations?cursor=zzz").await,
        400,
        "bad_request",
        "cursor",
    );
    assert_error(
        &api.get(&a, "/v1/conversations?bogus=1").await,
        400,
        "bad_request",
        "bogus",
    );

    // History with status of the caller's own messages.
    let path = format!("/v1/conversations/{g}/messages");
    let (st, h) = api.get(&a, &path).await;
    assert_eq!(st, StatusCode::OK, "{h}");
    let msgs = h["messages"].as_array().unwrap();
    let statuses: Vec<&str> = msgs.iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["read", "read", "delivered"]);
    assert_eq!(msgs[0]["body"], json!({"g": 1}));
    assert_eq!(h["last_seq"], 3);
    // b sees a's messages without a status (not theirs).
    let (_, hb) = api.get(&b, &path).await;
    assert!(hb["messages"][0].get("status").is_none(), "{hb}");
    // Windows: newest page below `before`, forward pages after `after`.
    let seqs = |v: &Value| -> Vec<u64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?limit=2")).await.1),
        [2, 3]
    );
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?before=3&limit=1")).await.1),
        [2]
    );
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?after=1")).await.1),
        [2, 3]
    );
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?after=1&before=3")).await.1),
        [2]
    );
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?after=3")).await.1),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(&api.get(&a, &format!("{path}?before=1")).await.1),
        Vec::<u64>::new()
    );
    assert_error(
        &api.get(&a, &format!("{path}?after=3&before=2")).await,
        400,
        "bad_request",
        "before",
    );
    assert_error(
        &api.get(&a, &format!("{path}?after=x")).await,
        400,
        "bad_request",
        "after",
    );
    // Non-members and unknown conversations look the same: 404.
    let missing = format!("/v1/conversations/{}/messages", ConvId::new_group());
    assert_error(
        &api.get(&outsider, &path).await,
        404,
        "not_found",
        "no such conversation",
    );
    assert_error(
        &api.get(&a, &missing).await,
        404,
        "not_found",
        "no such conversation",
    );
    let other_dm = ConvId::direct(&b, &c).unwrap();
    assert_error(
        &api.get(&a, &format!("/v1/conversations/{other_dm}/messages"))
            .await,
        404,
        "not_found",
        "no such conversation",
    );
    assert_error(
        &api.get(&a, "/v1/conversations/nope/messages").await,
        400,
        "bad_request",
        "conversation id",
    );

    // Membership: only admins add; c joins and can read at once.
    let members_path = format!("/v1/conversations/{g}/members");
    assert_error(
        &api.post(&b, &members_path, json!({"members": [c.to_string()]}))
            .await,
        403,
        "forbidden",
        "admins",
    );
    assert_error(
        &api.post(&a, &members_path, json!({"members": ["0x12"]}))
            .await,
        400,
        "bad_request",
        "members[0]",
    );
    assert_error(
        &api.post(&a, &members_path, json!({"members": []})).await,
        400,
        "bad_request",
        "at least one",
    );
    assert_error(
        &api.post(
            &outsider,
            &members_path,
            json!({"members": [c.to_string()]}),
        )
        .await,
        404,
        "not_found",
        "no such",
    );
    let (st, added) = api
        .post(
            &a,
            &members_path,
            json!({"members": [c.to_string(), b.to_string()]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{added}");
    assert_eq!(added["added"], json!([c.to_string()]));
    assert_eq!(seqs(&api.get(&c, &path).await.1), [1, 2, 3]);
    assert!(broker.is_member(&g, &c).await.unwrap());
    send(&broker, &mut sent, &g, c, &MsgId::random(), "4")
        .await
        .unwrap();

    // b is removed: gone from PostgreSQL and the broker; sends refuse at once.
    let (st, _) = api.delete(&a, &format!("{members_path}/{b}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(
        !store_members(&store, &g)
            .await
            .iter()
            .any(|(u, _)| *u == b.lower())
    );
    let refused = send(&broker, &mut sent, &g, b, &MsgId::random(), "5").await;
    assert!(refused.is_err(), "a removed member could still send");
    assert_error(
        &api.get(&b, &path).await,
        404,
        "not_found",
        "no such conversation",
    );
    assert_error(
        &api.delete(&a, &format!("{members_path}/{b}")).await,
        404,
        "not_found",
        "not a member",
    );
    assert_error(
        &api.delete(&c, &format!("{members_path}/{a}")).await,
        403,
        "forbidden",
        "admins",
    );
    // Anyone may leave.
    assert_eq!(
        api.delete(&c, &format!("{members_path}/{c}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.post(
            &a,
            &format!("/v1/conversations/{dm}/members"),
            json!({"members": [c.to_string()]}),
        )
        .await,
        400,
        "bad_request",
        "direct",
    );

    // Bulk presence.
    broker
        .touch(&a, switchboard_proto::time::now_ms())
        .await
        .unwrap();
    let (st, p) = api.get(&b, &format!("/v1/presence?users={a},{c}")).await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p[a.checksummed()]["status"], "online");
    assert_eq!(p[c.checksummed()]["status"], "offline");
    assert!(p[c.checksummed()].get("last_seen").is_none());
    assert_error(
        &api.get(&b, "/v1/presence?users=").await,
        400,
        "bad_request",
        "1 to 100",
    );
    assert_error(
        &api.get(&b, "/v1/presence?users=0xnope").await,
        400,
        "bad_request",
        "users[0]",
    );
    let many: Vec<String> = (0..101).map(|_| addr().to_string()).collect();
    assert_error(
        &api.get(&b, &format!("/v1/presence?users={}", many.join(",")))
            .await,
        400,
        "bad_request",
        "1 to 100",
    );
    // Everything needs a session.
    let r = api
        .http
        .get(format!("{}/v1/conversations", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    api.gw.shutdown().await;
    stop.cancel();
    w.await.unwrap();
}

async fn store_members(
    store: &switchboard_core::store::PgStore,
    g: &ConvId,
) -> Vec<(String, String)> {
    sqlx::query_as("SELECT user_address, role FROM members WHERE conv_id = $1")
        .bind(g.as_str())
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Channels with PostgreSQL: the definition is stored with the channel, so
/// when Redis comes back empty the channel is given back to the broker
/// (readers, publishers, visibility) and its seqs continue from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_survive_a_redis_that_lost_its_state() {
    use switchboard_client::{Client as Sdk, ClientOptions};
    let redis = RedisServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let (store, _) = store(&pg, "channels").await;
    let cfg = switchboard_core::broker::BrokerConfig {
        seed_from_store: true,
        ..broker_config()
    };
    let broker = Arc::new(RedisBroker::connect(&redis.url(), cfg).await.unwrap());
    let worker = Worker::connect(&redis.url(), store.clone(), worker_config())
        .await
        .unwrap();
    let streams = worker.streams();
    let stop = CancellationToken::new();
    let w = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start_with_store(
        GatewayConfig::default(),
        broker.clone(),
        Some(Arc::new(store.clone())),
        listener,
    )
    .await
    .unwrap();
    let api = Api {
        http: Client::new(),
        base: format!("http://{}", gw.local_addr()),
        gw,
    };
    let (owner, publisher, reader, outsider) = (addr(), addr(), addr(), addr());
    let (st, ch) = api
        .post(
            &owner,
            "/v1/channels",
            json!({"name": "kept", "visibility": "members",
                   "publishers": [publisher.to_string()], "members": [reader.to_string()]}),
        )
        .await;
    assert_eq!(st.as_u16(), 201, "{ch}");
    let conv: ConvId = "ch:kept".parse().unwrap();
    let sdk = |u: &Address| {
        let token = api.token(u);
        let base = api.base.clone();
        async move {
            Sdk::connect_with_token(&base, &token, ClientOptions::default())
                .await
                .unwrap()
        }
    };
    let po = sdk(&owner).await;
    assert_eq!(po.send(&conv, json!({"n": 1})).await.unwrap().seq, 1);
    drained(&streams, Duration::from_secs(30)).await;
    assert_eq!(
        switchboard_core::store::Store::last_seq(&store, &conv)
            .await
            .unwrap(),
        1
    );
    stop.cancel();
    w.await.unwrap();

    // Redis loses everything.
    redis.command(&["FLUSHALL"]).unwrap();
    assert!(broker.conversation(&conv).await.unwrap().is_none());

    // Reading gives the channel back to the broker, as it was.
    let (st, back) = api.get(&reader, "/v1/conversations/ch:kept").await;
    assert_eq!(st.as_u16(), 200, "{back}");
    assert_eq!(back["visibility"], "members");
    assert_eq!(back["publishers"].as_array().unwrap().len(), 2, "{back}");
    assert_eq!(
        api.get(&outsider, "/v1/conversations/ch:kept")
            .await
            .0
            .as_u16(),
        404
    );
    // The publisher's next message continues the stored seqs.
    let pp = sdk(&publisher).await;
    assert_eq!(pp.send(&conv, json!({"n": 2})).await.unwrap().seq, 2);
    // And a reader still cannot post.
    let pr = sdk(&reader).await;
    assert!(pr.send(&conv, json!({"n": 3})).await.is_err());
    for c in [po, pp, pr] {
        c.close().await;
    }
}
