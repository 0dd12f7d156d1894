//! [`SparseMap`]: a per-socket map that most sockets never write to.

use std::collections::BTreeMap;

/// A `BTreeMap` behind an `Option<Box<…>>`: 8 bytes inline instead of 24,
/// and nothing allocated until the first insert. For the per-socket maps
/// only some sockets use (typing throttles, channel cursors): every idle
/// socket holds this inline in its task, at 100k sockets per gateway.
#[derive(Debug)]
#[allow(
    clippy::box_collection,
    reason = "the box is the point: 8 bytes inline while empty, instead of the map's 24"
)]
pub struct SparseMap<K, V>(Option<Box<BTreeMap<K, V>>>);

impl<K, V> Default for SparseMap<K, V> {
    fn default() -> Self {
        SparseMap(None)
    }
}

impl<K: Ord, V> SparseMap<K, V> {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(k))
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.as_ref()?.get(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(k)
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.0.get_or_insert_default().insert(k, v)
    }

    /// Removes `k`; the box goes with the last entry.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let m = self.0.as_mut()?;
        let v = m.remove(k);
        if m.is_empty() {
            self.0 = None;
        }
        v
    }

    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        if let Some(m) = self.0.as_mut() {
            m.retain(f);
            if m.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn into_keys(self) -> impl Iterator<Item = K> {
        self.0.into_iter().flat_map(|m| m.into_keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_and_frees_its_box_when_empty() {
        let mut m: SparseMap<u32, &str> = SparseMap::default();
        assert_eq!((m.len(), m.get(&1), m.contains_key(&1)), (0, None, false));
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.insert(2, "b"), None);
        assert_eq!(m.insert(1, "a"), None);
        assert_eq!(m.insert(1, "A"), Some("a"));
        if let Some(v) = m.get_mut(&2) {
            *v = "B";
        }
        assert_eq!((m.len(), m.get(&1), m.get(&2)), (2, Some(&"A"), Some(&"B")));
        m.retain(|k, _| *k == 2);
        assert_eq!((m.len(), m.contains_key(&1)), (1, false));
        assert_eq!(m.remove(&2), Some("B"));
        assert!(m.0.is_none(), "the box goes with the last entry");
        m.insert(3, "c");
        m.insert(1, "a");
        assert_eq!(m.into_keys().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(std::mem::size_of::<SparseMap<u32, u32>>(), 8);
    }
}
