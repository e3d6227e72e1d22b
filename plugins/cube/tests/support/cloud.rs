//! A tiny in-memory Cube + UNet + UDisk service, with injectable faults, to drive the provider's
//! lifecycle natively. (The full simulator lives in tests/cube-sim and is used end to end.)

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Answer, FakeHost, fail, ok, returned};

pub enum Fault {
    /// Answer this instead of acting.
    Answer(Answer),
    /// Act, then lose the answer (timeout).
    ActThenLose,
}

#[derive(Debug, Clone)]
pub struct Inst {
    pub cube_id: String,
    pub uid: String,
    pub group: String,
    pub yaml: String,
    pub deleted: bool,
    pub terminating: bool,
    pub eip: Option<String>,
    pub renewals: u32,
}

#[derive(Debug, Clone)]
pub struct Eip {
    pub id: String,
    pub ip: String,
    pub name: String,
    pub bound: Option<String>,
    pub released: bool,
}

#[derive(Default)]
pub struct Cloud {
    pub instances: Vec<Inst>,
    pub eips: Vec<Eip>,
    pub deleted_disks: Vec<String>,
    pub faults: HashMap<String, VecDeque<Fault>>,
    /// Deleted instances stay visible (Terminating) for this many lookups.
    pub linger: u32,
    /// Page size cap of ListCubePod.
    pub page_cap: usize,
}

pub type Shared = Rc<RefCell<Cloud>>;

impl Cloud {
    pub fn live(&self) -> Vec<&Inst> {
        self.instances.iter().filter(|i| !i.deleted).collect()
    }

    pub fn fault(&mut self, action: &str, f: Fault) {
        self.faults.entry(action.into()).or_default().push_back(f);
    }

    fn find(&mut self, p: &BTreeMap<String, String>) -> Option<&mut Inst> {
        let linger = &mut self.linger;
        let inst = self.instances.iter_mut().find(|i| {
            !i.deleted
                && (p.get("CubeId") == Some(&i.cube_id) || (p.get("CubeId").is_none() && p.get("Uid") == Some(&i.uid)))
        })?;
        if inst.terminating {
            if *linger == 0 {
                inst.deleted = true;
                return None;
            }
            *linger -= 1;
        }
        Some(inst)
    }

    fn handle(&mut self, a: &str, p: &BTreeMap<String, String>) -> Answer {
        match a {
            "GetCubePod" => match self.find(p) {
                Some(i) => {
                    let phase = if i.terminating { "Terminating" } else { "Running" };
                    ok(a, json!({"Pod": returned(&i.yaml, &i.cube_id, phase)}))
                }
                None => fail(a, 8202, "Cube instance not found"),
            },
            "CreateCubePod" => {
                let yaml = String::from_utf8(B64.decode(&p["Pod"]).unwrap()).unwrap();
                let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
                let uid = doc["metadata"]["uid"].as_str().unwrap().to_string();
                if let Some(i) = self.instances.iter().find(|i| !i.deleted && i.uid == uid) {
                    return ok(a, json!({"CubeId": i.cube_id, "Pod": returned(&i.yaml, &i.cube_id, "Pending")}));
                }
                let cube_id = format!("cube-{}", self.instances.len() + 1);
                self.instances.push(Inst {
                    cube_id: cube_id.clone(),
                    uid,
                    group: p.get("Group").cloned().unwrap_or_default(),
                    yaml: yaml.clone(),
                    deleted: false,
                    terminating: false,
                    eip: None,
                    renewals: 0,
                });
                ok(a, json!({"CubeId": cube_id, "Pod": returned(&yaml, &cube_id, "Pending")}))
            }
            "RenewCubePod" => {
                let yaml = String::from_utf8(B64.decode(&p["Pod"]).unwrap()).unwrap();
                match self.find(p) {
                    Some(i) => {
                        i.yaml = yaml;
                        i.renewals += 1;
                        ok(a, json!({"Pod": returned(&i.yaml, &i.cube_id, "Running")}))
                    }
                    None => fail(a, 8202, "Cube instance not found"),
                }
            }
            "DeleteCubePod" => {
                let release = p.get("ReleaseEIP").map(String::as_str) == Some("true");
                let linger = self.linger;
                let Some(i) = self.find(p) else { return fail(a, 8202, "Cube instance not found") };
                if linger > 0 {
                    i.terminating = true;
                } else {
                    i.deleted = true;
                }
                if let Some(eip) = i.eip.take()
                    && let Some(e) = self.eips.iter_mut().find(|e| e.id == eip)
                {
                    e.bound = None;
                    e.released = release;
                }
                ok(a, json!({}))
            }
            "ListCubePod" => {
                let offset: usize = p.get("Offset").map(|s| s.parse().unwrap()).unwrap_or(0);
                let limit: usize = p.get("Limit").map(|s| s.parse().unwrap()).unwrap_or(20).min(self.page_cap.max(1));
                let matching: Vec<&Inst> = self
                    .instances
                    .iter()
                    .filter(|i| !i.deleted && p.get("Group").is_none_or(|g| *g == i.group))
                    .collect();
                let pods: Vec<String> = matching
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|i| returned(&i.yaml, &i.cube_id, "Running"))
                    .collect();
                ok(a, json!({"Pods": pods, "TotalCount": matching.len()}))
            }
            "AllocateEIP" => {
                let n = self.eips.len() + 1;
                let e = Eip {
                    id: format!("eip-{n}"),
                    ip: format!("106.75.0.{n}"),
                    name: p.get("Name").cloned().unwrap_or_default(),
                    bound: None,
                    released: false,
                };
                self.eips.push(e.clone());
                ok(a, json!({"EIPSet": [{"EIPId": e.id, "EIPAddr": [{"IP": e.ip, "OperatorName": "Bgp"}]}]}))
            }
            "DescribeEIP" => {
                let set: Vec<Value> = self
                    .eips
                    .iter()
                    .filter(|e| !e.released && p.get("EIPIds.0").is_none_or(|id| *id == e.id))
                    .map(|e| json!({"EIPId": e.id, "Name": e.name, "EIPAddr": [{"IP": e.ip, "OperatorName": "Bgp"}], "Status": if e.bound.is_some() {"used"} else {"free"}}))
                    .collect();
                ok(a, json!({"EIPSet": set, "TotalCount": set.len()}))
            }
            "BindEIP" => {
                assert_eq!(p["ResourceType"], "cube");
                let (id, res) = (p["EIPId"].clone(), p["ResourceId"].clone());
                let Some(e) = self.eips.iter_mut().find(|e| e.id == id && !e.released) else {
                    return fail(a, 4001, "EIP not found");
                };
                if e.bound.is_some() {
                    return fail(a, 4155, "EIP already bound");
                }
                e.bound = Some(res.clone());
                if let Some(i) = self.instances.iter_mut().find(|i| i.cube_id == res) {
                    i.eip = Some(id);
                }
                ok(a, json!({}))
            }
            "UnBindEIP" => {
                let id = p["EIPId"].clone();
                if let Some(e) = self.eips.iter_mut().find(|e| e.id == id) {
                    e.bound = None;
                }
                for i in self.instances.iter_mut().filter(|i| i.eip.as_deref() == Some(&id)) {
                    i.eip = None;
                }
                ok(a, json!({}))
            }
            "ReleaseEIP" => {
                let id = p["EIPId"].clone();
                match self.eips.iter_mut().find(|e| e.id == id) {
                    Some(e) => {
                        e.released = true;
                        ok(a, json!({}))
                    }
                    None => fail(a, 4001, "EIP not found"),
                }
            }
            "GrantFirewall" => {
                assert_eq!(p["ResourceType"], "cube");
                ok(a, json!({}))
            }
            "GetCubeExtendInfo" => {
                let id = p["CubeIds"].clone();
                let info: Vec<Value> = self
                    .instances
                    .iter()
                    .filter(|i| !i.deleted && i.cube_id == id)
                    .map(|i| {
                        let eips: Vec<Value> = i
                            .eip
                            .iter()
                            .filter_map(|eid| self.eips.iter().find(|e| &e.id == eid))
                            .map(|e| json!({"EIPId": e.id, "EIPAddr": [{"IP": e.ip, "OperatorName": "Bgp"}]}))
                            .collect();
                        json!({"CubeId": i.cube_id, "Eip": eips})
                    })
                    .collect();
                ok(a, json!({"ExtendInfo": info}))
            }
            "DeleteUDisk" => {
                self.deleted_disks.push(p["UDiskId"].clone());
                ok(a, json!({}))
            }
            "GetCubeToken" => match self.find(p) {
                Some(_) => ok(a, json!({"Token": "tok-logs"})),
                None => fail(a, 8202, "Cube instance not found"),
            },
            "GetCubeExecToken" => match self.find(p) {
                Some(_) => ok(
                    a,
                    json!({"Token": "tok-exec", "TerminalUrl": "ws://127.0.0.1:18080/cube-stream/exec?token=tok-exec"}),
                ),
                None => fail(a, 8202, "Cube instance not found"),
            },
            "GetCubeMetrics" => {
                let sets: Vec<Value> = (0..4)
                    .map(|i| {
                        let name = &p[&format!("MetricName.{i}")];
                        json!({"MetricName": name, "Values": [{"Timestamp": 100, "Value": 1}, {"Timestamp": 160, "Value": (i + 1) * 1000}]})
                    })
                    .collect();
                ok(a, json!({"DataSets": sets}))
            }
            other => fail(other, 161, "Action not found"),
        }
    }
}

/// A host whose HTTP goes to a fresh in-memory cloud.
pub fn host() -> (FakeHost, Shared) {
    let cloud: Shared = Rc::new(RefCell::new(Cloud { page_cap: 100, ..Default::default() }));
    let c = cloud.clone();
    let host = FakeHost::new(move |a, p| {
        let mut cloud = c.borrow_mut();
        match cloud.faults.get_mut(a).and_then(VecDeque::pop_front) {
            Some(Fault::Answer(answer)) => answer,
            Some(Fault::ActThenLose) => {
                let _ = cloud.handle(a, p);
                Err(cube_provider::api::HttpError::Timeout)
            }
            None => cloud.handle(a, p),
        }
    });
    (host, cloud)
}
