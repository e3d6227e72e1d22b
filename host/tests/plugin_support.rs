//! Shared by the plugin runtime tests (included with `#[path]`): where the built plugins are,
//! scratch directories, and realistic inputs (a resolved pod as the pod controller passes it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vkhost::plugin::{
    BinaryEntry, CallContext, ContainerEnv, ExecOptions, KeyValue, LogOptions, PluginSettings, PodRef, ResolvedPod,
    Secret,
};

/// `$VKCUBE_PLUGIN_DIR`, else `${CARGO_TARGET_DIR:-<repo>/target}/plugins`.
pub fn plugin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VKCUBE_PLUGIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("plugins")
}

/// A built plugin; panics with the fix when it is missing.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `plugins/build` first (with the same CARGO_TARGET_DIR), or set VKCUBE_PLUGIN_DIR",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system temp dir, unique per call. It is removed when the
/// thread that asked for it ends: for a test, when the test is done, passed or failed (libtest
/// runs each test on a thread of its own), so callers may keep its paths (in settings, in files
/// they write) for as long as the test runs. `VKCUBE_KEEP_SCRATCH=1` keeps them, to look inside.
pub fn scratch_dir(label: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vkcube-plugin-test-{}-{}-{label}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    SCRATCH.with(|dirs| dirs.0.borrow_mut().push(dir.clone()));
    dir
}

/// The scratch directories a thread made, removed when it ends.
struct ScratchDirs(std::cell::RefCell<Vec<PathBuf>>);

impl Drop for ScratchDirs {
    fn drop(&mut self) {
        if std::env::var_os("VKCUBE_KEEP_SCRATCH").is_some_and(|v| v == "1") {
            return;
        }
        for dir in self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

thread_local! {
    static SCRATCH: ScratchDirs = const { ScratchDirs(std::cell::RefCell::new(Vec::new())) };
}

/// Settings for `path` with a private compile cache.
pub fn settings(path: impl Into<PathBuf>) -> PluginSettings {
    let mut s = PluginSettings::new(path);
    s.cache_dir = Some(scratch_dir("cache"));
    s
}

pub fn ctx(node: &str, config: &str) -> CallContext {
    CallContext { node_name: node.into(), config: config.into() }
}

pub fn pod_ref(name: &str, uid: &str) -> PodRef {
    PodRef { namespace: "default".into(), name: name.into(), uid: uid.into() }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.into(), value: value.into() }
}

/// Log options as `kubectl logs --tail 10` sends them.
pub fn log_opts() -> LogOptions {
    LogOptions {
        follow: false,
        tail_lines: Some(10),
        since_seconds: None,
        since_time: None,
        timestamps: false,
        limit_bytes: None,
        previous: false,
    }
}

/// An interactive shell, as `kubectl exec -i -- sh` asks for it.
pub fn exec_opts() -> ExecOptions {
    ExecOptions { command: vec!["sh".into()], stdin: true, stdout: true, stderr: true, tty: false }
}

/// A pod the size of a real one: two containers, an init container, resolved env, a
/// ConfigMap, an image pull Secret and a projected token, as the pod controller passes it.
pub fn resolved_pod(name: &str, uid: &str) -> ResolvedPod {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "default", "uid": uid,
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "annotations": {"cube.ucloud.cn/cube-tag": "team-a", "cube.ucloud.cn/cube-eip": "false"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs-1", "controller": true}]
        },
        "spec": {
            "nodeName": "uk8s-abcdefgh-vk-x7k2p",
            "nodeSelector": {"type": "virtual-kubelet"},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}],
            "initContainers": [{"name": "init", "image": "uhub.example.com/team/init:1.0", "command": ["sh", "-c", "true"]}],
            "containers": [
                {"name": "web", "image": "uhub.example.com/team/web:2.3.1",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
                 "volumeMounts": [{"name": "conf", "mountPath": "/etc/web"}, {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5}},
                {"name": "sidecar", "image": "uhub.example.com/team/proxy:0.9", "args": ["--listen", ":9000"]}
            ],
            "volumes": [
                {"name": "conf", "configMap": {"name": "web-conf"}},
                {"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}
            ],
            "imagePullSecrets": [{"name": "uhub"}],
            "restartPolicy": "Always"
        },
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    });
    let env = |c: &str| ContainerEnv {
        container: c.into(),
        vars: (0..12).map(|i| kv(&format!("VAR_{i}"), &format!("value-{i}-{c}"))).collect(),
    };
    ResolvedPod {
        pod: pod.to_string(),
        env: vec![env("init"), env("web"), env("sidecar")],
        config_maps: vec![vkhost::plugin::ConfigMap {
            name: "web-conf".into(),
            data: vec![kv("app.yaml", &"listen: 8080\nworkers: 4\n".repeat(20))],
            binary_data: vec![],
        }],
        secrets: vec![Secret {
            name: "uhub".into(),
            kind: "kubernetes.io/dockerconfigjson".into(),
            data: vec![BinaryEntry {
                key: ".dockerconfigjson".into(),
                value: br#"{"auths":{"uhub.example.com":{"username":"u","password":"p"}}}"#.to_vec(),
            }],
        }],
        claims: vec![],
        tokens: vec![vkhost::plugin::ServiceAccountToken {
            volume_name: "kube-api-access-x7k2p".into(),
            path: "token".into(),
            token: "eyJhbGciOiJSUzI1NiJ9.".to_string() + &"x".repeat(700),
            expires_at: "2026-11-26T18:00:00Z".into(),
            audience: "https://kubernetes.default.svc".into(),
        }],
    }
}

/// Replaces `path` with `from` atomically (write beside, rename over), as an operator should.
pub fn install(from: &Path, path: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A copy of `wasm` in `dir` with a unique custom section appended: different bytes (so a cache
/// miss and a real compile, as for a new release), same behaviour. `i` names the copy.
pub fn unique_copy(wasm: &Path, dir: &Path, i: usize) -> PathBuf {
    let mut bytes = std::fs::read(wasm).unwrap();
    let name = b"vkcube-bench";
    let payload = format!("{i}-{:?}", std::time::Instant::now());
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128);
    bytes.extend_from_slice(&[0, size as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    let path = dir.join(format!("candidate-{i}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}
