//! What one pod costs the node's pod cache: the heap a typed k8s-openapi `Pod` holds against the
//! cache's `CachedPod` (spec and status as compact JSON), for the burst benchmark's pod and for a
//! fuller one, and the CPU each way costs (making the cached form from a watch event's pod, and
//! reading the whole pod back for a sync).
//!
//!   cargo run --release -p vkhost --example pod_cache_bench [-- --rounds 20000]

#[path = "support/timing.rs"]
mod timing;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use timing::arg;
use vkhost::pods::cached::CachedPod;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap `make` leaves allocated while its result lives (boxed, as the cache's `Arc` holds it).
fn held<T>(make: impl FnOnce() -> T) -> (isize, Box<T>) {
    let before = LIVE.load(Ordering::Relaxed);
    let value = Box::new(make());
    (LIVE.load(Ordering::Relaxed) - before, value)
}

/// The burst benchmark's pod once Running (`tests/bench/burst.rs`), as the apiserver sends it.
fn burst_pod() -> Value {
    let t = "2026-11-30T06:00:01Z";
    let conditions: Vec<Value> =
        ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
            .iter()
            .map(|c| json!({"type": c, "status": "True", "lastProbeTime": null, "lastTransitionTime": t}))
            .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "burst-3-7d9c8b6f5d-x7k2p", "generateName": "burst-3-7d9c8b6f5d-", "namespace": "vkcube-bench",
            "uid": "0b6c3a8e-4f1d-4b2a-9a4e-1c2d3e4f5a6b", "resourceVersion": "123456", "creationTimestamp": t,
            "labels": {"app": "vkcube-bench", "deployment": "burst-3", "pod-template-hash": "7d9c8b6f5d"},
            "annotations": {"vkcube.io/instance-id": "inst-0b6c3a8e"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "burst-3-7d9c8b6f5d",
                                 "uid": "1b6c3a8e-4f1d-4b2a-9a4e-1c2d3e4f5a6b", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": t,
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}]
        },
        "spec": {
            "containers": [{"name": "nginx", "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                            "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "nodeSelector": {"type": "virtual-kubelet", "vkcube-bench": "n3"}, "serviceAccountName": "default",
            "serviceAccount": "default", "automountServiceAccountToken": false, "nodeName": "vk-bench-3",
            "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "cube", "effect": "NoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "10.0.0.3", "hostIPs": [{"ip": "10.0.0.3"}], "podIP": "10.1.3.7", "podIPs": [{"ip": "10.1.3.7"}],
            "startTime": t,
            "containerStatuses": [{"name": "nginx", "state": {"running": {"startedAt": t}}, "lastState": {}, "ready": true,
                                   "restartCount": 0, "image": "uhub.service.ucloud.cn/library/nginx:1.25", "imageID": "",
                                   "containerID": "cube://inst-0b6c3a8e/nginx", "started": true}],
            "qosClass": "Burstable"
        }
    })
}

/// The same pod with what many real pods carry besides: a second container, probes, env from a
/// Secret, a ConfigMap volume and the service-account token volume.
fn fuller_pod() -> Value {
    let mut pod = burst_pod();
    let spec = &mut pod["spec"];
    spec["automountServiceAccountToken"] = Value::Null;
    let probe = json!({"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10,
                       "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
    let mounts = json!([{"name": "cfg", "mountPath": "/etc/app"},
                        {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
    let containers = spec["containers"].as_array_mut().unwrap();
    containers[0]["livenessProbe"] = probe.clone();
    containers[0]["readinessProbe"] = probe;
    containers[0]["env"] = json!([{"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                                  {"name": "MODE", "value": "production"}]);
    containers[0]["volumeMounts"] = mounts.clone();
    let mut sidecar = containers[0].clone();
    sidecar["name"] = json!("log-shipper");
    sidecar["image"] = json!("uhub.service.ucloud.cn/library/fluent-bit:3.1");
    containers.push(sidecar);
    spec["volumes"] = json!([
        {"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 420}},
        {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}
    ]);
    let status = pod["status"]["containerStatuses"][0].clone();
    let mut second = status.clone();
    second["name"] = json!("log-shipper");
    pod["status"]["containerStatuses"] = json!([status, second]);
    pod
}

/// Microseconds per call of `f`, over `rounds` calls.
fn micros_per_call<T>(rounds: usize, mut f: impl FnMut() -> T) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(f());
    }
    started.elapsed().as_secs_f64() * 1e6 / rounds as f64
}

fn main() {
    let rounds = arg("--rounds", 20_000);
    println!(
        "{:<12} {:>11} {:>11} {:>11} {:>11} {:>13} {:>13}",
        "pod", "JSON bytes", "typed Pod", "CachedPod", "per 1,600", "cache it (us)", "read it (us)"
    );
    for (name, served) in [("burst", burst_pod()), ("fuller", fuller_pod())] {
        let text = serde_json::to_string(&served).unwrap();
        let pod: Pod = serde_json::from_str(&text).unwrap();
        let (typed, _typed) = held(|| {
            let mut p = pod.clone();
            p.metadata.managed_fields = None;
            p
        });
        let (cached_bytes, cached) = held(|| CachedPod::from(pod.clone()));
        let saved = (typed - cached_bytes) as f64 * 1600.0 / (1024.0 * 1024.0);
        // What a watch event adds: the typed pod it decoded made into the cached form.
        let cache_it =
            micros_per_call(rounds, || CachedPod::from(pod.clone())) - micros_per_call(rounds, || pod.clone());
        let read_it = micros_per_call(rounds, || cached.pod());
        println!(
            "{name:<12} {:>11} {:>9} B {:>9} B {:>7.1} MiB {:>13.2} {:>13.2}",
            text.len(),
            typed,
            cached_bytes,
            saved,
            cache_it,
            read_it
        );
    }
    println!(
        "(typed Pod: managedFields dropped, as the cache did before; per 1,600: the heap the cache saves at the guide's 1,600 pods)"
    );
}
