//! The Redis engine's per-user cache of connection-registry look-ups
//! (`sb:reg:{<user>}` → gateway ids), validated by a version.
//!
//! Every change of a registry set on standalone Redis goes through one
//! script (`lua/registry.lua`) that also `INCR`s the version key
//! `sb:regver` and publishes `<version> <user>` on `sb:reginv`, atomically.
//! The send and mark scripts return the version they saw. A gateway uses its
//! cache for a route only when it has applied every invalidation up to the
//! newest version any of its script replies has shown ([`RegistryCache::seen`]):
//! so a registration that finished before a message's send script ran is
//! always seen by that message's routing (the script saw its version), even
//! if the invalidation is still on its way; until it arrives routing reads
//! the registry as before. Invalidations arrive in version order on one
//! subscriber connection; a gap (a lost message, a reconnect, Redis restarted
//! empty, whose counter restarts at the Redis clock in µs, above any earlier
//! version) clears the whole cache. Entries also expire after
//! [`ENTRY_TTL`], which bounds staleness from writers that do not bump the
//! version (gateways of an older release during a rolling upgrade).
//!
//! On Redis Cluster the version key would be in another slot than the
//! conversation scripts' keys, so the cache is off there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_proto::ids::Address;

/// How long one look-up is trusted at most.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(5);

/// Users cached at most; a full cache starts over empty.
pub(crate) const MAX_ENTRIES: usize = 200_000;

/// One user's gateways as the registry listed them.
pub(crate) type Gateways = Arc<[String]>;

#[derive(Default)]
pub(crate) struct RegistryCache {
    inner: Mutex<Inner>,
    /// The newest registry version a script reply has shown.
    seen: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Off until the gateway subscribed to the invalidations (`attach`),
    /// and always on Redis Cluster.
    enabled: bool,
    /// Every invalidation up to this version has been applied.
    applied: u64,
    /// Bumped by every invalidation, so a look-up that was read before one
    /// is not stored after it.
    generation: u64,
    users: HashMap<Address, (Instant, Gateways)>,
}

impl RegistryCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A script reply showed registry version `v` (0: no version key yet).
    pub(crate) fn observe(&self, v: u64) {
        self.seen.fetch_max(v, Ordering::SeqCst);
    }

    /// Subscribed to the invalidations, and the version was `v` after
    /// that: cache from now on.
    pub(crate) fn start(&self, v: u64) {
        let mut g = self.lock();
        g.enabled = true;
        g.users.clear();
        g.generation += 1;
        g.applied = v;
    }

    /// The invalidation feed ended: cache nothing any more.
    pub(crate) fn stop(&self) {
        let mut g = self.lock();
        g.enabled = false;
        g.users.clear();
        g.generation += 1;
    }

    /// The invalidation feed may have missed messages (its connection was
    /// re-established): forget everything until the next invalidation
    /// shows where the version is.
    pub(crate) fn lost(&self) {
        let mut g = self.lock();
        g.users.clear();
        g.generation += 1;
        g.applied = 0;
    }

    /// `users`' cached gateways (`None`: not cached) and the generation to
    /// pass to [`fill`](Self::fill), or `None` when the cache may not be
    /// used now (off, or an invalidation the replies have shown has not
    /// arrived yet).
    pub(crate) fn lookup(&self, users: &[Address]) -> Option<(Vec<Option<Gateways>>, u64)> {
        let seen = self.seen.load(Ordering::SeqCst);
        let g = self.lock();
        if !g.enabled || seen == 0 || g.applied < seen {
            return None;
        }
        let now = Instant::now();
        let found = users
            .iter()
            .map(|u| {
                g.users
                    .get(u)
                    .filter(|(at, _)| now.duration_since(*at) < ENTRY_TTL)
                    .map(|(_, gws)| gws.clone())
            })
            .collect();
        Some((found, g.generation))
    }

    /// Store a registry read issued when the cache was at `generation`;
    /// dropped if an invalidation came in since.
    pub(crate) fn fill(&self, generation: u64, user: Address, gateways: Gateways) {
        let mut g = self.lock();
        if !g.enabled || g.generation != generation {
            return;
        }
        if g.users.len() >= MAX_ENTRIES && !g.users.contains_key(&user) {
            g.users.clear();
        }
        g.users.insert(user, (Instant::now(), gateways));
    }

    /// An invalidation: `user`'s set changed, making the version `v`.
    pub(crate) fn invalidate(&self, v: u64, user: Address) {
        let mut g = self.lock();
        if v <= g.applied {
            return;
        }
        g.generation += 1;
        if v == g.applied + 1 {
            g.users.remove(&user);
        } else {
            // A gap: something was missed.
            g.users.clear();
        }
        g.applied = v;
    }

    /// Parse an invalidation message, `<version> <user>`.
    pub(crate) fn parse(payload: &str) -> Option<(u64, Address)> {
        let (v, user) = payload.split_once(' ')?;
        Some((v.parse().ok()?, user.parse().ok()?))
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().users.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gws(ids: &[&str]) -> Gateways {
        ids.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()
    }

    #[test]
    fn off_until_started_and_until_the_seen_version_is_applied() {
        let c = RegistryCache::default();
        let u = Address([1; 20]);
        c.observe(5);
        assert!(c.lookup(&[u]).is_none(), "not started");
        c.start(5);
        let (found, generation) = c.lookup(&[u]).unwrap();
        assert!(found[0].is_none());
        c.fill(generation, u, gws(&["a"]));
        assert_eq!(&*c.lookup(&[u]).unwrap().0[0].clone().unwrap(), ["a"]);
        // Another gateway registered u (version 6) and a send saw it before
        // the invalidation arrived: the cache must not be used.
        c.observe(6);
        assert!(c.lookup(&[u]).is_none());
        c.invalidate(6, u);
        assert!(c.lookup(&[u]).unwrap().0[0].is_none(), "u was dropped");
    }

    #[test]
    fn a_read_from_before_an_invalidation_is_not_stored() {
        let c = RegistryCache::default();
        let u = Address([1; 20]);
        c.observe(1);
        c.start(1);
        let (_, generation) = c.lookup(&[u]).unwrap();
        c.invalidate(2, u);
        c.fill(generation, u, gws(&["a"]));
        assert_eq!(c.cached(), 0);
    }

    #[test]
    fn a_gap_or_a_lost_feed_clears_everything() {
        let c = RegistryCache::default();
        let (u, w) = (Address([1; 20]), Address([2; 20]));
        c.observe(1);
        c.start(1);
        let (_, generation) = c.lookup(&[u]).unwrap();
        c.fill(generation, u, gws(&["a"]));
        c.fill(generation, w, gws(&["b"]));
        c.invalidate(2, u);
        assert_eq!(c.cached(), 1, "only u dropped");
        c.invalidate(4, u); // 3 was missed
        assert_eq!(c.cached(), 0);
        let (_, generation) = c.lookup(&[u]).unwrap();
        c.fill(generation, w, gws(&["b"]));
        c.lost();
        assert_eq!(c.cached(), 0);
        assert!(c.lookup(&[w]).is_none(), "applied is unknown after a loss");
        c.invalidate(1_765_000_000_000_000, u); // Redis restarted empty
        assert!(c.lookup(&[w]).is_some());
        assert_eq!(
            RegistryCache::parse("17 0x0101010101010101010101010101010101010101"),
            Some((17, u))
        );
        assert_eq!(RegistryCache::parse("x 0x01"), None);
    }
}
