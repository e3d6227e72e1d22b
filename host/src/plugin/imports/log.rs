//! The `log` import: a plugin's log records go into the host's tracing, tagged with the plugin's
//! name and version so an operator can tell providers (and versions, during a reload) apart.

use std::fmt::Write;

use super::Identity;
use crate::plugin::since_v0_1_0::{KeyValue, LogLevel};

/// A plugin cannot flood the host's log with one record.
const MAX_MESSAGE_BYTES: usize = 8 << 10;

pub(super) fn emit(who: &Identity, level: LogLevel, message: &str, fields: &[KeyValue]) {
    let message = truncate(message, MAX_MESSAGE_BYTES);
    // tracing needs field names at compile time; the plugin's fields travel as one `k=v` list.
    let mut kv = String::new();
    for KeyValue { key, value } in fields {
        if !kv.is_empty() {
            kv.push(' ');
        }
        let _ = write!(kv, "{key}={value:?}");
    }
    let kv = truncate(&kv, MAX_MESSAGE_BYTES);
    let (plugin, version) = (&who.name, &who.version);
    match level {
        LogLevel::Trace => tracing::trace!(target: "plugin", %plugin, %version, fields = %kv, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "plugin", %plugin, %version, fields = %kv, "{message}"),
        LogLevel::Info => tracing::info!(target: "plugin", %plugin, %version, fields = %kv, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "plugin", %plugin, %version, fields = %kv, "{message}"),
        LogLevel::Error => tracing::error!(target: "plugin", %plugin, %version, fields = %kv, "{message}"),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
