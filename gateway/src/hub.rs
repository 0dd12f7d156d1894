//! The gateway's local connection table: user → open sockets on this process.
//! The broker routes an event to this gateway; the hub hands it to each of the
//! user's sockets through a bounded queue, so one slow reader never blocks the
//! others or grows memory: when its queue is full it is closed as a slow consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use std::collections::VecDeque;
use std::sync::Mutex;
use switchboard_core::broker::Routed;
use switchboard_proto::frames::close;
use switchboard_proto::ids::{Address, ConvId};

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// What the hub queues for a socket.
#[derive(Debug)]
pub enum Outbound {
    /// Any frame that needs no acknowledgement.
    Frame(Arc<str>),
    /// A `msg` frame: the socket tracks its ack and resends it. The
    /// `(conv, seq)` is shared by every recipient of one event, which keeps
    /// this enum (and so each socket's queue block) small.
    Msg {
        ack: Arc<(ConvId, u64)>,
        frame: Arc<str>,
    },
    /// A channel's `msg` frame for a subscriber: no ack; the socket writes
    /// it only if it is the next seq it holds for that channel.
    Channel {
        seq: Arc<(ConvId, u64)>,
        frame: Arc<str>,
    },
}

/// A request to close one socket, with the close code to send. A `Notify`
/// and two atomics inline in the socket's handle: a `CancellationToken`
/// would be one more 112-byte block per socket (its tree node).
#[derive(Debug, Default)]
pub struct CloseSignal {
    closed: AtomicBool,
    code: AtomicU16,
    notify: Notify,
}

impl CloseSignal {
    pub fn close(&self, code: u16) {
        // First reason wins: a drain that races a slow-consumer close keeps
        // whichever came first.
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
    pub fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }
    /// Resolves once [`CloseSignal::close`] was called (at once if it was
    /// already).
    pub async fn closed(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read: a `close` between the two
        // still wakes this waiter.
        notified.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// A socket's bounded send queue. A `VecDeque` behind a mutex plus a
/// `Notify` rather than a tokio mpsc channel: an idle socket's queue then
/// allocates nothing (an mpsc channel allocates ~1.3 KiB up front), which
/// matters at 100k connections per gateway.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    capacity: usize,
}

/// The queue was full: the socket is a slow consumer.
#[derive(Debug)]
pub struct Full;

/// Capacity kept after a burst drains; larger buffers are released.
const KEEP_CAPACITY: usize = 8;

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Outbound) -> Result<(), Full> {
        {
            let mut q = self.lock();
            if q.len() >= self.capacity {
                return Err(Full);
            }
            q.push_back(item);
        }
        // Stores a permit if the socket task is not waiting yet, so a push
        // between its empty check and its wait is never missed.
        self.ready.notify_one();
        Ok(())
    }

    /// The next queued item, waiting for one if needed.
    pub async fn pop(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// The next queued item, if there is one now. (A permit that its push
    /// stored stays behind: the next `pop` then finds the queue empty once
    /// and waits again.)
    pub fn try_pop(&self) -> Option<Outbound> {
        let mut q = self.lock();
        let item = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP_CAPACITY {
            q.shrink_to(KEEP_CAPACITY);
        }
        item
    }
}

/// One open, authenticated socket.
#[derive(Debug)]
pub struct ConnHandle {
    /// `n` of its name `<gateway>/<n>` ([`Hub::conn_name`]), unique across
    /// gateways, used to skip the sender's socket. Only the number is kept:
    /// a `String` per socket was one more block.
    pub id: u64,
    pub outbox: Outbox,
    pub close: CloseSignal,
    /// The session it was opened with; `None` for an API key's (no expiry,
    /// not revocable per user).
    pub session: Option<SessionTimes>,
}

/// When a connection's session token was issued and expires (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimes {
    pub issued_at: i64,
    pub expires_at: i64,
}

/// See the module docs.
pub struct Hub {
    gateway_id: String,
    conns: RwLock<HashMap<Address, Vec<Arc<ConnHandle>>>>,
    /// Channel → the local connections subscribed to it.
    channels: RwLock<HashMap<ConvId, Vec<Arc<ConnHandle>>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(gateway_id: String, metrics: Arc<Metrics>) -> Self {
        Hub {
            gateway_id,
            conns: RwLock::default(),
            channels: RwLock::default(),
            next: AtomicU64::new(1),
            metrics,
        }
    }

    /// Add a socket for `user`. Returns its handle and whether it is the user's
    /// first socket on this gateway (then the caller registers the user).
    pub fn add(
        &self,
        user: Address,
        queue: usize,
        session: Option<SessionTimes>,
    ) -> (Arc<ConnHandle>, bool) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ConnHandle {
            id: n,
            outbox: Outbox::new(queue),
            close: CloseSignal::default(),
            session,
        });
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(user).or_default();
        list.push(handle.clone());
        self.metrics.connections.inc();
        (handle, list.len() == 1)
    }

    /// A socket's name, `<gateway>/<n>` (what `Routed::skip_conn` carries).
    pub fn conn_name(&self, h: &ConnHandle) -> String {
        format!("{}/{}", self.gateway_id, h.id)
    }

    /// The number of a name [`Hub::conn_name`] gave here; `None` for
    /// another gateway's socket.
    fn local_conn(&self, name: &str) -> Option<u64> {
        name.strip_prefix(self.gateway_id.as_str())?
            .strip_prefix('/')?
            .parse()
            .ok()
    }

    /// Remove a socket. Returns whether it was the user's last on this gateway.
    pub fn remove(&self, user: &Address, handle: &Arc<ConnHandle>) -> bool {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        let Some(list) = conns.get_mut(user) else {
            return false;
        };
        let before = list.len();
        list.retain(|h| !Arc::ptr_eq(h, handle));
        if list.len() < before {
            self.metrics.connections.dec();
        }
        if list.is_empty() {
            conns.remove(user);
            true
        } else {
            false
        }
    }

    /// Whether `user` has a socket here.
    pub fn has_user(&self, user: &Address) -> bool {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user)
    }

    /// Users with at least one socket here.
    pub fn users(&self) -> Vec<Address> {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Channels with at least one subscriber here.
    pub fn channels(&self) -> Vec<ConvId> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Whether `channel` has a subscriber here.
    pub fn has_channel(&self, channel: &ConvId) -> bool {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(channel)
    }

    /// Subscribe `handle` to `channel`. Returns whether it is the channel's
    /// first local subscriber (then the caller subscribes the gateway).
    pub fn subscribe(&self, channel: &ConvId, handle: &Arc<ConnHandle>) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(channel.clone()).or_default();
        if !list.iter().any(|h| Arc::ptr_eq(h, handle)) {
            list.push(handle.clone());
        }
        list.len() == 1
    }

    /// Unsubscribe `handle` from `channel`. Returns whether that was the
    /// channel's last local subscriber (then the caller unsubscribes the
    /// gateway).
    pub fn unsubscribe(&self, channel: &ConvId, handle: &Arc<ConnHandle>) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(channel) else {
            return false;
        };
        let before = list.len();
        list.retain(|h| !Arc::ptr_eq(h, handle));
        if list.is_empty() {
            map.remove(channel);
            before > 0
        } else {
            false
        }
    }

    /// Hand a routed event to the recipients' sockets on this gateway: a
    /// channel event to the channel's local subscribers, any other to the
    /// sockets of its users.
    pub fn deliver(&self, ev: &Routed) {
        if let Some(channel) = &ev.channel {
            let seq = Arc::new(channel.clone());
            let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
            for h in map.get(&channel.0).into_iter().flatten() {
                let item = Outbound::Channel {
                    seq: seq.clone(),
                    frame: ev.frame.clone(),
                };
                self.push(h, item);
            }
            return;
        }
        if let Some(before) = ev.revoke {
            self.revoke(&ev.users, before);
            return;
        }
        let ack = ev.ack.clone().map(Arc::new);
        let skip = ev.skip_conn.as_deref().and_then(|s| self.local_conn(s));
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        for user in &ev.users {
            for h in conns.get(user).into_iter().flatten() {
                if skip == Some(h.id) {
                    continue;
                }
                let item = match &ack {
                    Some(ack) => Outbound::Msg {
                        ack: ack.clone(),
                        frame: ev.frame.clone(),
                    },
                    None => Outbound::Frame(ev.frame.clone()),
                };
                self.push(h, item);
            }
        }
    }

    /// Queue `item` for `h`, closing it as a slow consumer when its queue is full.
    fn push(&self, h: &ConnHandle, item: Outbound) {
        if h.outbox.push(item).is_err() {
            if h.close.code() == 0 {
                self.metrics.slow_consumers.inc();
                tracing::info!(conn = %self.conn_name(h), "send queue full; closing slow consumer");
            }
            h.close.close(close::SLOW_CONSUMER);
        }
    }

    /// Close with 4001 `users`' connections whose session was issued at or
    /// before `before` (the close reason tells the client to sign in again).
    fn revoke(&self, users: &[Address], before: i64) {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        for h in users.iter().filter_map(|u| conns.get(u)).flatten() {
            if h.session.is_some_and(|s| s.issued_at <= before) {
                h.close.close(close::UNAUTHORIZED);
            }
        }
    }

    /// Close with 4001 every connection whose session expired by `now`
    /// (Unix seconds). Returns how many.
    pub fn close_expired(&self, now: i64) -> usize {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for h in conns.values().flatten() {
            if h.session.is_some_and(|s| s.expires_at <= now) && h.close.code() == 0 {
                h.close.close(close::UNAUTHORIZED);
                closed += 1;
            }
        }
        closed
    }

    /// Ask every socket to close with `code` (drain on shutdown).
    pub fn close_all(&self, code: u16) {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        for h in conns.values().flatten() {
            h.close.close(code);
        }
    }

    /// Close every socket with `code`, spread over `spread` in randomized
    /// batches: a gateway holding thousands of clients that all reconnect in
    /// the same instant would hand the other gateways (and Redis, and the
    /// clients' resyncs) a thundering herd. The order is shuffled so no user
    /// is always first or last. Returns once the last batch is signalled;
    /// sockets that appear meanwhile (an upgrade in flight) are closed then too.
    pub async fn close_spread(&self, code: u16, spread: std::time::Duration) {
        use rand::seq::SliceRandom;
        /// Batches go out at this pace: fine enough to spread, coarse enough
        /// that a 10k-socket drain is ~100 wake-ups, not 10k.
        const TICK: std::time::Duration = std::time::Duration::from_millis(100);
        let mut handles: Vec<Arc<ConnHandle>> = self
            .conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        handles.shuffle(&mut rand::rng());
        let ticks = (spread.as_millis() / TICK.as_millis()).max(1) as usize;
        let per_tick = handles.len().div_ceil(ticks).max(1);
        let mut batches = handles.chunks(per_tick).peekable();
        let mut pace = tokio::time::interval(TICK);
        while let Some(batch) = batches.next() {
            for h in batch {
                h.close.close(code);
            }
            if batches.peek().is_some() {
                pace.tick().await;
            }
        }
        self.close_all(code);
    }

    /// Open sockets on this gateway.
    pub fn connection_count(&self) -> usize {
        self.conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{CloseSignal, Hub, Outbound, Outbox};
    use crate::metrics::Metrics;

    #[test]
    fn conn_names_are_recognised_only_for_this_gateway() {
        let hub = Hub::new("gw-1".into(), Arc::new(Metrics::new()));
        assert_eq!(hub.local_conn("gw-1/7"), Some(7));
        assert_eq!(hub.local_conn("gw-10/7"), None);
        assert_eq!(hub.local_conn("gw-2/7"), None);
        assert_eq!(hub.local_conn("gw-1/x"), None);
        assert_eq!(hub.local_conn("gw-1"), None);
    }

    #[tokio::test]
    async fn close_wakes_a_waiter_and_later_waiters_return_at_once() {
        let signal = Arc::new(CloseSignal::default());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        signal.close(4008);
        signal.close(1001);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .expect("it does not panic");
        assert_eq!(signal.code(), 4008, "the first reason wins");
        tokio::time::timeout(Duration::from_secs(5), signal.closed())
            .await
            .expect("closed() returns at once once closed");
    }

    fn frame(o: Outbound) -> String {
        match o {
            Outbound::Frame(f) => f.to_string(),
            _ => panic!("a frame was queued"),
        }
    }

    /// The socket task writes what `pop` returns and then drains the rest
    /// with `try_pop`: together they hand out every item once, in order,
    /// and a push after the drain still wakes a waiting `pop`.
    #[tokio::test]
    async fn pop_and_try_pop_drain_in_order_and_later_pushes_wake() {
        let outbox = Arc::new(Outbox::new(3));
        for f in ["a", "b", "c"] {
            outbox.push(Outbound::Frame(f.into())).expect("room");
        }
        assert!(
            outbox.push(Outbound::Frame("d".into())).is_err(),
            "full at 3"
        );
        assert_eq!(frame(outbox.pop().await), "a");
        assert_eq!(outbox.try_pop().map(frame).as_deref(), Some("b"));
        assert_eq!(outbox.try_pop().map(frame).as_deref(), Some("c"));
        assert!(outbox.try_pop().is_none());
        // The pushes' stored permit is still there: this `pop` finds the
        // queue empty, waits again, and wakes for the push.
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { frame(outbox.pop().await) }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "nothing to pop yet");
        outbox
            .push(Outbound::Frame("e".into()))
            .expect("room again");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the push wakes the waiter")
            .expect("no panic");
        assert_eq!(got, "e");
    }
}
