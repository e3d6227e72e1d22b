//! The virtual node Cube offers (N1, N3, N4, N8): what the plugin is, its config check, and the
//! node's capacity, labels and condition. Static: describing the node costs no API call.

use crate::config::NodeConfig;
use crate::error::ProviderError;
use crate::sizes::{LARGEST, format_memory};
use vk_provider_sdk::{NodeCondition, NodeOffer, kv};

pub const NAME: &str = "cube";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const CONTRACT_VERSION: &str = vk_provider_sdk::CONTRACT_VERSION;
pub const DESCRIPTION: &str = "UCloud Cube serverless containers: every pod on the virtual node is a Cube instance";

/// Checks a node's provider config; returns it normalised (defaults filled in).
pub fn validate_config(config: &str) -> Result<String, ProviderError> {
    Ok(NodeConfig::parse(config)?.to_json())
}

/// Capacity is what `max_pods` pods of the largest size would take; every pod is its own instance.
pub fn describe(config: &NodeConfig) -> NodeOffer {
    let pods = u64::from(config.max_pods);
    let capacity = vec![
        kv("cpu", format!("{}", pods * LARGEST.cpu_millis / 1000)),
        kv("memory", format_memory(pods * LARGEST.memory_bytes())),
        kv("pods", pods.to_string()),
        kv("ephemeral-storage", format_memory(pods * crate::restrictions::MAX_EPHEMERAL_BYTES)),
    ];
    let mut labels = vec![
        kv("topology.kubernetes.io/region", &config.region),
        kv("topology.kubernetes.io/zone", &config.zone),
        kv("node.kubernetes.io/instance-type", "cube"),
        kv("cube.ucloud.cn/vpc-id", &config.vpc_id),
        kv("cube.ucloud.cn/subnet-id", &config.subnet_id),
    ];
    labels.push(kv("cube.ucloud.cn/cluster-ip-support", config.cluster_ip_support.to_string()));
    NodeOffer {
        allocatable: capacity.clone(),
        capacity,
        labels,
        taints: vec![],
        conditions: vec![NodeCondition {
            kind: "Ready".into(),
            status: "True".into(),
            reason: "CubeReady".into(),
            message: format!("Cube in {} (zone {}) accepts pods of sizes up to {LARGEST}", config.region, config.zone),
        }],
        operating_system: "linux".into(),
        architecture: "amd64".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_max_pods_of_the_largest_size() {
        let mut json = crate::config::tests::minimal();
        json["max_pods"] = serde_json::json!(10);
        let offer = describe(&NodeConfig::parse(&json.to_string()).unwrap());
        let get = |k: &str| offer.capacity.iter().find(|c| c.key == k).unwrap().value.clone();
        assert_eq!((get("cpu"), get("memory"), get("pods")), ("80".into(), "160Gi".into(), "10".into()));
        assert!(offer.labels.contains(&kv("topology.kubernetes.io/zone", "cn-bj2-05")));
        assert_eq!(offer.conditions[0].kind, "Ready");
        assert_eq!((offer.operating_system.as_str(), offer.architecture.as_str()), ("linux", "amd64"));
    }

    #[test]
    fn validate_config_returns_the_normalised_config_or_names_the_key() {
        let out = validate_config(&crate::config::tests::minimal().to_string()).unwrap();
        assert!(out.contains("\"max_pods\":200"));
        let err = validate_config("{\"region\": 1}").unwrap_err();
        assert!(matches!(err, ProviderError::Invalid(ref i) if i.field == "config.region"), "{err:?}");
    }
}
