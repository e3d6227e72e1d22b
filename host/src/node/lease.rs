//! Leases: the node heartbeat Lease in `kube-node-lease` (what the controller-manager watches to
//! decide the node is alive) and the election Lease that lets one replica of several act.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Node heartbeat: renewed every 10 s, valid for 40 s (the kubelet's figures).
pub const NODE_LEASE_SECONDS: i32 = 40;
pub const NODE_LEASE_RENEW: Duration = Duration::from_secs(10);
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Creates or renews the node's heartbeat Lease, owned by the Node so it goes with it.
pub async fn renew_node_lease(client: &Client, node: &str, node_uid: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let patch = json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": now}});
    match leases.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {
                    "name": node,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
                },
                "spec": {"holderIdentity": node, "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": now},
            }))
            .expect("lease object");
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Outcome of one attempt to take or keep an election Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We hold it until at least the renew deadline.
    Held,
    /// Someone else holds a live claim.
    HeldBy(String),
}

/// One step of leader election on Lease `name`: take it when free or expired, renew it when ours.
/// Optimistic concurrency (resourceVersion) makes two replicas racing for it end with one winner.
pub async fn try_claim(
    client: &Client,
    namespace: &str,
    name: &str,
    identity: &str,
    duration_seconds: u32,
) -> Result<Claim, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let now = Timestamp::now();
    let spec = |transitions: i32, acquire: Option<MicroTime>| {
        json!({
            "holderIdentity": identity,
            "leaseDurationSeconds": duration_seconds,
            "renewTime": MicroTime(now),
            "acquireTime": acquire.unwrap_or(MicroTime(now)),
            "leaseTransitions": transitions,
        })
    };
    let Some(current) = leases.get_opt(name).await? else {
        let lease: Lease =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec(0, None)})).expect("lease");
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Claim::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Claim::HeldBy("another replica".into())),
            Err(e) => Err(e),
        };
    };
    let s = current.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let expired = match (&s.renew_time, s.lease_duration_seconds) {
        (Some(renew), Some(d)) => {
            let until = renew.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(d as i64)).unwrap_or(renew.0);
            until < now
        }
        _ => true,
    };
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(Claim::HeldBy(holder));
    }
    let transitions = s.lease_transitions.unwrap_or(0) + if holder == identity { 0 } else { 1 };
    let acquire = if holder == identity { s.acquire_time.clone() } else { None };
    let mut next = current.clone();
    next.spec = Some(serde_json::from_value(spec(transitions, acquire)).expect("lease spec"));
    match leases.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Claim::Held),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Claim::HeldBy("another replica".into())),
        Err(e) => Err(e),
    }
}

/// Gives up an election Lease we hold, so a standby takes over at once (graceful shutdown).
pub async fn release(client: &Client, namespace: &str, name: &str, identity: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    if let Some(current) = leases.get_opt(name).await? {
        if current.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(identity) {
            let patch = json!({"spec": {"holderIdentity": null, "renewTime": null}});
            leases.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }
    Ok(())
}
