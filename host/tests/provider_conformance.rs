//! The conformance suite a provider is run through: every export gives a well-typed answer (or
//! `unsupported`), the memory cap holds, a hot reload keeps calls working, and `vkhost plugin
//! check` accepts it. Each check runs for the Rust example (`example.wasm`) and for the same
//! provider in Python (`python-example.wasm`, plugins/python-example): the contract does not
//! depend on the language a provider is written in. A last test checks that the two give the
//! same answers to the same inputs: the Python provider is the example, not a look-alike.
//!
//! The checks need what every provider offers (a config it validates, pods it creates and
//! deletes); what the contract leaves to the provider (a stream target or `unsupported`, `gone`
//! or a pending deletion) is accepted either way. The CPU deadline and the call timeout are the
//! host's and do not depend on the guest's language: `plugin_runtime.rs` covers them with the
//! faulty fixture, which loops on request.

#[path = "plugin_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{ctx, exec_opts, install, log_opts, plugin, pod_ref, resolved_pod, scratch_dir};
use vkhost::plugin::{
    CallError, CreateAttempt, DeleteReason, Deletion, Plugin, PluginRuntime, PluginSettings, PodChange, PodPhase,
    ProviderError, StreamProtocol, StreamTarget,
};

/// A provider under test and what the suite needs to know about it.
struct Subject {
    /// The built file, in the plugin directory.
    file: &'static str,
    /// What `metadata.info` names it.
    name: &'static str,
    /// A node config the provider accepts.
    config: &'static str,
    /// A node config the provider refuses (an unknown key) and the key.
    bad_config: &'static str,
    bad_key: &'static str,
}

const EXAMPLE: Subject = Subject {
    file: "example.wasm",
    name: "example",
    config: r#"{"max_pods": 50}"#,
    bad_config: r#"{"max_pod": 3}"#,
    bad_key: "max_pod",
};

const PYTHON: Subject = Subject {
    file: "python-example.wasm",
    name: "python-example",
    config: r#"{"max_pods": 50}"#,
    bad_config: r#"{"max_pod": 3}"#,
    bad_key: "max_pod",
};

const UID: &str = "0c9b6a52-3f0e-4a8e-9d1c-7b2e5f4a1d03";

impl Subject {
    fn path(&self) -> PathBuf {
        plugin(self.file)
    }

    /// Settings whose compile cache already holds the provider's Cranelift build, so a load
    /// takes milliseconds (a Python provider takes seconds to compile, and each test loads it).
    fn settings(&self) -> PluginSettings {
        static WARMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let mut s = PluginSettings::new(self.path());
        s.cache_dir = Some(shared_cache());
        let mut warmed = WARMED.lock().unwrap();
        if !warmed.contains(&s.path) {
            let mut first = s.clone();
            first.baseline_compile = false;
            // Its own thread and runtime: the caller may be inside a runtime already.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(Plugin::load(PluginRuntime::new().unwrap(), first, vec![]))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{} does not load: {e}", self.file));
            warmed.push(s.path.clone());
        }
        s
    }

    async fn load(&self) -> Arc<Plugin> {
        let smoke = vec![("n1".to_owned(), self.config.to_owned())];
        Plugin::load(PluginRuntime::new().unwrap(), self.settings(), smoke).await.unwrap()
    }
}

/// The XDG cache home of the suite; compiled components go to `vkcube/components` in it. Kept
/// in cargo's scratch directory for tests between runs: entries are named by the component's
/// hash, so a rebuilt provider is compiled again and a later run of the same one starts warm.
fn cache_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("provider-conformance");
        std::fs::create_dir_all(&home).unwrap();
        home
    })
}

fn shared_cache() -> PathBuf {
    cache_home().join("vkcube").join("components")
}

/// A stream export answers a target the host vetted against the allowlist, or `unsupported`.
fn target_or_unsupported(what: &str, result: Result<StreamTarget, CallError>) {
    match result {
        Ok(target) => {
            assert!(!target.url.is_empty(), "{what}: empty URL");
            if target.protocol == StreamProtocol::Tcp {
                assert!(target.headers.is_empty(), "{what}: a tcp target carries headers");
            }
        }
        Err(CallError::Unsupported(why)) => assert!(!why.is_empty(), "{what}: unsupported without a reason"),
        Err(e) => panic!("{what}: neither a target nor unsupported: {e:?}"),
    }
}

fn is_not_found<T: std::fmt::Debug>(result: &Result<T, CallError>) -> bool {
    matches!(result, Err(CallError::Provider(ProviderError::NotFound(_))))
}

/// Every export, in the order a pod's life calls them.
async fn every_export_answers(s: &Subject) {
    let p = s.load().await;

    // metadata
    let info = p.info();
    assert_eq!(info.name, s.name);
    assert_eq!(info.contract_version, "0.2.0");
    assert_eq!(p.summary().load.contract, "0.2.0");
    assert!(!info.version.is_empty() && !info.description.is_empty(), "{info:?}");
    let normalized = p.validate_config("n1", s.config).await.unwrap();
    serde_json::from_str::<serde_json::Value>(&normalized).expect("the normalised config is JSON");
    // Normalising is idempotent.
    assert_eq!(p.validate_config("n1", &normalized).await.unwrap(), normalized);
    // The refusal names the key, so an operator can act on it.
    let err = p.validate_config("n1", s.bad_config).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Provider(ProviderError::Invalid(i)) if i.message.contains(s.bad_key) || i.field.contains(s.bad_key)),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // node
    let c = ctx("n1", s.config);
    let offer = p.describe_node(&c).await.unwrap();
    for key in ["cpu", "memory", "pods"] {
        assert!(offer.capacity.iter().any(|kv| kv.key == key), "no {key} capacity: {offer:?}");
    }
    assert!(!offer.operating_system.is_empty() && !offer.architecture.is_empty());

    // plan: the same answer create gives, and no side effect.
    let pod = resolved_pod("web-0", UID);
    let r = pod_ref("web-0", UID);
    let plan = p.plan(&c, &pod).await;
    match &plan {
        Ok(plan) => assert!(plan.requests.iter().all(|req| !req.method.is_empty() && !req.url.is_empty())),
        Err(e) => assert!(matches!(e, CallError::Unsupported(_)), "{e:?}"),
    }
    assert!(is_not_found(&p.status(&c, &r).await), "plan created an instance");
    let broken = vkhost::plugin::ResolvedPod { pod: "{not json".into(), ..pod.clone() };
    for result in [p.plan(&c, &broken).await.map(|_| ()), p.create(&c, &broken, first_attempt()).await.map(|_| ())] {
        assert!(matches!(&result, Err(CallError::Provider(ProviderError::Invalid(_)))), "{result:?}");
    }

    // create: first attempt, then retries that must find the same instance.
    let first = p.create(&c, &pod, first_attempt()).await.unwrap();
    assert!(!first.instance_id.is_empty());
    assert_eq!(first.status.container_statuses.len(), 2, "{:?}", first.status);
    assert_eq!(first.status.init_container_statuses.len(), 1, "{:?}", first.status);
    if let Ok(plan) = &plan {
        assert_eq!(plan.annotations, first.annotations, "plan and create disagree");
    }
    let again = p.create(&c, &pod, retry()).await.unwrap();
    assert_eq!(again.instance_id, first.instance_id, "a retried create made a second instance");

    // status and list agree with create.
    let status = p.status(&c, &r).await.unwrap();
    assert_eq!(status.phase, first.status.phase);
    assert!(matches!(status.phase, PodPhase::Pending | PodPhase::Running), "{status:?}");
    let listed = p.list(&c).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((&listed[0].pod, &listed[0].instance_id), (&r, &first.instance_id));
    assert!(p.list(&ctx("other-node", s.config)).await.unwrap().is_empty(), "list leaks another node's instances");

    // update: every change is applied or reported, never dropped silently into an error.
    let changes = [PodChange::Image("web".into()), PodChange::ConfigMap("web-conf".into())];
    let updated = p.update(&c, &pod, &changes).await.unwrap();
    assert_eq!(updated.outcome.instance_id, first.instance_id);
    for not_applied in &updated.not_applied {
        assert!(changes.contains(&not_applied.change), "not-applied names a change never made: {not_applied:?}");
        assert!(!not_applied.reason.is_empty() && !not_applied.message.is_empty(), "{not_applied:?}");
    }
    let ghost = resolved_pod("ghost", "no-such-uid");
    assert!(is_not_found(&p.update(&c, &ghost, &changes).await));

    // usage leaves out pods without an instance.
    let usage = p.usage(&c, &[r.clone(), pod_ref("ghost", "no-such-uid")]).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].pod, r);
    assert_eq!(usage[0].containers.len(), 2);

    // streams: a target or unsupported.
    target_or_unsupported("logs", p.logs(&c, &r, "web", &log_opts()).await);
    target_or_unsupported("exec", p.exec(&c, &r, "web", &exec_opts()).await);
    target_or_unsupported("attach", p.attach(&c, &r, "web", &exec_opts()).await);
    target_or_unsupported("port-forward", p.port_forward(&c, &r, 8080).await);

    // delete, seen through as the host does: poll status until not-found, then finalize.
    match p.delete(&c, &r, DeleteReason::PodDeleted).await.unwrap() {
        Deletion::Gone => {}
        Deletion::InProgress(pending) => {
            assert!(pending.finalize.len() <= 1024, "finalize work over 1 KiB");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !is_not_found(&p.status(&c, &r).await) {
                assert!(Instant::now() < deadline, "the instance never went away");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !pending.finalize.is_empty() {
                p.finalize(&c, &r, &pending.finalize).await.unwrap();
                // Idempotent: a retry after a lost answer succeeds too.
                p.finalize(&c, &r, &pending.finalize).await.unwrap();
            }
        }
    }
    assert!(is_not_found(&p.status(&c, &r).await));
    assert!(p.list(&c).await.unwrap().is_empty());
    let err = p.delete(&c, &r, DeleteReason::Orphaned).await.unwrap_err();
    assert!(matches!(err, CallError::Provider(ProviderError::NotFound(_))) && !err.is_retryable(), "{err:?}");
    // Finalize with no work to do (the host never sends it, but a provider must not trap on it).
    let finalized = p.finalize(&c, &r, &[]).await;
    assert!(matches!(finalized, Ok(()) | Err(CallError::Unsupported(_))), "{finalized:?}");

    // Every failure above was the provider's typed answer: nothing trapped.
    let snapshot = format!("{:?}", p.stats().snapshot());
    assert!(!snapshot.contains("trap"), "{snapshot}");
}

fn first_attempt() -> CreateAttempt {
    CreateAttempt { may_exist: false }
}

fn retry() -> CreateAttempt {
    CreateAttempt { may_exist: true }
}

/// Linear memory is capped per call: an input that cannot fit is a typed error, and the next call
/// (a fresh instance) succeeds.
async fn an_input_past_the_memory_cap_is_refused_and_the_next_call_succeeds(s: &Subject) {
    let mut settings = s.settings();
    settings.limits.memory_mib = 64;
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings, vec![]).await.unwrap();
    // 80 MiB of config cannot be copied into 64 MiB of linear memory, whatever the language.
    let huge = format!("{{\"max_pods\": 5{}}}", " ".repeat(80 << 20));
    let err = p.describe_node(&ctx("n1", &huge)).await.unwrap_err();
    assert!(matches!(&err, CallError::MemoryExceeded { limit_mib: 64, .. }), "{err:?}");
    assert!(err.is_retryable());
    let offer = p.describe_node(&ctx("n1", s.config)).await.expect("the next call must succeed");
    assert!(!offer.capacity.is_empty());
}

/// A cap below what the provider needs to start refuses the load: the instance cannot even be
/// made (the host checks the exports by instantiating the component once at load).
async fn a_cap_below_the_providers_need_refuses_the_load(s: &Subject) {
    let mut settings = s.settings();
    settings.limits.memory_mib = 1;
    let err = Plugin::load(PluginRuntime::new().unwrap(), settings, vec![]).await.err().expect("loaded under 1 MiB");
    assert!(err.to_string().contains("growing memory"), "{err}");
}

/// A copy of `wasm` with a custom section appended: new bytes (a cache miss and a real compile,
/// as a new release), the same behaviour.
fn new_release(wasm: &Path, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(wasm).unwrap();
    let (name, payload) = (b"vkcube-conformance", b"release-2");
    bytes.extend_from_slice(&[0, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join("release-2.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Callers keep calling while the file is replaced and reloaded: no call fails, and the
/// provider's `kv` state outlives the version that wrote it.
async fn a_hot_reload_loses_no_call(s: &Subject) {
    let dir = scratch_dir("conformance-reload");
    let live = dir.join("provider.wasm");
    install(&s.path(), &live);
    let smoke = vec![("n1".to_owned(), s.config.to_owned())];
    let mut live_settings = s.settings();
    live_settings.path = live.clone();
    // The new release is compiled once, by Cranelift, while the calls go on (the baseline
    // compiler would add a second, background compile: twice the work on a busy test machine).
    live_settings.baseline_compile = false;
    live_settings.cache_dir = Some(dir.join("cache"));
    let p = Plugin::load(PluginRuntime::new().unwrap(), live_settings, smoke).await.unwrap();
    let c = ctx("n1", s.config);
    let r = pod_ref("web-0", UID);
    let made = p.create(&c, &resolved_pod("web-0", UID), first_attempt()).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop, answered, c, r) = (p.clone(), stop.clone(), answered.clone(), c.clone(), r.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match p.status(&c, &r).await {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.push(e.to_string());
                            0
                        }
                    };
                }
                failures
            })
        })
        .collect();
    let more_answers = async |n: u64| {
        let target = answered.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "callers got fewer than {n} answers in 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    more_answers(20).await;
    let before = p.summary().load.sha256.clone();
    install(&new_release(&s.path(), &dir), &live);
    let info = p.reload().await.expect("the new release loads");
    assert_eq!(info.name, s.name);
    assert_ne!(p.summary().load.sha256, before, "the new bytes are active");
    more_answers(20).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let failures = caller.await.unwrap();
        assert!(failures.is_empty(), "calls failed during the reload: {failures:?}");
    }
    // The instance the old version created is still there for the new one.
    assert_eq!(p.create(&c, &resolved_pod("web-0", UID), retry()).await.unwrap().instance_id, made.instance_id);
    assert_eq!(p.stats().snapshot().reloads_ok, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vkhost plugin check FILE --config FILE` as an author runs it: exit 0 and the report for a
/// config the provider accepts, exit 1 and the provider's reason for one it refuses.
fn vkhost_plugin_check_accepts_it(s: &Subject) {
    let dir = scratch_dir("conformance-check");
    let check = |config: &str| {
        let file = dir.join(format!("{}.json", config.len()));
        std::fs::write(&file, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vkhost"))
            .args(["plugin", "check"])
            .arg(s.path())
            .arg("--config")
            .arg(&file)
            .args(["--node", "conformance-node"])
            .env("XDG_CACHE_HOME", cache_home())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(s.config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("plugin      {} ", s.name)), "{out}");
    assert!(out.contains("vk:provider@0.2.0") && out.contains("accepted for node conformance-node"), "{out}");
    assert!(out.trim_end().ends_with("result      OK"), "{out}");

    let (code, out, err) = check(s.bad_config);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("rejects the config of node conformance-node") && err.contains(s.bad_key), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One module of tests per provider, the same checks in each.
macro_rules! conformance {
    ($provider:ident, $subject:expr) => {
        mod $provider {
            use super::*;

            #[tokio::test]
            async fn every_export_answers_well_typed_or_unsupported() {
                every_export_answers(&$subject).await;
            }

            #[tokio::test]
            async fn an_input_past_the_memory_cap_is_a_typed_error_and_the_next_call_succeeds() {
                an_input_past_the_memory_cap_is_refused_and_the_next_call_succeeds(&$subject).await;
            }

            #[tokio::test]
            async fn a_memory_cap_below_what_it_needs_refuses_the_load() {
                a_cap_below_the_providers_need_refuses_the_load(&$subject).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_hot_reload_under_calls_loses_no_call_and_keeps_its_state() {
                a_hot_reload_loses_no_call(&$subject).await;
            }

            #[test]
            fn vkhost_plugin_check_accepts_it_and_reports_a_refused_config() {
                vkhost_plugin_check_accepts_it(&$subject);
            }
        }
    };
}

conformance!(example, EXAMPLE);
conformance!(python, PYTHON);

/// The Python provider is the Rust example in another language: for the same inputs, the same
/// answers (up to the instance id's prefix and the time an instance started).
#[tokio::test]
async fn the_python_provider_answers_as_the_rust_example() {
    let (rust, python) = (EXAMPLE.load().await, PYTHON.load().await);
    let c = ctx("n1", r#"{"max_pods": 50}"#);
    for config in ["", "{}", r#"{"max_pods": 7}"#] {
        assert_eq!(
            python.validate_config("n1", config).await.unwrap(),
            rust.validate_config("n1", config).await.unwrap()
        );
    }
    for config in [r#"{"max_pods": 0}"#, r#"{"max_pods": 1001}"#, r#"{"pods": 1}"#, "not json"] {
        let (r, p) = (rust.validate_config("n1", config).await, python.validate_config("n1", config).await);
        let field = |e: &Result<String, CallError>| match e {
            Err(CallError::Provider(ProviderError::Invalid(i))) => (i.reason.clone(), i.field.starts_with("config")),
            other => panic!("{config}: {other:?}"),
        };
        assert_eq!(field(&p), field(&r), "{config}");
    }
    assert_eq!(format!("{:?}", python.describe_node(&c).await), format!("{:?}", rust.describe_node(&c).await));

    // A pod that reads one ConfigMap into its environment and mounts another.
    let mut pod = resolved_pod("web-0", UID);
    let mut object: serde_json::Value = serde_json::from_str(&pod.pod).unwrap();
    object["spec"]["containers"][0]["envFrom"] = serde_json::json!([{"configMapRef": {"name": "env-conf"}}]);
    pod.pod = object.to_string();
    let r = pod_ref("web-0", UID);
    let (made_r, made_p) = (
        rust.create(&c, &pod, first_attempt()).await.unwrap(),
        python.create(&c, &pod, first_attempt()).await.unwrap(),
    );
    let shape = |o: &vkhost::plugin::PodOutcome| {
        let names = |s: &[vkhost::plugin::ContainerStatus]| {
            s.iter().map(|s| (s.name.clone(), s.image.clone(), s.ready)).collect::<Vec<_>>()
        };
        (
            o.status.phase,
            o.status.pod_ip.clone(),
            names(&o.status.init_container_statuses),
            names(&o.status.container_statuses),
            o.annotations.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
            o.events.iter().map(|e| (e.kind, e.reason.clone())).collect::<Vec<_>>(),
        )
    };
    assert_eq!(shape(&made_p), shape(&made_r));

    let changes = [
        PodChange::ConfigMap("env-conf".into()),
        PodChange::ConfigMap("web-conf".into()),
        PodChange::Image("web".into()),
    ];
    let (up_r, up_p) =
        (rust.update(&c, &pod, &changes).await.unwrap(), python.update(&c, &pod, &changes).await.unwrap());
    let not_applied = |u: &vkhost::plugin::UpdateOutcome| {
        u.not_applied.iter().map(|n| (n.change.clone(), n.reason.clone())).collect::<Vec<_>>()
    };
    assert_eq!(not_applied(&up_p), not_applied(&up_r));
    assert_eq!(not_applied(&up_p), vec![(PodChange::ConfigMap("env-conf".into()), "EnvChangeNotApplied".to_owned())]);

    let kinds = |u: Vec<vkhost::plugin::PodUsage>| {
        u.into_iter()
            .map(|u| (u.pod, u.containers.into_iter().map(|c| (c.name, c.memory_usage_bytes)).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    let refs = [r.clone(), pod_ref("ghost", "no-such-uid")];
    assert_eq!(kinds(python.usage(&c, &refs).await.unwrap()), kinds(rust.usage(&c, &refs).await.unwrap()));
    assert!(matches!(python.logs(&c, &r, "web", &log_opts()).await, Err(CallError::Unsupported(_))));
    assert!(matches!(rust.logs(&c, &r, "web", &log_opts()).await, Err(CallError::Unsupported(_))));
    assert_eq!(python.delete(&c, &r, DeleteReason::PodDeleted).await.unwrap(), Deletion::Gone);
    assert_eq!(rust.delete(&c, &r, DeleteReason::PodDeleted).await.unwrap(), Deletion::Gone);
}
