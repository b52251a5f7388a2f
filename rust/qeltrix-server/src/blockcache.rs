//! A decrypted-block cache shared by every container a server has open, bounded by bytes.
//!
//! Video players seek back and forth over the same few blocks; keeping their verified
//! plaintext saves the SHA-256 and AEAD work of decrypting them again. Entries are keyed by
//! `(owner, block)`, where `owner` is a number the cache hands out once per open container
//! ([`BlockCache::new_owner`]): a container opened afresh (because its file changed) gets a
//! new owner, so it can never be served another version's plaintext, and the old owner's
//! entries are dropped with [`BlockCache::forget_owner`] or age out. Only the container
//! puts plaintext in, after checking it; the cache itself knows nothing of cryptography.
//!
//! Eviction is least-recently-used. The bound counts the plaintext bytes of the entries; a
//! block larger than the whole bound is not cached.
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

type Key = (u64, u64);

#[derive(Default)]
struct Inner {
    /// key -> (plaintext, its tick in `order`)
    map: HashMap<Key, (Bytes, u64)>,
    /// tick -> key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

/// Counters of a [`BlockCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// An LRU of plaintext blocks, bounded by their total length.
pub struct BlockCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    next_owner: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl BlockCache {
    /// A cache holding at most `max_bytes` of plaintext (0 disables it).
    pub fn new(max_bytes: usize) -> BlockCache {
        BlockCache {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            next_owner: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The bound, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A key space for one open container, never handed out before.
    pub fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// The plaintext of `block` of `owner`, if cached (and mark it recently used).
    pub fn get(&self, owner: u64, block: u64) -> Option<Bytes> {
        if self.max_bytes == 0 {
            return None;
        }
        let mut g = self.inner.lock().expect("block cache lock");
        let inner = &mut *g;
        let Some((bytes, tick)) = inner.map.get_mut(&(owner, block)) else {
            drop(g);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        inner.order.remove(tick);
        inner.tick += 1;
        *tick = inner.tick;
        inner.order.insert(inner.tick, (owner, block));
        let b = bytes.clone();
        drop(g);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(b)
    }

    /// Keep verified plaintext of `block` of `owner`, evicting the least recently used
    /// entries to stay within the bound.
    pub fn insert(&self, owner: u64, block: u64, plaintext: Bytes) {
        let len = plaintext.len();
        if len > self.max_bytes {
            return;
        }
        let mut g = self.inner.lock().expect("block cache lock");
        let inner = &mut *g;
        if inner.map.contains_key(&(owner, block)) {
            return;
        }
        let mut evicted = 0;
        while inner.bytes + len > self.max_bytes {
            let Some((_, key)) = inner.order.pop_first() else { break };
            if let Some((b, _)) = inner.map.remove(&key) {
                inner.bytes -= b.len();
                evicted += 1;
            }
        }
        inner.tick += 1;
        inner.order.insert(inner.tick, (owner, block));
        inner.map.insert((owner, block), (plaintext, inner.tick));
        inner.bytes += len;
        drop(g);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Drop every entry of `owner` (its container was closed, or must be read afresh).
    pub fn forget_owner(&self, owner: u64) {
        let mut g = self.inner.lock().expect("block cache lock");
        let inner = &mut *g;
        let keys: Vec<(Key, u64)> = inner
            .map
            .iter()
            .filter(|(k, _)| k.0 == owner)
            .map(|(k, (_, t))| (*k, *t))
            .collect();
        for (k, t) in keys {
            inner.order.remove(&t);
            if let Some((b, _)) = inner.map.remove(&k) {
                inner.bytes -= b.len();
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock().expect("block cache lock");
        CacheStats {
            entries: g.map.len(),
            bytes: g.bytes,
            max_bytes: self.max_bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn stays_within_its_byte_bound_and_evicts_least_recently_used() {
        let c = BlockCache::new(1000);
        let o = c.new_owner();
        for i in 0..3 {
            c.insert(o, i, block(300, i as u8));
        }
        assert_eq!(c.stats().bytes, 900);
        // Touch block 0, so block 1 is now the least recently used.
        assert_eq!(c.get(o, 0).unwrap(), block(300, 0));
        c.insert(o, 3, block(300, 3));
        let s = c.stats();
        assert!(s.bytes <= 1000, "{s:?}");
        assert_eq!((s.entries, s.bytes, s.evictions), (3, 900, 1));
        assert!(c.get(o, 1).is_none());
        assert_eq!(c.get(o, 0).unwrap(), block(300, 0));
        assert_eq!(c.get(o, 2).unwrap(), block(300, 2));
        assert_eq!(c.get(o, 3).unwrap(), block(300, 3));
        // A big block evicts as many as it needs.
        c.insert(o, 4, block(1000, 4));
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (1, 1000));
        assert_eq!(c.get(o, 4).unwrap(), block(1000, 4));
    }

    #[test]
    fn many_inserts_never_exceed_the_bound() {
        let c = BlockCache::new(10_000);
        let o = c.new_owner();
        for i in 0..2000u64 {
            c.insert(o, i % 97, block(100 + (i as usize * 37) % 900, 1));
            let s = c.stats();
            assert!(s.bytes <= 10_000, "{s:?}");
            let _ = c.get(o, (i * 7) % 97);
        }
        let s = c.stats();
        assert!(s.evictions > 0 && s.entries > 0, "{s:?}");
    }

    #[test]
    fn oversized_blocks_and_a_zero_bound_cache_nothing() {
        let c = BlockCache::new(100);
        let o = c.new_owner();
        c.insert(o, 0, block(101, 0));
        assert_eq!(c.stats().entries, 0);
        let off = BlockCache::new(0);
        off.insert(o, 0, block(1, 0));
        assert!(off.get(o, 0).is_none());
        assert_eq!(off.stats().bytes, 0);
    }

    #[test]
    fn owners_are_separate_and_forgotten_whole() {
        let c = BlockCache::new(10_000);
        let (a, b) = (c.new_owner(), c.new_owner());
        assert_ne!(a, b);
        c.insert(a, 0, block(10, 1));
        c.insert(b, 0, block(20, 2));
        c.insert(a, 1, block(30, 3));
        assert_eq!(c.get(b, 0).unwrap(), block(20, 2));
        c.forget_owner(a);
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (1, 20));
        assert!(c.get(a, 0).is_none() && c.get(a, 1).is_none());
        assert_eq!(c.get(b, 0).unwrap(), block(20, 2));
    }

    #[test]
    fn a_second_insert_of_a_cached_block_is_ignored() {
        let c = BlockCache::new(1000);
        let o = c.new_owner();
        c.insert(o, 0, block(10, 1));
        c.insert(o, 0, block(10, 2));
        assert_eq!(c.get(o, 0).unwrap(), block(10, 1));
        assert_eq!(c.stats().bytes, 10);
    }
}
