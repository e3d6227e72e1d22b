//! The Cube instance of a pod: plan (what create would send), create (idempotent by pod UID,
//! never repeated blindly), update (RenewCubePod when the pod changed, e.g. a fresh token or
//! mounted files), delete (EIP release per annotation, UDisks too when the node goes, finished by
//! finalize), status and list.

use serde_json::Value;

use serde::{Deserialize, Serialize};
use vk_provider_sdk::{
    CallContext, ContainerEnv, CreateAttempt, CreatePlan, DeleteReason, Deletion, Event, Instance, NotApplied,
    PendingDeletion, Pod, PodChange, PodOutcome, PodRef, PodStatus, ResolvedPod, UpdateOutcome, kv,
};

use crate::annotations::{self, EIP_ADDRESS, EIP_ID};
use crate::api::{Client, Params};
use crate::config::NodeConfig;
use crate::cube_pod::{NODE_ANNOTATION, Returned, SPEC_HASH_ANNOTATION};
use crate::eip::{self, BoundEip};
use crate::error::ProviderError;
use crate::host::{Host, Level};
use crate::status::pod_status;
use crate::translate::{CreateRequest, translate_with};

/// ListCubePod page size (the service's maximum).
const PAGE: usize = 100;
/// `store` key prefix of UDisks to delete once their instance is gone, for the deletions whose
/// disks do not fit in a pending deletion (and those begun by Cube on contract 0.1, which kept
/// every such list there).
const DISKS_KEY: &str = "cube/disks-to-delete/";
/// The most a pending deletion's `finalize` carries (the contract's cap).
const MAX_FINALIZE_BYTES: usize = 1024;
/// Placeholder in a plan for the CubeId CreateCubePod answers.
pub const PLAN_CUBE_ID: &str = "{CubeId}";
/// Placeholder in a plan for the id AllocateEIP answers.
pub const PLAN_EIP_ID: &str = "{EIPId}";

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

    /// What `create` would send for a pod without an instance, sending nothing: CreateCubePod
    /// exactly as signed and sent, then the EIP's AllocateEIP (unless the pod names its own EIP),
    /// BindEIP and GrantFirewall. Values only an earlier answer gives are placeholders:
    /// [`PLAN_CUBE_ID`] for the instance's CubeId, [`PLAN_EIP_ID`] for an allocated EIP's id.
    pub fn plan(&self, resolved: &ResolvedPod) -> Result<CreatePlan, ProviderError> {
        let req = translate_with(&self.node, &self.config, resolved)?;
        let mut requests = vec![self.client.request("CreateCubePod", &Params::from_map(req.params.clone()))];
        let mut annotations = req.annotations.clone();
        let mut events = req.events.clone();
        events.push(created_event(PLAN_CUBE_ID, &req));
        if let Some(s) = &req.settings.eip {
            let common = self.common();
            let eip_id = match &s.id {
                Some(id) => id.clone(),
                None => {
                    let name = eip::eip_name(&req.pod_ref.uid);
                    let params =
                        eip::allocate_params(&common, s, &self.config.eip_operator, req.settings.tag.as_deref(), &name);
                    requests.push(self.client.request("AllocateEIP", &params));
                    PLAN_EIP_ID.to_string()
                }
            };
            requests.push(self.client.request("BindEIP", &eip::bind_params(&common, PLAN_CUBE_ID, &eip_id)));
            if let Some(fw) = &s.security_group_id {
                requests.push(self.client.request("GrantFirewall", &eip::grant_params(&common, PLAN_CUBE_ID, fw)));
            }
            annotations.push(kv(EIP_ID, &eip_id));
            events.push(eip_bound_event(
                &BoundEip { id: eip_id, address: None, allocated: s.id.is_none() },
                PLAN_CUBE_ID,
            ));
        }
        Ok(CreatePlan { requests: requests.into_iter().map(Into::into).collect(), annotations, events })
    }

    /// Creates the pod's instance, or returns the one its UID already has.
    pub fn create(&self, resolved: &ResolvedPod) -> Result<PodOutcome, ProviderError> {
        self.create_with(resolved, CreateAttempt { may_exist: true })
    }

    /// Creates the pod's instance. With `attempt.may_exist` false the host vouches that no earlier
    /// create for the UID reached Cube, and the lookup that guards against a lost answer is skipped.
    pub fn create_with(&self, resolved: &ResolvedPod, attempt: CreateAttempt) -> Result<PodOutcome, ProviderError> {
        let req = translate_with(&self.node, &self.config, resolved)?;
        let uid = req.pod_ref.uid.clone();
        let existing = if attempt.may_exist { self.find(&uid)? } else { None };
        let (cube_id, pod, created) = match existing {
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
                &[("pod", &req.pod_ref.to_string()), ("cube_id", cube_id), ("error", &e.describe())],
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
            events.push(created_event(&cube_id, req));
        }
        if let Some(e) = eip {
            annotations.push(kv(EIP_ID, &e.id));
            if let Some(addr) = &e.address {
                annotations.push(kv(EIP_ADDRESS, addr));
            }
            if created {
                events.push(eip_bound_event(&e, &cube_id));
            }
        }
        PodOutcome { instance_id: cube_id, status: pod_status(pod), annotations, events }
    }

    /// Applies what changed in a running pod. The instance is renewed (RenewCubePod) when its
    /// Cube pod changed: a fresh token, a changed ConfigMap or Secret the pod mounts as files, other
    /// images. Environment variables are the instance's own: a running container keeps the
    /// environment it started with until the pod is recreated, as under a real kubelet, so a
    /// changed ConfigMap or Secret the pod reads into env is reported not applied
    /// (`EnvChangeNotApplied`) and changes nothing.
    pub fn update(&self, pod: &Pod, changes: &[PodChange]) -> Result<UpdateOutcome, ProviderError> {
        let pod_ref = pod.pod_ref();
        let Some((cube_id, current)) = self.find(&pod_ref.uid)? else {
            return Err(ProviderError::NotFound(format!("no Cube instance for pod {pod_ref} (uid {})", pod_ref.uid)));
        };
        let mut resolved = pod.resolved().clone();
        keep_env(&mut resolved, &current);
        let req = translate_with(&self.node, &self.config, &resolved)?;
        let mut events = Vec::new();
        let renewed = if current.annotation(SPEC_HASH_ANNOTATION) == Some(req.spec_hash.as_str()) {
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
        let mut outcome = self.outcome(&req, cube_id, &renewed, eip, false);
        outcome.events = events;
        Ok(UpdateOutcome { outcome, not_applied: env_not_applied(pod, changes) })
    }

    /// Deletes the pod's instance (releasing its EIP as the annotation says). When the node goes
    /// and the config says so, its UDisks go too, once the instance is gone (they cannot be deleted
    /// while attached): they travel to [`Cube::finalize`] in the pending deletion, which the host
    /// keeps in the cluster until then.
    pub fn delete(&self, pod: &PodRef, reason: DeleteReason) -> Result<Deletion, ProviderError> {
        let Some((cube_id, current)) = self.find(&pod.uid)? else {
            return Err(ProviderError::NotFound(format!("no Cube instance for pod {pod} (uid {})", pod.uid)));
        };
        let release = current.annotation(&format!("{}cube-eip-release", annotations::PREFIX)) != Some("false");
        let disks = if reason == DeleteReason::NodeDeleted && self.config.delete_disks_with_node {
            current.udisk_ids()
        } else {
            vec![]
        };
        let work = Finalize { udisks: disks }.encode();
        if work.len() > MAX_FINALIZE_BYTES {
            // More disks than a pending deletion carries: remembered in the node's store instead,
            // before the instance goes; `status` deletes them once it is gone.
            let key = format!("{DISKS_KEY}{}", pod.uid);
            let ids = Finalize::decode(&work).udisks.join(",");
            self.host.store_set(&key, ids.as_bytes()).map_err(|why| {
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
        let finalize = if work.len() > MAX_FINALIZE_BYTES { vec![] } else { work };
        if !finalize.is_empty() || self.get(&self.common().set("CubeId", &cube_id))?.is_some() {
            // The host polls status until not-found, then calls finalize with the work, even
            // after a restart: no disk is forgotten.
            return Ok(Deletion::InProgress(PendingDeletion { finalize, poll_after_ms: 0 }));
        }
        Ok(Deletion::Gone)
    }

    /// Finishes a deletion once the instance is gone: deletes the UDisks `delete` handed over.
    /// Idempotent: a disk already gone is fine.
    pub fn finalize(&self, pod: &PodRef, work: &[u8]) -> Result<(), ProviderError> {
        let work = Finalize::try_decode(work).map_err(|e| {
            ProviderError::Internal(format!("the pending deletion of pod {pod} carries unreadable work: {e}"))
        })?;
        self.delete_disks(&work.udisks)
    }

    fn delete_disks(&self, ids: &[String]) -> Result<(), ProviderError> {
        for id in ids.iter().filter(|s| !s.is_empty()) {
            match self.client.call("DeleteUDisk", &self.common().set("UDiskId", id)) {
                Ok(_) => self.host.log(Level::Info, "deleted UDisk of a deleted node's pod", &[("udisk", id)]),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes the UDisks remembered in the store for a pod whose instance is gone: a deletion
    /// with more disks than a pending deletion carries, or one begun by Cube on contract 0.1.
    fn delete_stored_disks(&self, uid: &str) -> Result<(), ProviderError> {
        let key = format!("{DISKS_KEY}{uid}");
        let Some(raw) = self.host.store_get(&key) else { return Ok(()) };
        let ids: Vec<String> = String::from_utf8_lossy(&raw).split(',').map(str::to_string).collect();
        self.delete_disks(&ids)?;
        self.host
            .store_delete(&key)
            .map_err(|why| ProviderError::Transient(format!("forgetting the deleted UDisks of pod {uid}: {why}")))?;
        Ok(())
    }

    pub fn status(&self, pod: &PodRef) -> Result<PodStatus, ProviderError> {
        match self.find(&pod.uid)? {
            Some((_, p)) => Ok(pod_status(&p)),
            None => {
                self.delete_stored_disks(&pod.uid)?;
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

/// The `CubeCreated` event.
fn created_event(cube_id: &str, req: &CreateRequest) -> Event {
    Event::normal("CubeCreated", format!("created Cube instance {cube_id} of size {}", req.size))
}

/// The `EIPBound` event.
fn eip_bound_event(e: &BoundEip, cube_id: &str) -> Event {
    Event::normal(
        "EIPBound",
        format!("EIP {} ({}) bound to {cube_id}", e.id, e.address.as_deref().unwrap_or("no address yet")),
    )
}

/// Replaces the pod's resolved environment with the one the instance runs with, container by
/// container, where the instance reports it: a renewal must not change a running container's
/// environment.
fn keep_env(resolved: &mut ResolvedPod, current: &Returned) {
    for (container, vars) in current.container_env() {
        let vars = vars.into_iter().map(|(k, v)| kv(k, v)).collect();
        match resolved.env.iter_mut().find(|e| e.container == container) {
            Some(e) => e.vars = vars,
            None => resolved.env.push(ContainerEnv { container, vars }),
        }
    }
}

/// The changed ConfigMaps and Secrets the pod reads into environment variables: not applied.
fn env_not_applied(pod: &Pod, changes: &[PodChange]) -> Vec<NotApplied> {
    changes
        .iter()
        .filter_map(|change| {
            let uses = match change {
                PodChange::ConfigMap(name) => pod.uses_config_map(name),
                PodChange::Secret(name) => pod.uses_secret(name),
                _ => return None,
            };
            if !uses.env {
                return None;
            }
            let files = if uses.mounted { "; its mounted files were renewed" } else { "" };
            Some(NotApplied {
                change: change.clone(),
                reason: "EnvChangeNotApplied".into(),
                message: format!(
                    "{} changed, but the pod reads it into environment variables: the containers keep their environment until the pod is recreated{files}",
                    change.describe()
                ),
            })
        })
        .collect()
}

/// The work a pending deletion carries to `finalize`, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Finalize {
    /// UDisks to delete once the instance is gone.
    #[serde(default)]
    udisks: Vec<String>,
}

impl Finalize {
    /// Empty when there is nothing to do (the host then does not call `finalize`).
    fn encode(&self) -> Vec<u8> {
        if self.udisks.is_empty() { vec![] } else { serde_json::to_vec(self).expect("finalize work serialises") }
    }
    fn try_decode(bytes: &[u8]) -> Result<Finalize, serde_json::Error> {
        if bytes.is_empty() { Ok(Finalize::default()) } else { serde_json::from_slice(bytes) }
    }
    fn decode(bytes: &[u8]) -> Finalize {
        Finalize::try_decode(bytes).unwrap_or_default()
    }
}
