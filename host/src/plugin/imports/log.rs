//! The `log` import: a plugin's log records go into the host's tracing, tagged with the plugin's
//! name and version so an operator can tell providers (and versions, during a reload) apart.

use std::fmt::Write;

use super::Identity;
use crate::plugin::v0_2_0::{KeyValue, LogLevel};

/// A plugin cannot flood the host's log with one record.
const MAX_MESSAGE_BYTES: usize = 8 << 10;
/// Nor with many: records of one call beyond this are dropped (with one warning).
pub(super) const MAX_RECORDS_PER_CALL: u32 = 1_000;

/// Logs one record; `emitted` counts the call's records so far. Whether it was written.
pub(super) fn emit(who: &Identity, emitted: &mut u32, level: LogLevel, message: &str, fields: &[KeyValue]) -> bool {
    *emitted = emitted.saturating_add(1);
    if *emitted > MAX_RECORDS_PER_CALL {
        if *emitted == MAX_RECORDS_PER_CALL + 1 {
            let (plugin, version) = (&who.name, &who.version);
            tracing::warn!(target: "plugin", %plugin, %version, "plugin logged over {MAX_RECORDS_PER_CALL} records in one call; dropping the rest of this call's");
        }
        return false;
    }
    // Control characters are escaped: a newline in the text format would let a plugin write a
    // line that looks like the host's own.
    let message = escape_controls(truncate(message, MAX_MESSAGE_BYTES));
    // tracing needs field names at compile time; the plugin's fields travel as one `k=v` list.
    let mut kv = String::new();
    for KeyValue { key, value } in fields {
        if !kv.is_empty() {
            kv.push(' ');
        }
        let _ = write!(kv, "{}={value:?}", escape_controls(key).replace([' ', '='], "_"));
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
    true
}

fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        // Byte 3 falls inside the second "é".
        assert_eq!(truncate("aéé", 3), "aé");
        assert_eq!(truncate("aéé", 4), "aé");
        assert_eq!(truncate("aéé", 5), "aéé");
        assert_eq!(truncate("short", 100), "short");
    }

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO vkhost: admin token accepted\r\x1b[2K";
        let escaped = escape_controls(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert!(escaped.contains("ok\\n2026") && escaped.contains("\\u{1b}"), "{escaped}");
        assert_eq!(escape_controls("plain text"), "plain text");
    }

    #[test]
    fn records_beyond_the_per_call_cap_are_dropped() {
        let who = Identity { name: "p".into(), version: "1".into() };
        let mut emitted = 0;
        let written =
            (0..MAX_RECORDS_PER_CALL + 10).filter(|_| emit(&who, &mut emitted, LogLevel::Trace, "m", &[])).count();
        assert_eq!(written, MAX_RECORDS_PER_CALL as usize);
    }
}
