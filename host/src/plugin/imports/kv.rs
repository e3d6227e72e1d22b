//! The `kv` import: a small in-memory cache per plugin name, shared by all versions of the plugin
//! (so a hot reload keeps it), with per-entry TTL and a byte cap that counts what an entry really
//! costs the host, not only its key and value.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// What one entry costs the host besides its key and value bytes: the map's `String` and `Entry`
/// (64 bytes), the heap blocks' allocator headers and rounding, and the entry's share of its
/// B-tree node (11-slot nodes, rarely full). Measured: 1,000,000 entries with ~6-byte keys and
/// empty values take 148 bytes each of RSS (119 of them requested from the allocator), so ~142
/// beyond the key; a non-empty value adds a heap block. Counting it means a million one-byte keys
/// cost what they occupy, so the cap bounds real memory, not only payload.
pub const ENTRY_OVERHEAD: u64 = 160;

/// The host memory one entry is charged for.
fn charge(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
}

/// One plugin's store. Size is counted as key bytes plus value bytes plus [`ENTRY_OVERHEAD`].
pub struct KvStore {
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    // A BTreeMap so `keys(prefix)` is a range scan and comes out sorted.
    entries: BTreeMap<String, Entry>,
    bytes: u64,
}

impl Inner {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= charge(key, &entry.value);
        Some(entry)
    }

    fn purge_expired(&mut self, now: Instant) {
        let dead: Vec<String> = self.entries.iter().filter(|(_, e)| !e.live(now)).map(|(k, _)| k.clone()).collect();
        for key in dead {
            self.remove(&key);
        }
    }
}

impl KvStore {
    pub fn new(max_bytes: u64) -> Self {
        KvStore { max_bytes, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let inner = self.inner.lock().unwrap();
        inner.entries.get(key).filter(|e| e.live(Instant::now())).map(|e| e.value.clone())
    }

    /// Stores `value`; false (and nothing changed) when it would push the store past its cap.
    pub fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        let new_size = charge(key, &value);
        let old_size = inner.entries.get(key).map_or(0, |e| charge(key, &e.value));
        if inner.bytes - old_size + new_size > self.max_bytes {
            // Expired entries still count until purged; purge only when it matters.
            inner.purge_expired(now);
            let old_size = inner.entries.get(key).map_or(0, |e| charge(key, &e.value));
            if inner.bytes - old_size + new_size > self.max_bytes {
                return false;
            }
        }
        inner.remove(key);
        let expires = ttl.and_then(|ttl| now.checked_add(ttl));
        inner.entries.insert(key.to_owned(), Entry { value, expires });
        inner.bytes += new_size;
        true
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        inner.remove(key).is_some_and(|e| e.live(now))
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let now = Instant::now();
        let inner = self.inner.lock().unwrap();
        inner
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Bytes currently charged (expired entries included until purged).
    #[cfg(test)]
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().unwrap().bytes
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_write_past_the_byte_cap_and_keeps_the_old_value() {
        let kv = KvStore::new(ENTRY_OVERHEAD + 10);
        assert!(kv.set("a", b"12345".to_vec(), None));
        assert!(!kv.set("b", b"123456789".to_vec(), None));
        assert_eq!(kv.get("a").unwrap(), b"12345");
        assert!(kv.get("b").is_none());
        // Overwriting a key only counts the difference.
        assert!(kv.set("a", b"123456789".to_vec(), None));
        assert_eq!(kv.used_bytes(), ENTRY_OVERHEAD + 10);
    }

    #[test]
    fn expired_entries_are_invisible_and_make_room() {
        let kv = KvStore::new(ENTRY_OVERHEAD + 8);
        assert!(kv.set("old", b"xxxx".to_vec(), Some(Duration::from_millis(1))));
        std::thread::sleep(Duration::from_millis(5));
        assert!(kv.get("old").is_none());
        assert!(kv.keys("").is_empty());
        assert!(kv.set("new", b"yyyy".to_vec(), None));
        assert_eq!(kv.used_bytes(), ENTRY_OVERHEAD + 7);
    }

    #[test]
    fn many_tiny_keys_hit_the_cap_at_a_bounded_real_size() {
        let cap = 1 << 20;
        let kv = KvStore::new(cap);
        let mut stored = 0u64;
        while kv.set(&stored.to_string(), vec![], None) {
            stored += 1;
            assert!(stored < cap, "the store never filled up");
        }
        assert_eq!(kv.len() as u64, stored);
        // Payload alone let ~190,000 keys in (27 MiB of RSS for a 1 MiB cap); each costs the host
        // at least its map slot (`String` + `Entry`) and a heap block for the key.
        let per_entry_floor = (std::mem::size_of::<String>() + std::mem::size_of::<Entry>() + 16) as u64;
        let key_bytes: u64 = (0..stored).map(|i| i.to_string().len() as u64).sum();
        assert!(
            stored * per_entry_floor + key_bytes <= cap,
            "{stored} entries take at least {} bytes, over the {cap}-byte cap",
            stored * per_entry_floor + key_bytes
        );
        assert!(kv.used_bytes() <= cap);
        assert!(stored <= cap / ENTRY_OVERHEAD, "{stored}");
    }

    #[test]
    fn keys_are_sorted_and_filtered_by_prefix() {
        let kv = KvStore::new(1 << 10);
        for k in ["n1/b", "n2/a", "n1/a", "n10/z"] {
            kv.set(k, vec![1], None);
        }
        assert_eq!(kv.keys("n1/"), vec!["n1/a", "n1/b"]);
        assert!(kv.delete("n1/a"));
        assert!(!kv.delete("n1/a"));
        assert_eq!(kv.keys("n1/"), vec!["n1/b"]);
    }
}
