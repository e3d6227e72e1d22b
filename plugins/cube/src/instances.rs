//! The Cube instance of a pod: create (idempotent by pod UID, never repeated blindly), update
//! (RenewCubePod when the pod changed, e.g. a fresh token), delete (EIP release per annotation,
//! UDisks too when the node goes), status and list.

use serde_json::Value;

use crate::annotations::{self, EIP_ADDRESS, EIP_ID};
use crate::api::{Client, Params};
use crate::config::NodeConfig;
use crate::contract::{
    CallContext, DeleteReason, Deletion, Event, Instance, PodOutcome, PodRef, PodStatus, ResolvedPod,
};
use crate::cube_pod::{NODE_ANNOTATION, Returned, SPEC_HASH_ANNOTATION};
use crate::eip::{self, BoundEip};
use crate::error::ProviderError;
use crate::host::{Host, Level};
use crate::status::pod_status;
use crate::translate::{CreateRequest, translate_with};

/// ListCubePod page size (the service's maximum).
const PAGE: usize = 100;
/// `store` key prefix of UDisks to delete once their instance is gone (node deletion): an
/// obligation, so it is kept where a restart or a failover of the daemon does not lose it.
const DISKS_KEY: &str = "cube/disks-to-delete/";

/// The Cube service as seen from one virtual node.
pub struct Cube<'h, H: Host + ?Sized> {
    pub host: &'h H,
    pub config: NodeConfig,
    pub node: String,
    pub client: Client<'h, H>,
}

impl<'h, H: Host + ?Sized> Cube<'h, H> {
    pub fn new(host: &'h H, ctx: &CallContext) -> Result<Self, ProviderError> {
        let config = NodeConfig::parse(&ctx.config)?;
        let client = Client::new(host, &config.api_url, &config.public_key, &config.private_key);
        Ok(Cube { host, config, node: ctx.node_name.clone(), client })
    }

    /// Region, Zone and ProjectId: every Cube call takes them.
    pub fn common(&self) -> Params {
        Params::new()
            .set("Region", &self.config.region)
            .set("Zone", &self.config.zone)
            .set_opt("ProjectId", self.config.project_id.as_deref())
    }

    /// The instance made for a pod UID, if any.
    pub fn find(&self, uid: &str) -> Result<Option<(String, Returned)>, ProviderError> {
        self.get(&self.common().set("Uid", uid))
    }

    fn get(&self, params: &Params) -> Result<Option<(String, Returned)>, ProviderError> {
        match self.client.call("GetCubePod", params) {
            Ok(v) => {
                let pod = decode_pod(&v)?;
                match pod {
                    Some(p) => Ok(Some((p.metadata.cube_id.clone(), p))),
                    None => Ok(None),
                }
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn create(&self, resolved: &ResolvedPod) -> Result<PodOutcome, ProviderError> {
        let req = translate_with(&self.node, &self.config, resolved)?;
        let uid = req.pod_ref.uid.clone();
        let (cube_id, pod, created) = match self.find(&uid)? {
            Some((id, pod)) => (id, pod, false),
            None => {
                let params = Params::from_map(req.params.clone());
                match self.client.create("CreateCubePod", &params) {
                    Ok(v) => {
                        let id = v.get("CubeId").and_then(Value::as_str).unwrap_or_default().to_string();
                        if id.is_empty() {
                            return Err(ProviderError::Internal(format!(
                                "CreateCubePod answered without a CubeId: {v}"
                            )));
                        }
                        let pod = decode_pod(&v)?.unwrap_or_default();
                        (id, pod, true)
                    }
                    Err(e) if e.answer_lost() => {
                        // The instance may exist: look it up by the pod UID before anything else.
                        match self.find(&uid)? {
                            Some((id, pod)) => (id, pod, true),
                            None => {
                                return Err(ProviderError::Transient(format!(
                                    "{e}; no instance exists for pod uid {uid}, the create will be retried"
                                )));
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.host.log(
            Level::Info,
            "cube instance ready",
            &[
                ("pod", &req.pod_ref.to_string()),
                ("cube_id", &cube_id),
                ("created", if created { "true" } else { "false" }),
            ],
        );
        let bound = match &req.settings.eip {
            Some(settings) => Some(self.ensure_eip(&req, &cube_id, settings)?),
            None => None,
        };
        Ok(self.outcome(&req, cube_id, &pod, bound, created))
    }

    /// Binds the pod's EIP unless one is bound already; when that fails the instance is deleted
    /// too, so nothing billed is left behind.
    fn ensure_eip(
        &self,
        req: &CreateRequest,
        cube_id: &str,
        settings: &annotations::EipSettings,
    ) -> Result<BoundEip, ProviderError> {
        let common = self.common();
        if let Some(bound) = eip::bound_to(&self.client, &common, cube_id)? {
            return Ok(bound);
        }
        eip::attach(
            &self.client,
            &common,
            cube_id,
            settings,
            &self.config.eip_operator,
            req.settings.tag.as_deref(),
            &req.pod_ref.uid,
        )
        .inspect_err(|e| {
            self.host.log(
                Level::Warn,
                "EIP failed; deleting the instance",
                &[("pod", &req.pod_ref.to_string()), ("cube_id", cube_id), ("error", &e.to_string())],
            );
            let _ =
                self.client.call("DeleteCubePod", &common.clone().set("CubeId", cube_id).set("ReleaseEIP", "false"));
        })
    }

    fn outcome(
        &self,
        req: &CreateRequest,
        cube_id: String,
        pod: &Returned,
        eip: Option<BoundEip>,
        created: bool,
    ) -> PodOutcome {
        let mut annotations = req.annotations.clone();
        let mut events = req.events.clone();
        if created {
            events.push(Event::normal("CubeCreated", format!("created Cube instance {cube_id} of size {}", req.size)));
        }
        if let Some(e) = eip {
            annotations.push((EIP_ID.into(), e.id.clone()));
            if let Some(addr) = &e.address {
                annotations.push((EIP_ADDRESS.into(), addr.clone()));
            }
            if created {
                events.push(Event::normal(
                    "EIPBound",
                    format!("EIP {} ({}) bound to {cube_id}", e.id, e.address.as_deref().unwrap_or("no address yet")),
                ));
            }
        }
        PodOutcome { instance_id: cube_id, status: pod_status(pod), annotations, events }
    }

    /// Renews the instance when the pod changed (a fresh token, other images or env), nothing else.
    pub fn update(&self, resolved: &ResolvedPod) -> Result<PodOutcome, ProviderError> {
        let req = translate_with(&self.node, &self.config, resolved)?;
        let Some((cube_id, current)) = self.find(&req.pod_ref.uid)? else {
            return Err(ProviderError::NotFound(format!(
                "no Cube instance for pod {} (uid {})",
                req.pod_ref, req.pod_ref.uid
            )));
        };
        let mut events = Vec::new();
        let pod = if current.annotation(SPEC_HASH_ANNOTATION) == Some(req.spec_hash.as_str()) {
            current
        } else {
            let params = self.common().set("CubeId", &cube_id).set("Pod", &req.params["Pod"]);
            let v = self.client.call("RenewCubePod", &params)?;
            events.push(Event::normal("CubeRenewed", format!("renewed Cube instance {cube_id} with the changed pod")));
            decode_pod(&v)?.unwrap_or(current)
        };
        let eip = match &req.settings.eip {
            Some(_) => eip::bound_to(&self.client, &self.common(), &cube_id)?,
            None => None,
        };
        let mut out = self.outcome(&req, cube_id, &pod, eip, false);
        out.events = events;
        Ok(out)
    }

    pub fn delete(&self, pod: &PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError> {
        let Some((cube_id, current)) = self.find(&pod.uid)? else {
            self.delete_pending_disks(&pod.uid)?;
            return Err(ProviderError::NotFound(format!("no Cube instance for pod {pod} (uid {})", pod.uid)));
        };
        let release = current.annotation(&format!("{}cube-eip-release", annotations::PREFIX)) != Some("false");
        let disks = if reason == DeleteReason::NodeDeleted && self.config.delete_disks_with_node {
            current.udisk_ids()
        } else {
            vec![]
        };
        if !disks.is_empty() {
            // Remembered first: the disks go once the instance is gone, possibly in a later call,
            // possibly in another process. Not remembered, the instance is not deleted yet.
            self.host.store_set(&format!("{DISKS_KEY}{}", pod.uid), disks.join(",").as_bytes()).map_err(|why| {
                ProviderError::Transient(format!("recording the UDisks of pod {pod} to delete after it: {why}"))
            })?;
        }
        let params = self.common().set("CubeId", &cube_id).set("ReleaseEIP", if release { "true" } else { "false" });
        match self.client.call("DeleteCubePod", &params) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.host.log(Level::Info, "deleted cube instance", &[("pod", &pod.to_string()), ("cube_id", &cube_id)]);
        if self.get(&self.common().set("CubeId", &cube_id))?.is_some() {
            return Ok(Deletion::InProgress);
        }
        self.delete_pending_disks(&pod.uid)?;
        Ok(Deletion::Gone)
    }

    /// Deletes the UDisks remembered for a pod whose instance is gone.
    fn delete_pending_disks(&self, uid: &str) -> Result<(), ProviderError> {
        let key = format!("{DISKS_KEY}{uid}");
        let Some(raw) = self.host.store_get(&key) else { return Ok(()) };
        let ids = String::from_utf8_lossy(&raw).to_string();
        for id in ids.split(',').filter(|s| !s.is_empty()) {
            match self.client.call("DeleteUDisk", &self.common().set("UDiskId", id)) {
                Ok(_) => self.host.log(Level::Info, "deleted UDisk of a deleted node's pod", &[("udisk", id)]),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.host
            .store_delete(&key)
            .map_err(|why| ProviderError::Transient(format!("forgetting the deleted UDisks of pod {uid}: {why}")))?;
        Ok(())
    }

    pub fn status(&self, pod: &PodRef) -> Result<PodStatus, ProviderError> {
        match self.find(&pod.uid)? {
            Some((_, p)) => Ok(pod_status(&p)),
            None => {
                self.delete_pending_disks(&pod.uid)?;
                Err(ProviderError::NotFound(format!("no Cube instance for pod {pod} (uid {})", pod.uid)))
            }
        }
    }

    /// Every instance this node made (its group, its node annotation).
    pub fn list(&self) -> Result<Vec<Instance>, ProviderError> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let params = self.common().set("Group", &self.node).set("Offset", offset).set("Limit", PAGE);
            let v = self.client.call("ListCubePod", &params)?;
            let pods = v.get("Pods").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = v.get("TotalCount").and_then(Value::as_u64).unwrap_or(0) as usize;
            for raw in &pods {
                let Some(text) = raw.as_str() else { continue };
                let p = Returned::decode(text).map_err(ProviderError::Internal)?;
                if p.annotation(NODE_ANNOTATION) != Some(self.node.as_str()) {
                    continue;
                }
                out.push(Instance {
                    pod: PodRef {
                        namespace: p.metadata.namespace.clone(),
                        name: p.metadata.name.clone(),
                        uid: p.metadata.uid.clone(),
                    },
                    instance_id: p.metadata.cube_id.clone(),
                    status: pod_status(&p),
                });
            }
            offset += pods.len();
            if pods.is_empty() || offset >= total {
                return Ok(out);
            }
        }
    }
}

/// The `Pod` of a GetCubePod/CreateCubePod/RenewCubePod answer.
fn decode_pod(v: &Value) -> Result<Option<Returned>, ProviderError> {
    match v.get("Pod").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Returned::decode(s).map(Some).map_err(ProviderError::Internal),
        _ => Ok(None),
    }
}
