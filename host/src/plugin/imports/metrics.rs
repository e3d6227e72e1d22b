//! The `metrics` import (contract 0.1.1): counters a plugin names and labels, kept per plugin name
//! (shared by its versions, like `kv`) and published by the daemon's `/metrics` as
//! `vkhost_plugin_counter_total{plugin, name, ...labels}`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Identity;
use crate::plugin::v0_2_0::KeyValue;

/// Distinct series one plugin may create; new ones beyond are dropped.
pub const MAX_SERIES: usize = 1_000;
const MAX_LABELS: usize = 8;
const MAX_NAME: usize = 64;
const MAX_VALUE: usize = 128;

/// A counter's identity: its name and its labels, sorted by key.
pub type Series = (String, Vec<(String, String)>);

#[derive(Default)]
pub struct PluginCounters {
    series: Mutex<BTreeMap<Series, u64>>,
    warned_full: AtomicBool,
}

impl PluginCounters {
    /// Adds `delta` to a series; a call breaking the contract's rules is ignored with a warning.
    pub(super) fn add(&self, who: &Identity, name: &str, labels: &[KeyValue], delta: u64) {
        let series = match series(name, labels) {
            Ok(series) => series,
            Err(why) => {
                tracing::warn!(plugin = %who.name, version = %who.version, counter = %name, "metrics.counter-add ignored: {why}");
                return;
            }
        };
        let mut all = self.series.lock().unwrap();
        let len = all.len();
        match all.get_mut(&series) {
            Some(n) => *n = n.saturating_add(delta),
            None if len < MAX_SERIES => {
                all.insert(series, delta);
            }
            None => {
                if !self.warned_full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        plugin = %who.name, version = %who.version, counter = %name,
                        "plugin reached {MAX_SERIES} counter series; new series are dropped (labels from a large set?)"
                    );
                }
            }
        }
    }

    /// Every series and its value.
    pub fn snapshot(&self) -> Vec<(Series, u64)> {
        self.series.lock().unwrap().iter().map(|(s, n)| (s.clone(), *n)).collect()
    }
}

fn identifier(s: &str) -> bool {
    (1..=MAX_NAME).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn series(name: &str, labels: &[KeyValue]) -> Result<Series, String> {
    if !identifier(name) {
        return Err(format!("name {name:?} must be 1-{MAX_NAME} of a-z, 0-9, _ starting with a letter"));
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, at most {MAX_LABELS}", labels.len()));
    }
    let mut sorted: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for KeyValue { key, value } in labels {
        if !identifier(key) || key == "plugin" || key == "name" {
            return Err(format!("label key {key:?} must be an identifier other than `plugin` and `name`"));
        }
        if value.len() > MAX_VALUE {
            return Err(format!("label {key} is {} bytes, at most {MAX_VALUE}", value.len()));
        }
        sorted.push((key.clone(), value.clone()));
    }
    sorted.sort();
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a label key appears twice".into());
    }
    Ok((name.to_owned(), sorted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: v.into() }
    }

    fn who() -> Identity {
        Identity { name: "cube".into(), version: "1".into() }
    }

    #[test]
    fn adds_by_series_with_labels_in_any_order() {
        let c = PluginCounters::default();
        c.add(&who(), "cloud_api_errors", &[kv("action", "CreateCubePod"), kv("ret_code", "8041")], 1);
        c.add(&who(), "cloud_api_errors", &[kv("ret_code", "8041"), kv("action", "CreateCubePod")], 2);
        c.add(&who(), "cloud_api_errors", &[kv("action", "GetCubePod"), kv("ret_code", "150")], 1);
        let snap = c.snapshot();
        assert_eq!(snap.len(), 2);
        let create = snap.iter().find(|((_, l), _)| l[0].1 == "CreateCubePod").unwrap();
        assert_eq!(create.1, 3);
        assert_eq!(create.0.1, vec![("action".into(), "CreateCubePod".into()), ("ret_code".into(), "8041".into())]);
    }

    #[test]
    fn bad_names_and_labels_are_ignored() {
        let c = PluginCounters::default();
        c.add(&who(), "Bad-Name", &[], 1);
        c.add(&who(), "ok", &[kv("plugin", "x")], 1);
        c.add(&who(), "ok", &[kv("a", "1"), kv("a", "2")], 1);
        c.add(&who(), "ok", &[kv("a", &"x".repeat(MAX_VALUE + 1))], 1);
        c.add(&who(), "ok", &(0..9).map(|i| kv(&format!("l{i}"), "v")).collect::<Vec<_>>(), 1);
        assert!(c.snapshot().is_empty());
    }

    #[test]
    fn series_beyond_the_cap_are_dropped_and_existing_ones_still_count() {
        let c = PluginCounters::default();
        for i in 0..MAX_SERIES + 5 {
            c.add(&who(), "per_value", &[kv("v", &i.to_string())], 1);
        }
        assert_eq!(c.snapshot().len(), MAX_SERIES);
        c.add(&who(), "per_value", &[kv("v", "0")], 1);
        assert_eq!(c.snapshot().iter().find(|((_, l), _)| l[0].1 == "0").unwrap().1, 2);
    }
}
