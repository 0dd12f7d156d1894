//! The gateway's local connection table: user → open sockets on this process.
//! The broker routes an event to this gateway; the hub hands it to each of the
//! user's sockets through a bounded queue, so one slow reader never blocks the
//! others or grows memory: when its queue is full it is closed as a slow consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use switchboard_core::broker::Routed;
use switchboard_core::ids::{Address, ConvId};
use switchboard_core::protocol::close;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the hub queues for a socket.
#[derive(Debug)]
pub enum Outbound {
    /// Any frame that needs no acknowledgement.
    Frame(Arc<str>),
    /// A `msg` frame: the socket tracks its ack and resends it.
    Msg {
        conv: ConvId,
        seq: u64,
        frame: Arc<str>,
    },
}

/// A request to close one socket, with the close code to send.
#[derive(Debug, Default)]
pub struct CloseSignal {
    token: CancellationToken,
    code: AtomicU16,
}

impl CloseSignal {
    pub fn close(&self, code: u16) {
        // First reason wins: a drain that races a slow-consumer close keeps
        // whichever came first.
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }
    pub fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }
    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// One open, authenticated socket.
#[derive(Debug)]
pub struct ConnHandle {
    /// `<gateway>/<n>`: unique across gateways, used to skip the sender's socket.
    pub name: String,
    tx: mpsc::Sender<Outbound>,
    pub close: Arc<CloseSignal>,
}

/// See the module docs.
pub struct Hub {
    gateway_id: String,
    conns: RwLock<HashMap<Address, Vec<Arc<ConnHandle>>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(gateway_id: String, metrics: Arc<Metrics>) -> Self {
        Hub {
            gateway_id,
            conns: RwLock::default(),
            next: AtomicU64::new(1),
            metrics,
        }
    }

    /// Add a socket for `user`. Returns its handle and whether it is the user's
    /// first socket on this gateway (then the caller registers the user).
    pub fn add(&self, user: Address, tx: mpsc::Sender<Outbound>) -> (Arc<ConnHandle>, bool) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ConnHandle {
            name: format!("{}/{n}", self.gateway_id),
            tx,
            close: Arc::default(),
        });
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        let list = conns.entry(user).or_default();
        list.push(handle.clone());
        self.metrics.connections.inc();
        (handle, list.len() == 1)
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

    /// Hand a routed event to the recipients' sockets on this gateway.
    pub fn deliver(&self, ev: &Routed) {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        for user in &ev.users {
            for h in conns.get(user).into_iter().flatten() {
                if ev.skip_conn.as_deref() == Some(h.name.as_str()) {
                    continue;
                }
                let item = match &ev.ack {
                    Some((conv, seq)) => Outbound::Msg {
                        conv: conv.clone(),
                        seq: *seq,
                        frame: ev.frame.clone(),
                    },
                    None => Outbound::Frame(ev.frame.clone()),
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = h.tx.try_send(item) {
                    if h.close.code() == 0 {
                        self.metrics.slow_consumers.inc();
                        tracing::info!(conn = %h.name, "send queue full; closing slow consumer");
                    }
                    h.close.close(close::SLOW_CONSUMER);
                }
            }
        }
    }

    /// Ask every socket to close with `code` (drain on shutdown).
    pub fn close_all(&self, code: u16) {
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        for h in conns.values().flatten() {
            h.close.close(code);
        }
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
