//! The plugin runtime against real components built by `plugins/build`: every export of the
//! example provider (contract 0.2), 0.1.x plugins (the faulty fixture, 0.1.0) adapted beside it,
//! and each way a plugin can fail (trap, endless loop, memory blow-up, URL outside its allowlist,
//! wrong contract, not a component) turning into a typed error while the next call still
//! succeeds.

#[path = "plugin_support.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{ctx, exec_opts, log_opts, plugin, pod_ref, resolved_pod, scratch_dir, settings};
use vkhost::plugin::{
    CallError, ContainerState, CreateAttempt, DeleteReason, Deletion, Export, LoadError, Origin, Plugin, PluginRuntime,
    PodChange, PodPhase, ProviderError,
};

const UID: &str = "6f1c7a7e-5b1d-4d3e-9a51-0c2f1e7d9a01";
const MAY_EXIST: CreateAttempt = CreateAttempt { may_exist: true };

fn annotation(outcome: &vkhost::plugin::PodOutcome, key: &str) -> String {
    outcome.annotations.iter().find(|kv| kv.key == key).map(|kv| kv.value.clone()).unwrap_or_default()
}

async fn faulty(limits: impl FnOnce(&mut vkhost::plugin::PluginSettings)) -> std::sync::Arc<Plugin> {
    let rt = PluginRuntime::new().unwrap();
    let mut s = settings(plugin("faulty-v1.wasm"));
    limits(&mut s);
    Plugin::load(rt, s, vec![]).await.unwrap()
}

/// The next call after a failure gets a fresh instance and succeeds.
async fn assert_next_call_succeeds(p: &Plugin) {
    let ok =
        p.create(&ctx("n1", "{}"), &resolved_pod("behave", UID), MAY_EXIST).await.expect("the next call must succeed");
    assert_eq!(annotation(&ok, "faulty/answered-by"), "1.0.0");
}

#[tokio::test]
async fn example_provider_answers_every_export() {
    let rt = PluginRuntime::new().unwrap();
    let p = Plugin::load(rt, settings(plugin("example.wasm")), vec![("n1".into(), r#"{"max_pods": 50}"#.into())])
        .await
        .unwrap();
    let info = p.info();
    assert_eq!((info.name.as_str(), info.contract_version.as_str()), ("example", "0.2.0"));

    // metadata
    assert_eq!(p.validate_config("n1", "{}").await.unwrap(), r#"{"max_pods":200}"#);
    let err = p.validate_config("n1", r#"{"max_pod": 3}"#).await.unwrap_err();
    assert!(matches!(&err, CallError::Provider(ProviderError::Invalid(i)) if i.message.contains("max_pod")), "{err:?}");
    assert!(!err.is_retryable());

    // node
    let c = ctx("n1", r#"{"max_pods": 50}"#);
    let offer = p.describe_node(&c).await.unwrap();
    let cap = |k: &str| offer.capacity.iter().find(|kv| kv.key == k).unwrap().value.clone();
    assert_eq!((cap("cpu"), cap("memory"), cap("pods")), ("1000".into(), "4Ti".into(), "50".into()));
    assert_eq!((offer.operating_system.as_str(), offer.architecture.as_str()), ("linux", "amd64"));

    // pods: plan shows what create answers, and creates nothing
    let pod = resolved_pod("web-0", UID);
    let r = pod_ref("web-0", UID);
    let plan = p.plan(&c, &pod).await.unwrap();
    assert!(plan.requests.is_empty(), "the example's backend is kv: {plan:?}");
    assert_eq!(plan.events.len(), 1);
    assert!(matches!(p.status(&c, &r).await, Err(CallError::Provider(ProviderError::NotFound(_)))));

    // create is idempotent by uid
    let first = p.create(&c, &pod, MAY_EXIST).await.unwrap();
    assert_eq!(first.annotations, plan.annotations);
    assert_eq!((first.events[0].kind, &first.events[0].reason), (plan.events[0].kind, &plan.events[0].reason));
    assert_eq!(first.status.phase, PodPhase::Running);
    assert!(first.status.pod_ip.as_deref().unwrap().starts_with("10."));
    assert_eq!(first.status.container_statuses.len(), 2);
    assert!(first.status.container_statuses.iter().all(|s| s.ready && matches!(s.state, ContainerState::Running(_))));
    let again = p.create(&c, &pod, MAY_EXIST).await.unwrap();
    assert_eq!(again.instance_id, first.instance_id);
    assert_eq!(again.status, first.status);

    assert_eq!(p.status(&c, &r).await.unwrap(), first.status);
    // update is told what changed; a ConfigMap the pod mounts as files is applied
    let changes = [PodChange::ConfigMap("web-conf".into()), PodChange::Token("kube-api-access-x7k2p".into())];
    let updated = p.update(&c, &pod, &changes).await.unwrap();
    assert_eq!(updated.outcome.instance_id, first.instance_id);
    assert!(updated.not_applied.is_empty(), "{:?}", updated.not_applied);
    let listed = p.list(&c).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].pod, r);
    assert!(p.list(&ctx("other-node", "{}")).await.unwrap().is_empty());

    let usage = p.usage(&c, &[r.clone(), pod_ref("ghost", "no-such-uid")]).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].containers.len(), 2);

    for result in [
        p.logs(&c, &r, "web", &log_opts()).await,
        p.exec(&c, &r, "web", &exec_opts()).await,
        p.attach(&c, &r, "web", &exec_opts()).await,
        p.port_forward(&c, &r, 8080).await,
    ] {
        let err = result.unwrap_err();
        assert!(matches!(&err, CallError::Unsupported(m) if m.contains("example provider has no")), "{err:?}");
        assert!(!err.is_retryable());
    }

    assert_eq!(p.delete(&c, &r, DeleteReason::PodDeleted).await.unwrap(), Deletion::Gone);
    assert!(matches!(p.status(&c, &r).await, Err(CallError::Provider(ProviderError::NotFound(_)))));
    let err = p.delete(&c, &r, DeleteReason::Orphaned).await.unwrap_err();
    assert!(matches!(err, CallError::Provider(ProviderError::NotFound(_))) && !err.is_retryable());

    let stats = p.stats();
    assert_eq!(stats.calls(Export::Create, "ok"), 2);
    assert_eq!(stats.calls(Export::Logs, "unsupported"), 1);
    assert_eq!(stats.calls(Export::Plan, "ok"), 1);
}

#[tokio::test]
async fn a_trap_is_a_typed_error_naming_plugin_version_and_export_and_the_next_call_succeeds() {
    let p = faulty(|_| {}).await;
    for mode in ["trap", "unreachable"] {
        let err = p.create(&ctx("n1", "{}"), &resolved_pod(mode, UID), MAY_EXIST).await.unwrap_err();
        let CallError::Trap { plugin, version, export, message } = &err else { panic!("{mode}: {err:?}") };
        assert_eq!((plugin.as_str(), version.as_str(), *export), ("faulty", "1.0.0", Export::Create));
        assert!(message.contains("unreachable"), "{message}");
        assert!(err.to_string().contains("plugin faulty version 1.0.0: pods.create trapped"), "{err}");
        assert!(err.is_retryable());
        assert_next_call_succeeds(&p).await;
    }
    assert_eq!(p.stats().calls(Export::Create, "trap"), 2);
}

#[tokio::test]
async fn an_endless_loop_hits_the_cpu_deadline_and_the_next_call_succeeds() {
    let p = faulty(|s| s.limits.cpu_deadline_ms = 200).await;
    let started = Instant::now();
    let err = p.status(&ctx("n1", "{}"), &pod_ref("loop", UID)).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, CallError::CpuDeadline { plugin, export: Export::Status, deadline_ms: 200, .. } if plugin == "faulty"),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_next_call_succeeds(&p).await;
}

#[tokio::test]
async fn a_spinning_plugin_does_not_starve_other_tasks() {
    // The guest yields to tokio at every epoch check, so a timer on the same single thread fires.
    let p = faulty(|s| s.limits.cpu_deadline_ms = 600).await;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = ticks.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            let err = p.status(&ctx("n1", "{}"), &pod_ref("loop", UID)).await.unwrap_err();
            assert!(matches!(err, CallError::CpuDeadline { .. }), "{err:?}");
            ticker.abort();
        })
    })
    .join()
    .unwrap();
    assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) >= 5, "the other task starved");
}

#[tokio::test]
async fn growing_memory_past_the_cap_is_a_typed_error_and_the_next_call_succeeds() {
    let p = faulty(|s| s.limits.memory_mib = 24).await;
    let err = p.create(&ctx("n1", "{}"), &resolved_pod("oom", UID), MAY_EXIST).await.unwrap_err();
    assert!(
        matches!(&err, CallError::MemoryExceeded { version, export: Export::Create, limit_mib: 24, .. } if version == "1.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("exceeded its memory cap of 24 MiB"), "{err}");
    assert_next_call_succeeds(&p).await;
}

#[tokio::test]
async fn a_url_outside_the_allowlist_is_denied_and_the_next_call_succeeds() {
    let p = faulty(|s| s.allowed_urls = vec!["https://api.example.com/v1/".into()]).await;
    let err = p.create(&ctx("n1", "{}"), &resolved_pod("denied", UID), MAY_EXIST).await.unwrap_err();
    // The host answers `http-error::denied(url)`; the fixture reports it as an internal error.
    assert!(
        matches!(&err, CallError::Provider(ProviderError::Internal(m)) if m == "http denied: http://forbidden.example.invalid/steal"),
        "{err:?}"
    );
    assert_next_call_succeeds(&p).await;
}

#[tokio::test]
async fn stream_targets_outside_the_allowlist_are_refused() {
    let p = faulty(|s| s.allowed_urls = vec!["https://api.example.com/v1/".into()]).await;
    let c = ctx("n1", "{}");
    let r = pod_ref("behave", UID);
    let ok = p.logs(&c, &r, "https://api.example.com/v1/logs/x", &log_opts()).await.unwrap();
    assert_eq!(ok.url, "https://api.example.com/v1/logs/x");
    p.exec(&c, &r, "wss://api.example.com/v1/exec/x", &exec_opts()).await.unwrap();
    // The host connects to the URL as the allowlist parsed it, not to the plugin's spelling.
    let ok = p.exec(&c, &r, "wss://API.example.com:443/v1/a/./b/../exec?t=1", &exec_opts()).await.unwrap();
    assert_eq!(ok.url, "wss://api.example.com/v1/a/exec?t=1");
    for url in ["https://evil.example.net/v1/", "https://api.example.com/v2/exec", "wss://api.example.com.evil.net/v1/"]
    {
        let err = p.attach(&c, &r, url, &exec_opts()).await.unwrap_err();
        assert!(matches!(&err, CallError::StreamTargetDenied { export: Export::Attach, .. }), "{url}: {err:?}");
        assert!(!err.is_retryable());
    }
}

/// A tiny HTTP server for the fixture to call: `POST /echo` returns the body, `GET /sleep` hangs.
async fn echo_server() -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new().route("/echo", post(|body: String| async move { body })).route(
        "/echo/sleep",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_allowed_url_is_fetched_for_the_plugin() {
    let base = echo_server().await;
    let p = faulty(|s| s.allowed_urls = vec![format!("{base}/echo")]).await;
    let config = format!(r#"{{"echo_url": "{base}/echo"}}"#);
    let out = p.create(&ctx("n1", &config), &resolved_pod("echo", UID), MAY_EXIST).await.unwrap();
    assert_eq!(annotation(&out, "faulty/echo"), "ping from 1.0.0");
}

#[tokio::test]
async fn a_hanging_backend_is_cut_off_by_the_call_timeout_and_the_next_call_succeeds() {
    let base = echo_server().await;
    let p = faulty(|s| {
        s.allowed_urls = vec![format!("{base}/")];
        s.limits.call_timeout_ms = 400;
    })
    .await;
    let config = format!(r#"{{"mode": "sleep-http", "echo_url": "{base}/echo"}}"#);
    let started = Instant::now();
    let err = p.describe_node(&ctx("n1", &config)).await.unwrap_err();
    // Whichever bound fires first: the host's ceiling on the exchange or the call's deadline.
    assert!(
        matches!(&err, CallError::Timeout { timeout_ms: 400, .. } | CallError::Provider(ProviderError::Transient(_))),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.is_retryable());
    assert_next_call_succeeds(&p).await;
}

/// The faulty fixture (built against 0.1.0) with every `vk:provider/...@0.1.0` rewritten to
/// `@{version}` (same length, so the binary stays well-formed): a plugin built against another
/// contract.
fn with_contract(version: &str) -> std::path::PathBuf {
    assert_eq!(version.len(), 5);
    let mut bytes = std::fs::read(plugin("faulty-v1.wasm")).unwrap();
    let needle = b"@0.1.0";
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        bytes[i + pos + 1..i + pos + 6].copy_from_slice(version.as_bytes());
        i += pos + needle.len();
    }
    let path = scratch_dir("contract").join(format!("faulty-{version}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn a_plugin_for_another_contract_is_refused_before_it_is_compiled() {
    // Newer than every contract the host knows: a newer patch of 0.1 or 0.2 (which may use what
    // the host lacks), a newer 0.x line, a 1.x one.
    for version in ["0.1.3", "0.2.1", "0.3.0", "1.0.0"] {
        let s = settings(with_contract(version));
        let cache = s.cache_dir.clone().unwrap();
        let err = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.err().unwrap();
        assert!(
            matches!(&err, LoadError::IncompatibleContract { plugin_contract, .. } if plugin_contract == version),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("vk:provider@{version}")) && text.contains("vk:provider@0.2.0"), "{text}");
        assert!(text.contains("accepts 0.2.0, 0.1.0 to 0.1.2"), "{text}");
        // Refused from the bytes alone: nothing was compiled into the cache.
        assert_eq!(std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0), 0);
    }
}

#[tokio::test]
async fn plugins_built_against_every_0_1_patch_run_on_this_host() {
    // 0.1.0 (the fixture as built), 0.1.1 (before `store`) and 0.1.2 (the last 0.1).
    for version in ["0.1.0", "0.1.1", "0.1.2"] {
        let path = if version == "0.1.0" { plugin("faulty-v1.wasm") } else { with_contract(version) };
        let p = Plugin::load(PluginRuntime::new().unwrap(), settings(path), vec![]).await.unwrap();
        assert_eq!(p.summary().load.contract, version);
        let offer = p.describe_node(&ctx("n1", "{}")).await.unwrap();
        assert!(!offer.capacity.is_empty(), "{version}");
        assert_next_call_succeeds(&p).await;
    }
}

/// A 0.1.0, a 0.1.1 and a 0.2.0 plugin loaded in one runtime, side by side, each serving calls:
/// the 0.1 ones through the adapter (what 0.1 lacks answers `unsupported` naming their contract),
/// the 0.2 one natively.
#[tokio::test]
async fn plugins_of_0_1_0_0_1_1_and_0_2_0_run_side_by_side_in_one_runtime() {
    let rt = PluginRuntime::new().unwrap();
    let old = Plugin::load(rt.clone(), settings(plugin("faulty-v1.wasm")), vec![]).await.unwrap();
    let patched = Plugin::load(rt.clone(), settings(with_contract("0.1.1")), vec![]).await.unwrap();
    let new = Plugin::load(rt, settings(plugin("example.wasm")), vec![]).await.unwrap();
    let contracts: Vec<String> = [&old, &patched, &new].iter().map(|p| p.summary().load.contract).collect();
    assert_eq!(contracts, ["0.1.0", "0.1.1", "0.2.0"]);

    let c = ctx("n1", "{}");
    let (old_pod, new_pod) = (resolved_pod("behave", UID), resolved_pod("web-0", UID));
    // Interleaved calls, each plugin answering in its own terms.
    for _ in 0..2 {
        for p in [&old, &patched] {
            let made = p.create(&c, &old_pod, MAY_EXIST).await.unwrap();
            assert_eq!(annotation(&made, "faulty/answered-by"), "1.0.0");
            // 0.1 spelled the phase as a string; the adapter hands over the enum.
            assert_eq!(made.status.phase, PodPhase::Running);
            let updated = p.update(&c, &old_pod, &[PodChange::Image("web".into())]).await.unwrap();
            assert!(updated.not_applied.is_empty());
        }
        let made = new.create(&c, &new_pod, MAY_EXIST).await.unwrap();
        assert_eq!(made.instance_id, "example-6f1c7a7e");
        assert!(new.plan(&c, &new_pod).await.is_ok());
    }
    for (p, contract) in [(&old, "0.1.0"), (&patched, "0.1.1")] {
        let r = pod_ref("behave", UID);
        for err in [
            p.plan(&c, &old_pod).await.unwrap_err(),
            p.finalize(&c, &r, b"work").await.unwrap_err(),
            p.port_forward(&c, &r, 80).await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, CallError::Unsupported(m) if m.contains(&format!("vk:provider@{contract}"))),
                "{contract}: {err:?}"
            );
            assert!(!err.is_retryable());
        }
    }
    assert_eq!(new.delete(&c, &pod_ref("web-0", UID), DeleteReason::PodDeleted).await.unwrap(), Deletion::Gone);
    assert_eq!(old.stats().calls(Export::Plan, "unsupported"), 1);
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused() {
    let dir = scratch_dir("not-component");
    for (name, bytes) in [("text.wasm", &b"#!/bin/sh\necho hi\n"[..]), ("core.wasm", &b"\0asm\x01\0\0\0"[..])] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = Plugin::load(PluginRuntime::new().unwrap(), settings(&path), vec![]).await.err().unwrap();
        assert!(matches!(err, LoadError::NotAComponent { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains("is not a WebAssembly component"), "{err}");
    }
    let err =
        Plugin::load(PluginRuntime::new().unwrap(), settings(dir.join("absent.wasm")), vec![]).await.err().unwrap();
    assert!(matches!(err, LoadError::Source(vkhost::plugin::SourceError::Io { .. })), "{err:?}");
}

#[tokio::test]
async fn a_config_the_plugin_rejects_refuses_the_load_naming_plugin_and_node() {
    let rt = PluginRuntime::new().unwrap();
    let err =
        Plugin::load(rt, settings(plugin("faulty-v1.wasm")), vec![("node-7".into(), r#"{"mode":"reject"}"#.into())])
            .await
            .err()
            .unwrap();
    let text = err.to_string();
    assert!(text.starts_with("plugin faulty version 1.0.0 rejects the config of node node-7"), "{text}");
    assert!(text.contains("mode is reject"), "{text}");
}

#[tokio::test]
async fn a_malformed_allowlist_refuses_the_load() {
    let mut s = settings(plugin("example.wasm"));
    s.allowed_urls = vec!["api.example.com".into()];
    let err = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.err().unwrap();
    assert!(matches!(&err, LoadError::Settings(m) if m.contains("api.example.com")), "{err:?}");
}

#[tokio::test]
async fn a_compiled_component_is_reused_from_the_disk_cache() {
    let s = settings(plugin("example.wasm"));
    let first = Plugin::load(PluginRuntime::new().unwrap(), s.clone(), vec![]).await.unwrap();
    assert!(first.optimized_within(Duration::from_secs(120)).await, "no optimized build");
    assert_eq!(first.summary().load.origin, Origin::Compiled);
    // A new runtime (as after a daemon restart) finds the compiled artefact.
    let second = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.unwrap();
    assert_eq!(second.summary().load.origin, Origin::Cache);
    assert_eq!(second.info(), first.info());
}

#[tokio::test]
async fn a_new_file_serves_from_the_baseline_build_until_the_optimized_build_replaces_it() {
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(plugin("example.wasm")), vec![]).await.unwrap();
    let mut reloads = p.subscribe();
    // x86_64 and aarch64 have the baseline compiler (Winch): a file the cache has not seen is
    // served by its build first, every export working.
    assert_eq!(p.origin(), Origin::Baseline);
    let c = ctx("n1", "{}");
    let made = p.create(&c, &resolved_pod("web-0", UID), MAY_EXIST).await.expect("create on the baseline build");
    assert_eq!(made.instance_id, "example-6f1c7a7e");
    let info = p.info();

    assert!(p.optimized_within(Duration::from_secs(120)).await, "no optimized build");
    assert_eq!(p.origin(), Origin::Compiled);
    assert_eq!(p.stats().snapshot().optimized_swaps, 1);
    // Same bytes, same version, same state: not a reload.
    assert_eq!(p.info(), info);
    assert!(matches!(p.status(&c, &pod_ref("web-0", UID)).await, Ok(s) if s.phase == PodPhase::Running));
    assert!(reloads.try_recv().is_err(), "swapping in the optimized build is not a reload event");
}

#[tokio::test]
async fn without_the_baseline_compiler_a_new_file_waits_for_cranelift() {
    let mut s = settings(plugin("example.wasm"));
    s.baseline_compile = false;
    let p = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.unwrap();
    assert_eq!(p.origin(), Origin::Compiled);
    assert_eq!(p.stats().snapshot().optimized_swaps, 0);
}

#[tokio::test]
async fn plugin_check_reports_a_good_plugin_and_refuses_a_bad_config() {
    let report =
        vkhost::plugin::check(&plugin("example.wasm"), Some(serde_json::json!({"max_pods": 10})), "n1").await.unwrap();
    assert_eq!(report.info.name, "example");
    assert_eq!(report.smoke.as_ref().unwrap().normalized, r#"{"max_pods":10}"#);
    let text = report.to_string();
    assert!(text.contains("vk:provider@0.2.0") && text.contains("result      OK"), "{text}");

    let err =
        vkhost::plugin::check(&plugin("example.wasm"), Some(serde_json::json!({"pods": 10})), "n1").await.unwrap_err();
    assert!(matches!(err, LoadError::ConfigRejected { .. }), "{err:?}");
    let err =
        vkhost::plugin::check(&plugin("faulty-broken.wasm"), Some(serde_json::json!({})), "n1").await.unwrap_err();
    assert!(err.to_string().contains("trapped"), "{err}");
}

#[tokio::test]
async fn plugin_check_never_prints_the_cube_credentials() {
    let path = plugin("cube.wasm");
    let config = serde_json::json!({
        "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "PUBLIC-KEY-VALUE", "private_key": "PRIVATE-KEY-VALUE",
    });
    let report = vkhost::plugin::check(&path, Some(config), "n1").await.unwrap();
    let text = report.to_string();
    let json = serde_json::to_string(&report).unwrap();
    for shown in [&text, &json] {
        assert!(!shown.contains("PRIVATE-KEY-VALUE") && !shown.contains("PUBLIC-KEY-VALUE"), "{shown}");
    }
    assert!(text.contains("\"private_key\":\"<redacted>\"") && text.contains("cn-bj2-05"), "{text}");
}

#[tokio::test]
async fn the_cube_plugin_loads() {
    let path = plugin("cube.wasm");
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(&path), vec![]).await.unwrap();
    assert_eq!(p.info().contract_version, "0.2.0");
}

/// The Cube plugin's `plan` is exactly what its `create` sends: the same requests in the same
/// order, byte for byte (signed form bodies included), and the same annotations. The cloud is a
/// stand-in that records every request and answers each with a new instance.
#[tokio::test]
async fn the_cube_plan_is_exactly_what_create_sends() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let recorder = recorder.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let uri = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            recorder.lock().unwrap().push((parts.method.to_string(), uri, headers, body));
            axum::Json(serde_json::json!({"RetCode": 0, "CubeId": "cube-made-1"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut s = settings(plugin("cube.wasm"));
    s.allowed_urls = vec![format!("{base}/")];
    let p = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.unwrap();
    let config = serde_json::json!({
        "api_url": base, "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "PUB", "private_key": "PRIV", "uhub_hosts": ["uhub.example.com"],
    });
    let normalised = p.validate_config("n1", &config.to_string()).await.unwrap();
    let c = ctx("uk8s-abcdefgh-vk-x7k2p", &normalised);
    let pod = resolved_pod("web-0", UID);

    let plan = p.plan(&c, &pod).await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "plan sent a request");
    assert!(!plan.requests.is_empty());
    // The first attempt: no lookup before the create, so every request sent is a planned one.
    let made = p.create(&c, &pod, CreateAttempt { may_exist: false }).await.unwrap();
    assert_eq!(made.instance_id, "cube-made-1");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), plan.requests.len(), "{sent:?}");
    for (planned, (method, uri, headers, body)) in plan.requests.iter().zip(&sent) {
        assert_eq!(&planned.method, method);
        assert_eq!(planned.url, format!("{base}{uri}"));
        assert_eq!(&planned.body, body, "{}", String::from_utf8_lossy(body));
        for h in &planned.headers {
            assert!(headers.iter().any(|(k, v)| k.eq_ignore_ascii_case(&h.key) && v == &h.value), "{h:?}");
        }
    }
    // What create annotates the pod with, the plan showed (the plan has no instance id yet).
    for kv in &plan.annotations {
        assert!(made.annotations.contains(kv), "{kv:?} planned but not set: {:?}", made.annotations);
    }
}
