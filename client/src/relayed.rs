//! Messages that came through the fallback relay (the server's relay mode,
//! while its Redis was unreachable) arrive twice: first relayed, without a
//! seq, then sequenced once Redis is back. The app sees each once: the
//! relayed copy is surfaced at once, and the sequenced copy of a message
//! surfaced (or sent by this device) relayed is taken in for the seq order
//! but not surfaced again. Keyed by `(conv, from, id)`, the server's
//! idempotency key; bounded, oldest forgotten first.

use std::collections::{HashSet, VecDeque};

use switchboard_proto::ids::{Address, ConvId, MsgId};

type Key = (ConvId, Address, MsgId);

/// Most relayed messages remembered (a long outage's worth for one user).
pub const MAX_REMEMBERED: usize = 10_000;

#[derive(Default)]
pub(crate) struct RelayedIds {
    seen: HashSet<Key>,
    order: VecDeque<Key>,
}

impl RelayedIds {
    /// A relayed copy arrived (or this device's send was relayed): `true`
    /// the first time.
    pub fn first_copy(&mut self, conv: &ConvId, from: Address, id: &MsgId) -> bool {
        let key = (conv.clone(), from, id.clone());
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// A sequenced message arrived: `true` when its relayed copy was seen
    /// (do not surface it again).
    pub fn sequenced(&mut self, conv: &ConvId, from: Address, id: &MsgId) -> bool {
        let key = (conv.clone(), from, id.clone());
        if !self.seen.remove(&key) {
            return false;
        }
        if let Some(i) = self.order.iter().position(|k| *k == key) {
            self.order.remove(i);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_message_once_whichever_copy_comes() {
        let a: Address = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap();
        let b: Address = "0x00000000000000000000000000000000000000b0"
            .parse()
            .unwrap();
        let conv = ConvId::direct(&a, &b).unwrap();
        let id: MsgId = "m1".parse().unwrap();
        let mut r = RelayedIds::default();
        assert!(!r.sequenced(&conv, a, &id), "never relayed: surface it");
        assert!(r.first_copy(&conv, a, &id));
        assert!(!r.first_copy(&conv, a, &id), "the relay repeated it");
        assert!(
            r.first_copy(&conv, b, &id),
            "another sender's id is another message"
        );
        assert!(
            r.sequenced(&conv, a, &id),
            "sequenced copy: taken in silently"
        );
        assert!(!r.sequenced(&conv, a, &id));
    }

    #[test]
    fn bounded() {
        let a: Address = "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
            .parse()
            .unwrap();
        let conv = ConvId::new_group();
        let mut r = RelayedIds::default();
        for n in 0..MAX_REMEMBERED + 5 {
            r.first_copy(&conv, a, &format!("m{n}").parse().unwrap());
        }
        assert_eq!(r.seen.len(), MAX_REMEMBERED);
        assert!(!r.sequenced(&conv, a, &"m0".parse().unwrap()));
    }
}
