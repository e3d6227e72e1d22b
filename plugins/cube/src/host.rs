//! What the provider needs from the host, as one trait: HTTP (through `Transport`), the node's
//! durable `store`, the clock and logging. The guest implements it with the WIT imports; tests with a double.

use crate::api::Transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

pub trait Host: Transport {
    /// A durable record of the node (survives restarts and failovers of the daemon).
    fn store_get(&self, key: &str) -> Option<Vec<u8>>;
    /// Err (why) when the record is not stored: over the host's caps, or not persisted in time.
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Whether the record was there; Err (why) when the removal is not stored.
    fn store_delete(&self, key: &str) -> Result<bool, String>;
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]);
}
