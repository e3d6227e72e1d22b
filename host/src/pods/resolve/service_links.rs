//! Service links: the docker-style variables the kubelet injects for every Service of the pod's
//! namespace (and `default/kubernetes` always), and what of a Service they read.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The name of the master service, in `default`, whose variables every pod gets.
pub const MASTER_SERVICE: &str = "kubernetes";

/// What [`service_link_env`] reads of `service` (name, namespace, cluster IP, each port's name,
/// number and protocol), or `None` when it gives no variables (headless, no cluster IP, no ports):
/// what a node keeps of the Services it watches.
pub fn linked_service(service: &Service) -> Option<Service> {
    let spec = service.spec.as_ref()?;
    let ip = spec.cluster_ip.as_ref().filter(|ip| !ip.is_empty() && *ip != "None")?;
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol.clone(),
            ..ServicePort::default()
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    Some(Service {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec { cluster_ip: Some(ip.clone()), ports: Some(ports), ..ServiceSpec::default() }),
        status: None,
    })
}

/// Service link variables (`NAME_SERVICE_HOST`, docker-style `NAME_PORT_80_TCP…`), as the
/// kubelet injects them.
pub(super) fn service_link_env(services: &[Service], links: bool, ns: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Service> = services
        .iter()
        .filter(|s| {
            links
                || (s.metadata.name.as_deref() == Some(MASTER_SERVICE)
                    && s.metadata.namespace.as_deref() == Some("default"))
        })
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns) || s.metadata.name.as_deref() == Some(MASTER_SERVICE))
        .collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    for svc in sorted {
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty() && ip != "None") else { continue };
        let name = svc.metadata.name.clone().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((format!("{name}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.port.to_string()));
            }
        }
        let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase();
        out.push((format!("{name}_PORT"), format!("{proto}://{ip}:{}", first.port)));
        for p in &ports {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((prefix.clone(), format!("{}://{ip}:{}", proto.to_lowercase(), p.port)));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                                      "spec": {"clusterIP": ip, "ports": ports}}))
        .unwrap()
    }

    fn keys(env: &[(String, String)]) -> Vec<&str> {
        env.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_service_gives_host_port_and_docker_variables() {
        let s = svc("ns1", "my-db", "10.0.0.9", json!([{"name": "sql", "port": 5432, "protocol": "TCP"}]));
        let env = service_link_env(&[s], true, "ns1");
        assert_eq!(
            env,
            [
                ("MY_DB_SERVICE_HOST", "10.0.0.9"),
                ("MY_DB_SERVICE_PORT", "5432"),
                ("MY_DB_SERVICE_PORT_SQL", "5432"),
                ("MY_DB_PORT", "tcp://10.0.0.9:5432"),
                ("MY_DB_PORT_5432_TCP", "tcp://10.0.0.9:5432"),
                ("MY_DB_PORT_5432_TCP_PROTO", "tcp"),
                ("MY_DB_PORT_5432_TCP_PORT", "5432"),
                ("MY_DB_PORT_5432_TCP_ADDR", "10.0.0.9"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn headless_portless_and_foreign_services_give_nothing_and_links_off_keeps_only_kubernetes() {
        let services = [
            svc("ns1", "headless", "None", json!([{"port": 80}])),
            svc("ns1", "portless", "10.0.0.2", json!([])),
            svc("other", "elsewhere", "10.0.0.3", json!([{"port": 80}])),
            svc("ns1", "web", "10.0.0.4", json!([{"port": 80}])),
            svc("default", "kubernetes", "10.0.0.1", json!([{"name": "https", "port": 443}])),
        ];
        let on = service_link_env(&services, true, "ns1");
        assert!(keys(&on).contains(&"WEB_SERVICE_HOST") && keys(&on).contains(&"KUBERNETES_SERVICE_HOST"));
        assert!(
            !keys(&on)
                .iter()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("PORTLESS") || k.starts_with("ELSEWHERE"))
        );
        let off = service_link_env(&services, false, "ns1");
        assert!(keys(&off).iter().all(|k| k.starts_with("KUBERNETES_")), "{off:?}");
        assert!(keys(&off).contains(&"KUBERNETES_SERVICE_PORT_HTTPS"));
    }

    #[test]
    fn a_kept_service_gives_the_same_variables_and_holds_nothing_else() {
        let full: Service = serde_json::from_value(json!({
            "metadata": {"name": "my-db", "namespace": "ns1", "uid": "u", "resourceVersion": "7",
                         "labels": {"app": "db"}, "annotations": {"big": "x".repeat(1000)},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "type": "ClusterIP",
                     "selector": {"app": "db"}, "sessionAffinity": "None",
                     "ports": [{"name": "sql", "port": 5432, "protocol": "TCP", "targetPort": 15432},
                               {"port": 9000, "protocol": "UDP", "targetPort": "metrics"}]},
            "status": {"loadBalancer": {}}
        }))
        .unwrap();
        let kept = linked_service(&full).unwrap();
        assert_eq!(service_link_env(std::slice::from_ref(&kept), true, "ns1"), service_link_env(&[full], true, "ns1"));
        assert_eq!(
            serde_json::to_value(&kept).unwrap(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-db", "namespace": "ns1"},
                   "spec": {"clusterIP": "10.0.0.9",
                            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}, {"port": 9000, "protocol": "UDP"}]}})
        );
        for gives_nothing in [
            svc("ns1", "headless", "None", json!([{"port": 80}])),
            svc("ns1", "portless", "10.0.0.2", json!([])),
            svc("ns1", "pending", "", json!([{"port": 80}])),
        ] {
            assert!(linked_service(&gives_nothing).is_none(), "{:?} kept", gives_nothing.metadata.name);
        }
    }
}
