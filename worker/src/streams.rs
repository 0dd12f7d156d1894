//! The Redis side of the worker: the consumer group on every shard's
//! persistence stream.
//!
//! Every shard is read with a non-blocking `XREADGROUP` in one pipeline per
//! round (on a cluster fred sends each command to its shard's node), because a
//! blocking read over several streams is not possible across cluster slots.
//! The worker loop polls again at once while entries flow and backs off to a
//! short sleep when idle.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::streams::{XPendingArgs, XReadResponse};
use switchboard_core::broker::persist::{self, WORKER_GROUP, dead_letter_key, persist_stream_key};
use switchboard_core::broker::{RedisTarget, lua};

// The scripts, in `lua/*.lua` (each file says what it does, its KEYS, ARGV
// and reply). The dead-letter fields are placeholders filled in from
// `persist::dead_fields` once, here.
static DEAD_LETTER_LUA: LazyLock<String> =
    LazyLock::new(|| script(include_str!("lua/dead_letter.lua")));
static TRIM_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/trim.lua")));

fn script(template: &str) -> String {
    lua::render(template, &[persist::LUA_PLACEHOLDERS])
}

/// One entry read from a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    pub shard: u16,
    pub id: String,
    pub fields: HashMap<String, String>,
}

/// A pending entry that has been delivered too often.
#[derive(Debug, Clone)]
pub struct Pending {
    pub shard: u16,
    pub id: String,
    pub deliveries: u64,
}

pub struct Streams {
    pool: Pool,
    shards: u16,
    consumer: String,
    dead_letter: Script,
    trim: Script,
}

impl Streams {
    pub async fn connect(url: &str, shards: u16, consumer: String) -> Result<Self, Error> {
        Self::connect_to(&RedisTarget::from(url), shards, consumer).await
    }

    /// [`connect`](Self::connect) with a password given apart from the URL.
    pub async fn connect_to(
        redis: &RedisTarget,
        shards: u16,
        consumer: String,
    ) -> Result<Self, Error> {
        Self::connect_within(redis, shards, consumer, Duration::ZERO).await
    }

    /// [`connect_to`](Self::connect_to), waiting up to `wait` while Redis is
    /// unreachable (see `switchboard_core::startup`).
    pub async fn connect_within(
        redis: &RedisTarget,
        shards: u16,
        consumer: String,
        wait: Duration,
    ) -> Result<Self, Error> {
        // An unusable URL or password (the message never shows it).
        let config = redis
            .config()
            .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let pool = switchboard_core::broker::connect_pool(redis, &config, 2, wait).await?;
        Ok(Streams {
            pool,
            shards,
            consumer,
            dead_letter: Script::from_lua(DEAD_LETTER_LUA.as_str()),
            trim: Script::from_lua(TRIM_LUA.as_str()),
        })
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = self.pool.next().ping(None).await?;
        Ok(())
    }

    /// Create the consumer group on every stream (and the stream itself),
    /// starting from the beginning: entries written before the first worker
    /// ever ran are persisted too.
    pub async fn ensure_groups(&self) -> Result<(), Error> {
        for shard in 0..self.shards {
            let r: Result<Value, Error> = self
                .pool
                .next()
                .xgroup_create(persist_stream_key(shard), WORKER_GROUP, "0", true)
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.details().starts_with("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read up to `count` new entries from every shard, in one pipeline.
    pub async fn read_new(&self, count: u64) -> Result<Vec<Entry>, Error> {
        let client = self.pool.next();
        let pipe = client.pipeline();
        for shard in 0..self.shards {
            let _: () = pipe
                .xreadgroup(
                    WORKER_GROUP,
                    self.consumer.as_str(),
                    Some(count),
                    None,
                    false,
                    persist_stream_key(shard),
                    ">",
                )
                .await?;
        }
        let replies: Vec<Result<Value, Error>> = pipe.try_all().await;
        let mut out = Vec::new();
        for (shard, reply) in (0..self.shards).zip(replies) {
            let reply = match reply {
                Ok(v) => v,
                // The stream or group vanished (Redis lost its data): make
                // them again and read this shard next round.
                Err(e) if e.details().starts_with("NOGROUP") => {
                    self.ensure_groups().await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if reply.is_null() {
                continue;
            }
            let resp: XReadResponse<String, String, String, String> =
                reply.into_xread_response()?;
            for (_, entries) in resp {
                for (id, fields) in entries {
                    out.push(Entry { shard, id, fields });
                }
            }
        }
        Ok(out)
    }

    /// Pending entries of every consumer idle for at least `min_idle_ms`, up
    /// to `count` per shard, with their delivery counts.
    pub async fn stale(&self, min_idle_ms: u64, count: u64) -> Result<Vec<Pending>, Error> {
        let mut out = Vec::new();
        for shard in 0..self.shards {
            let args = XPendingArgs {
                idle: Some(min_idle_ms),
                start: Some("-".into()),
                end: Some("+".into()),
                count: Some(count),
                consumer: None,
            };
            let rows: Vec<(String, String, u64, u64)> = self
                .pool
                .next()
                .xpending(persist_stream_key(shard), WORKER_GROUP, args)
                .await?;
            out.extend(rows.into_iter().map(|(id, _, _, deliveries)| Pending {
                shard,
                id,
                deliveries,
            }));
        }
        Ok(out)
    }

    /// Take over `ids` of `shard` if still idle for `min_idle_ms` (another
    /// worker may have claimed them first); returns the entries now ours.
    pub async fn claim(
        &self,
        shard: u16,
        ids: Vec<String>,
        min_idle_ms: u64,
    ) -> Result<Vec<Entry>, Error> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let claimed: Vec<(String, HashMap<String, String>)> = self
            .pool
            .next()
            .xclaim_values(
                persist_stream_key(shard),
                WORKER_GROUP,
                self.consumer.as_str(),
                min_idle_ms,
                ids,
                None,
                None,
                None,
                false,
                false,
            )
            .await?;
        Ok(claimed
            .into_iter()
            .map(|(id, fields)| Entry { shard, id, fields })
            .collect())
    }

    /// Acknowledge entries (grouped by shard, one pipeline).
    pub async fn ack(&self, ids: &HashMap<u16, Vec<String>>) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.pool.next();
        let pipe = client.pipeline();
        for (shard, ids) in ids {
            let _: () = pipe
                .xack(persist_stream_key(*shard), WORKER_GROUP, ids.clone())
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }

    /// Move an entry to its shard's dead-letter stream with the reason.
    pub async fn dead_letter(&self, p: &Pending, reason: &str) -> Result<bool, Error> {
        let moved: i64 = self
            .dead_letter
            .evalsha_with_reload(
                self.pool.next(),
                vec![persist_stream_key(p.shard), dead_letter_key(p.shard)],
                vec![
                    WORKER_GROUP.to_string(),
                    p.id.clone(),
                    reason.to_string(),
                    p.deliveries.to_string(),
                    persist::DEAD_LETTER_MAX_LEN.to_string(),
                ],
            )
            .await?;
        Ok(moved == 1)
    }

    /// Trim every stream below what the group still needs; returns the
    /// number of entries removed.
    pub async fn trim(&self) -> Result<u64, Error> {
        let mut removed = 0u64;
        for shard in 0..self.shards {
            let n: i64 = self
                .trim
                .evalsha_with_reload(
                    self.pool.next(),
                    vec![persist_stream_key(shard)],
                    vec![WORKER_GROUP.to_string()],
                )
                .await?;
            removed += n.max(0) as u64;
        }
        Ok(removed)
    }

    /// Entries waiting in the dead-letter streams, for the metric.
    pub async fn dead_letter_len(&self) -> Result<u64, Error> {
        let mut n = 0u64;
        for shard in 0..self.shards {
            let len: u64 = self.pool.next().xlen(dead_letter_key(shard)).await?;
            n += len;
        }
        Ok(n)
    }

    /// Entries not yet acknowledged plus not yet read, summed over shards
    /// (the worker's backlog, for the metric and the benchmark).
    pub async fn backlog(&self) -> Result<u64, Error> {
        let mut n = 0u64;
        for shard in 0..self.shards {
            let groups: Vec<HashMap<String, Value>> = self
                .pool
                .next()
                .xinfo_groups(persist_stream_key(shard))
                .await?;
            for g in groups {
                if g.get("name").and_then(|v| v.as_string()).as_deref() != Some(WORKER_GROUP) {
                    continue;
                }
                let pending = g.get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
                let lag = g.get("lag").and_then(|v| v.as_u64()).unwrap_or(0);
                n += pending + lag;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::broker::persist::dead_fields;

    #[test]
    fn scripts_have_no_placeholder_left() {
        for (name, text) in [("dead_letter", &*DEAD_LETTER_LUA), ("trim", &*TRIM_LUA)] {
            assert_eq!(lua::unresolved(text), Vec::<String>::new(), "{name}.lua");
        }
    }

    /// The dead entry is the entry's own fields (the persistence stream's,
    /// checked in core) plus exactly the [`dead_fields`], each once; no
    /// field name is written in the Lua itself.
    #[test]
    fn dead_letter_adds_only_the_dead_fields() {
        let added: Vec<&str> = DEAD_LETTER_LUA
            .split("table.insert(f, '")
            .skip(1)
            .filter_map(|s| s.split_once('\'').map(|(name, _)| name))
            .collect();
        assert_eq!(
            added,
            [
                dead_fields::SRC_ID,
                dead_fields::REASON,
                dead_fields::ATTEMPTS
            ]
        );
        assert!(
            DEAD_LETTER_LUA
                .contains("redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(f))"),
            "the dead entry is written from the field list only"
        );
        assert!(!TRIM_LUA.contains("XADD"));
    }
}
