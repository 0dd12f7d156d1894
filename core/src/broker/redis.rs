//! The Redis engine (standalone or Redis Cluster) on fred.
//!
//! Key layout: the one table is `docs/architecture.md` ("Redis keys"); the
//! key builders below are its code, and a test checks the two are the same
//! set of keys.
//!
//! Every key of one conversation, and its shard's persistence stream, share the
//! hash tag `{<shard>}`, so the send and mark scripts touch a single slot and are
//! valid on Redis Cluster. Routing needs the registry of users in other slots,
//! so it happens after the send script, not inside it: a gateway that dies in
//! between has already answered nothing, or answered `sent` for a durable
//! message that recipients then get by sync.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::streams::XReadValue;
use futures_util::future::try_join_all;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::registry_cache::{Gateways, RegistryCache};
use super::reports::{self, ClusterRef, ConnectionReports, GatewayIdentity};
use super::{
    Broker, BrokerConfig, BrokerError, LogPage, Mark, MarkRequest, Result, Routed, SendOutcome,
    SendRequest, Watermarks, shard_of,
};
use super::{lua, persist};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::{Conversation, Visibility};
use switchboard_proto::time::now_ms;

// The scripts, in `lua/*.lua` (each file says what it does, its KEYS, ARGV
// and reply). Their stream field names are placeholders filled in from the
// Rust constants ([`super::persist::fields`], [`log_fields`]) once, here.
static SEND_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/send.lua")));
static CREATE_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/create.lua")));
static CREATE_CHANNEL_LUA: LazyLock<String> =
    LazyLock::new(|| script(include_str!("lua/create_channel.lua")));
static SEED_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/seed.lua")));
static MEMBERS_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/members.lua")));
static MARK_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/mark.lua")));
static TOUCH_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/touch.lua")));
static RESEQUENCE_LUA: LazyLock<String> =
    LazyLock::new(|| script(include_str!("lua/resequence.lua")));
static REGISTRY_LUA: LazyLock<String> = LazyLock::new(|| script(include_str!("lua/registry.lua")));

/// Epochs started within this long of the previous one keep its base (see
/// `lua/resequence.lua`).
const REPAIR_EPISODE: Duration = Duration::from_secs(60);

/// A script's text with the stream field placeholders filled in.
fn script(template: &str) -> String {
    lua::render(
        template,
        &[persist::LUA_PLACEHOLDERS, log_fields::LUA_PLACEHOLDERS],
    )
}

/// Field names of a conversation log entry (`sb:{<shard>}:c:<conv>:log`),
/// written by the send script and read by [`Broker::read_log`]. The seq is
/// the entry's id, not a field.
mod log_fields {
    pub const ID: &str = "id";
    pub const FROM: &str = "from";
    pub const BODY: &str = "body";
    pub const TS: &str = "ts";

    /// The placeholders the scripts use for them (`{{L_TS}}`).
    pub const LUA_PLACEHOLDERS: &[(&str, &str)] = &[
        ("L_ID", ID),
        ("L_FROM", FROM),
        ("L_BODY", BODY),
        ("L_TS", TS),
    ];
}

/// Pub/sub messages buffered between fred's reader and our dispatcher.
const SUBSCRIBER_BUFFER: usize = 16_384;

/// How long the set of live gateways is cached before it is read again.
const LIVE_CACHE: Duration = Duration::from_secs(1);

/// Marks per mark script call on standalone Redis: a gateway's gathered
/// acks move together, in calls of this many (keeps one call's time inside
/// Redis, which serves no one else meanwhile, to a fraction of a millisecond).
const MARK_BATCH: usize = 64;

fn unavailable(e: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Corrupt(what.to_string())
}

/// The suffixes of a conversation's keys, `sb:{<shard>}:c:<conv>:<suffix>`.
mod suffix {
    pub const SEQ: &str = "seq";
    pub const EPOCH: &str = "epoch";
    pub const LOG: &str = "log";
    pub const MEMBERS: &str = "m";
    pub const PUBLISHERS: &str = "p";
    pub const META: &str = "meta";
    pub const WATERMARKS: &str = "wm";
    /// Followed by `:<sender>:<msgid>`: a sent id's idempotency record.
    /// Before per-sender records, `:<msgid>` alone (still read, see
    /// `ConvKeys::legacy_dedupe`).
    pub const DEDUPE: &str = "d";
    #[cfg(test)]
    pub const ALL: [&str; 7] = [SEQ, EPOCH, LOG, MEMBERS, PUBLISHERS, META, WATERMARKS];
}

/// The keys of one conversation.
struct ConvKeys {
    prefix: String,
    persist: String,
}

impl ConvKeys {
    fn new(conv: &ConvId, shards: u16) -> Self {
        let shard = shard_of(conv, shards);
        ConvKeys {
            prefix: format!("sb:{{{shard}}}:c:{conv}"),
            persist: persist::persist_stream_key(shard),
        }
    }
    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }
    /// The idempotency record of message `id` from `sender` (lowercase):
    /// per sender, so a member who reuses another member's id sends a
    /// message of its own instead of getting the other's `sent` back.
    fn dedupe(&self, sender: &str, id: &MsgId) -> String {
        format!("{}:{}:{sender}:{id}", self.prefix, suffix::DEDUPE)
    }
    /// The record gateways wrote before records were per sender. It is read
    /// (for the record TTL after an upgrade) so a retry of a message sent
    /// before the upgrade stays a duplicate; the send script trusts it only
    /// when the logged message at its seq has the same sender.
    fn legacy_dedupe(&self, id: &MsgId) -> String {
        format!("{}:{}:{id}", self.prefix, suffix::DEDUPE)
    }
}

fn nonce_key(nonce: &str) -> String {
    format!("sb:nonce:{nonce}")
}

fn user_convs_key(user: &Address) -> String {
    format!("sb:uc:{{{}}}", user.lower())
}

/// A user's session revocation: sessions issued at or before the value
/// (Unix seconds) are revoked.
fn revoked_key(user: &Address) -> String {
    format!("sb:rev:{{{}}}", user.lower())
}

fn registry_key(user: &Address) -> String {
    format!("sb:reg:{{{}}}", user.lower())
}

fn gateway_channel(gateway: &str) -> String {
    format!("sb:gw:{{{gateway}}}")
}

/// The pub/sub channel of a Switchboard channel's messages.
fn channel_topic(conv: &ConvId) -> String {
    format!("sb:ch:{{{conv}}}")
}

const GATEWAYS_KEY: &str = "sb:gateways";
/// The connection registry's version counter (standalone Redis only; see
/// `registry_cache`).
const REGISTRY_VERSION_KEY: &str = "sb:regver";
/// The pub/sub channel of registry changes, `<version> <user>`.
const REGISTRY_CHANNEL: &str = "sb:reginv";
const PRESENCE_KEY: &str = "sb:presence";

/// See the module docs.
#[derive(Clone)]
pub struct RedisBroker {
    pool: Pool,
    builder_config: Config,
    cfg: BrokerConfig,
    cluster: bool,
    send_script: Arc<Script>,
    create_script: Arc<Script>,
    create_channel_script: Arc<Script>,
    members_script: Arc<Script>,
    seed_script: Arc<Script>,
    mark_script: Arc<Script>,
    touch_script: Arc<Script>,
    resequence_script: Arc<Script>,
    registry_script: Arc<Script>,
    report_script: Arc<Script>,
    read_reports_script: Arc<Script>,
    live: Arc<Mutex<(Option<Instant>, HashSet<String>)>>,
    /// Registry look-ups, cached per user (standalone Redis, attached
    /// gateways only).
    registry: Arc<RegistryCache>,
    /// Each attached gateway's subscriber connection, for its channel
    /// subscriptions.
    subs: Arc<Mutex<HashMap<String, SubscriberClient>>>,
    /// The send script's arguments that come from the configuration.
    send_args: Arc<SendArgs>,
}

/// The send script's arguments that are the same for every message,
/// formatted once: each send clones them (a reference count) instead of
/// formatting half a dozen numbers and flags again.
struct SendArgs {
    /// ARGV[4], unused.
    unused: Value,
    log_max_len: Value,
    dedupe_ttl: Value,
    persist: Value,
    seed: Value,
    log_max_age: Value,
    backlog_max: Value,
}

impl SendArgs {
    fn new(cfg: &BrokerConfig) -> Self {
        let flag = |on: bool| Value::from_static_str(if on { "1" } else { "0" });
        SendArgs {
            unused: Value::from_static_str(""),
            log_max_len: Value::from(cfg.log_max_len.to_string()),
            dedupe_ttl: Value::from(millis(cfg.dedupe_ttl).to_string()),
            persist: flag(cfg.persist),
            seed: flag(cfg.seed_from_store),
            log_max_age: Value::from(millis(cfg.log_max_age).to_string()),
            backlog_max: Value::from(cfg.persist_backlog_max.to_string()),
        }
    }
}

impl RedisBroker {
    /// Give `message` a new seq: the store holds another message under its
    /// seq, so Redis's counter went back (it lost writes the worker had
    /// already stored). The counter is raised to `stored_max` so no stored
    /// seq is given out again, the message's log entry at the taken seq goes,
    /// a new epoch starts (clients drop what they hold above its base and
    /// sync again), and the message is appended under the next seq — to the
    /// log, the persistence stream and its idempotency record, so a retry
    /// by its sender answers the new seq. Returns the new seq.
    pub async fn resequence(&self, message: &Message, stored_max: u64) -> Result<u64> {
        let keys = self.conv_keys(&message.conv);
        let from = message.from.lower();
        let out: Vec<i64> = self
            .resequence_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![
                    keys.key(suffix::SEQ),
                    keys.key(suffix::LOG),
                    keys.key(suffix::EPOCH),
                    keys.dedupe(&from, &message.id),
                    keys.persist.clone(),
                ],
                vec![
                    stored_max.to_string(),
                    message.seq.to_string(),
                    from,
                    message.id.to_string(),
                    message.body.get().to_owned(),
                    self.cfg.log_max_len.to_string(),
                    millis(self.cfg.dedupe_ttl).to_string(),
                    if self.cfg.persist { "1" } else { "0" }.into(),
                    message.conv.to_string(),
                    millis(REPAIR_EPISODE).to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        match out.as_slice() {
            [_, seq] if *seq > 0 => Ok(*seq as u64),
            _ => Err(corrupt("resequence reply")),
        }
    }

    /// Connect to `url`: `redis://host:port[/db]` for a standalone server or
    /// `redis-cluster://host:port?node=host:port&...` for a cluster (a
    /// password, if any, inside it).
    pub async fn connect(url: &str, cfg: BrokerConfig) -> Result<Self> {
        Self::connect_to(&super::RedisTarget::from(url), cfg).await
    }

    /// Connect to `target`: a URL as for [`connect`](Self::connect) and the
    /// password if the server wants one and the URL names none.
    pub async fn connect_to(target: &super::RedisTarget, cfg: BrokerConfig) -> Result<Self> {
        Self::connect_within(target, cfg, Duration::ZERO).await
    }

    /// [`connect_to`](Self::connect_to), waiting up to `wait` while the
    /// server is unreachable (see [`crate::startup`]); a refused password or
    /// a bad URL fails at once.
    pub async fn connect_within(
        target: &super::RedisTarget,
        cfg: BrokerConfig,
        wait: Duration,
    ) -> Result<Self> {
        let config = target.config()?;
        let cluster = config.server.is_clustered();
        let pool = connect_pool(target, &config, 2, wait)
            .await
            .map_err(unavailable)?;
        Ok(RedisBroker {
            pool,
            builder_config: config,
            send_args: Arc::new(SendArgs::new(&cfg)),
            cfg,
            cluster,
            send_script: Arc::new(Script::from_lua(SEND_LUA.as_str())),
            create_script: Arc::new(Script::from_lua(CREATE_LUA.as_str())),
            create_channel_script: Arc::new(Script::from_lua(CREATE_CHANNEL_LUA.as_str())),
            members_script: Arc::new(Script::from_lua(MEMBERS_LUA.as_str())),
            seed_script: Arc::new(Script::from_lua(SEED_LUA.as_str())),
            mark_script: Arc::new(Script::from_lua(MARK_LUA.as_str())),
            touch_script: Arc::new(Script::from_lua(TOUCH_LUA.as_str())),
            resequence_script: Arc::new(Script::from_lua(RESEQUENCE_LUA.as_str())),
            registry_script: Arc::new(Script::from_lua(REGISTRY_LUA.as_str())),
            report_script: Arc::new(Script::from_lua(reports::REPORT_LUA)),
            read_reports_script: Arc::new(Script::from_lua(reports::READ_LUA)),
            live: Arc::default(),
            registry: Arc::default(),
            subs: Arc::default(),
        })
    }

    /// Close the pool's connections and stop its reconnect tasks. A dropped
    /// broker keeps reconnecting in the background; long-lived processes that
    /// connect to many servers over time (the operator's autoscaler) call this.
    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    fn conv_keys(&self, conv: &ConvId) -> ConvKeys {
        ConvKeys::new(conv, self.cfg.shards)
    }

    /// Live gateway ids, cached for [`LIVE_CACHE`]; `force` re-reads.
    async fn live_gateways(&self, force: bool) -> Result<HashSet<String>> {
        {
            let cache = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if let (false, Some(at)) = (force, cache.0)
                && at.elapsed() < LIVE_CACHE
            {
                return Ok(cache.1.clone());
            }
        }
        let ids: Vec<String> = self
            .pool
            .zrangebyscore(GATEWAYS_KEY, now_ms() as f64, "+inf", false, None)
            .await
            .map_err(unavailable)?;
        let set: HashSet<String> = ids.into_iter().collect();
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), set.clone());
        Ok(set)
    }

    /// Whether `gateway` is in the live set cached less than [`LIVE_CACHE`] ago.
    fn live_cached(&self, gateway: &str) -> bool {
        let cache = self.live.lock().unwrap_or_else(|p| p.into_inner());
        cache.0.is_some_and(|at| at.elapsed() < LIVE_CACHE) && cache.1.contains(gateway)
    }

    /// `users`' gateways: from the look-up cache when it may be used
    /// (`cacheable` and see `registry_cache`), the rest from the registry.
    async fn registry_lookup(&self, users: &[Address], cacheable: bool) -> Result<Vec<Gateways>> {
        let cached = if cacheable {
            self.registry.lookup(users)
        } else {
            None
        };
        let (mut found, generation) = match cached {
            Some((found, generation)) => (found, Some(generation)),
            None => (vec![None; users.len()], None),
        };
        let missing: Vec<usize> = (0..users.len()).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            // Look-ups run concurrently; fred pipelines them per node.
            let lists: Vec<Vec<String>> = try_join_all(missing.iter().map(|&i| {
                self.pool
                    .smembers::<Vec<String>, _>(registry_key(&users[i]))
            }))
            .await
            .map_err(unavailable)?;
            for (i, list) in missing.into_iter().zip(lists) {
                let list: Gateways = list.into();
                if let Some(generation) = generation {
                    self.registry.fill(generation, users[i], list.clone());
                }
                found[i] = Some(list);
            }
        }
        Ok(found
            .into_iter()
            .map(|g| g.unwrap_or_else(|| Arc::from(Vec::new())))
            .collect())
    }

    /// Run the registry script (standalone Redis): `add` or `rem` the
    /// `gateways` from `user`'s set, announcing a change. Returns the
    /// set's members after it.
    async fn registry_change(
        &self,
        user: &Address,
        op: &str,
        gateways: &[String],
    ) -> Result<Vec<String>> {
        let mut args = vec![op.to_owned(), REGISTRY_CHANNEL.to_owned(), user.lower()];
        args.extend(gateways.iter().cloned());
        let out: Vec<Value> = self
            .registry_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![registry_key(user), REGISTRY_VERSION_KEY.to_owned()],
                args,
            )
            .await
            .map_err(unavailable)?;
        let (version, members) = out.split_first().ok_or_else(|| corrupt("registry reply"))?;
        self.registry.observe(value_u64(version)?);
        members
            .iter()
            .map(|m| m.as_string().ok_or_else(|| corrupt("registry member")))
            .collect()
    }

    /// One mark script call for `marks` (all in one slot on a cluster; see
    /// `lua/mark.lua`), answered in their order.
    async fn mark_batch(&self, marks: &[MarkRequest]) -> Result<Vec<Option<Watermarks>>> {
        let mut key_list = Vec::with_capacity(marks.len() * 3 + 1);
        let mut args = Vec::with_capacity(marks.len() * 4 + 1);
        args.push(if self.cfg.persist { "1" } else { "0" }.to_owned());
        for m in marks {
            let keys = self.conv_keys(&m.conv);
            key_list.push(keys.key(suffix::WATERMARKS));
            key_list.push(keys.key(suffix::SEQ));
            key_list.push(keys.persist);
            args.push(m.user.lower());
            args.push(
                match m.mark {
                    Mark::Delivered => "d",
                    Mark::Read => "r",
                }
                .into(),
            );
            args.push(m.seq.to_string());
            args.push(m.conv.to_string());
        }
        if !self.cluster {
            key_list.push(REGISTRY_VERSION_KEY.to_owned());
        }
        let out: Vec<u64> = self
            .mark_script
            .evalsha_with_reload(self.pool.next(), key_list, args)
            .await
            .map_err(unavailable)?;
        let Some((regver, moves)) = out.split_first() else {
            return Err(corrupt("empty mark reply"));
        };
        self.registry.observe(*regver);
        if moves.len() != marks.len() * 3 {
            return Err(corrupt(format!(
                "mark reply of {} values for {} marks",
                out.len(),
                marks.len()
            )));
        }
        moves
            .chunks_exact(3)
            .map(|m| match m {
                [1, d, r] => Ok(Some(Watermarks {
                    delivered: *d,
                    read: *r,
                })),
                [0, _, _] => Ok(None),
                other => Err(corrupt(format!("mark reply {other:?}"))),
            })
            .collect()
    }

    /// Registry look-up, then one publish per live gateway; the share for
    /// `local` (if given) is returned rather than published.
    async fn route_inner(&self, ev: Routed, local: Option<&str>) -> Result<Option<Routed>> {
        Ok(self.route_many(vec![ev], local).await?.pop())
    }

    /// [`RedisBroker::route_inner`] for several events: one registry
    /// look-up for all their users and one publish per live gateway,
    /// carrying every event with a recipient there. The shares for `local`
    /// come back, in the events' order.
    async fn route_many(&self, evs: Vec<Routed>, local: Option<&str>) -> Result<Vec<Routed>> {
        // A revocation must reach a socket that registered a moment ago:
        // it reads the registry itself.
        let cacheable = evs.iter().all(|ev| ev.revoke.is_none());
        let users: Vec<Address> = evs.iter().flat_map(|ev| ev.users.iter().copied()).collect();
        let mut lists = self.registry_lookup(&users, cacheable).await?.into_iter();
        // Gateway → (event, its users there), events in order.
        let mut per_gw: HashMap<String, Vec<(usize, Vec<Address>)>> = HashMap::new();
        for (i, ev) in evs.iter().enumerate() {
            for (u, gws) in ev.users.iter().zip(lists.by_ref()) {
                for g in gws.iter() {
                    let shares = per_gw.entry(g.clone()).or_default();
                    match shares.last_mut() {
                        Some((at, users)) if *at == i => users.push(*u),
                        _ => shares.push((i, vec![*u])),
                    }
                }
            }
        }
        let mine: Vec<Routed> = local
            .and_then(|l| per_gw.remove(l))
            .unwrap_or_default()
            .into_iter()
            .map(|(i, users)| Routed {
                users,
                ..evs[i].clone()
            })
            .collect();
        if per_gw.is_empty() {
            return Ok(mine);
        }
        let mut live = self.live_gateways(false).await?;
        if per_gw.keys().any(|g| !live.contains(g)) {
            // A gateway that just started may not be in the cached set yet.
            live = self.live_gateways(true).await?;
        }
        let mut sends = Vec::with_capacity(per_gw.len());
        for (gw, shares) in per_gw {
            if !live.contains(&gw) {
                continue;
            }
            let payload = match shares.as_slice() {
                [(i, users)] => evs[*i].encode(users),
                _ => {
                    let parts: Vec<(&Routed, &[Address])> = shares
                        .iter()
                        .map(|(i, users)| (&evs[*i], users.as_slice()))
                        .collect();
                    Routed::encode_many(&parts)
                }
            }
            .map_err(corrupt)?;
            let channel = gateway_channel(&gw);
            let pool = &self.pool;
            let cluster = self.cluster;
            sends.push(async move {
                if cluster {
                    pool.next().spublish::<(), _, _>(channel, payload).await
                } else {
                    pool.next().publish::<(), _, _>(channel, payload).await
                }
            });
        }
        try_join_all(sends).await.map_err(unavailable)?;
        Ok(mine)
    }

    /// Add `conv` to each user's conversation set (`sb:uc:{user}`, other
    /// slots than the conversation's: one SADD each, sent together).
    async fn add_to_lists<'a>(
        &self,
        users: impl IntoIterator<Item = &'a Address>,
        conv: &ConvId,
    ) -> Result<()> {
        try_join_all(
            users
                .into_iter()
                .map(|u| self.pool.sadd::<(), _, _>(user_convs_key(u), conv.as_str())),
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// The subscriber connection `attach` opened for `gateway`.
    fn subscriber(&self, gateway: &str) -> Result<SubscriberClient> {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(gateway)
            .cloned()
            .ok_or_else(|| {
                BrokerError::Unavailable(format!(
                    "gateway {gateway} is not attached to this broker"
                ))
            })
    }

    async fn group(&self, id: &ConvId) -> Result<Option<Conversation>> {
        let keys = self.conv_keys(id);
        let meta: HashMap<String, String> = self
            .pool
            .hgetall(keys.key(suffix::META))
            .await
            .map_err(unavailable)?;
        if meta.is_empty() {
            return Ok(None);
        }
        let raw: Vec<String> = self
            .pool
            .smembers(keys.key(suffix::MEMBERS))
            .await
            .map_err(unavailable)?;
        let mut members = raw
            .iter()
            .map(|m| m.parse::<Address>().map_err(corrupt))
            .collect::<Result<Vec<_>>>()?;
        members.sort();
        let created_by = meta
            .get("created_by")
            .map(|s| s.parse::<Address>().map_err(corrupt))
            .transpose()?;
        let channel = id.kind() == ConvKind::Channel;
        let publishers = if channel {
            let raw: Vec<String> = self
                .pool
                .smembers(keys.key(suffix::PUBLISHERS))
                .await
                .map_err(unavailable)?;
            let mut p = raw
                .iter()
                .map(|m| m.parse::<Address>().map_err(corrupt))
                .collect::<Result<Vec<_>>>()?;
            p.sort();
            p
        } else {
            Vec::new()
        };
        let visibility = match meta.get("visibility").map(String::as_str) {
            Some("public") => Some(Visibility::Public),
            Some("members") => Some(Visibility::Members),
            Some(other) => return Err(corrupt(format!("channel visibility {other:?}"))),
            None if channel => return Err(corrupt("channel without visibility")),
            None => None,
        };
        Ok(Some(Conversation {
            id: id.clone(),
            kind: id.kind(),
            title: meta.get("title").filter(|t| !t.is_empty()).cloned(),
            members,
            created_by,
            created_at: meta
                .get("created_at")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            publishers,
            visibility,
        }))
    }
}

/// A fred builder with the reconnect and timeout policy every Switchboard
/// Redis client uses (the broker's and the worker's).
pub fn redis_builder(config: &Config) -> Builder {
    let mut b = Builder::from_config(config.clone());
    // Reconnect forever with capped exponential backoff; commands issued while
    // Redis is down fail after the timeout instead of queueing without bound,
    // so callers can answer `unavailable` and clients retry with the same id.
    b.set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    b.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5));
    b.with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(5);
        c.max_command_attempts = 2;
    });
    b
}

/// A connected pool of `size` clients ([`redis_builder`]'s policy) for
/// `target` (its `config`), waiting up to `wait` while the server is
/// unreachable (see [`crate::startup`]).
pub async fn connect_pool(
    target: &super::RedisTarget,
    config: &Config,
    size: usize,
    wait: Duration,
) -> std::result::Result<Pool, fred::error::Error> {
    crate::startup::wait_for(
        &format!("Redis at {target}"),
        wait,
        crate::startup::redis_transient,
        || async {
            // A pool whose first connection failed is not reused: each
            // attempt starts clean. (Its clients stop when that connection
            // fails: nothing is left reconnecting in the background.)
            let pool = redis_builder(config).build_pool(size)?;
            pool.init().await?;
            Ok(pool)
        },
    )
    .await
}

/// Wait until Redis has applied the (un)subscribe just sent on `sub`. fred
/// answers SUBSCRIBE and UNSUBSCRIBE once they are written, not once Redis
/// confirms them, so a publish right after could still miss a new
/// subscriber or reach an old one. A PING on the same connection is answered
/// after everything sent before it: a barrier. On a cluster, the PING goes
/// to the node of `topic`'s slot, where the sharded (un)subscribe went.
async fn applied(sub: &SubscriberClient, topic: Option<&str>) -> Result<()> {
    let ping = match topic {
        Some(t) => {
            let slot = fred::util::redis_keyslot(t.as_bytes());
            let node = sub
                .cached_cluster_state()
                .and_then(|s| s.get_server(slot).cloned())
                .ok_or_else(|| {
                    BrokerError::Unavailable(format!("no cluster node known for {t}"))
                })?;
            let on_node = fred::types::config::Options {
                cluster_node: Some(node),
                ..Default::default()
            };
            sub.with_options(&on_node).ping::<Value>(None).await
        }
        None => sub.ping::<Value>(None).await,
    };
    ping.map(|_| ()).map_err(unavailable)
}

/// A TTL in whole milliseconds (at least 1: Redis refuses 0), the precision
/// the memory engine keeps too.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn value_u64(v: &Value) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| corrupt(format!("expected integer, got {v:?}")))
}

#[async_trait]
impl Broker for RedisBroker {
    async fn ping(&self) -> Result<()> {
        let _: String = self.pool.next().ping(None).await.map_err(unavailable)?;
        Ok(())
    }

    async fn use_nonce(&self, nonce: &str, ttl: Duration) -> Result<bool> {
        // SET NX answers OK to exactly one caller: single use even under races.
        let set: Option<String> = self
            .pool
            .set(
                nonce_key(nonce),
                1,
                Some(Expiration::PX(millis(ttl))),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn create_group(&self, conv: &Conversation) -> Result<()> {
        let keys = self.conv_keys(&conv.id);
        let mut args: Vec<String> = vec![
            conv.created_at.to_string(),
            conv.title.clone().unwrap_or_default(),
            conv.created_by
                .as_ref()
                .map(Address::lower)
                .unwrap_or_default(),
        ];
        args.extend(conv.members.iter().map(Address::lower));
        let created: i64 = self
            .create_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![keys.key(suffix::META), keys.key(suffix::MEMBERS)],
                args,
            )
            .await
            .map_err(unavailable)?;
        if created == 0 {
            return Err(BrokerError::AlreadyExists);
        }
        self.add_to_lists(&conv.members, &conv.id).await
    }

    async fn create_channel(&self, conv: &Conversation) -> Result<()> {
        let keys = self.conv_keys(&conv.id);
        let visibility = match conv.visibility {
            Some(Visibility::Members) => "members",
            _ => "public",
        };
        let mut args: Vec<String> = vec![
            conv.created_at.to_string(),
            conv.title.clone().unwrap_or_default(),
            conv.created_by
                .as_ref()
                .map(Address::lower)
                .unwrap_or_default(),
            visibility.into(),
            conv.publishers.len().to_string(),
        ];
        args.extend(conv.publishers.iter().map(Address::lower));
        args.extend(conv.members.iter().map(Address::lower));
        let created: i64 = self
            .create_channel_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![
                    keys.key(suffix::META),
                    keys.key(suffix::MEMBERS),
                    keys.key(suffix::PUBLISHERS),
                ],
                args,
            )
            .await
            .map_err(unavailable)?;
        if created == 0 {
            return Err(BrokerError::AlreadyExists);
        }
        // The channel shows in the lists of everyone named in it.
        let named: HashSet<&Address> = conv
            .members
            .iter()
            .chain(&conv.publishers)
            .chain(conv.created_by.as_ref())
            .collect();
        self.add_to_lists(named, &conv.id).await
    }

    async fn add_members(&self, id: &ConvId, users: &[Address]) -> Result<()> {
        let keys = self.conv_keys(id);
        let mut args = vec!["add".to_string()];
        args.extend(users.iter().map(Address::lower));
        let ok: i64 = self
            .members_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![keys.key(suffix::META), keys.key(suffix::MEMBERS)],
                args,
            )
            .await
            .map_err(unavailable)?;
        if ok < 0 {
            return Err(BrokerError::NotMember);
        }
        self.add_to_lists(users, id).await
    }

    async fn remove_member(&self, id: &ConvId, user: &Address) -> Result<bool> {
        let keys = self.conv_keys(id);
        let removed: i64 = self
            .members_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![keys.key(suffix::META), keys.key(suffix::MEMBERS)],
                vec!["rem".to_string(), user.lower()],
            )
            .await
            .map_err(unavailable)?;
        if removed < 0 {
            return Err(BrokerError::NotMember);
        }
        self.pool
            .srem::<(), _, _>(user_convs_key(user), id.as_str())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn conversation(&self, id: &ConvId) -> Result<Option<Conversation>> {
        match id.kind() {
            ConvKind::Direct => Ok(id.direct_members().map(|m| Conversation {
                id: id.clone(),
                kind: ConvKind::Direct,
                title: None,
                members: m.to_vec(),
                created_by: None,
                created_at: 0,
                publishers: Vec::new(),
                visibility: None,
            })),
            ConvKind::Group | ConvKind::Channel => self.group(id).await,
        }
    }

    async fn is_member(&self, id: &ConvId, user: &Address) -> Result<bool> {
        match id.kind() {
            ConvKind::Direct => Ok(id.direct_members().is_some_and(|m| m.contains(user))),
            ConvKind::Group => self
                .pool
                .sismember(self.conv_keys(id).key(suffix::MEMBERS), user.lower())
                .await
                .map_err(unavailable),
            ConvKind::Channel => Ok(self.group(id).await?.is_some_and(|c| c.can_read(user))),
        }
    }

    async fn user_conversations(&self, user: &Address) -> Result<Vec<ConvId>> {
        let raw: Vec<String> = self
            .pool
            .smembers(user_convs_key(user))
            .await
            .map_err(unavailable)?;
        let mut v = raw
            .iter()
            .map(|s| s.parse::<ConvId>().map_err(corrupt))
            .collect::<Result<Vec<_>>>()?;
        v.sort();
        Ok(v)
    }

    async fn send(&self, req: SendRequest) -> Result<SendOutcome> {
        let direct = req.conv.direct_members();
        match (&direct, req.conv.kind()) {
            (Some(m), _) if !m.contains(&req.from) => return Err(BrokerError::NotMember),
            (None, ConvKind::Direct) => return Err(BrokerError::NotMember),
            _ => {}
        }
        let keys = self.conv_keys(&req.conv);
        let from = req.from.lower();
        let channel = req.conv.kind() == ConvKind::Channel;
        let key_list = vec![
            keys.key(suffix::SEQ),
            keys.key(suffix::LOG),
            // Who may send: a group's members, a channel's publishers.
            keys.key(if channel {
                suffix::PUBLISHERS
            } else {
                suffix::MEMBERS
            }),
            keys.dedupe(&from, &req.id),
            keys.persist.clone(),
            keys.legacy_dedupe(&req.id),
        ];
        let mut key_list = key_list;
        if !self.cluster {
            key_list.push(REGISTRY_VERSION_KEY.to_owned());
        }
        let fixed = &*self.send_args;
        let args: Vec<Value> = vec![
            from.into(),
            req.id.as_str().into(),
            req.body.get().into(),
            // ARGV[4] is unused: the timestamp comes from the Redis clock
            // inside the script so every gateway stamps from one clock.
            fixed.unused.clone(),
            fixed.log_max_len.clone(),
            fixed.dedupe_ttl.clone(),
            fixed.persist.clone(),
            Value::from_static_str(match req.conv.kind() {
                ConvKind::Direct => "dm",
                ConvKind::Group => "g",
                // `chx`: a privileged sender, no publisher check.
                ConvKind::Channel if req.privileged => "chx",
                ConvKind::Channel => "ch",
            }),
            req.conv.as_str().into(),
            fixed.seed.clone(),
            fixed.log_max_age.clone(),
            fixed.backlog_max.clone(),
        ];
        let out: Vec<Value> = self
            .send_script
            .evalsha_with_reload(self.pool.next(), key_list, args)
            .await
            .map_err(unavailable)?;
        let status = out
            .first()
            .and_then(Value::as_i64)
            .ok_or_else(|| corrupt("send reply"))?;
        if status == -2 {
            return Err(BrokerError::Unseeded(Box::new(req)));
        }
        if status == -3 {
            return Err(BrokerError::NotPublisher);
        }
        if status == -4 {
            return Err(BrokerError::Backlogged(self.cfg.persist_backlog_max));
        }
        if status < 0 {
            return Err(BrokerError::NotMember);
        }
        let seq = value_u64(out.get(1).unwrap_or(&Value::Null))?;
        let ts = value_u64(out.get(2).unwrap_or(&Value::Null))?;
        self.registry
            .observe(value_u64(out.get(3).unwrap_or(&Value::Null))?);
        let members = match direct {
            Some(m) => m.to_vec(),
            None => out[4.min(out.len())..]
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| corrupt("member"))
                        .and_then(|s| s.parse::<Address>().map_err(corrupt))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        if seq == 1 && req.conv.kind() == ConvKind::Direct {
            // The first message of a direct conversation makes it one of both
            // users' conversations (presence peers, conversation lists). Also
            // on a duplicate of it: if this step failed the first time, the
            // client's retry with the same id repairs it (SADD is idempotent).
            self.add_to_lists(&members, &req.conv).await?;
        }
        Ok(SendOutcome {
            message: Message {
                conv: req.conv,
                seq,
                id: req.id,
                from: req.from,
                body: req.body,
                ts,
                relayed: false,
            },
            duplicate: status == 0,
            members,
        })
    }

    async fn seed(
        &self,
        conv: &ConvId,
        last_seq: u64,
        group: Option<&Conversation>,
    ) -> Result<u64> {
        let keys = self.conv_keys(conv);
        let mut args = vec![last_seq.to_string()];
        match group {
            Some(g) => {
                args.push("g".into());
                args.push(g.created_at.to_string());
                args.push(g.title.clone().unwrap_or_default());
                args.push(
                    g.created_by
                        .as_ref()
                        .map(Address::lower)
                        .unwrap_or_default(),
                );
                args.extend(g.members.iter().map(Address::lower));
            }
            None => args.push("dm".into()),
        }
        let epoch: i64 = self
            .seed_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![
                    keys.key(suffix::SEQ),
                    keys.key(suffix::EPOCH),
                    keys.key(suffix::META),
                    keys.key(suffix::MEMBERS),
                ],
                args,
            )
            .await
            .map_err(unavailable)?;
        if let Some(g) = group {
            // The per-user conversation sets live in other slots.
            self.add_to_lists(&g.members, conv).await?;
        }
        Ok(epoch.max(0) as u64)
    }

    async fn read_log(&self, conv: &ConvId, after: u64, limit: usize) -> Result<LogPage> {
        let keys = self.conv_keys(conv);
        let client = self.pool.next();
        // The counter first, then the log up to it: the page is a snapshot
        // as of that read. The send script raises the counter and appends in
        // one step, so every seq up to `last` is in the log (unless trimmed).
        // Read the other way round, a send landing between the two reads made
        // an empty page with a larger `last_seq`, which the replay had to
        // call unrecoverable: a client then skipped a message that existed.
        let (last, epoch): (Option<u64>, Option<String>) = client
            .mget(vec![keys.key(suffix::SEQ), keys.key(suffix::EPOCH)])
            .await
            .map_err(unavailable)?;
        let last_seq = last.unwrap_or(0);
        let entries: Vec<XReadValue<String, String, String>> = if after >= last_seq {
            Vec::new()
        } else {
            client
                .xrange_values(
                    keys.key(suffix::LOG),
                    format!("{}-0", after.saturating_add(1)),
                    format!("{last_seq}-0"),
                    Some(limit as u64),
                )
                .await
                .map_err(unavailable)?
        };
        let (epoch, epoch_base) = match epoch.as_deref().and_then(|e| e.split_once(':')) {
            Some((at, base)) => (
                at.parse().map_err(|_| corrupt("epoch"))?,
                base.parse().map_err(|_| corrupt("epoch base"))?,
            ),
            None => (0, 0),
        };
        let mut messages = Vec::with_capacity(entries.len());
        for (id, mut fields) in entries {
            let seq = id
                .split_once('-')
                .and_then(|(s, _)| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt(format!("log entry id {id}")))?;
            let mut take = |k: &str| {
                fields
                    .remove(k)
                    .ok_or_else(|| corrupt(format!("log entry {id} lacks {k}")))
            };
            let msg_id: MsgId = take(log_fields::ID)?.parse().map_err(corrupt)?;
            let from: Address = take(log_fields::FROM)?.parse().map_err(corrupt)?;
            let body = RawValue::from_string(take(log_fields::BODY)?).map_err(corrupt)?;
            let ts: u64 = take(log_fields::TS)?.parse().map_err(corrupt)?;
            messages.push(Message {
                conv: conv.clone(),
                seq,
                id: msg_id,
                from,
                body,
                ts,
                relayed: false,
            });
        }
        Ok(LogPage {
            messages,
            last_seq,
            epoch,
            epoch_base,
        })
    }

    async fn mark(
        &self,
        conv: &ConvId,
        user: &Address,
        mark: Mark,
        seq: u64,
    ) -> Result<Option<Watermarks>> {
        let one = MarkRequest {
            conv: conv.clone(),
            user: *user,
            mark,
            seq,
        };
        let moved = self.mark_batch(std::slice::from_ref(&one)).await?;
        Ok(moved.into_iter().next().flatten())
    }

    async fn mark_many(&self, marks: &[MarkRequest]) -> Result<Vec<Option<Watermarks>>> {
        if !self.cluster {
            let mut moved = Vec::with_capacity(marks.len());
            for chunk in marks.chunks(MARK_BATCH) {
                moved.extend(self.mark_batch(chunk).await?);
            }
            return Ok(moved);
        }
        // A cluster keeps each conversation in its own slot, and a script's
        // keys must share one: one call per conversation (its marks in
        // order), the calls issued together so the client pipelines them.
        let mut by_conv: HashMap<&ConvId, Vec<usize>> = HashMap::new();
        for (i, m) in marks.iter().enumerate() {
            by_conv.entry(&m.conv).or_default().push(i);
        }
        let calls = by_conv.into_values().map(|at| async move {
            let group: Vec<MarkRequest> = at.iter().map(|&i| marks[i].clone()).collect();
            let mut moved = Vec::with_capacity(group.len());
            for chunk in group.chunks(MARK_BATCH) {
                moved.extend(self.mark_batch(chunk).await?);
            }
            Ok::<_, BrokerError>((at, moved))
        });
        let mut moved = vec![None; marks.len()];
        for group in futures_util::future::join_all(calls).await {
            let (at, group_moved) = group?;
            for (i, w) in at.into_iter().zip(group_moved) {
                moved[i] = w;
            }
        }
        Ok(moved)
    }

    async fn watermarks(&self, conv: &ConvId, user: &Address) -> Result<Watermarks> {
        let keys = self.conv_keys(conv);
        let u = user.lower();
        let v: Vec<Option<u64>> = self
            .pool
            .hmget(
                keys.key(suffix::WATERMARKS),
                vec![format!("{u}:d"), format!("{u}:r")],
            )
            .await
            .map_err(unavailable)?;
        Ok(Watermarks {
            delivered: v.first().copied().flatten().unwrap_or(0),
            read: v.get(1).copied().flatten().unwrap_or(0),
        })
    }

    async fn attach(&self, gateway: &str) -> Result<mpsc::Receiver<Routed>> {
        let mut b = redis_builder(&self.builder_config);
        // fred hands pub/sub messages over a broadcast channel of 32 slots by
        // default; a burst larger than that would be dropped as "lagged".
        b.with_performance_config(|p| p.broadcast_channel_capacity = SUBSCRIBER_BUFFER);
        let sub = b.build_subscriber_client().map_err(unavailable)?;
        sub.init().await.map_err(unavailable)?;
        // Re-subscribe after reconnects (Redis restarts, cluster failovers).
        let _resubscribe = sub.manage_subscriptions();
        let mut rx = sub.message_rx();
        let mut reconnects = sub.reconnect_rx();
        let channel = gateway_channel(gateway);
        // Channel subscriptions go through the same connection, so their
        // messages arrive on the same feed.
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gateway.to_owned(), sub.clone());
        if self.cluster {
            sub.ssubscribe(channel.clone()).await.map_err(unavailable)?;
        } else {
            sub.subscribe(channel.clone()).await.map_err(unavailable)?;
        }
        // Routed to only once subscribed: events routed to it before would
        // be lost.
        applied(&sub, self.cluster.then_some(channel.as_str())).await?;
        if !self.cluster {
            // Registry changes, for the look-up cache; it starts at the
            // version read after subscribing, so no change is missed.
            sub.subscribe(REGISTRY_CHANNEL).await.map_err(unavailable)?;
            applied(&sub, None).await?;
            let v: Option<u64> = self
                .pool
                .get(REGISTRY_VERSION_KEY)
                .await
                .map_err(unavailable)?;
            self.registry.start(v.unwrap_or(0));
        }
        self.gateway_alive(gateway).await?;
        let (tx, out) = mpsc::channel(4096);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            // Keep the subscriber alive as long as the gateway listens.
            let _sub = sub;
            let mut reconnects_open = true;
            'feed: loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    r = reconnects.recv(), if reconnects_open => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            reconnects_open = false;
                        } else {
                            // Changes published while it was away are lost.
                            registry.lost();
                        }
                        continue;
                    }
                };
                match received {
                    Ok(msg) => {
                        let Some(text) = msg.value.as_str() else {
                            continue;
                        };
                        if &*msg.channel == REGISTRY_CHANNEL {
                            match RegistryCache::parse(&text) {
                                Some((v, user)) => registry.invalidate(v, user),
                                None => {
                                    tracing::warn!(%text, "undecodable registry change");
                                    registry.lost();
                                }
                            }
                            continue;
                        }
                        match Routed::decode_all(&text) {
                            Ok(evs) => {
                                for ev in evs {
                                    if tx.send(ev).await.is_err() {
                                        break 'feed;
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%channel, error = %e, "undecodable routed event")
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        registry.lost();
                        tracing::warn!(%channel, missed = n, "gateway fell behind its pub/sub feed");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            registry.stop();
        });
        Ok(out)
    }

    async fn gateway_alive(&self, gateway: &str) -> Result<bool> {
        let now = now_ms();
        let deadline = now + self.cfg.gateway_ttl.as_millis() as u64;
        // ZADD answers how many members it added: 1 when the entry was gone.
        let added: i64 = self
            .pool
            .zadd(
                GATEWAYS_KEY,
                None,
                None,
                false,
                false,
                (deadline as f64, gateway),
            )
            .await
            .map_err(unavailable)?;
        // Forget gateways that have been dead for a long while.
        let stale = now.saturating_sub(10 * self.cfg.gateway_ttl.as_millis() as u64);
        let _: () = self
            .pool
            .zremrangebyscore(GATEWAYS_KEY, "-inf", stale as f64)
            .await
            .map_err(unavailable)?;
        Ok(added > 0)
    }

    async fn register(&self, user: &Address, gateway: &str) -> Result<()> {
        let key = registry_key(user);
        let listed: Vec<String> = if self.cluster {
            let _: () = self.pool.sadd(&key, gateway).await.map_err(unavailable)?;
            self.pool.smembers(&key).await.map_err(unavailable)?
        } else {
            self.registry_change(user, "add", &[gateway.to_owned()])
                .await?
        };
        // Prune entries of dead gateways here, on the rare connect path, rather
        // than on every routed message.
        if listed.len() > 1 {
            let live = self.live_gateways(true).await?;
            let dead: Vec<String> = listed
                .into_iter()
                .filter(|g| g != gateway && !live.contains(g))
                .collect();
            if !dead.is_empty() {
                if self.cluster {
                    let _: () = self.pool.srem(&key, dead).await.map_err(unavailable)?;
                } else {
                    self.registry_change(user, "rem", &dead).await?;
                }
            }
        }
        Ok(())
    }

    async fn unregister(&self, user: &Address, gateway: &str) -> Result<()> {
        if !self.cluster {
            self.registry_change(user, "rem", &[gateway.to_owned()])
                .await?;
            return Ok(());
        }
        let _: () = self
            .pool
            .srem(registry_key(user), gateway)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_connected(&self, user: &Address) -> Result<bool> {
        let listed: Vec<String> = self
            .pool
            .smembers(registry_key(user))
            .await
            .map_err(unavailable)?;
        if listed.is_empty() {
            return Ok(false);
        }
        if listed.iter().any(|g| self.live_cached(g)) {
            return Ok(true);
        }
        // Not in the cached set: the gateway may have attached since it was
        // read (route does the same re-read).
        let live = self.live_gateways(true).await?;
        Ok(listed.iter().any(|g| live.contains(g)))
    }

    async fn route(&self, ev: Routed) -> Result<()> {
        self.route_inner(ev, None).await.map(|_| ())
    }

    async fn route_local(&self, ev: Routed, local: &str) -> Result<Option<Routed>> {
        self.route_inner(ev, Some(local)).await
    }

    async fn route_local_many(&self, evs: Vec<Routed>, local: &str) -> Result<Vec<Routed>> {
        self.route_many(evs, Some(local)).await
    }

    async fn subscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()> {
        let sub = self.subscriber(gateway)?;
        let topic = channel_topic(conv);
        if self.cluster {
            sub.ssubscribe(topic.clone()).await.map_err(unavailable)?;
        } else {
            sub.subscribe(topic.clone()).await.map_err(unavailable)?;
        }
        applied(&sub, self.cluster.then_some(topic.as_str())).await
    }

    async fn unsubscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()> {
        let sub = self.subscriber(gateway)?;
        let topic = channel_topic(conv);
        if self.cluster {
            sub.sunsubscribe(topic.clone()).await.map_err(unavailable)?;
        } else {
            sub.unsubscribe(topic.clone()).await.map_err(unavailable)?;
        }
        applied(&sub, self.cluster.then_some(topic.as_str())).await
    }

    async fn publish_channel(&self, ev: Routed) -> Result<()> {
        let Some((conv, _)) = &ev.channel else {
            return Ok(());
        };
        let topic = channel_topic(conv);
        let payload = ev.encode(&[]).map_err(corrupt)?;
        if self.cluster {
            self.pool.next().spublish::<(), _, _>(topic, payload).await
        } else {
            self.pool.next().publish::<(), _, _>(topic, payload).await
        }
        .map_err(unavailable)
    }

    async fn touch(&self, user: &Address, now_ms: u64) -> Result<()> {
        let _: i64 = self
            .touch_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![PRESENCE_KEY],
                vec![user.lower(), now_ms.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn last_seen(&self, users: &[Address]) -> Result<Vec<u64>> {
        if users.is_empty() {
            return Ok(vec![]);
        }
        let fields: Vec<String> = users.iter().map(Address::lower).collect();
        let v: Vec<Option<u64>> = self
            .pool
            .hmget(PRESENCE_KEY, fields)
            .await
            .map_err(unavailable)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(0)).collect())
    }

    async fn revoke_sessions(&self, user: &Address, before: i64, ttl: Duration) -> Result<()> {
        let _: () = self
            .pool
            .set(
                revoked_key(user),
                before,
                Some(Expiration::PX(millis(ttl))),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn sessions_revoked_before(&self, user: &Address) -> Result<Option<i64>> {
        self.pool.get(revoked_key(user)).await.map_err(unavailable)
    }

    async fn report_connections(
        &self,
        id: &GatewayIdentity,
        connections: u64,
        ttl: Duration,
    ) -> Result<()> {
        let _: i64 = self
            .report_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![id.cluster().redis_key()],
                vec![
                    id.pod().to_owned(),
                    connections.to_string(),
                    millis(ttl).to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn withdraw_report(&self, id: &GatewayIdentity) -> Result<()> {
        let _: i64 = self
            .pool
            .hdel(id.cluster().redis_key(), id.pod())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn connection_reports(&self, cluster: &ClusterRef) -> Result<ConnectionReports> {
        let out: Vec<Value> = self
            .read_reports_script
            .evalsha_with_reload(
                self.pool.next(),
                vec![cluster.redis_key()],
                Vec::<String>::new(),
            )
            .await
            .map_err(unavailable)?;
        reports::from_reply(cluster, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::persist::{fields, kind};
    use crate::broker::reports::ClusterRef;
    use std::collections::BTreeSet;

    /// The key table of docs/architecture.md is the set of keys this engine
    /// builds: every key the builders make (with sample values turned back
    /// into the table's placeholders) is documented, and every documented
    /// key is built.
    #[test]
    fn the_documented_key_table_is_the_keys_built_here() {
        let doc = include_str!("../../../docs/architecture.md");
        let table = doc
            .split("### Redis keys")
            .nth(1)
            .expect("docs/architecture.md has a Redis keys section");
        let documented: BTreeSet<String> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .filter_map(|l| l.split('|').nth(1))
            .map(|cell| {
                let cell = cell.trim();
                let cell = cell.strip_prefix("channel ").unwrap_or(cell);
                cell.trim_matches('`').to_string()
            })
            .collect();

        let conv = ConvId::new_group();
        let shards = BrokerConfig::default().shards;
        let shard = shard_of(&conv, shards);
        let user = Address([0xab; 20]);
        let id: MsgId = "sample-msg".parse().unwrap();
        let keys = ConvKeys::new(&conv, shards);
        let mut built: Vec<String> = suffix::ALL.iter().map(|s| keys.key(s)).collect();
        built.push(keys.dedupe(&user.lower(), &id));
        built.push(keys.legacy_dedupe(&id));
        built.push(keys.persist.clone());
        built.push(persist::dead_letter_key(shard));
        built.push(nonce_key("sample-nonce"));
        built.push(user_convs_key(&user));
        built.push(registry_key(&user));
        built.push(revoked_key(&user));
        built.push(GATEWAYS_KEY.into());
        built.push(REGISTRY_VERSION_KEY.into());
        built.push(REGISTRY_CHANNEL.into());
        built.push(PRESENCE_KEY.into());
        built.push(
            ClusterRef::new("sample-ns", "sample-cluster")
                .unwrap()
                .redis_key(),
        );
        built.push(gateway_channel("sample-gw"));
        built.push(channel_topic(&conv));
        let placeholders = |k: String| {
            k.replace(&format!("{{{shard}}}"), "{<shard>}")
                .replace(conv.as_str(), "<conv>")
                .replace(&user.lower(), "<user>")
                .replace("sample-msg", "<msgid>")
                .replace("sample-nonce", "<nonce>")
                .replace("sample-ns", "<namespace>")
                .replace("sample-cluster", "<cluster>")
                .replace("sample-gw", "<gateway>")
        };
        let built: BTreeSet<String> = built.into_iter().map(placeholders).collect();
        let undocumented: Vec<_> = built.difference(&documented).collect();
        let unbuilt: Vec<_> = documented.difference(&built).collect();
        assert!(
            undocumented.is_empty() && unbuilt.is_empty(),
            "built but not in docs/architecture.md: {undocumented:?}; documented but not built: {unbuilt:?}"
        );
    }

    fn scripts() -> [(&'static str, &'static str); 8] {
        [
            ("resequence", RESEQUENCE_LUA.as_str()),
            ("send", SEND_LUA.as_str()),
            ("create", CREATE_LUA.as_str()),
            ("create_channel", CREATE_CHANNEL_LUA.as_str()),
            ("seed", SEED_LUA.as_str()),
            ("members", MEMBERS_LUA.as_str()),
            ("mark", MARK_LUA.as_str()),
            ("touch", TOUCH_LUA.as_str()),
        ]
    }

    #[test]
    fn scripts_have_no_placeholder_left() {
        for (name, text) in scripts() {
            assert_eq!(lua::unresolved(text), Vec::<String>::new(), "{name}.lua");
        }
    }

    fn field_set(pairs: &[(String, String)]) -> BTreeSet<&str> {
        pairs.iter().map(|(f, _)| f.as_str()).collect()
    }

    /// Every stream a script writes, with the fields it writes, is one the
    /// Rust side reads with its constants: the persistence stream exactly
    /// as [`persist::parse_entry`] reads it, the log as `read_log` does.
    #[test]
    fn scripts_write_only_the_stream_fields_rust_reads() {
        let log: BTreeSet<&str> = [
            log_fields::ID,
            log_fields::FROM,
            log_fields::BODY,
            log_fields::TS,
        ]
        .into();
        for (name, text) in scripts() {
            let calls = lua::xadd_calls(text);
            let expected = match name {
                // The log (KEYS[2]) and the persistence stream (KEYS[5]).
                "send" | "resequence" => vec![
                    ("KEYS[2]", log.clone(), None),
                    (
                        "KEYS[5]",
                        fields::MESSAGE.into(),
                        Some(format!("'{}'", kind::MESSAGE)),
                    ),
                ],
                "mark" => vec![(
                    "KEYS[k + 3]",
                    fields::WATERMARK.into(),
                    Some(format!("'{}'", kind::WATERMARK)),
                )],
                _ => vec![],
            };
            assert_eq!(calls.len(), expected.len(), "{name}.lua: {calls:?}");
            for (call, (key, want, entry_kind)) in calls.iter().zip(expected) {
                assert_eq!(call.key, key, "{name}.lua");
                assert_eq!(field_set(&call.pairs), want, "{name}.lua writes to {key}");
                assert_eq!(call.pairs.len(), want.len(), "{name}.lua: a field twice");
                if let Some(k) = entry_kind {
                    let written = call.pairs.iter().find(|(f, _)| f == fields::KIND);
                    assert_eq!(written.map(|(_, v)| v), Some(&k), "{name}.lua");
                }
            }
        }
        // The age cap reads the log's timestamp field by the same name.
        assert!(SEND_LUA.contains(&format!("f[i] == '{}'", log_fields::TS)));
    }
}
