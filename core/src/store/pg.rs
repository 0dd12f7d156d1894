//! [`PgStore`]: the PostgreSQL engine (sqlx).
//!
//! Queries are checked at run time, not with `sqlx::query!`: the compile-time
//! macros need a live database or a checked-in `.sqlx` cache at build time,
//! and every statement here is exercised by the integration tests against a
//! real server anyway (`core/tests/store.rs`).
//!
//! Batches are written with set-based statements over `UNNEST`ed arrays: one
//! round trip per table whatever the batch size, which is what makes the
//! worker an order of magnitude faster than one `INSERT` per message.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use super::{Batch, BatchOutcome, Result, SeqConflict, Store, StoreError};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::{
    Conversation, ConversationSummary, ListCursor, Member, Role, Visibility,
};

/// The migrations under `migrations/`, embedded in every binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Map a sqlx error to transient (retry) or permanent (the data is the problem).
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception, 53: insufficient resources,
            // 57: operator intervention (shutdown), 40001/40P01:
            // serialization failure / deadlock, 55P03: lock not available.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect a pool to `url` (`postgres://user:pass@host:port/db`).
    /// Connections are made lazily, so a store can be created while
    /// PostgreSQL is still starting; calls fail with `Unavailable` until it
    /// answers.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid database URL: {e}")))?;
        Ok(PgStore { pool })
    }

    /// Connect and fail at once if PostgreSQL does not answer.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_within(url, max_connections, Duration::ZERO).await
    }

    /// Connect, waiting up to `wait` while PostgreSQL is unreachable (see
    /// [`crate::startup`]); an invalid URL or a refused login fails at once.
    pub async fn connect_within(url: &str, max_connections: u32, wait: Duration) -> Result<Self> {
        let store = Self::connect_lazy(url, max_connections)?;
        crate::startup::wait_for(
            &format!("PostgreSQL at {}", crate::redact_url(url)),
            wait,
            StoreError::is_transient,
            || store.ping(),
        )
        .await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply the embedded migrations (idempotent; safe to run from several
    /// processes at once: sqlx serializes them with an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))
    }
}

/// Per-conversation summary of a batch, for the `conversations` upsert.
struct ConvSummary {
    last_seq: u64,
    first_ts: u64,
    last_ts: Option<u64>,
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        self.pool.execute("SELECT 1").await.map_err(classify)?;
        Ok(())
    }

    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome> {
        if batch.is_empty() {
            return Ok(BatchOutcome::default());
        }
        // Conversations touched by the batch, sorted by id: every worker locks
        // rows in the same order, so concurrent batches cannot deadlock.
        let mut convs: BTreeMap<&str, ConvSummary> = BTreeMap::new();
        for m in &batch.messages {
            let c = convs.entry(m.conv.as_str()).or_insert(ConvSummary {
                last_seq: 0,
                first_ts: m.ts,
                last_ts: None,
            });
            c.last_seq = c.last_seq.max(m.seq);
            c.first_ts = c.first_ts.min(m.ts);
            c.last_ts = Some(c.last_ts.unwrap_or(0).max(m.ts));
        }
        let now = switchboard_proto::time::now_ms();
        for w in &batch.watermarks {
            convs.entry(w.conv.as_str()).or_insert(ConvSummary {
                last_seq: 0,
                first_ts: now,
                last_ts: None,
            });
        }

        // Messages deduplicated within the batch (a stream entry delivered
        // twice can land in one batch), sorted for a stable lock order. Two
        // different messages with one seq (the broker's counter went back
        // between them) are a conflict, not a duplicate.
        let mut msgs: BTreeMap<(&str, u64), &Message> = BTreeMap::new();
        let mut conflicting: Vec<&Message> = Vec::new();
        for m in &batch.messages {
            match msgs.entry((m.conv.as_str(), m.seq)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(m);
                }
                std::collections::btree_map::Entry::Occupied(o) => {
                    if !same_message(o.get(), &m.id.to_string(), &m.from.lower()) {
                        conflicting.push(m);
                    }
                }
            }
        }
        // Watermarks folded to the highest per (conversation, user).
        let mut marks: BTreeMap<(&str, String), (u64, u64)> = BTreeMap::new();
        for w in &batch.watermarks {
            let e = marks
                .entry((w.conv.as_str(), w.user.lower()))
                .or_insert((0, 0));
            e.0 = e.0.max(w.delivered);
            e.1 = e.1.max(w.read);
        }
        // Members of direct conversations follow from the id; they are
        // written as they appear so watermarks and listings have a row.
        let mut direct_members: Vec<(String, String)> = Vec::new();
        for id in convs.keys() {
            if let Ok(conv) = id.parse::<ConvId>()
                && let Some([a, b]) = conv.direct_members()
            {
                direct_members.push((id.to_string(), a.lower()));
                direct_members.push((id.to_string(), b.lower()));
            }
        }

        let mut tx = self.pool.begin().await.map_err(classify)?;

        let (ids, kinds, seqs, firsts, lasts) = {
            let mut v = (vec![], vec![], vec![], vec![], vec![]);
            for (id, c) in &convs {
                v.0.push(id.to_string());
                v.1.push(kind_of(id).to_string());
                v.2.push(c.last_seq as i64);
                v.3.push(c.first_ts as i64);
                v.4.push(c.last_ts.map(|t| t as i64));
            }
            v
        };
        sqlx::query(
            "INSERT INTO conversations (id, kind, created_at, last_seq, last_message_at)
             SELECT id, kind, to_ms_ts(first_ms), last_seq, to_ms_ts(last_ms)
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
                  AS t(id, kind, last_seq, first_ms, last_ms)
             ON CONFLICT (id) DO UPDATE SET
                 last_seq = GREATEST(conversations.last_seq, EXCLUDED.last_seq),
                 last_message_at = GREATEST(conversations.last_message_at,
                                            EXCLUDED.last_message_at)",
        )
        .bind(&ids)
        .bind(&kinds)
        .bind(&seqs)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;

        if !direct_members.is_empty() {
            let (c, u): (Vec<String>, Vec<String>) = direct_members.into_iter().unzip();
            sqlx::query(
                "INSERT INTO users (address) SELECT DISTINCT u FROM UNNEST($1::text[]) AS t(u)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&u)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            sqlx::query(
                "INSERT INTO members (conv_id, user_address)
                 SELECT c, u FROM UNNEST($1::text[], $2::text[]) AS t(c, u)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&c)
            .bind(&u)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }

        let mut outcome = BatchOutcome::default();
        if !msgs.is_empty() {
            // A stored row with one of these seqs and another message: the
            // seq counter went back. Such a message is not stored under a
            // seq that is taken; it is handed back as a conflict.
            let (kc, ks): (Vec<String>, Vec<i64>) =
                msgs.keys().map(|(c, s)| (c.to_string(), *s as i64)).unzip();
            let taken: Vec<(String, i64, String, String)> = sqlx::query_as(
                "SELECT m.conv_id, m.seq, m.msg_id, m.sender FROM messages m
                 JOIN UNNEST($1::text[], $2::int8[]) AS k(c, s)
                   ON m.conv_id = k.c AND m.seq = k.s",
            )
            .bind(&kc)
            .bind(&ks)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            let taken: std::collections::HashMap<(String, u64), (String, String)> = taken
                .into_iter()
                .map(|(c, s, i, f)| ((c, s as u64), (i, f)))
                .collect();
            msgs.retain(
                |(conv, seq), m| match taken.get(&(conv.to_string(), *seq)) {
                    Some((id, sender)) if !same_message(m, id, sender) => {
                        conflicting.push(m);
                        false
                    }
                    _ => true,
                },
            );
        }
        if !msgs.is_empty() {
            let mut cols = (vec![], vec![], vec![], vec![], vec![], vec![]);
            for m in msgs.values() {
                cols.0.push(m.conv.to_string());
                cols.1.push(m.seq as i64);
                cols.2.push(m.id.to_string());
                cols.3.push(m.from.lower());
                cols.4.push(m.body.get().to_string());
                cols.5.push(m.ts as i64);
            }
            let done = sqlx::query(
                "INSERT INTO messages (conv_id, seq, msg_id, sender, body, sent_at)
                 SELECT c, s, i, f, b::json, to_ms_ts(t)
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                             $6::int8[]) AS x(c, s, i, f, b, t)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .bind(&cols.4)
            .bind(&cols.5)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            outcome.inserted = done.rows_affected();
            outcome.duplicates = msgs.len() as u64 - outcome.inserted;
        }
        if !conflicting.is_empty() {
            let ids: Vec<String> = conflicting.iter().map(|m| m.conv.to_string()).collect();
            let highest: Vec<(String, i64)> = sqlx::query_as(
                "SELECT conv_id, max(seq) FROM messages WHERE conv_id = ANY($1) GROUP BY conv_id",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            outcome.conflicts = conflicting
                .into_iter()
                .map(|m| SeqConflict {
                    message: m.clone(),
                    stored_max: highest
                        .iter()
                        .find(|(c, _)| c == m.conv.as_str())
                        .map_or(m.seq, |(_, s)| (*s as u64).max(m.seq)),
                })
                .collect();
        }

        if !marks.is_empty() {
            let mut cols = (vec![], vec![], vec![], vec![]);
            for ((conv, user), (d, r)) in &marks {
                cols.0.push(conv.to_string());
                cols.1.push(user.clone());
                cols.2.push(*d as i64);
                cols.3.push(*r as i64);
            }
            // Only existing members move: a watermark never re-adds someone
            // who left a group (direct members were written above).
            sqlx::query(
                "UPDATE members m SET
                     delivered_seq = GREATEST(m.delivered_seq, t.d, t.r),
                     read_seq = GREATEST(m.read_seq, t.r)
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) AS t(c, u, d, r)
                 WHERE m.conv_id = t.c AND m.user_address = t.u",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }

        tx.commit().await.map_err(classify)?;
        Ok(outcome)
    }

    async fn history(
        &self,
        conv: &ConvId,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let rows = sqlx::query(
            "SELECT seq, msg_id, sender, body::text AS body, from_ts_ms(sent_at) AS ts
             FROM messages
             WHERE conv_id = $1 AND seq > $2 AND ($3::int8 IS NULL OR seq < $3)
             ORDER BY seq
             LIMIT $4",
        )
        .bind(conv.as_str())
        .bind(after as i64)
        .bind(before.map(|b| b as i64))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(|r| message_from_row(conv, r)).collect()
    }

    async fn last_seq(&self, conv: &ConvId) -> Result<u64> {
        let row = sqlx::query("SELECT last_seq FROM conversations WHERE id = $1")
            .bind(conv.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()
            .map_err(classify)?
            .unwrap_or(0) as u64)
    }

    async fn create_group(&self, conv: &Conversation) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        if !insert_conversation(&mut tx, conv, "group").await? {
            return Ok(false);
        }
        let users: Vec<String> = conv.members.iter().map(Address::lower).collect();
        let roles: Vec<&str> = conv
            .members
            .iter()
            .map(|m| {
                if Some(*m) == conv.created_by {
                    "admin"
                } else {
                    "member"
                }
            })
            .collect();
        insert_users(&mut tx, &users).await?;
        sqlx::query(
            "INSERT INTO members (conv_id, user_address, role)
             SELECT $1, u, r FROM UNNEST($2::text[], $3::text[]) AS t(u, r)
             ON CONFLICT DO NOTHING",
        )
        .bind(conv.id.as_str())
        .bind(&users)
        .bind(&roles)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn create_channel(&self, conv: &Conversation) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        if !insert_conversation(&mut tx, conv, "channel").await? {
            return Ok(false);
        }
        let mut publishers: Vec<String> = conv.publishers.iter().map(Address::lower).collect();
        publishers.extend(conv.created_by.map(|a| a.lower()));
        publishers.sort();
        publishers.dedup();
        let members: Vec<String> = conv.members.iter().map(Address::lower).collect();
        let visibility = match conv.visibility {
            Some(Visibility::Members) => "members",
            _ => "public",
        };
        sqlx::query(
            "INSERT INTO channels (conv_id, visibility, publishers, members)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(conv.id.as_str())
        .bind(visibility)
        .bind(&publishers)
        .bind(&members)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(true)
    }

    async fn channel(&self, conv: &ConvId) -> Result<Option<Conversation>> {
        let row = sqlx::query(
            "SELECT c.title, c.created_by, (extract(epoch FROM c.created_at) * 1000)::bigint AS ms,
                    ch.visibility, ch.publishers, ch.members
             FROM conversations c JOIN channels ch ON ch.conv_id = c.id
             WHERE c.id = $1",
        )
        .bind(conv.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        let Some(r) = row else { return Ok(None) };
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Rejected(format!("stored {what} of {conv} unreadable: {e}"))
        };
        let addrs = |list: Vec<String>, what: &str| -> Result<Vec<Address>> {
            list.iter()
                .map(|a| a.parse::<Address>().map_err(|e| bad(what, &e)))
                .collect()
        };
        let created_by: Option<String> = r.try_get("created_by").map_err(classify)?;
        let visibility: String = r.try_get("visibility").map_err(classify)?;
        Ok(Some(Conversation {
            id: conv.clone(),
            kind: ConvKind::Channel,
            title: r.try_get("title").map_err(classify)?,
            members: addrs(r.try_get("members").map_err(classify)?, "member")?,
            created_by: created_by
                .map(|a| a.parse::<Address>().map_err(|e| bad("creator", &e)))
                .transpose()?,
            created_at: r.try_get::<i64, _>("ms").map_err(classify)? as u64,
            publishers: addrs(r.try_get("publishers").map_err(classify)?, "publisher")?,
            visibility: Some(if visibility == "members" {
                Visibility::Members
            } else {
                Visibility::Public
            }),
        }))
    }

    async fn members(&self, conv: &ConvId) -> Result<Option<Vec<Member>>> {
        let exists = sqlx::query("SELECT 1 FROM conversations WHERE id = $1")
            .bind(conv.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT user_address, role, delivered_seq, read_seq FROM members
             WHERE conv_id = $1 ORDER BY user_address",
        )
        .bind(conv.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let user: String = r.try_get("user_address").map_err(classify)?;
            let role: String = r.try_get("role").map_err(classify)?;
            out.push(Member {
                user: user.parse().map_err(|e| {
                    StoreError::Rejected(format!("member {user:?} of {conv} unreadable: {e}"))
                })?,
                role: if role == "admin" {
                    Role::Admin
                } else {
                    Role::Member
                },
                delivered_seq: r.try_get::<i64, _>("delivered_seq").map_err(classify)? as u64,
                read_seq: r.try_get::<i64, _>("read_seq").map_err(classify)? as u64,
            });
        }
        Ok(Some(out))
    }

    async fn add_members(&self, conv: &ConvId, users: &[Address]) -> Result<Vec<Address>> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let lower: Vec<String> = users.iter().map(Address::lower).collect();
        insert_users(&mut tx, &lower).await?;
        let rows = sqlx::query(
            "INSERT INTO members (conv_id, user_address)
             SELECT $1, u FROM UNNEST($2::text[]) AS t(u)
             ON CONFLICT DO NOTHING
             RETURNING user_address",
        )
        .bind(conv.as_str())
        .bind(&lower)
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        let mut added = Vec::with_capacity(rows.len());
        for r in &rows {
            let u: String = r.try_get(0).map_err(classify)?;
            if let Ok(a) = u.parse() {
                added.push(a);
            }
        }
        Ok(added)
    }

    async fn remove_member(&self, conv: &ConvId, user: &Address) -> Result<bool> {
        let n = sqlx::query("DELETE FROM members WHERE conv_id = $1 AND user_address = $2")
            .bind(conv.as_str())
            .bind(user.lower())
            .execute(&self.pool)
            .await
            .map_err(classify)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn conversations_of(
        &self,
        user: &Address,
        before: Option<&ListCursor>,
        limit: usize,
    ) -> Result<Vec<ConversationSummary>> {
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.title, c.last_seq, m.read_seq,
                    from_ts_ms(COALESCE(c.last_message_at, c.created_at)) AS active_at,
                    (SELECT count(*) FROM (
                        SELECT 1 FROM messages x
                        WHERE x.conv_id = c.id AND x.seq > m.read_seq
                          AND x.sender <> m.user_address
                        LIMIT $5) u) AS unread
             FROM members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_address = $1
               AND ($2::int8 IS NULL
                    OR (from_ts_ms(COALESCE(c.last_message_at, c.created_at)), c.id) < ($2, $3))
             ORDER BY active_at DESC, c.id DESC
             LIMIT $4",
        )
        .bind(user.lower())
        .bind(before.map(|c| c.active_at as i64))
        .bind(before.map(|c| c.id.clone()).unwrap_or_default())
        .bind(limit as i64)
        .bind(switchboard_proto::model::UNREAD_CAP as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id").map_err(classify)?;
            let kind: String = r.try_get("kind").map_err(classify)?;
            let last_seq = r.try_get::<i64, _>("last_seq").map_err(classify)? as u64;
            let read_seq = r.try_get::<i64, _>("read_seq").map_err(classify)? as u64;
            out.push(ConversationSummary {
                id: id.parse().map_err(|e| {
                    StoreError::Rejected(format!("conversation id {id:?} unreadable: {e}"))
                })?,
                kind: match kind.as_str() {
                    "direct" => ConvKind::Direct,
                    "channel" => ConvKind::Channel,
                    _ => ConvKind::Group,
                },
                title: r.try_get("title").map_err(classify)?,
                last_seq,
                read_seq,
                unread: r.try_get::<i64, _>("unread").map_err(classify)? as u64,
                active_at: r.try_get::<i64, _>("active_at").map_err(classify)? as u64,
            });
        }
        Ok(out)
    }
}

/// The `conversations` row of a new group or channel; `false` when the id
/// is taken.
async fn insert_conversation(
    tx: &mut sqlx::PgConnection,
    conv: &Conversation,
    kind: &str,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO conversations (id, kind, title, created_by, created_at)
         VALUES ($1, $2, $3, $4, to_ms_ts($5))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(conv.id.as_str())
    .bind(kind)
    .bind(conv.title.as_deref())
    .bind(conv.created_by.map(|a| a.lower()))
    .bind(conv.created_at as i64)
    .execute(&mut *tx)
    .await
    .map_err(classify)?
    .rows_affected();
    Ok(inserted == 1)
}

async fn insert_users(tx: &mut sqlx::PgConnection, users: &[String]) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (address) SELECT DISTINCT u FROM UNNEST($1::text[]) AS t(u)
         ON CONFLICT DO NOTHING",
    )
    .bind(users)
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    Ok(())
}

fn kind_of(id: &str) -> &'static str {
    match id.parse::<ConvId>().map(|c| c.kind()) {
        Ok(ConvKind::Direct) => "direct",
        Ok(ConvKind::Channel) => "channel",
        _ => "group",
    }
}

fn message_from_row(conv: &ConvId, r: &sqlx::postgres::PgRow) -> Result<Message> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Rejected(format!("stored {what} of {conv} unreadable: {e}"))
    };
    let seq: i64 = r.try_get("seq").map_err(classify)?;
    let id: String = r.try_get("msg_id").map_err(classify)?;
    let from: String = r.try_get("sender").map_err(classify)?;
    let body: String = r.try_get("body").map_err(classify)?;
    let ts: i64 = r.try_get("ts").map_err(classify)?;
    Ok(Message {
        conv: conv.clone(),
        seq: seq as u64,
        id: id.parse::<MsgId>().map_err(|e| bad("id", &e))?,
        from: from.parse::<Address>().map_err(|e| bad("sender", &e))?,
        body: RawValue::from_string(body).map_err(|e| bad("body", &e))?,
        ts: ts as u64,
        relayed: false,
    })
}

/// Whether `m` is the message with client id `id` from `sender` (lowercase).
fn same_message(m: &Message, id: &str, sender: &str) -> bool {
    m.id.as_str() == id && m.from.lower() == sender
}
