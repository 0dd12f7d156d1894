//! The messages a gateway accepted while Redis was unreachable, in the order
//! it accepted them, until Redis gives each its seq. Bounded: a full spool
//! refuses new messages ([`SpoolFull`]) rather than growing without limit
//! through a long outage. It lives in the gateway's memory only: a gateway
//! killed during an outage loses what it held (see docs/operations.md).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard_core::broker::SendRequest;
use switchboard_proto::ids::{Address, ConvId, MsgId};

/// A message accepted in relay mode.
#[derive(Debug, Clone)]
pub struct Held {
    pub req: SendRequest,
    /// When the gateway accepted it (Unix ms): the `ts` of its relayed copy.
    pub accepted_at: u64,
    /// Who it was relayed to.
    pub members: Arc<Vec<Address>>,
}

type Key = (ConvId, Address, MsgId);

fn key(req: &SendRequest) -> Key {
    (req.conv.clone(), req.from, req.id.clone())
}

#[derive(Debug, thiserror::Error)]
#[error("the relay spool holds {0} messages, its limit")]
pub struct SpoolFull(pub usize);

#[derive(Default)]
struct Inner {
    queue: VecDeque<Held>,
    keys: HashSet<Key>,
}

/// FIFO of held messages, deduplicated by `(conv, from, id)` like the
/// broker's idempotency records.
pub struct Spool {
    inner: Mutex<Inner>,
    cap: usize,
}

impl Spool {
    pub fn new(cap: usize) -> Self {
        Spool {
            inner: Mutex::default(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold `held`. `Ok(None)` when it is new; `Ok(Some(earlier))` when a
    /// message with the same `(conv, from, id)` is already held (a client's
    /// retry: nothing is added).
    pub fn push(&self, held: Held) -> Result<Option<Held>, SpoolFull> {
        let mut inner = self.lock();
        let k = key(&held.req);
        if inner.keys.contains(&k) {
            let earlier = inner.queue.iter().find(|h| key(&h.req) == k).cloned();
            return Ok(earlier);
        }
        if inner.queue.len() >= self.cap {
            return Err(SpoolFull(self.cap));
        }
        inner.keys.insert(k);
        inner.queue.push_back(held);
        Ok(None)
    }

    /// Take back a message that could not be relayed after all (the relay
    /// refused it): it was never accepted.
    pub fn withdraw(&self, req: &SendRequest) {
        let mut inner = self.lock();
        let k = key(req);
        if inner.keys.remove(&k)
            && let Some(i) = inner.queue.iter().rposition(|h| key(&h.req) == k)
        {
            inner.queue.remove(i);
        }
    }

    /// The oldest held message, left in place until [`Spool::pop_front`].
    pub fn front(&self) -> Option<Held> {
        self.lock().queue.front().cloned()
    }

    /// Drop the oldest held message (it was sequenced, or given up).
    pub fn pop_front(&self) {
        let mut inner = self.lock();
        if let Some(h) = inner.queue.pop_front() {
            let k = key(&h.req);
            inner.keys.remove(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn held(n: u32) -> Held {
        let a: Address = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap();
        let b: Address = "0x00000000000000000000000000000000000000b0"
            .parse()
            .unwrap();
        Held {
            req: SendRequest {
                conv: ConvId::direct(&a, &b).unwrap(),
                id: format!("m{n}").parse().unwrap(),
                from: a,
                body: RawValue::from_string(format!("{n}")).unwrap(),
                privileged: false,
            },
            accepted_at: u64::from(n),
            members: Arc::new(vec![a, b]),
        }
    }

    #[test]
    fn holds_in_order_once_per_id_and_up_to_its_cap() {
        let s = Spool::new(2);
        assert!(s.push(held(1)).unwrap().is_none());
        // A retry of the same id is answered with the first copy.
        let again = s.push(held(1)).unwrap().unwrap();
        assert_eq!(again.accepted_at, 1);
        assert!(s.push(held(2)).unwrap().is_none());
        assert!(matches!(s.push(held(3)), Err(SpoolFull(2))));
        assert_eq!(s.front().unwrap().accepted_at, 1);
        s.pop_front();
        assert_eq!(s.front().unwrap().accepted_at, 2);
        s.withdraw(&held(2).req);
        assert!(s.is_empty());
        // Gone means it may be held again.
        assert!(s.push(held(1)).unwrap().is_none());
    }
}
