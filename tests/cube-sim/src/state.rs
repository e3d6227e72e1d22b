//! The simulated cloud's records: Cube instances, EIPs, disks, firewall bindings, stream
//! tokens and request counts, behind one lock, optionally saved to a JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::podspec::CubePod;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub cube_id: String,
    pub uid: Option<String>,
    pub region: String,
    pub zone: String,
    pub project_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub group: Option<String>,
    pub deployment_id: Option<String>,
    pub name: String,
    pub tag: String,
    pub charge_type: String,
    pub quantity: i64,
    pub cpu_platform: String,
    pub pod: CubePod,
    pub created_at: DateTime<Utc>,
    /// When the containers last (re)started: create, reboot or renew.
    pub started_at: DateTime<Utc>,
    /// Restarts caused by RebootCubePod (added to every container's restart count).
    pub reboots: u32,
    pub pod_ip: String,
    pub eip_id: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When DeleteCubePod was called on an instance that takes `lifecycle.deleting_ms` to go.
    #[serde(default)]
    pub deleting_since: Option<DateTime<Utc>>,
}

impl Instance {
    pub fn live(&self) -> bool {
        self.deleted_at.is_none()
    }

    /// Billed seconds: from the start of the instance until now or its deletion.
    pub fn billing_seconds(&self, now: DateTime<Utc>) -> i64 {
        let end = self.deleted_at.unwrap_or(now);
        (end - self.created_at).num_seconds().max(0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Eip {
    pub eip_id: String,
    pub ip: String,
    pub region: String,
    pub operator_name: String,
    pub bandwidth: i64,
    pub pay_mode: String,
    pub charge_type: String,
    pub share_bandwidth_id: Option<String>,
    pub name: String,
    pub tag: String,
    pub created_at: DateTime<Utc>,
    /// (ResourceType, ResourceId) it is bound to.
    pub bound_to: Option<(String, String)>,
    pub released: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disk {
    pub udisk_id: String,
    pub name: String,
    pub size_gb: i64,
    pub disk_type: String,
    pub region: String,
    pub zone: String,
    pub created_at: DateTime<Utc>,
    /// The Cube instance that mounts it.
    pub attached_to: Option<String>,
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FirewallBinding {
    pub fw_id: String,
    pub resource_type: String,
    pub resource_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum TokenKind {
    Logs,
    Exec,
}

#[derive(Debug, Clone)]
pub struct StreamToken {
    pub kind: TokenKind,
    pub cube_id: String,
    pub container: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub instances: BTreeMap<String, Instance>,
    pub eips: BTreeMap<String, Eip>,
    pub disks: BTreeMap<String, Disk>,
    pub firewalls: Vec<FirewallBinding>,
    /// Requests seen per action (every answered request, errors included).
    pub requests: BTreeMap<String, u64>,
    /// The same per `PublicKey` (as sent, before authentication): which client made which calls.
    #[serde(default)]
    pub requests_by_key: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    pub next_ip: u32,
    #[serde(skip)]
    pub tokens: BTreeMap<String, StreamToken>,
}

impl State {
    pub fn load(path: &Path) -> anyhow::Result<State> {
        if !path.exists() {
            return Ok(State::default());
        }
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Serialises the records (not tokens) for `save_to`.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn live_instance_by_uid(&self, uid: &str) -> Option<&Instance> {
        self.instances.values().find(|i| i.live() && i.uid.as_deref() == Some(uid))
    }

    /// Instances whose deletion has taken `deleting_ms` by `now` are gone.
    pub fn settle(&mut self, now: DateTime<Utc>, deleting_ms: u64) {
        for inst in self.instances.values_mut() {
            if let (None, Some(since)) = (inst.deleted_at, inst.deleting_since) {
                let gone_at = since + chrono::Duration::milliseconds(deleting_ms as i64);
                if now >= gone_at {
                    inst.deleted_at = Some(gone_at);
                }
            }
        }
    }

    pub fn next_counter(&mut self) -> u32 {
        self.next_ip += 1;
        self.next_ip
    }
}

/// Writes atomically (temp file + rename) so a crash never leaves half a file.
pub fn save_to(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// A cloud-style id: prefix plus 8 lowercase letters/digits.
pub fn new_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..8).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect();
    format!("{prefix}-{tail}")
}

pub fn new_token() -> String {
    let mut rng = rand::rng();
    let bytes: [u8; 20] = rng.random();
    hex::encode(bytes)
}

pub fn new_uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[16..20], &h[20..32])
}
