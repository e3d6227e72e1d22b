//! Virtual node names (`<cluster-id>-vk-<5 random letters/digits>`) and the identity labels that
//! let the daemon find its node again after a restart instead of minting a new name.

use rand::Rng;

/// Label holding the cluster id on every virtual node of this daemon.
pub const CLUSTER_LABEL: &str = "vkcube.io/cluster-id";
/// Label holding the config's node id: with the cluster label it identifies the node.
pub const NODE_ID_LABEL: &str = "vkcube.io/node-id";
/// The label every virtual node carries (guide: pods select it with `nodeSelector`).
pub const TYPE_LABEL: (&str, &str) = ("type", "virtual-kubelet");
/// The taint key every virtual node carries.
pub const PROVIDER_TAINT: &str = "virtual-kubelet.io/provider";

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh node name for a cluster, e.g. `uk8s-a1b2c3d4-vk-x7k2p`.
pub fn new_node_name(cluster_id: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{cluster_id}-vk-{suffix}")
}

/// Whether `name` has the shape of a virtual node name of `cluster_id`.
pub fn is_node_name_of(cluster_id: &str, name: &str) -> bool {
    name.strip_prefix(cluster_id)
        .and_then(|rest| rest.strip_prefix("-vk-"))
        .is_some_and(|s| s.len() == 5 && s.bytes().all(|b| ALPHABET.contains(&b)))
}

/// The label selector that finds the node with config id `node_id`.
pub fn identity_selector(cluster_id: &str, node_id: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster_id},{NODE_ID_LABEL}={node_id}")
}

/// Name of the election Lease of a config node.
pub fn election_lease_name(cluster_id: &str, node_id: &str) -> String {
    format!("vkcube-{cluster_id}-{node_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_guide_pattern() {
        for _ in 0..100 {
            let name = new_node_name("uk8s-a1b2c3d4");
            assert!(is_node_name_of("uk8s-a1b2c3d4", &name), "{name}");
            assert_eq!(name.len(), "uk8s-a1b2c3d4-vk-".len() + 5);
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        assert!(!is_node_name_of("uk8s-a1b2c3d4", "uk8s-a1b2c3d4-vk-ABCDE"));
        assert!(!is_node_name_of("uk8s-a1b2c3d4", "uk8s-zzzzzzzz-vk-abcde"));
        assert!(!is_node_name_of("uk8s-a1b2c3d4", "uk8s-a1b2c3d4-vk-abcdef"));
    }
}
