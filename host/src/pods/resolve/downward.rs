//! The downward API in env vars: pod fields (`fieldRef`) and container resources
//! (`resourceFieldRef`), as the kubelet computes them.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::all_containers;

/// The value of a `fieldRef` path; unknown paths give the empty string, as the apiserver's
/// validation leaves only the supported ones.
pub(super) fn downward_field(pod: &Pod, path: &str) -> String {
    let meta = &pod.metadata;
    let bracket = |p: &str, prefix: &str| p.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(str::to_string);
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" => pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => pod.status.as_ref().and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        p => {
            if let Some(k) = bracket(p, "metadata.labels['") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = bracket(p, "metadata.annotations['") {
                meta.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, …) of `container` (the
/// current one when unnamed), divided by `divisor` and rounded up.
pub(super) fn resource_field(
    pod: &Pod,
    current: &Container,
    container: Option<&str>,
    resource: &str,
    divisor: Option<&str>,
) -> String {
    let c = container
        .filter(|n| !n.is_empty())
        .and_then(|n| all_containers(pod).into_iter().find(|c| c.name == n))
        .unwrap_or_else(|| current.clone());
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = c.resources.unwrap_or_default();
    let map = if kind == "requests" { res.requests } else { res.limits };
    let q = map.and_then(|m| m.get(name).map(|q| q.0.clone()));
    match (q, divisor) {
        (Some(q), None) => q,
        (Some(q), Some(d)) => match (parse_quantity(&q), parse_quantity(d)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{}", (a / b).ceil() as i64),
            _ => q,
        },
        (None, _) => "0".into(),
    }
}

/// A Kubernetes quantity as a number (`500m` → 0.5, `1Gi` → 1073741824).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    q.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"team": "infra"}},
            "spec": {"nodeName": "vk-1", "serviceAccountName": "runner", "containers": [
                {"name": "app", "image": "i", "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"},
                                                           "requests": {"cpu": "250m"}}},
                {"name": "side", "image": "i", "resources": {"limits": {"memory": "64Mi"}}},
            ]},
            "status": {"podIP": "10.0.0.7", "hostIP": "10.0.0.1"},
        }))
        .unwrap()
    }

    #[test]
    fn field_refs_read_the_pod() {
        let p = pod();
        for (path, want) in [
            ("metadata.name", "web"),
            ("metadata.namespace", "ns1"),
            ("metadata.uid", "u-1"),
            ("spec.nodeName", "vk-1"),
            ("spec.serviceAccountName", "runner"),
            ("status.podIP", "10.0.0.7"),
            ("status.hostIP", "10.0.0.1"),
            ("metadata.labels['app']", "web"),
            ("metadata.annotations['team']", "infra"),
            ("metadata.labels['absent']", ""),
            ("spec.unknown", ""),
        ] {
            assert_eq!(downward_field(&p, path), want, "{path}");
        }
    }

    #[test]
    fn resource_field_refs_divide_round_up_and_name_other_containers() {
        let p = pod();
        let app = &p.spec.as_ref().unwrap().containers[0];
        for (container, resource, divisor, want) in [
            (None, "limits.cpu", None, "1500m"),
            (None, "limits.cpu", Some("1"), "2"),
            (None, "requests.cpu", Some("1m"), "250"),
            (None, "limits.memory", Some("1Mi"), "1024"),
            (Some("side"), "limits.memory", Some("1Mi"), "64"),
            (Some(""), "limits.memory", Some("1Gi"), "1"),
            (None, "requests.memory", None, "0"),
        ] {
            assert_eq!(
                resource_field(&p, app, container, resource, divisor),
                want,
                "{container:?} {resource} {divisor:?}"
            );
        }
    }

    #[test]
    fn quantities_parse_in_kubernetes_notation() {
        for (q, want) in
            [("500m", Some(0.5)), ("1Gi", Some(1073741824.0)), ("2", Some(2.0)), ("1k", Some(1000.0)), ("x", None)]
        {
            assert_eq!(parse_quantity(q), want, "{q}");
        }
    }
}
