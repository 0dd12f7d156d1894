//! Flood limits, decided here once: REST rates per client address and per
//! user, and open connections (WebSockets and SSE streams) per client
//! address, per user and per gateway. The numbers are
//! [`crate::config::LimitsConfig`]; the `admit` middleware applies the REST
//! rates to every request, and the WebSocket upgrade and the SSE reader
//! hold a [`ConnSlot`] for as long as their connection is open.
//!
//! - **Client address**: the socket's peer; when the peer is a trusted
//!   proxy (`--trusted-proxy CIDR`), the right-most address of
//!   `X-Forwarded-For` that is not itself a trusted proxy. A client cannot
//!   choose its address without a trusted proxy in front. IPv6 addresses
//!   count per /64 (what one host is usually given).
//! - **Rates** are GCRA (governor) keyed limiters over a [`BoundedStore`]:
//!   at most `max_tracked` keys each, pruned every [`PRUNE_EVERY`] of keys
//!   whose bucket is full again; when a flood of distinct addresses fills
//!   the table, newcomers share one overflow bucket until pruning frees
//!   room, so memory never grows past the cap.
//! - **Connection counts** hold only keys with an open connection, so they
//!   are bounded by `max_conns`.
//!
//! Every refusal is counted on `/metrics` by limit
//! (`switchboard_gateway_refusals_total{limit}`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use switchboard_proto::ids::Address;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// How often the rate limiters drop keys whose bucket is full again.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// `Retry-After` of a connection-cap refusal: connections end at the
/// client's pace, so this is a hint, not a promise.
pub const CONN_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    RestPerAddress,
    RestPerUser,
    ConnectionsPerAddress,
    ConnectionsPerUser,
    Connections,
}

impl Limit {
    /// The `limit` label on `/metrics`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Limit::RestPerAddress => "rest_per_address",
            Limit::RestPerUser => "rest_per_user",
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::ConnectionsPerUser => "connections_per_user",
            Limit::Connections => "connections",
        }
    }
}

/// A request or connection refused by a limit, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self.limit {
            Limit::RestPerAddress => "too many requests from this address; retry after Retry-After",
            Limit::RestPerUser => "too many requests for this user; retry after Retry-After",
            Limit::ConnectionsPerAddress => "too many open connections from this address",
            Limit::ConnectionsPerUser => "too many open connections for this user",
            Limit::Connections => "this gateway holds its maximum of connections",
        }
    }

    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// The address a request is counted against (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The key the limits count: IPv4 as is, IPv6 by its /64.
    fn key(self) -> IpAddr {
        match self.0.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
            v4 => v4,
        }
    }
}

/// A governor state store that tracks at most `cap` keys (see the module
/// docs): governor's own stores grow with every distinct key until pruned.
pub struct BoundedStore<K> {
    inner: Mutex<Tracked<K>>,
    cap: usize,
}

struct Tracked<K> {
    /// Key → theoretical arrival time (GCRA's state).
    map: HashMap<K, Nanos>,
    /// The bucket every key shares while the map is full.
    overflow: Option<Nanos>,
}

impl<K> BoundedStore<K> {
    fn new(cap: usize) -> Self {
        BoundedStore {
            inner: Mutex::new(Tracked {
                map: HashMap::new(),
                overflow: None,
            }),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tracked<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut t = self.lock();
        if let Some(tat) = t.map.get_mut(key) {
            let (out, next) = f(Some(*tat))?;
            *tat = next;
            return Ok(out);
        }
        if t.map.len() < self.cap {
            let (out, next) = f(None)?;
            t.map.insert(key.clone(), next);
            return Ok(out);
        }
        let (out, next) = f(t.overflow)?;
        t.overflow = Some(next);
        Ok(out)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let mut t = self.lock();
        t.map.retain(|_, tat| *tat > drop_below);
        if t.overflow.is_some_and(|tat| tat <= drop_below) {
            t.overflow = None;
        }
    }

    fn shrink_to_fit(&self) {
        self.lock().map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }
}

type Keyed<K> = RateLimiter<K, BoundedStore<K>, MonotonicClock, NoOpMiddleware<Instant>>;

/// A keyed rate with its limit's name; `None` inside when the rate is 0 (off).
struct Rate<K: Hash + Eq + Clone> {
    limiter: Option<Keyed<K>>,
    limit: Limit,
}

impl<K: Hash + Eq + Clone> Rate<K> {
    fn new(per_second: f64, burst: u32, cap: usize, limit: Limit) -> Self {
        let quota = (per_second.is_finite() && per_second > 0.0)
            .then(|| Quota::with_period(Duration::from_secs_f64(1.0 / per_second)))
            .flatten()
            .map(|q| q.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)));
        let limiter = quota.map(|q| RateLimiter::new(q, BoundedStore::new(cap), MonotonicClock));
        Rate { limiter, limit }
    }

    fn check(&self, key: &K) -> Result<(), Refusal> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(key).map_err(|not_until| Refusal {
            limit: self.limit,
            retry_after: not_until.wait_time_from(l.clock().now()),
        })
    }

    fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// Open connections by key.
#[derive(Default)]
struct Counts {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
    by_user: HashMap<Address, usize>,
}

/// A cap; 0 is none.
fn over(count: usize, cap: usize) -> bool {
    cap != 0 && count >= cap
}

/// One gateway's limits. Shared through the gateway's state.
pub struct Limits {
    cfg: LimitsConfig,
    rest_addr: Rate<IpAddr>,
    rest_user: Rate<Address>,
    counts: Mutex<Counts>,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn new(cfg: LimitsConfig, metrics: Arc<Metrics>) -> Self {
        Limits {
            rest_addr: Rate::new(
                cfg.rest_rate,
                cfg.rest_burst,
                cfg.max_tracked,
                Limit::RestPerAddress,
            ),
            rest_user: Rate::new(
                cfg.user_rest_rate,
                cfg.user_rest_burst,
                cfg.max_tracked,
                Limit::RestPerUser,
            ),
            cfg,
            counts: Mutex::default(),
            metrics,
        }
    }

    /// The client address of a request that came from `peer`.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        ClientAddr(client_ip(peer, headers, &self.cfg.trusted_proxies))
    }

    fn refused(&self, r: Refusal) -> Refusal {
        self.metrics.refusal(r.limit.as_str());
        r
    }

    /// Admit one REST request from `addr` (then [`Limits::admit_user`]
    /// when it carries a valid session token).
    pub fn admit_address(&self, addr: ClientAddr) -> Result<(), Refusal> {
        self.rest_addr
            .check(&addr.key())
            .map_err(|r| self.refused(r))
    }

    /// Admit one REST request of `user`.
    pub fn admit_user(&self, user: &Address) -> Result<(), Refusal> {
        self.rest_user.check(user).map_err(|r| self.refused(r))
    }

    /// A connection from `addr` (its user not known yet): refused past the
    /// gateway's or the address's cap. The slot is released when dropped.
    pub fn open(self: &Arc<Self>, addr: ClientAddr) -> Result<ConnSlot, Refusal> {
        let key = addr.key();
        {
            let mut c = self.lock_counts();
            if over(c.total, self.cfg.max_conns) {
                drop(c);
                return Err(self.refused(Refusal {
                    limit: Limit::Connections,
                    retry_after: CONN_RETRY_AFTER,
                }));
            }
            let n = c.by_addr.entry(key).or_default();
            if over(*n, self.cfg.conns_per_addr) {
                if *n == 0 {
                    c.by_addr.remove(&key);
                }
                drop(c);
                return Err(self.refused(Refusal {
                    limit: Limit::ConnectionsPerAddress,
                    retry_after: CONN_RETRY_AFTER,
                }));
            }
            *n += 1;
            c.total += 1;
        }
        Ok(ConnSlot {
            limits: self.clone(),
            addr: key,
            user: None,
        })
    }

    /// [`Limits::open`] and [`ConnSlot::bind`] at once, for a connection
    /// whose user is known.
    pub fn connect(self: &Arc<Self>, addr: ClientAddr, user: Address) -> Result<ConnSlot, Refusal> {
        let mut slot = self.open(addr)?;
        slot.bind(user)?;
        Ok(slot)
    }

    /// Drop rate-limiter keys whose bucket is full again (every
    /// [`PRUNE_EVERY`], from the gateway's background task).
    pub fn prune(&self) {
        self.rest_addr.prune();
        self.rest_user.prune();
    }

    /// Keys the rate limiters track now (addresses, users).
    pub fn tracked(&self) -> (usize, usize) {
        (self.rest_addr.tracked(), self.rest_user.tracked())
    }

    fn lock_counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open connection's place in the counts; released on drop.
pub struct ConnSlot {
    limits: Arc<Limits>,
    addr: IpAddr,
    user: Option<Address>,
}

impl ConnSlot {
    /// Count the connection for `user` too (once authenticated): refused
    /// past the per-user cap, and the slot stays as it was.
    pub fn bind(&mut self, user: Address) -> Result<(), Refusal> {
        if self.user.is_some() {
            return Ok(());
        }
        let limits = &self.limits;
        {
            let mut c = limits.lock_counts();
            let n = c.by_user.entry(user).or_default();
            if over(*n, limits.cfg.conns_per_user) {
                if *n == 0 {
                    c.by_user.remove(&user);
                }
                drop(c);
                return Err(limits.refused(Refusal {
                    limit: Limit::ConnectionsPerUser,
                    retry_after: CONN_RETRY_AFTER,
                }));
            }
            *n += 1;
        }
        self.user = Some(user);
        Ok(())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limits.lock_counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.by_addr.remove(&self.addr);
            }
        }
        if let Some(user) = self.user
            && let Some(n) = c.by_user.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                c.by_user.remove(&user);
            }
        }
    }
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .finish()
    }
}

/// The client's address: `peer`, or — when `peer` is a trusted proxy — the
/// right-most `X-Forwarded-For` entry that is not a trusted proxy (each
/// proxy appends the address it saw; entries left of an untrusted one are
/// whatever the client wrote). A malformed entry stops the walk at the hop
/// that wrote it.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["6.6.6.6, 1.2.3.4"]);
        // Not from a proxy: the header is the client's own words.
        assert_eq!(client_ip(ip("9.9.9.9"), &h, &trusted), ip("9.9.9.9"));
        // From the proxy: the address it appended.
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("1.2.3.4"));
        // A chain of trusted proxies is walked through.
        let h = headers(&["6.6.6.6, 1.2.3.4", "10.2.2.2"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("1.2.3.4"));
        // Garbage stops the walk at the proxy that wrote it.
        let h = headers(&["1.2.3.4, junk"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &trusted), ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.1.1.1"), &HeaderMap::new(), &trusted),
            ip("10.1.1.1")
        );
        // No trusted proxies at all: always the peer.
        let h = headers(&["1.2.3.4"]);
        assert_eq!(client_ip(ip("10.1.1.1"), &h, &[]), ip("10.1.1.1"));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = ClientAddr(ip("2001:db8:1:2:aaaa::1")).key();
        let b = ClientAddr(ip("2001:db8:1:2:bbbb::2")).key();
        let c = ClientAddr(ip("2001:db8:1:3::1")).key();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(ClientAddr(ip("::ffff:1.2.3.4")).key(), ip("1.2.3.4"));
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_cap() {
        let limits = Limits::new(
            LimitsConfig {
                rest_rate: 0.01,
                rest_burst: 2,
                max_tracked: 100,
                ..LimitsConfig::default()
            },
            Arc::new(Metrics::new()),
        );
        for n in 0..10_000u32 {
            let _ = limits.admit_address(ClientAddr(IpAddr::from(n.to_be_bytes())));
        }
        assert_eq!(limits.tracked().0, 100);
        // A newcomer shares the overflow bucket, which the flood emptied.
        let late = ClientAddr(ip("203.0.113.9"));
        assert_eq!(
            limits.admit_address(late).map_err(|r| r.limit),
            Err(Limit::RestPerAddress)
        );
        // A tracked address keeps its own bucket.
        let known = ClientAddr(IpAddr::from(5u32.to_be_bytes()));
        assert!(limits.admit_address(known).is_ok());
    }

    #[test]
    fn connection_slots_count_and_release() {
        let limits = Arc::new(Limits::new(
            LimitsConfig {
                conns_per_addr: 2,
                conns_per_user: 1,
                max_conns: 3,
                ..LimitsConfig::default()
            },
            Arc::new(Metrics::new()),
        ));
        let (a, b, c) = (
            ClientAddr(ip("1.1.1.1")),
            ClientAddr(ip("2.2.2.2")),
            ClientAddr(ip("3.3.3.3")),
        );
        let user = Address([7; 20]);
        let s1 = limits.connect(a, user).unwrap();
        let s2 = limits.open(a).unwrap();
        assert_eq!(
            limits.open(a).unwrap_err().limit,
            Limit::ConnectionsPerAddress
        );
        let mut s3 = limits.open(b).unwrap();
        assert_eq!(s3.bind(user).unwrap_err().limit, Limit::ConnectionsPerUser);
        assert_eq!(limits.open(c).unwrap_err().limit, Limit::Connections);
        drop(s1);
        s3.bind(user).unwrap();
        drop((s2, s3));
        let c = limits.lock_counts();
        assert_eq!(
            (c.total, c.by_addr.len(), c.by_user.len()),
            (0, 0, 0),
            "every slot released"
        );
    }
}
