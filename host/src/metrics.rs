//! Prometheus metrics of the daemon: pod sync latency, provider calls by export and outcome,
//! plugin reloads and rollbacks, pods by phase, instances held, orphans deleted, and the counters the plugin
//! keeps through the `metrics` import (the Cube plugin's cloud API errors by RetCode), writes
//! refused by a node's fence, reconcile calls per node, ConfigMaps and Secrets watched for
//! running pods, waits for a plugin's cloud-API budget, each started pod's time by stage
//! (`pods/startup.rs`), Events dropped because a node's event queue was full. Served on the admin
//! endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// A label set as the text exposition needs it. prometheus-client writes label values verbatim, so
/// a value from outside (a plugin's label or phase, a plugin's name) carrying `"`, `\` or a
/// newline would end the value early and break the whole scrape: values are escaped as the format
/// says, and names that are not `[a-zA-Z_][a-zA-Z0-9_]*` get their other characters replaced by `_`.
fn labels<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
    pairs.into_iter().map(|(k, v)| (label_name(k.as_ref()), escape_label_value(v.as_ref()))).collect()
}

fn label_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub struct Metrics {
    registry: Registry,
    sync_seconds: Histogram,
    sync_results: Family<Labels, Counter>,
    pod_reconciles: Family<Labels, Counter>,
    pub orphans_deleted: Counter,
    pods_by_phase: Family<Labels, Gauge>,
    provider_calls: Family<Labels, Gauge>,
    plugin_reloads: Family<Labels, Counter>,
    plugin_signature_refusals: Counter,

    plugin_rollbacks: Family<Labels, Counter>,
    plugin_counters: Family<Labels, Counter>,
    fenced_writes: Family<Labels, Counter>,
    reference_watches: Family<Labels, Gauge>,
    service_watches: Family<Labels, Gauge>,
    egress_waited: Family<Labels, Counter>,
    egress_wait_seconds: Family<Labels, Counter<f64>>,
    egress_refused: Family<Labels, Counter>,
    pod_start: Family<Labels, Histogram>,
    pod_delete: Family<Labels, Histogram>,
    events_dropped: Family<Labels, Counter>,
    known_phases: Mutex<HashMap<String, Vec<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("vkhost");
        let sync_seconds = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("pod_sync_duration_seconds", "Time of one pod sync (reconcile)", sync_seconds.clone());
        let sync_results = Family::<Labels, Counter>::default();
        registry.register("pod_syncs", "Pod syncs by result", sync_results.clone());
        let pod_reconciles = Family::<Labels, Counter>::default();
        registry.register("pod_reconciles", "Reconcile calls of the pod controller, by node", pod_reconciles.clone());
        let orphans_deleted = Counter::default();
        registry.register("orphans_deleted", "Instances deleted because no pod owned them", orphans_deleted.clone());
        let pods_by_phase = Family::<Labels, Gauge>::default();
        registry.register(
            "instances_by_phase",
            "Instances the provider holds (billed) by node and pod phase",
            pods_by_phase.clone(),
        );
        let provider_calls = Family::<Labels, Gauge>::default();
        registry.register(
            "provider_calls",
            "Provider plugin calls by export and outcome (cumulative)",
            provider_calls.clone(),
        );
        let plugin_reloads = Family::<Labels, Counter>::default();
        registry.register("plugin_reloads", "Plugin reload attempts by result", plugin_reloads.clone());
        let plugin_signature_refusals = Counter::default();
        registry.register(
            "plugin_signature_refusals",
            "Plugin versions refused because they were unsigned or not signed by the configured key",
            plugin_signature_refusals.clone(),
        );
        let plugin_rollbacks = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_rollbacks",
            "Automatic rollbacks of a new plugin version that exceeded its error budget, by node",
            plugin_rollbacks.clone(),
        );
        let plugin_counters = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_counter",
            "Counters the provider plugin keeps (metrics import), e.g. name=\"cloud_api_errors\" by action and ret_code",
            plugin_counters.clone(),
        );
        let fenced_writes = Family::<Labels, Counter>::default();
        registry.register(
            "fenced_writes",
            "Writes refused because the node's election lease lapsed, by node and target (api, cloud)",
            fenced_writes.clone(),
        );
        let reference_watches = Family::<Labels, Gauge>::default();
        registry.register(
            "reference_watches",
            "ConfigMaps and Secrets watched for changes on behalf of the running pods, by node",
            reference_watches.clone(),
        );
        let service_watches = Family::<Labels, Gauge>::default();
        registry.register(
            "service_watches",
            "Namespaces whose Services are watched for the service-link variables of the node's pods, by node",
            service_watches.clone(),
        );
        let egress_waited = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_egress_waited",
            "Plugin HTTP requests that waited for the plugin's cloud-API budget ([plugin.egress])",
            egress_waited.clone(),
        );
        let egress_wait_seconds = Family::<Labels, Counter<f64>>::default();
        registry.register(
            "plugin_egress_wait_seconds",
            "Time plugin HTTP requests spent waiting for the plugin's cloud-API budget, summed",
            egress_wait_seconds.clone(),
        );
        let egress_refused = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_egress_refused",
            "Plugin HTTP requests failed as timeouts because their turn in the budget came too late",
            egress_refused.clone(),
        );
        let pod_start = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "pod_start_seconds",
            "Pods started by this daemon: first sight on the node to the status write showing them Ready (stage=\"total\"), and the time of each stage of that (pods/startup.rs)",
            pod_start.clone(),
        );
        let pod_delete = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "pod_delete_seconds",
            "Pods deleted by this daemon: first sight of the deletion on the node to its DELETE of the pod object (stage=\"total\"), and the time of each stage of that (pods/teardown.rs)",
            pod_delete.clone(),
        );
        let events_dropped = Family::<Labels, Counter>::default();
        registry.register(
            "events_dropped",
            "Events not recorded because the node's event queue was full (pods/events.rs), by node",
            events_dropped.clone(),
        );
        Self {
            registry,
            sync_seconds,
            sync_results,
            pod_reconciles,
            orphans_deleted,
            pods_by_phase,
            provider_calls,
            plugin_reloads,
            plugin_signature_refusals,

            plugin_rollbacks,
            plugin_counters,
            fenced_writes,
            reference_watches,
            service_watches,
            egress_waited,
            egress_wait_seconds,
            egress_refused,
            pod_start,
            pod_delete,
            events_dropped,
            known_phases: Mutex::new(HashMap::new()),
        }
    }

    pub fn observe_sync(&self, took: Duration, ok: bool) {
        self.sync_seconds.observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.sync_results.get_or_create(&labels([("result", result)])).inc();
    }

    /// One started pod's time in `stage` (`None`: its whole start).
    pub fn observe_start(&self, stage: Option<&str>, took: Duration) {
        self.pod_start.get_or_create(&labels([("stage", stage.unwrap_or("total"))])).observe(took.as_secs_f64());
    }

    /// One deleted pod's time in `stage` (`None`: its whole deletion).
    pub fn observe_delete(&self, stage: Option<&str>, took: Duration) {
        self.pod_delete.get_or_create(&labels([("stage", stage.unwrap_or("total"))])).observe(took.as_secs_f64());
    }

    /// One reconcile call of `node`'s pod controller.
    pub fn reconciled(&self, node: &str) {
        self.pod_reconciles.get_or_create(&labels([("node", node)])).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.plugin_reloads.get_or_create(&labels([("result", result)])).inc();
    }

    /// Brings the signature refusal counter up to the plugin's own count.
    pub fn set_signature_refusals(&self, total: u64) {
        let seen = self.plugin_signature_refusals.get();
        if total > seen {
            self.plugin_signature_refusals.inc_by(total - seen);
        }
    }

    /// A new plugin version was rolled back on `node`.
    pub fn rollback(&self, node: &str) {
        self.plugin_rollbacks.get_or_create(&labels([("node", node)])).inc();
    }

    /// A write for `node` to `target` (`api`, `cloud`) refused by the node's fence.
    pub fn fenced_write(&self, node: &str, target: &str) {
        self.fenced_writes.get_or_create(&labels([("node", node), ("target", target)])).inc();
    }

    /// An Event of `node` dropped: its queue was full.
    pub fn event_dropped(&self, node: &str) {
        self.events_dropped.get_or_create(&labels([("node", node)])).inc();
    }

    /// The number of ConfigMaps and Secrets `node` watches for its running pods.
    pub fn set_reference_watches(&self, node: &str, n: usize) {
        self.reference_watches.get_or_create(&labels([("node", node)])).set(n as i64);
    }

    /// The number of namespaces whose Services `node` watches for its pods' service links.
    pub fn set_service_watches(&self, node: &str, n: usize) {
        self.service_watches.get_or_create(&labels([("node", node)])).set(n as i64);
    }

    /// Sets the instance count per phase of one node (phases that disappeared drop to 0).
    pub fn set_phases(&self, node: &str, phases: &HashMap<String, u64>) {
        let mut known = self.known_phases.lock().unwrap();
        let seen = known.entry(node.to_string()).or_default();
        for p in phases.keys() {
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
        for p in seen.iter() {
            let set = labels([("node", node), ("phase", p.as_str())]);
            self.pods_by_phase.get_or_create(&set).set(*phases.get(p).unwrap_or(&0) as i64);
        }
    }

    /// Copies the plugin's call counters (kept by the runtime) into the registry.
    pub fn set_provider_calls(&self, calls: impl IntoIterator<Item = (String, String, u64)>) {
        for (export, outcome, n) in calls {
            let set = labels([("export", export), ("outcome", outcome)]);
            self.provider_calls.get_or_create(&set).set(n as i64);
        }
    }

    /// Brings the plugin's counters (kept by the runtime, only ever growing) into the registry.
    pub fn set_plugin_counters(
        &self,
        plugin: &str,
        counters: impl IntoIterator<Item = ((String, Vec<(String, String)>), u64)>,
    ) {
        for ((name, extra), value) in counters {
            let all = labels(
                [("plugin".to_string(), plugin.to_string()), ("name".to_string(), name)].into_iter().chain(extra),
            );
            let counter = self.plugin_counters.get_or_create(&all);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }

    /// Brings what the plugin's cloud-API budget did (cumulative, only ever growing) into the registry.
    pub fn set_egress_budget(&self, plugin: &str, waited_total: u64, wait_seconds: f64, refused_total: u64) {
        let set = labels([("plugin", plugin)]);
        let waited = self.egress_waited.get_or_create(&set);
        waited.inc_by(waited_total.saturating_sub(waited.get()));
        let seconds = self.egress_wait_seconds.get_or_create(&set);
        seconds.inc_by((wait_seconds - seconds.get()).max(0.0));
        let refused = self.egress_refused.get_or_create(&set);
        refused.inc_by(refused_total.saturating_sub(refused.get()));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sync_histogram_phases_and_reloads() {
        let m = Metrics::new();
        m.observe_sync(Duration::from_millis(20), true);
        m.reload(false);
        m.set_phases("n1", &HashMap::from([("Running".to_string(), 3)]));
        m.set_reference_watches("n1", 2);
        m.set_service_watches("n1", 1);
        m.reconciled("n1");
        m.reconciled("n1");
        let text = m.render();
        assert!(text.contains("vkhost_pod_reconciles_total{node=\"n1\"} 2"), "{text}");
        assert!(text.contains("vkhost_reference_watches{node=\"n1\"} 2"), "{text}");
        assert!(text.contains("vkhost_service_watches{node=\"n1\"} 1"), "{text}");
        assert!(text.contains("vkhost_pod_sync_duration_seconds_count 1"), "{text}");
        assert!(text.contains("vkhost_plugin_reloads_total{result=\"refused\"} 1"), "{text}");
        assert!(text.contains("vkhost_instances_by_phase{node=\"n1\",phase=\"Running\"} 3"), "{text}");
    }

    #[test]
    fn plugin_counters_follow_the_runtime_values() {
        let m = Metrics::new();
        let series = |n| {
            vec![(
                (
                    "cloud_api_errors".to_string(),
                    vec![("action".into(), "CreateCubePod".into()), ("ret_code".into(), "8041".into())],
                ),
                n,
            )]
        };
        m.set_plugin_counters("cube", series(2));
        m.set_plugin_counters("cube", series(5));
        let text = m.render();
        assert!(
            text.contains("vkhost_plugin_counter_total{plugin=\"cube\",name=\"cloud_api_errors\",action=\"CreateCubePod\",ret_code=\"8041\"} 5"),
            "{text}"
        );
    }

    /// Parses one sample line of the text exposition (`name{k="v",...} value`), or says why not.
    /// A metric name, its labels (unescaped) and its value.
    type Sample = (String, Labels, f64);

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').ok_or("label without =")?;
                let key = &r[..eq];
                if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("bad label name {key:?}"));
                }
                let mut chars = r[eq + 1..].strip_prefix('"').ok_or("unquoted label value")?.char_indices();
                let mut value = String::new();
                let end = loop {
                    match chars.next().ok_or("unterminated label value")? {
                        (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                r = &r[eq + 1..][1 + end + 1..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
        let value = value.parse::<f64>().map_err(|e| format!("value {value:?}: {e}"))?;
        Ok((name.to_string(), labels, value))
    }

    #[test]
    fn hostile_label_values_from_a_plugin_keep_the_scrape_parseable() {
        let m = Metrics::new();
        m.reload(true);
        let hostile = "x\"} 1\nvkhost_fake_total 99\n# \\";
        m.set_plugin_counters(
            "cube\"\n",
            vec![(("cloud_api_errors".to_string(), vec![("action".into(), hostile.into())]), 3)],
        );
        m.set_phases("n1", &HashMap::from([("Run\"ning\n".to_string(), 2)]));
        let text = m.render();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            samples.push(parse_sample(line).unwrap_or_else(|why| panic!("line {line:?}: {why}\n{text}")));
        }
        assert!(!samples.iter().any(|(n, ..)| n == "vkhost_fake_total"), "{text}");
        let counter = samples.iter().find(|(n, ..)| n == "vkhost_plugin_counter_total").expect("plugin counter");
        assert_eq!(
            counter.1,
            vec![
                ("plugin".to_string(), "cube\"\n".to_string()),
                ("name".to_string(), "cloud_api_errors".to_string()),
                ("action".to_string(), hostile.to_string())
            ]
        );
        assert_eq!(counter.2, 3.0);
        assert!(samples.iter().any(|(n, l, v)| n == "vkhost_plugin_reloads_total" && l[0].1 == "ok" && *v == 1.0));
        assert!(samples.iter().any(|(n, l, _)| n == "vkhost_instances_by_phase" && l[1].1 == "Run\"ning\n"));
    }

    /// The alert rules and the dashboard in deploy/monitoring query only series this registry
    /// exports, with the labels it gives them: renaming a metric or a label fails here.
    #[test]
    fn the_alerts_and_the_dashboard_query_exported_series() {
        let m = Metrics::new();
        m.observe_sync(Duration::from_millis(20), false);
        m.reload(false);
        m.orphans_deleted.inc();
        m.set_phases("n1", &HashMap::from([("Running".to_string(), 1)]));
        m.set_provider_calls([("create".to_string(), "ok".to_string(), 1)]);
        m.set_plugin_counters(
            "cube",
            vec![(
                ("cloud_api_errors".to_string(), vec![("action".into(), "A".into()), ("ret_code".into(), "1".into())]),
                1,
            )],
        );
        let text = m.render();
        let mut exported: HashMap<String, Vec<String>> = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels, _) = parse_sample(line).unwrap();
            exported.entry(name).or_default().extend(labels.into_iter().map(|(k, _)| k));
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
        let mut checked = 0;
        for file in ["vkhost-alerts.yaml", "vkhost-dashboard.json"] {
            let source = std::fs::read_to_string(dir.join(file)).unwrap();
            // Each `vkhost_…` name, and the label names inside its `{…}` selector if it has one.
            for (at, _) in source.match_indices("vkhost_") {
                let rest = &source[at..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                let name = &rest[..end];
                let Some(labels) = exported.get(name) else {
                    panic!("{file} queries {name}, which vkhost does not export; it does: {:?}", exported.keys());
                };
                checked += 1;
                if let Some(selector) = rest[end..].strip_prefix('{') {
                    let selector = &selector[..selector.find('}').unwrap()];
                    for matcher in selector.split(',') {
                        let label = matcher.split(['=', '!']).next().unwrap().trim();
                        assert!(
                            label == "instance" || label == "job" || labels.iter().any(|l| l == label),
                            "{file}: {name} has no label {label}; it has {labels:?}"
                        );
                    }
                }
            }
        }
        assert!(checked >= 20, "only {checked} references found");
    }
}
