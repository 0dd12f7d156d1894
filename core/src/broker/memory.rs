//! The in-process engine: one mutex-guarded state, the same semantics as the
//! Redis engine. Used by `switchboard dev` and by tests; several gateways in one
//! process can share an instance exactly as they would share one Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::reports::{ClusterRef, ConnectionReport, ConnectionReports, GatewayIdentity};
use super::{
    Broker, BrokerConfig, BrokerError, LogPage, Mark, Result, Routed, SendOutcome, SendRequest,
    Watermarks,
};
use switchboard_proto::frames::Message;
use switchboard_proto::ids::{Address, ConvId, ConvKind, MsgId};
use switchboard_proto::model::Conversation;
use switchboard_proto::time::now_ms;

/// Capacity of each gateway's inbound event queue. The gateway's dispatcher only
/// hands frames to bounded per-connection queues, so it never falls behind for
/// long; if it ever does, events are dropped like a slow Redis subscriber's
/// would be, and clients recover by seq gap detection and sync.
const GATEWAY_QUEUE: usize = 65_536;

#[derive(Default)]
struct ConvState {
    last_seq: u64,
    log: VecDeque<Message>,
    /// (Sender, client id) → (seq, ts, inserted at) for idempotent retries:
    /// per sender, so reusing another member's id is a new message.
    dedupe: HashMap<(Address, MsgId), (u64, u64, Instant)>,
    marks: HashMap<Address, Watermarks>,
}

#[derive(Default)]
struct State {
    /// Used sign-in nonces and when their record expires.
    nonces: HashMap<String, Instant>,
    /// Groups and channels.
    groups: HashMap<ConvId, Conversation>,
    /// Channel → gateways subscribed to its events.
    channel_subs: HashMap<ConvId, HashSet<String>>,
    convs: HashMap<ConvId, ConvState>,
    user_convs: HashMap<Address, HashSet<ConvId>>,
    /// Attached gateways' event queues.
    gateways: HashMap<String, mpsc::Sender<Routed>>,
    /// Gateway id → last liveness refresh. Kept apart from `gateways`: like
    /// Redis's `sb:gateways`, liveness does not depend on being attached here.
    alive: HashMap<String, Instant>,
    registry: HashMap<Address, HashSet<String>>,
    seen: HashMap<Address, u64>,
    /// User → (sessions issued at or before this are revoked, kept until).
    revoked: HashMap<Address, (i64, Instant)>,
    /// Cluster → pod → (connections, reported at Unix ms, expires).
    reports: HashMap<ClusterRef, HashMap<String, (u64, u64, Instant)>>,
}

/// See the module docs.
#[derive(Clone)]
pub struct MemoryBroker {
    cfg: BrokerConfig,
    state: Arc<Mutex<State>>,
}

impl MemoryBroker {
    pub fn new(cfg: BrokerConfig) -> Self {
        MemoryBroker {
            cfg,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gateway_live(&self, st: &State, gw: &str, now: Instant) -> bool {
        st.alive
            .get(gw)
            .is_some_and(|at| now.duration_since(*at) < self.cfg.gateway_ttl)
    }

    /// Returns whether `gateway` was not listed before.
    fn mark_alive(&self, st: &mut State, gateway: &str, now: Instant) -> bool {
        // Forget gateways dead for a long while (as the Redis engine does).
        let ttl = self.cfg.gateway_ttl;
        st.alive
            .retain(|_, at| now.duration_since(*at) < ttl.saturating_mul(10));
        st.alive.insert(gateway.to_owned(), now).is_none()
    }

    /// Registry look-up, then one event per live gateway; the share for
    /// `local` (if given) is returned instead, live or not: the caller is
    /// evidently running and its sockets are its own.
    fn route_inner(&self, ev: Routed, local: Option<&str>) -> Option<Routed> {
        let now = Instant::now();
        let st = self.lock();
        let mut per_gw: HashMap<&str, Vec<Address>> = HashMap::new();
        for u in &ev.users {
            for gw in st.registry.get(u).into_iter().flatten() {
                per_gw.entry(gw.as_str()).or_default().push(*u);
            }
        }
        let mine = local.and_then(|l| per_gw.remove(l)).map(|users| Routed {
            users,
            ..ev.clone()
        });
        for (gw, users) in per_gw {
            if !self.gateway_live(&st, gw, now) {
                continue;
            }
            if let Some(tx) = st.gateways.get(gw) {
                let one = Routed {
                    users,
                    ..ev.clone()
                };
                if tx.try_send(one).is_err() {
                    tracing::warn!(
                        gateway = gw,
                        "gateway event queue full or closed; event dropped"
                    );
                }
            }
        }
        mine
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(BrokerConfig::default())
    }
}

/// The users a send by `from` fans out to, after the permission check:
/// the members (direct, group), or nobody for a channel (its messages go
/// to the channel's subscribers instead).
fn recipients(st: &State, conv: &ConvId, from: &Address, privileged: bool) -> Result<Vec<Address>> {
    let members = match conv.kind() {
        ConvKind::Direct => conv.direct_members().map(|m| m.to_vec()),
        ConvKind::Group => st.groups.get(conv).map(|g| g.members.clone()),
        ConvKind::Channel => {
            let c = st.groups.get(conv).ok_or(BrokerError::NotMember)?;
            if !privileged && !c.can_publish(from) {
                return Err(if c.can_read(from) {
                    BrokerError::NotPublisher
                } else {
                    BrokerError::NotMember
                });
            }
            return Ok(Vec::new());
        }
    };
    match members {
        Some(m) if m.contains(from) => Ok(m),
        _ => Err(BrokerError::NotMember),
    }
}

fn sorted(mut v: Vec<Address>) -> Vec<Address> {
    v.sort();
    v.dedup();
    v
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn use_nonce(&self, nonce: &str, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut st = self.lock();
        if st.nonces.get(nonce).is_some_and(|exp| *exp > now) {
            return Ok(false);
        }
        // Expired entries are swept on insert so the map stays bounded by
        // the sign-in rate times the nonce lifetime.
        st.nonces.retain(|_, exp| *exp > now);
        st.nonces.insert(nonce.to_owned(), now + ttl);
        Ok(true)
    }

    async fn create_group(&self, conv: &Conversation) -> Result<()> {
        let mut st = self.lock();
        if st.groups.contains_key(&conv.id) {
            return Err(BrokerError::AlreadyExists);
        }
        // Read back exactly what the Redis engine reads back: members as a
        // sorted set, an empty title as none.
        let mut stored = conv.clone();
        stored.members.sort();
        stored.members.dedup();
        stored.title = stored.title.filter(|t| !t.is_empty());
        for m in &stored.members {
            st.user_convs.entry(*m).or_default().insert(conv.id.clone());
        }
        st.groups.insert(conv.id.clone(), stored);
        Ok(())
    }

    async fn create_channel(&self, conv: &Conversation) -> Result<()> {
        let mut st = self.lock();
        if st.groups.contains_key(&conv.id) {
            return Err(BrokerError::AlreadyExists);
        }
        let mut stored = conv.clone();
        stored.members = sorted(stored.members);
        // The creator is a publisher (read back as one, as from Redis).
        stored.publishers.extend(stored.created_by);
        stored.publishers = sorted(stored.publishers);
        stored.title = stored.title.filter(|t| !t.is_empty());
        // The channel shows in the lists of everyone named in it.
        let named = stored
            .members
            .iter()
            .chain(&stored.publishers)
            .chain(stored.created_by.as_ref());
        for m in named {
            st.user_convs.entry(*m).or_default().insert(conv.id.clone());
        }
        st.groups.insert(conv.id.clone(), stored);
        Ok(())
    }

    async fn add_members(&self, id: &ConvId, users: &[Address]) -> Result<()> {
        let mut st = self.lock();
        let State {
            groups, user_convs, ..
        } = &mut *st;
        let g = groups.get_mut(id).ok_or(BrokerError::NotMember)?;
        for u in users {
            if !g.members.contains(u) {
                g.members.push(*u);
            }
            user_convs.entry(*u).or_default().insert(id.clone());
        }
        g.members.sort();
        Ok(())
    }

    async fn remove_member(&self, id: &ConvId, user: &Address) -> Result<bool> {
        let mut st = self.lock();
        let State {
            groups, user_convs, ..
        } = &mut *st;
        let g = groups.get_mut(id).ok_or(BrokerError::NotMember)?;
        let before = g.members.len();
        g.members.retain(|m| m != user);
        if let Some(c) = user_convs.get_mut(user) {
            c.remove(id);
        }
        Ok(g.members.len() < before)
    }

    async fn conversation(&self, id: &ConvId) -> Result<Option<Conversation>> {
        Ok(match id.kind() {
            ConvKind::Direct => id.direct_members().map(|m| Conversation {
                id: id.clone(),
                kind: ConvKind::Direct,
                title: None,
                members: m.to_vec(),
                created_by: None,
                created_at: 0,
                publishers: Vec::new(),
                visibility: None,
            }),
            ConvKind::Group | ConvKind::Channel => self.lock().groups.get(id).cloned(),
        })
    }

    async fn user_conversations(&self, user: &Address) -> Result<Vec<ConvId>> {
        let st = self.lock();
        let mut v: Vec<ConvId> = st
            .user_convs
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        Ok(v)
    }

    async fn send(&self, req: SendRequest) -> Result<SendOutcome> {
        let now = Instant::now();
        let mut st = self.lock();
        let members = recipients(&st, &req.conv, &req.from, req.privileged)?;
        let max_len = self.cfg.log_max_len;
        let ttl = self.cfg.dedupe_ttl;
        let cs = st.convs.entry(req.conv.clone()).or_default();
        let dedupe_key = (req.from, req.id.clone());
        if let Some(&(seq, ts, at)) = cs.dedupe.get(&dedupe_key)
            && now.duration_since(at) < ttl
        {
            let message = Message {
                conv: req.conv,
                seq,
                id: req.id,
                from: req.from,
                body: req.body,
                ts,
                relayed: false,
            };
            return Ok(SendOutcome {
                message,
                duplicate: true,
                members,
            });
        }
        cs.last_seq += 1;
        let message = Message {
            conv: req.conv.clone(),
            seq: cs.last_seq,
            id: req.id.clone(),
            from: req.from,
            body: req.body,
            ts: now_ms(),
            relayed: false,
        };
        // Keep the dedupe map bounded: forget ids older than the TTL whenever
        // it grows past the log length.
        if cs.dedupe.len() >= max_len {
            cs.dedupe
                .retain(|_, (_, _, at)| now.duration_since(*at) < ttl);
        }
        cs.dedupe.insert(dedupe_key, (message.seq, message.ts, now));
        cs.log.push_back(message.clone());
        while cs.log.len() > max_len {
            cs.log.pop_front();
        }
        let max_age = self.cfg.log_max_age.as_millis() as u64;
        if max_age > 0 {
            let oldest_kept = message.ts.saturating_sub(max_age);
            while cs.log.len() > 1 && cs.log.front().is_some_and(|m| m.ts < oldest_kept) {
                cs.log.pop_front();
            }
        }
        if message.seq == 1 && req.conv.kind() == ConvKind::Direct {
            for m in &members {
                st.user_convs
                    .entry(*m)
                    .or_default()
                    .insert(req.conv.clone());
            }
        }
        Ok(SendOutcome {
            message,
            duplicate: false,
            members,
        })
    }

    /// The memory engine never loses state while it runs (and everything
    /// when it stops), so there is nothing to seed: epoch 0 always.
    async fn seed(
        &self,
        _conv: &ConvId,
        _last_seq: u64,
        _group: Option<&Conversation>,
    ) -> Result<u64> {
        Ok(0)
    }

    async fn read_log(&self, conv: &ConvId, after: u64, limit: usize) -> Result<LogPage> {
        let st = self.lock();
        let Some(cs) = st.convs.get(conv) else {
            return Ok(LogPage::default());
        };
        // The log is contiguous by seq, so the start index is arithmetic.
        let first = cs.log.front().map_or(cs.last_seq + 1, |m| m.seq);
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        Ok(LogPage {
            messages: cs.log.iter().skip(skip).take(limit).cloned().collect(),
            last_seq: cs.last_seq,
            epoch: 0,
            epoch_base: 0,
        })
    }

    async fn mark(
        &self,
        conv: &ConvId,
        user: &Address,
        mark: Mark,
        seq: u64,
    ) -> Result<Option<Watermarks>> {
        let mut st = self.lock();
        let Some(cs) = st.convs.get_mut(conv) else {
            return Ok(None);
        };
        let seq = seq.min(cs.last_seq);
        let w = cs.marks.entry(*user).or_default();
        let before = *w;
        match mark {
            Mark::Delivered => w.delivered = w.delivered.max(seq),
            Mark::Read => {
                w.read = w.read.max(seq);
                w.delivered = w.delivered.max(w.read);
            }
        }
        Ok((*w != before).then_some(*w))
    }

    async fn watermarks(&self, conv: &ConvId, user: &Address) -> Result<Watermarks> {
        let st = self.lock();
        Ok(st
            .convs
            .get(conv)
            .and_then(|c| c.marks.get(user).copied())
            .unwrap_or_default())
    }

    async fn attach(&self, gateway: &str) -> Result<mpsc::Receiver<Routed>> {
        let (tx, rx) = mpsc::channel(GATEWAY_QUEUE);
        let mut st = self.lock();
        st.gateways.insert(gateway.to_owned(), tx);
        self.mark_alive(&mut st, gateway, Instant::now());
        Ok(rx)
    }

    async fn gateway_alive(&self, gateway: &str) -> Result<bool> {
        let mut st = self.lock();
        Ok(self.mark_alive(&mut st, gateway, Instant::now()))
    }

    async fn register(&self, user: &Address, gateway: &str) -> Result<()> {
        self.lock()
            .registry
            .entry(*user)
            .or_default()
            .insert(gateway.to_owned());
        Ok(())
    }

    async fn unregister(&self, user: &Address, gateway: &str) -> Result<()> {
        let mut st = self.lock();
        if let Some(set) = st.registry.get_mut(user) {
            set.remove(gateway);
            if set.is_empty() {
                st.registry.remove(user);
            }
        }
        Ok(())
    }

    async fn is_connected(&self, user: &Address) -> Result<bool> {
        let now = Instant::now();
        let st = self.lock();
        Ok(st
            .registry
            .get(user)
            .is_some_and(|gws| gws.iter().any(|g| self.gateway_live(&st, g, now))))
    }

    async fn route(&self, ev: Routed) -> Result<()> {
        self.route_inner(ev, None);
        Ok(())
    }

    async fn route_local(&self, ev: Routed, local: &str) -> Result<Option<Routed>> {
        Ok(self.route_inner(ev, Some(local)))
    }

    async fn subscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()> {
        self.lock()
            .channel_subs
            .entry(conv.clone())
            .or_default()
            .insert(gateway.to_owned());
        Ok(())
    }

    async fn unsubscribe_channel(&self, gateway: &str, conv: &ConvId) -> Result<()> {
        let mut st = self.lock();
        if let Some(set) = st.channel_subs.get_mut(conv) {
            set.remove(gateway);
            if set.is_empty() {
                st.channel_subs.remove(conv);
            }
        }
        Ok(())
    }

    async fn publish_channel(&self, ev: Routed) -> Result<()> {
        let Some((conv, _)) = &ev.channel else {
            return Ok(());
        };
        let st = self.lock();
        for gw in st.channel_subs.get(conv).into_iter().flatten() {
            if let Some(tx) = st.gateways.get(gw)
                && tx.try_send(ev.clone()).is_err()
            {
                tracing::warn!(gateway = %gw, "gateway event queue full or closed; channel event dropped");
            }
        }
        Ok(())
    }

    async fn touch(&self, user: &Address, now_ms: u64) -> Result<()> {
        let mut st = self.lock();
        let e = st.seen.entry(*user).or_default();
        *e = (*e).max(now_ms);
        Ok(())
    }

    async fn last_seen(&self, users: &[Address]) -> Result<Vec<u64>> {
        let st = self.lock();
        Ok(users
            .iter()
            .map(|u| st.seen.get(u).copied().unwrap_or(0))
            .collect())
    }

    async fn revoke_sessions(&self, user: &Address, before: i64, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut st = self.lock();
        // Expired cuts go on write, so the map holds recent revocations only.
        st.revoked.retain(|_, (_, until)| *until > now);
        st.revoked.insert(*user, (before, now + ttl));
        Ok(())
    }

    async fn sessions_revoked_before(&self, user: &Address) -> Result<Option<i64>> {
        let now = Instant::now();
        Ok(self
            .lock()
            .revoked
            .get(user)
            .filter(|(_, until)| *until > now)
            .map(|(before, _)| *before))
    }

    async fn report_connections(
        &self,
        id: &GatewayIdentity,
        connections: u64,
        ttl: Duration,
    ) -> Result<()> {
        let now = Instant::now();
        let mut st = self.lock();
        let pods = st.reports.entry(id.cluster().clone()).or_default();
        // Expired reports of other pods go on write, as in Redis.
        pods.retain(|_, (_, _, exp)| *exp > now);
        pods.insert(id.pod().to_owned(), (connections, now_ms(), now + ttl));
        Ok(())
    }

    async fn withdraw_report(&self, id: &GatewayIdentity) -> Result<()> {
        let mut st = self.lock();
        if let Some(pods) = st.reports.get_mut(id.cluster()) {
            pods.remove(id.pod());
            if pods.is_empty() {
                st.reports.remove(id.cluster());
            }
        }
        Ok(())
    }

    async fn connection_reports(&self, cluster: &ClusterRef) -> Result<ConnectionReports> {
        let now = Instant::now();
        let st = self.lock();
        let mut reports: Vec<ConnectionReport> = st
            .reports
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|(_, (_, _, exp))| *exp > now)
            .map(|(pod, &(connections, reported_at, _))| ConnectionReport {
                pod: pod.clone(),
                connections,
                reported_at,
            })
            .collect();
        reports.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(ConnectionReports {
            now: now_ms(),
            reports,
        })
    }
}
