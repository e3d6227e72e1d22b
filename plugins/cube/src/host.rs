//! What the provider needs from the host, as one trait: HTTP (through `Transport`), the `kv` cache,
//! the clock and logging. The guest implements it with the WIT imports; tests with a double.

use crate::api::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

pub trait Host: Transport {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Returns false when the store is full.
    fn kv_set(&self, key: &str, value: &[u8], ttl_ms: Option<u64>) -> bool;
    fn kv_delete(&self, key: &str) -> bool;
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]);
}
