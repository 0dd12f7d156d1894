//! PgStore and partition maintenance against a real PostgreSQL (testkit).
//! One server per test binary; each test gets its own database.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::store::partitions::{self, PartitionInterval, PartitionPolicy};
use switchboard_core::store::{Batch, PgStore, Store, StoreError, WatermarkUpdate};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, MsgId};
use switchboard_testkit::Postgres;
use time::macros::datetime;

fn server() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().unwrap())
}

async fn store(name: &str) -> PgStore {
    let url = server().create_database(name).unwrap();
    let s = PgStore::connect(&url, 4).await.unwrap();
    s.migrate().await.unwrap();
    s
}

fn addr() -> Address {
    Address(rand::random())
}

fn msg(conv: &ConvId, seq: u64, from: Address, body: &str, ts: u64) -> Message {
    Message {
        conv: conv.clone(),
        seq,
        id: MsgId::random(),
        from,
        body: RawValue::from_string(body.into()).unwrap(),
        ts,
        relayed: false,
    }
}

#[tokio::test]
async fn batches_are_idempotent_and_history_is_byte_exact() {
    let s = store("batches").await;
    s.migrate().await.unwrap(); // twice is fine
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let t0 = 1_763_800_000_123;
    // Key order and spacing that jsonb would normalize away.
    let bodies = [r#"{"z":1, "a":[1,2]}"#, r#""plain""#, r#"{"text":"é ✓"}"#];
    let batch = Batch {
        messages: bodies
            .iter()
            .enumerate()
            .map(|(i, body)| msg(&dm, i as u64 + 1, a, body, t0 + i as u64))
            .collect(),
        watermarks: vec![],
    };
    let first = s.write_batch(&batch).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (3, 0));
    let again = s.write_batch(&batch).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 3));

    let h = s.history(&dm, 0, None, 100).await.unwrap();
    assert_eq!(h.len(), 3);
    for (i, m) in h.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.body.get(), bodies[i]);
        assert_eq!(m.ts, t0 + i as u64);
        assert_eq!(m.id, batch.messages[i].id);
        assert_eq!(m.from, a);
    }
    assert_eq!(s.history(&dm, 1, Some(3), 100).await.unwrap().len(), 1);
    assert_eq!(s.history(&dm, 0, None, 2).await.unwrap()[1].seq, 2);
    assert_eq!(s.last_seq(&dm).await.unwrap(), 3);
    let other = ConvId::direct(&a, &addr()).unwrap();
    assert_eq!(s.last_seq(&other).await.unwrap(), 0);
    assert!(s.history(&other, 0, None, 10).await.unwrap().is_empty());
}

/// Another message under a stored seq (the broker's counter went back) is
/// not stored: it comes back as a conflict with the highest stored seq,
/// whether the seq was taken in an earlier batch or earlier in this one.
#[tokio::test]
async fn a_taken_seq_is_a_conflict_not_a_second_row() {
    let s = store("conflicts").await;
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let t0 = 1_763_800_000_000;
    let first = Batch {
        messages: (1..=3).map(|i| msg(&dm, i, a, "1", t0 + i)).collect(),
        watermarks: vec![],
    };
    s.write_batch(&first).await.unwrap();
    let taken = msg(&dm, 2, b, "2", t0 + 10);
    let fresh = msg(&dm, 4, b, "3", t0 + 11);
    let twin = msg(&dm, 4, a, "4", t0 + 12);
    let out = s
        .write_batch(&Batch {
            messages: vec![
                first.messages[0].clone(),
                taken.clone(),
                fresh.clone(),
                twin.clone(),
            ],
            watermarks: vec![],
        })
        .await
        .unwrap();
    assert_eq!((out.inserted, out.duplicates), (1, 1));
    let mut conflicts: Vec<(MsgId, u64)> = out
        .conflicts
        .iter()
        .map(|c| (c.message.id.clone(), c.stored_max))
        .collect();
    conflicts.sort_by_key(|(id, _)| id.to_string());
    let mut want = vec![(taken.id.clone(), 4), (twin.id.clone(), 4)];
    want.sort_by_key(|(id, _)| id.to_string());
    assert_eq!(conflicts, want);
    let h = s.history(&dm, 0, None, 10).await.unwrap();
    let ids: Vec<(u64, MsgId)> = h.iter().map(|m| (m.seq, m.id.clone())).collect();
    assert_eq!(
        ids,
        vec![
            (1, first.messages[0].id.clone()),
            (2, first.messages[1].id.clone()),
            (3, first.messages[2].id.clone()),
            (4, fresh.id.clone()),
        ]
    );
}

#[tokio::test]
async fn watermarks_only_rise_and_never_re_add_a_member() {
    let s = store("watermarks").await;
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();
    let wm = |delivered, read| WatermarkUpdate {
        conv: dm.clone(),
        user: b,
        delivered,
        read,
    };
    // The watermark may reach the store before the message does.
    s.write_batch(&Batch {
        messages: vec![],
        watermarks: vec![wm(5, 2), wm(3, 4)],
    })
    .await
    .unwrap();
    s.write_batch(&Batch {
        messages: vec![],
        watermarks: vec![wm(1, 1)],
    })
    .await
    .unwrap();
    let row = sqlx::query_as::<_, (i64, i64)>(
        "SELECT delivered_seq, read_seq FROM members WHERE conv_id = $1 AND user_address = $2",
    )
    .bind(dm.as_str())
    .bind(b.lower())
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(row, (5, 4));

    // A group member who is not in `members` (left the group) is not re-added.
    let g = ConvId::new_group();
    s.write_batch(&Batch {
        messages: vec![msg(&g, 1, a, "1", 1)],
        watermarks: vec![WatermarkUpdate {
            conv: g.clone(),
            user: b,
            delivered: 1,
            read: 1,
        }],
    })
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM members WHERE conv_id = $1")
        .bind(g.as_str())
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn partition_of(s: &PgStore, conv: &ConvId, seq: u64) -> String {
    sqlx::query_scalar::<_, String>(
        "SELECT tableoid::regclass::text FROM messages WHERE conv_id = $1 AND seq = $2",
    )
    .bind(conv.as_str())
    .bind(seq as i64)
    .fetch_one(s.pool())
    .await
    .unwrap()
}

async fn default_rows(s: &PgStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages_default")
        .fetch_one(s.pool())
        .await
        .unwrap()
}

fn ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000) as u64
}

#[tokio::test]
async fn partitions_follow_the_clock() {
    let s = store("partitions").await;
    let policy = PartitionPolicy {
        interval: PartitionInterval::Day,
        premake: 2,
        retention: Duration::from_secs(3 * 24 * 3600),
        detach_only: false,
    };
    let (a, b) = (addr(), addr());
    let dm = ConvId::direct(&a, &b).unwrap();

    // Before any maintenance every row waits in the default partition.
    let day1 = datetime!(2026-03-10 15:30 UTC);
    s.write_batch(&Batch {
        messages: vec![msg(&dm, 1, a, "1", ms(day1))],
        watermarks: vec![],
    })
    .await
    .unwrap();
    assert_eq!(partition_of(&s, &dm, 1).await, "messages_default");

    let r = partitions::maintain(s.pool(), &policy, day1).await.unwrap();
    assert_eq!(
        r.created,
        [
            "messages_p20260310",
            "messages_p20260311",
            "messages_p20260312"
        ]
    );
    assert_eq!(r.moved_rows, 1);
    assert_eq!(partition_of(&s, &dm, 1).await, "messages_p20260310");
    assert_eq!(default_rows(&s).await, 0);

    // Idempotent.
    let again = partitions::maintain(s.pool(), &policy, day1).await.unwrap();
    assert!(again.created.is_empty() && again.removed.is_empty());

    // A row far ahead of the premade range lands in the default partition;
    // the next run gives it a partition of its own.
    let later = datetime!(2026-03-20 01:00 UTC);
    s.write_batch(&Batch {
        messages: vec![
            msg(&dm, 2, a, "2", ms(day1) + 3_600_000),
            msg(&dm, 3, b, "3", ms(later)),
        ],
        watermarks: vec![],
    })
    .await
    .unwrap();
    assert_eq!(partition_of(&s, &dm, 2).await, "messages_p20260310");
    assert_eq!(partition_of(&s, &dm, 3).await, "messages_default");
    let r = partitions::maintain(s.pool(), &policy, day1).await.unwrap();
    assert_eq!(r.created, ["messages_p20260320"]);
    assert_eq!(partition_of(&s, &dm, 3).await, "messages_p20260320");
    assert_eq!(default_rows(&s).await, 0);

    // Time passes: the 10th..12th expire (their end is more than 3 days
    // before the 16th), new days appear.
    let r = partitions::maintain(s.pool(), &policy, datetime!(2026-03-16 00:00 UTC))
        .await
        .unwrap();
    assert_eq!(
        r.removed,
        [
            "messages_p20260310",
            "messages_p20260311",
            "messages_p20260312"
        ]
    );
    assert_eq!(
        r.created,
        [
            "messages_p20260316",
            "messages_p20260317",
            "messages_p20260318"
        ]
    );
    assert_eq!(r.oldest().unwrap().name, "messages_p20260316");
    assert_eq!(r.newest().unwrap().name, "messages_p20260320");
    let h = s.history(&dm, 0, None, 10).await.unwrap();
    assert_eq!(h.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(partitions::list(s.pool()).await.unwrap(), r.partitions);
}

#[tokio::test]
async fn detach_keeps_expired_tables_and_weeks_start_on_monday() {
    let s = store("detach").await;
    let policy = PartitionPolicy {
        interval: PartitionInterval::Week,
        premake: 1,
        retention: Duration::from_secs(7 * 24 * 3600),
        detach_only: true,
    };
    // 2026-03-11 is a Wednesday.
    let r = partitions::maintain(s.pool(), &policy, datetime!(2026-03-11 12:00 UTC))
        .await
        .unwrap();
    assert_eq!(r.created, ["messages_p20260309", "messages_p20260316"]);
    let r = partitions::maintain(s.pool(), &policy, datetime!(2026-03-30 12:00 UTC))
        .await
        .unwrap();
    assert_eq!(r.removed, ["messages_p20260309", "messages_p20260316"]);
    // Detached, not dropped.
    let still: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname IN ('messages_p20260309', 'messages_p20260316')",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(still, 2);
}

#[test]
fn monthly_periods_roll_over_the_year() {
    let i = PartitionInterval::Month;
    let start = i.floor(datetime!(2026-12-31 23:59 UTC));
    assert_eq!(start, datetime!(2026-12-01 00:00 UTC));
    assert_eq!(i.next(start), datetime!(2027-01-01 00:00 UTC));
    assert!("hourly".parse::<PartitionInterval>().is_err());
}

#[tokio::test]
async fn an_unreachable_database_is_a_transient_error() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("gone").unwrap();
    let s = PgStore::connect(&url, 2).await.unwrap();
    s.migrate().await.unwrap();
    pg.stop();
    let a = addr();
    let dm = ConvId::direct(&a, &addr()).unwrap();
    let err = s
        .write_batch(&Batch {
            messages: vec![msg(&dm, 1, a, "1", 1)],
            watermarks: vec![],
        })
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    pg.restart().unwrap();
    // The pool reconnects by itself.
    let mut ok = false;
    for _ in 0..50 {
        if s.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok);
    assert!(matches!(
        PgStore::connect("postgres://nobody@127.0.0.1:1/x", 1).await,
        Err(StoreError::Unavailable(_))
    ));
}
