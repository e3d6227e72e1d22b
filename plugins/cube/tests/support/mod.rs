//! A scripted stand-in for the host: answers each API call with a closure, records every request
//! (decoded), keeps the node's durable store and a fixed clock.

#![allow(dead_code)]

pub mod cloud;
pub mod tcp;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cube_provider::api::{HttpError, HttpRequest, HttpResponse, Transport};
use cube_provider::host::{Host, Level};
use serde_json::{Value, json};
use vk_provider_sdk::CallContext;

pub const NODE: &str = "uk8s-abcd1234-vk-x7k2p";
pub const NOW: i64 = 1_795_708_800;

pub type Answer = Result<HttpResponse, HttpError>;
pub type Script = Box<dyn FnMut(&str, &BTreeMap<String, String>) -> Answer>;

pub struct FakeHost {
    script: RefCell<Script>,
    pub calls: RefCell<Vec<(String, BTreeMap<String, String>)>>,
    pub raw: RefCell<Vec<HttpRequest>>,
    pub store: RefCell<HashMap<String, Vec<u8>>>,
    /// Set: the store refuses writes, as the host does when it cannot persist them.
    pub store_down: std::cell::Cell<bool>,
    pub logs: RefCell<Vec<String>>,
    /// `(action, code)` of every API error the client counted.
    pub api_errors: RefCell<Vec<(String, String)>>,
}

impl FakeHost {
    pub fn new(script: impl FnMut(&str, &BTreeMap<String, String>) -> Answer + 'static) -> Self {
        FakeHost {
            script: RefCell::new(Box::new(script)),
            calls: RefCell::new(vec![]),
            raw: RefCell::new(vec![]),
            store: RefCell::new(HashMap::new()),
            store_down: std::cell::Cell::new(false),
            logs: RefCell::new(vec![]),
            api_errors: RefCell::new(vec![]),
        }
    }

    /// The actions called, in order.
    pub fn actions(&self) -> Vec<String> {
        self.calls.borrow().iter().map(|(a, _)| a.clone()).collect()
    }

    pub fn count(&self, action: &str) -> usize {
        self.calls.borrow().iter().filter(|(a, _)| a == action).count()
    }

    /// The parameters of the n-th call of an action.
    pub fn params(&self, action: &str, n: usize) -> BTreeMap<String, String> {
        self.calls
            .borrow()
            .iter()
            .filter(|(a, _)| a == action)
            .nth(n)
            .unwrap_or_else(|| panic!("no call {n} of {action}"))
            .1
            .clone()
    }
}

pub fn decode_form(body: &[u8]) -> BTreeMap<String, String> {
    let text = std::str::from_utf8(body).unwrap();
    text.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl Transport for FakeHost {
    fn send(&self, request: HttpRequest) -> Answer {
        let params = decode_form(&request.body);
        let action = params.get("Action").cloned().unwrap_or_default();
        self.raw.borrow_mut().push(request);
        self.calls.borrow_mut().push((action.clone(), params.clone()));
        (self.script.borrow_mut())(&action, &params)
    }

    fn count_api_error(&self, action: &str, code: &str) {
        self.api_errors.borrow_mut().push((action.into(), code.into()));
    }
}

impl Host for FakeHost {
    fn store_get(&self, key: &str) -> Option<Vec<u8>> {
        self.store.borrow().get(key).cloned()
    }
    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        if self.store_down.get() {
            return Err("the node's records could not be stored in the cluster".into());
        }
        self.store.borrow_mut().insert(key.into(), value.to_vec());
        Ok(())
    }
    fn store_delete(&self, key: &str) -> Result<bool, String> {
        Ok(self.store.borrow_mut().remove(key).is_some())
    }
    fn now_unix(&self) -> i64 {
        NOW
    }
    fn log(&self, level: Level, message: &str, fields: &[(&str, &str)]) {
        self.logs.borrow_mut().push(format!("{level:?} {message} {fields:?}"));
    }
}

/// An HTTP 200 envelope.
pub fn ok(action: &str, fields: Value) -> Answer {
    let mut body = json!({"Action": format!("{action}Response"), "RetCode": 0, "Message": ""});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    Ok(HttpResponse { status: 200, headers: vec![], body: body.to_string().into_bytes() })
}

/// An error envelope (HTTP 200, as the gateway does).
pub fn fail(action: &str, code: i64, message: &str) -> Answer {
    Ok(HttpResponse {
        status: 200,
        headers: vec![],
        body: json!({"Action": format!("{action}Response"), "RetCode": code, "Message": message})
            .to_string()
            .into_bytes(),
    })
}

pub fn http(status: u16) -> Answer {
    Ok(HttpResponse { status, headers: vec![], body: b"<html>bad gateway</html>".to_vec() })
}

pub fn config() -> String {
    json!({
        "api_url": "http://127.0.0.1:18080",
        "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub-key", "private_key": "priv-key",
        "registries": ["uhub.an-link.com", "myhub.an-link.com"],
    })
    .to_string()
}

pub fn ctx() -> CallContext {
    CallContext { node_name: NODE.into(), config: config() }
}

/// What GetCubePod would return for a pod YAML Cube accepted: Cube's metadata and a status added.
pub fn returned(pod_yaml: &str, cube_id: &str, phase: &str) -> String {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(pod_yaml).unwrap();
    doc["metadata"]["cubeId"] = cube_id.into();
    doc["metadata"]["group"] = NODE.into();
    let status: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "{{phase: {phase}, podIp: 10.23.0.2, startTime: '2026-11-26T16:00:00Z', containerStatuses: [{{name: nginx, image: x, ready: true, restartCount: 0, state: {{running: {{startedAt: '2026-11-26T16:00:01Z'}}}}}}]}}"
    ))
    .unwrap();
    doc["status"] = status;
    B64.encode(serde_yaml_ng::to_string(&doc).unwrap())
}
