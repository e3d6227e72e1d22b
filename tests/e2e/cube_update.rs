//! A running Cube pod follows the ConfigMaps and Secrets it references: a changed key of a mounted
//! ConfigMap or Secret reaches the instance (`update` → RenewCubePod with the new files); a change
//! of one read only as env is not applied and the pod says so, once (`EnvChangeNotApplied`), as a
//! kubelet leaves a running container's environment alone; a change made while the daemon was down
//! reaches it after the restart. Its service-link variables come from the node's watch of its
//! namespace's Services: a Service created before the pod is in them, and pods started while the
//! namespace is watched list no Service. (A binary of its own: one cluster holds at most 8 virtual
//! nodes.)

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret, Service};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vkcube_e2e::cube::{CubeEnv, pod_on_node};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, running_ready, wait_for};
use vkhost::pods::references::LINGER;

/// How long a change may take to reach the instance: the test config's status period is 2 s; the
/// watch usually brings it far sooner. Generous for a loaded 2-core machine.
const CHANGE_ARRIVES: Duration = Duration::from_secs(30);

/// File `key` of volume `volume` of the simulator's instance of pod `uid`, as the instance holds
/// it: inline ConfigMap files as text, Secret files base64-encoded.
async fn instance_file(env: &CubeEnv, uid: &str, volume: &str, key: &str) -> Option<String> {
    let inst = env.live_instances().await.into_iter().find(|i| i["uid"] == uid)?;
    let volumes = inst["pod"]["spec"]["volumes"].as_array()?.clone();
    let v = volumes.iter().find(|v| v["name"] == volume)?;
    let files = if v["configMap"].is_object() { &v["configMap"] } else { &v["secret"] };
    files[key].as_str().map(str::to_string)
}

/// The value of env var `name` of the instance's first container.
async fn instance_env(env: &CubeEnv, uid: &str, name: &str) -> Option<String> {
    let inst = env.live_instances().await.into_iter().find(|i| i["uid"] == uid)?;
    let vars = inst["pod"]["spec"]["containers"][0]["env"].as_array()?.clone();
    vars.iter().find(|v| v["name"] == name).and_then(|v| v["value"].as_str()).map(str::to_string)
}

/// Warning Events with `reason` on the pod of `uid`, each with how often it happened.
async fn warnings(events: &Api<Event>, uid: &str, reason: &str) -> Vec<i32> {
    let list = events.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid) && e.reason.as_deref() == Some(reason))
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| e.count.unwrap_or(1))
        .collect()
}

/// The daemon's gauge `name` (its first series).
async fn gauge(admin: std::net::SocketAddr, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{admin}/metrics")).await.ok()?.text().await.ok()?;
    let line = text.lines().find(|l| l.starts_with(&format!("{name}{{")))?;
    line.rsplit(' ').next()?.parse().ok()
}

async fn reference_watches(admin: std::net::SocketAddr) -> Option<u64> {
    gauge(admin, "vkhost_reference_watches").await
}

/// The Service LISTs one user makes, as the apiserver counts them: a FlowSchema of their own
/// (ahead of `system-nodes`, in the same priority level) whose dispatched requests the apiserver's
/// metrics count apart from everyone else's.
struct ServiceLists {
    admin: Client,
    schema: String,
}

impl ServiceLists {
    async fn of(admin: &Client, user: &str, name: &str) -> ServiceLists {
        let schema: FlowSchema = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "priorityLevelConfiguration": {"name": "system"},
                "matchingPrecedence": 100,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [{
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["services"],
                                       "namespaces": ["*"]}],
                }],
            },
        }))
        .unwrap();
        Api::<FlowSchema>::all(admin.clone()).create(&PostParams::default(), &schema).await.unwrap();
        ServiceLists { admin: admin.clone(), schema: name.to_string() }
    }

    /// The LISTs counted so far.
    async fn count(&self) -> u64 {
        let request = http::Request::get("/metrics").body(vec![]).unwrap();
        let text = self.admin.request_text(request).await.unwrap();
        let series = format!("apiserver_flowcontrol_dispatched_requests_total{{flow_schema=\"{}\"", self.schema);
        text.lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn remove(self) {
        let _ = Api::<FlowSchema>::all(self.admin).delete(&self.schema, &DeleteParams::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_mounted_configmap_or_secret_reaches_the_instance_and_an_env_only_change_is_reported_once() {
    let cluster = cluster();
    let ns = cluster.namespace("cmupdate").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, data) in [("app-config", json!({"app.conf": "color=blue"})), ("env-config", json!({"MODE": "blue"}))] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "app-secret"}, "type": "Opaque",
        "stringData": {"password": "hunter2"}}))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();

    // Files from app-config and app-secret; env MODE from env-config.
    let mut pod = pod_on_node("app", &node, json!({}));
    let spec = pod.spec.as_mut().unwrap();
    spec.volumes = Some(
        serde_json::from_value(json!([
            {"name": "config", "configMap": {"name": "app-config"}},
            {"name": "creds", "secret": {"secretName": "app-secret"}},
        ]))
        .unwrap(),
    );
    let web = &mut spec.containers[0];
    web.volume_mounts = Some(
        serde_json::from_value(json!([
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "creds", "mountPath": "/etc/creds"},
        ]))
        .unwrap(),
    );
    web.env = Some(
        serde_json::from_value(json!([
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "env-config", "key": "MODE"}}},
        ]))
        .unwrap(),
    );
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = wait_for(Duration::from_secs(90), "app Running", || async {
        pods.get("app").await.ok().filter(running_ready).and_then(|p| p.uid())
    })
    .await;
    assert_eq!(instance_file(&env, &uid, "config", "app.conf").await.as_deref(), Some("color=blue"));
    assert_eq!(instance_file(&env, &uid, "creds", "password").await.as_deref(), Some("aHVudGVyMg=="));
    assert_eq!(instance_env(&env, &uid, "MODE").await.as_deref(), Some("blue"));
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    wait_for(CHANGE_ARRIVES, "three objects watched for the pod", || async {
        (reference_watches(admin).await == Some(3)).then_some(())
    })
    .await;

    // A key of the mounted ConfigMap changes: the instance gets the new file.
    let patch = |data: Value| Patch::Merge(json!({"data": data}));
    cms.patch("app-config", &PatchParams::default(), &patch(json!({"app.conf": "color=green"}))).await.unwrap();
    wait_for(CHANGE_ARRIVES, "the new app.conf on the instance", || async {
        (instance_file(&env, &uid, "config", "app.conf").await.as_deref() == Some("color=green")).then_some(())
    })
    .await;

    // A change made while the daemon is down (a restart, a failover) is not lost: the pod records
    // what its instance was given, and the new watch's first answer differs from that.
    daemon.stop().await;
    cms.patch("app-config", &PatchParams::default(), &patch(json!({"app.conf": "color=yellow"}))).await.unwrap();
    let daemon = start(&config).await;
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    wait_for(CHANGE_ARRIVES, "the app.conf changed while the daemon was down on the instance", || async {
        (instance_file(&env, &uid, "config", "app.conf").await.as_deref() == Some("color=yellow")).then_some(())
    })
    .await;

    // The mounted Secret changes: the instance gets the new file (base64, as Cube holds secrets).
    secrets
        .patch("app-secret", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": "hunter3"}})))
        .await
        .unwrap();
    wait_for(CHANGE_ARRIVES, "the new password on the instance", || async {
        (instance_file(&env, &uid, "creds", "password").await.as_deref() == Some("aHVudGVyMw==")).then_some(())
    })
    .await;

    // The ConfigMap read only as env changes: the container keeps its environment, and the pod
    // says why, once.
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    cms.patch("env-config", &PatchParams::default(), &patch(json!({"MODE": "green"}))).await.unwrap();
    wait_for(CHANGE_ARRIVES, "an EnvChangeNotApplied warning on the pod", || async {
        (!warnings(&events, &uid, "EnvChangeNotApplied").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(instance_env(&env, &uid, "MODE").await.as_deref(), Some("blue"), "the environment stays as it was");

    // A later change is applied as before, and the env change is not reported again.
    cms.patch("app-config", &PatchParams::default(), &patch(json!({"app.conf": "color=red"}))).await.unwrap();
    wait_for(CHANGE_ARRIVES, "the newest app.conf on the instance", || async {
        (instance_file(&env, &uid, "config", "app.conf").await.as_deref() == Some("color=red")).then_some(())
    })
    .await;
    assert_eq!(warnings(&events, &uid, "EnvChangeNotApplied").await, [1]);
    let p = pods.get("app").await.unwrap();
    assert!(running_ready(&p), "the pod still runs: {:?}", p.status);

    // The pod goes: so do its watches, once they lingered for the pods that might follow.
    pods.delete("app", &DeleteParams::default()).await.unwrap();
    wait_for(CHANGE_ARRIVES + LINGER, "no object watched once the pod is gone", || async {
        (reference_watches(admin).await == Some(0)).then_some(())
    })
    .await;
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_get_the_links_of_services_created_before_them_from_one_service_watch_per_namespace() {
    const BURST: usize = 8;
    let cluster = cluster();
    let ns = cluster.namespace("svclinks").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    let node = node_of(&ns.client, &cid).await.name_any();
    // The node's own identity reads the Services (Node,RBAC authorizers, NodeRestriction).
    let lists = ServiceLists::of(&ns.client, &format!("system:node:{node}"), &format!("svclinks-{cid}")).await;

    let services: Api<Service> = Api::namespaced(ns.client.clone(), &ns.name);
    let service = |name: &str, port: u16| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port}]}}))
        .unwrap()
    };
    let ip = |s: Service| s.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    let db = ip(services.create(&PostParams::default(), &service("db", 5432)).await.unwrap());
    let master = ip(Api::<Service>::namespaced(ns.client.clone(), "default").get("kubernetes").await.unwrap());

    // The first pod of the namespace: its links come from the watches' first lists.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod_on_node("first", &node, json!({}))).await.unwrap();
    let uid = wait_for(Duration::from_secs(90), "first Running", || async {
        pods.get("first").await.ok().filter(running_ready).and_then(|p| p.uid())
    })
    .await;
    assert_eq!(instance_env(&env, &uid, "DB_SERVICE_HOST").await, Some(db.clone()));
    assert_eq!(instance_env(&env, &uid, "DB_SERVICE_PORT_MAIN").await.as_deref(), Some("5432"));
    assert_eq!(instance_env(&env, &uid, "KUBERNETES_SERVICE_HOST").await, Some(master));
    let listed = lists.count().await;
    assert!(listed >= 2, "the watches of the namespace and of `default` list once each: {listed}");
    wait_for(CHANGE_ARRIVES, "the namespace's and `default`'s Services watched", || async {
        (gauge(admin, "vkhost_service_watches").await == Some(2)).then_some(())
    })
    .await;

    // A Service created while the namespace is watched reaches the pods started after it, and a
    // burst of them lists no Service.
    let cache = ip(services.create(&PostParams::default(), &service("cache", 6379)).await.unwrap());
    for i in 0..BURST {
        pods.create(&PostParams::default(), &pod_on_node(&format!("burst-{i}"), &node, json!({}))).await.unwrap();
    }
    let uids = wait_for(Duration::from_secs(120), "the burst Running", || async {
        let all = pods.list(&ListParams::default()).await.ok()?.items;
        let running: Vec<String> = all.iter().filter(|p| running_ready(p)).filter_map(|p| p.uid()).collect();
        (running.len() == BURST + 1).then_some(running)
    })
    .await;
    for started in &uids {
        assert_eq!(instance_env(&env, started, "DB_SERVICE_HOST").await, Some(db.clone()));
        let want = (*started != uid).then(|| cache.clone());
        assert_eq!(instance_env(&env, started, "CACHE_SERVICE_HOST").await, want, "env is fixed at a pod's start");
    }
    assert_eq!(lists.count().await, listed, "pods started while their namespace was watched listed Services");

    // The pods go: the namespaces stay watched a while for the pods that might follow, then not.
    pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    wait_for(CHANGE_ARRIVES + LINGER, "no Service watched once the pods are gone", || async {
        (gauge(admin, "vkhost_service_watches").await == Some(0)).then_some(())
    })
    .await;
    lists.remove().await;
    daemon.stop().await;
    env.stop().await;
}
