//! Shared set-up: real Redis and PostgreSQL from testkit, brokers that write
//! the persistence streams, and checks against the `messages` table.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::broker::{BrokerConfig, RedisBroker, SendRequest};
use switchboard_core::store::PgStore;
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::Conversation;
use switchboard_worker::WorkerConfig;
use switchboard_worker::streams::Streams;

pub fn addr() -> Address {
    Address(rand::random())
}

/// Few shards keep each polling round small in tests.
pub const SHARDS: u16 = 8;

pub fn broker_config() -> BrokerConfig {
    BrokerConfig {
        persist: true,
        shards: SHARDS,
        ..BrokerConfig::default()
    }
}

pub fn worker_config() -> WorkerConfig {
    WorkerConfig {
        shards: SHARDS,
        claim_idle: Duration::from_millis(800),
        claim_interval: Duration::from_millis(200),
        trim_interval: Duration::from_millis(500),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

pub async fn store(pg: &switchboard_testkit::Postgres, db: &str) -> (PgStore, String) {
    let url = pg.create_database(db).unwrap();
    let s = PgStore::connect(&url, 4).await.unwrap();
    s.migrate().await.unwrap();
    (s, url)
}

pub async fn group(broker: &RedisBroker, members: &[Address]) -> ConvId {
    use switchboard_core::broker::Broker;
    let id = ConvId::new_group();
    broker
        .create_group(&Conversation {
            id: id.clone(),
            kind: ConvKind::Group,
            title: None,
            members: members.to_vec(),
            created_by: Some(members[0]),
            created_at: 0,
            publishers: Vec::new(),
            visibility: None,
        })
        .await
        .unwrap();
    id
}

/// What the senders were told: conv → seq → (id, body).
pub type Sent = BTreeMap<String, BTreeMap<u64, (String, String)>>;

/// Send one message (or a retry of `id`) and record what `sent` said.
pub async fn send(
    broker: &RedisBroker,
    sent: &mut Sent,
    conv: &ConvId,
    from: Address,
    id: &MsgId,
    body: &str,
) -> Result<u64, switchboard_core::broker::BrokerError> {
    use switchboard_core::broker::Broker;
    let out = broker
        .send(SendRequest {
            conv: conv.clone(),
            id: id.clone(),
            from,
            body: RawValue::from_string(body.to_string()).unwrap(),
            privileged: false,
        })
        .await?;
    let seq = out.message.seq;
    let prev = sent
        .entry(conv.to_string())
        .or_default()
        .insert(seq, (id.to_string(), out.message.body.get().to_string()));
    if let Some((prev_id, _)) = prev {
        assert_eq!(prev_id, id.to_string(), "seq {seq} of {conv} reused");
    }
    Ok(seq)
}

/// Wait until every stream entry is persisted and acknowledged.
pub async fn drained(streams: &Streams, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = streams.backlog().await.unwrap();
        if n == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog still {n} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Exactly-once check: every message a sender saw `sent` for is stored once,
/// seqs 1..n without gaps, ids and bodies intact.
pub async fn assert_stored_exactly(store: &PgStore, sent: &Sent) {
    for (conv, msgs) in sent {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, msg_id, body::text FROM messages WHERE conv_id = $1 ORDER BY seq",
        )
        .bind(conv)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let n = msgs.len() as i64;
        assert_eq!(rows.len() as i64, n, "{conv}: stored rows vs sent");
        for (i, (seq, id, body)) in rows.iter().enumerate() {
            assert_eq!(*seq, i as i64 + 1, "{conv}: gap or duplicate at row {i}");
            let (want_id, want_body) = &msgs[&(*seq as u64)];
            assert_eq!(id, want_id, "{conv} seq {seq}: id");
            assert_eq!(body, want_body, "{conv} seq {seq}: body");
        }
        let last: i64 = sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
            .bind(conv)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(last, n, "{conv}: conversations.last_seq");
    }
}
