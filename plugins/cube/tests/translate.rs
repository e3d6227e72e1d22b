//! The translation of the guide's manifests (and harder pods) into CreateCubePod requests, and every
//! way a pod is refused before anything is created.

#![allow(clippy::type_complexity)] // tables of cases

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cube_provider::{CreateRequest, TranslateError, translate};
use serde_json::{Value, json};
use vk_provider_sdk::{ConfigMap, ContainerEnv, ResolvedPod, Secret, ServiceAccountToken, VolumeClaim};

const NODE: &str = "uk8s-abcd1234-vk-x7k2p";

fn config() -> String {
    json!({
        "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub", "private_key": "priv",
        "uhub_hosts": ["uhub.service.ucloud.cn", "uhub.an-link.com"],
        "registries": ["myhub.an-link.com"],
    })
    .to_string()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn pod(name: &str) -> Value {
    serde_yaml_ng::from_str(&fixture(name)).unwrap()
}

fn resolved(pod: &Value) -> ResolvedPod {
    ResolvedPod::from_pod_json(pod.to_string())
}

fn ok(pod: &ResolvedPod) -> CreateRequest {
    translate(NODE, &config(), pod).unwrap_or_else(|e| panic!("translation failed: {e:?}"))
}

/// The Cube pod the request carries, decoded from its base64 `Pod` parameter.
fn cube_pod(req: &CreateRequest) -> Value {
    let yaml = String::from_utf8(B64.decode(&req.params["Pod"]).unwrap()).unwrap();
    assert_eq!(yaml, req.pod_yaml);
    serde_yaml_ng::from_str(&yaml).unwrap()
}

fn limits(pod: &Value, kind: &str) -> Vec<(String, String)> {
    pod["spec"][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let l = &c["resources"]["limits"];
            (l["cpu"].as_str().unwrap().to_string(), l["memory"].as_str().unwrap().to_string())
        })
        .collect()
}

fn reasons(req: &CreateRequest) -> Vec<&str> {
    req.events.iter().map(|e| e.reason.as_str()).collect()
}

fn secret(name: &str, kind: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        name: name.into(),
        kind: kind.into(),
        data: data.iter().map(|(k, v)| vk_provider_sdk::entry(*k, v.to_vec())).collect(),
    }
}

#[test]
fn guide_pod_becomes_a_cube_instance_of_its_exact_size() {
    let req = ok(&resolved(&pod("guide-pod-nginx.yaml")));
    let params: Vec<(&str, &str)> =
        req.params.iter().filter(|(k, _)| *k != "Pod").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        params,
        vec![
            ("ChargeType", "Postpay"),
            ("Group", NODE),
            ("Name", "default-nginx"),
            ("Quantity", "1"),
            ("Region", "cn-bj2"),
            ("SubnetId", "subnet-def"),
            ("VPCId", "uvnet-abc"),
            ("Zone", "cn-bj2-05"),
        ]
    );
    let p = cube_pod(&req);
    assert_eq!(p["metadata"]["name"], "nginx");
    assert_eq!(p["metadata"]["namespace"], "default");
    assert_eq!(p["metadata"]["uid"], "6f1c2d3e-0000-4000-8000-000000000001");
    assert_eq!(p["metadata"]["annotations"]["vk.cube.ucloud.cn/node"], NODE);
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    assert_eq!(p["spec"]["containers"][0]["image"], "uhub.an-link.com/ucloud/nginx:latest");
    assert_eq!(limits(&p, "containers"), vec![("2".into(), "2Gi".into())]);
    assert_eq!(req.size.to_string(), "2-2Gi");
    assert_eq!(req.annotations, vec![vk_provider_sdk::kv("cube.ucloud.cn/size", "2-2Gi")]);
    assert!(req.events.is_empty(), "{:?}", req.events);
    assert!(req.settings.eip.is_none());
}

#[test]
fn guide_service_account_secret_is_mounted_inline() {
    let mut r = resolved(&pod("guide-deployment-sa-secret.yaml"));
    r.secrets.push(secret(
        "default-token",
        "kubernetes.io/service-account-token",
        &[("token", b"eyJhbGciOi.token"), ("ca.crt", b"-----BEGIN CERTIFICATE-----"), ("namespace", b"default")],
    ));
    let req = ok(&r);
    let p = cube_pod(&req);
    let vol = &p["spec"]["volumes"][0];
    assert_eq!(vol["name"], "default-token");
    assert_eq!(vol["secret"]["token"], B64.encode("eyJhbGciOi.token"));
    assert_eq!(vol["secret"]["namespace"], B64.encode("default"));
    let mount = &p["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(mount["readOnly"], true);
    // No requests: the node's default size.
    assert_eq!(req.size.to_string(), "1-2Gi");
    assert_eq!(reasons(&req), vec!["DefaultSize"]);
    assert_eq!(limits(&p, "containers"), vec![("1".into(), "2Gi".into())]);
}

#[test]
fn a_missing_secret_volume_waits_for_the_secret() {
    let err = translate(NODE, &config(), &resolved(&pod("guide-deployment-sa-secret.yaml"))).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("Secret default-token")), "{err:?}");
}

fn udisk_pod(pv: Option<Value>) -> ResolvedPod {
    let mut r = resolved(&pod("guide-pod-udisk.yaml"));
    r.claims.push(VolumeClaim {
        claim_name: "logdisk-claim".into(),
        claim: fixture("guide-pvc-udisk.json"),
        volume: pv.map(|v| v.to_string()),
    });
    r
}

fn guide_pv() -> Value {
    serde_json::from_str(&fixture("guide-pv-udisk.json")).unwrap()
}

#[test]
fn guide_udisk_claim_becomes_a_udisk_volume() {
    let req = ok(&udisk_pod(Some(guide_pv())));
    let p = cube_pod(&req);
    assert_eq!(
        p["spec"]["volumes"][0],
        json!({"name": "log", "udisk": {"id": "bsm-2x4lqkq3", "fs": "ext4", "forceFormat": false}})
    );
    assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0], json!({"name": "log", "mountPath": "/data"}));
}

#[test]
fn udisk_claims_are_checked_before_anything_is_created() {
    let mut xfs = guide_pv();
    xfs["spec"]["csi"]["fsType"] = json!("xfs");
    let mut other_driver = guide_pv();
    other_driver["spec"]["csi"]["driver"] = json!("ebs.csi.aws.com");
    let mut host_path = guide_pv();
    host_path["spec"].as_object_mut().unwrap().remove("csi");
    host_path["spec"]["hostPath"] = json!({"path": "/mnt"});
    let cases = [
        (xfs, "UnsupportedFilesystem", "fsType xfs"),
        (other_driver, "UnsupportedVolume", "ebs.csi.aws.com"),
        (host_path, "UnsupportedVolume", "type hostPath"),
    ];
    for (pv, reason, needle) in cases {
        match translate(NODE, &config(), &udisk_pod(Some(pv))).unwrap_err() {
            TranslateError::Invalid(e) => {
                assert_eq!(e.reason, reason);
                assert_eq!(e.field, "spec.volumes[0].persistentVolumeClaim");
                assert!(e.message.contains(needle), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }
    let err = translate(NODE, &config(), &udisk_pod(None)).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("not bound yet")), "{err:?}");
    let err = translate(NODE, &config(), &resolved(&pod("guide-pod-udisk.yaml"))).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("logdisk-claim")), "{err:?}");
}

#[test]
fn nfs_persistent_volumes_carry_their_mount_options() {
    let pv = json!({"metadata": {"name": "nfs-pv"}, "spec": {"nfs": {"server": "10.0.0.9", "path": "/share"}, "mountOptions": ["vers=4.0", "noresvport"]}});
    let p = cube_pod(&ok(&udisk_pod(Some(pv))));
    assert_eq!(
        p["spec"]["volumes"][0],
        json!({"name": "log", "nfs": {"address": "10.0.0.9:/share", "mountOption": "vers=4.0,noresvport"}})
    );
}

#[test]
fn guide_self_hosted_registry_pull_secret_carries_address_and_vpc() {
    let mut r = resolved(&pod("guide-deployment-myhub.yaml"));
    r.secrets.push(secret(
        "myhub",
        "kubernetes.io/dockerconfigjson",
        &[(".dockerconfigjson", fixture("guide-dockerconfig.json").as_bytes())],
    ));
    let p = cube_pod(&ok(&r));
    assert_eq!(
        p["spec"]["imagePullSecrets"],
        json!([{"registryServer": "myhub.an-link.com", "username": "user-xxx", "password": "passwd-yyy", "registryaddr": "10.9.8.7", "vpcId": "uvnet-xxx"}])
    );
}

#[test]
fn self_hosted_registries_must_be_allowed_by_the_node() {
    let strict = json!({
        "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub", "private_key": "priv",
    })
    .to_string();
    let err = translate(NODE, &strict, &resolved(&pod("guide-deployment-myhub.yaml"))).unwrap_err();
    let TranslateError::Invalid(e) = err else { panic!() };
    assert_eq!((e.reason.as_str(), e.field.as_str()), ("ImageRegistryNotAllowed", "spec.containers[0].image"));
    assert!(e.message.contains("myhub.an-link.com") && e.message.contains("uhub.service.ucloud.cn"), "{}", e.message);
}

fn kube_api_access() -> ResolvedPod {
    let mut r = resolved(&pod("pod-kube-api-access.yaml"));
    r.config_maps.push(ConfigMap {
        name: "kube-root-ca.crt".into(),
        data: vec![vk_provider_sdk::kv("ca.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")],
        binary_data: vec![],
    });
    r.tokens.push(ServiceAccountToken {
        volume_name: "kube-api-access-x7k2p".into(),
        path: "token".into(),
        token: "eyJhbGciOiJSUzI1NiJ9.minted".into(),
        expires_at: "2026-11-26T17:00:00Z".into(),
        audience: "https://kubernetes.default.svc".into(),
    });
    r
}

#[test]
fn the_automatic_token_projection_becomes_a_secret_volume_at_the_same_path() {
    let req = ok(&kube_api_access());
    let p = cube_pod(&req);
    let vol = &p["spec"]["volumes"][0];
    assert_eq!(vol["name"], "kube-api-access-x7k2p");
    let files = vol["secret"].as_object().unwrap();
    let decoded: Vec<(String, String)> = files
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(B64.decode(v.as_str().unwrap()).unwrap()).unwrap()))
        .collect();
    assert_eq!(
        decoded,
        vec![
            ("ca.crt".into(), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
            ("namespace".into(), "team-a".into()),
            ("token".into(), "eyJhbGciOiJSUzI1NiJ9.minted".into()),
        ]
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    // Limits stand in for absent requests.
    assert_eq!(req.size.to_string(), "500m-1Gi");
    assert_eq!(req.params["Tag"], "team-a");
    assert!(req.events.is_empty(), "{:?}", req.events);
}

#[test]
fn projections_wait_for_their_token_and_refuse_other_sources() {
    let mut r = kube_api_access();
    r.tokens.clear();
    let err = translate(NODE, &config(), &r).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("serviceAccountToken")), "{err:?}");

    let mut p = pod("pod-kube-api-access.yaml");
    p["spec"]["volumes"][0]["projected"]["sources"]
        .as_array_mut()
        .unwrap()
        .push(json!({"clusterTrustBundle": {"signerName": "x", "path": "b.pem"}}));
    let mut r = kube_api_access();
    r.pod = p.to_string();
    let TranslateError::Invalid(e) = translate(NODE, &config(), &r).unwrap_err() else { panic!() };
    assert_eq!(
        (e.reason.as_str(), e.field.as_str()),
        ("UnsupportedProjection", "spec.volumes[0].projected.sources[3].clusterTrustBundle")
    );

    let mut p = pod("pod-kube-api-access.yaml");
    p["spec"]["volumes"][0]["projected"]["sources"][2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] =
        json!("spec.nodeName");
    r.pod = p.to_string();
    let TranslateError::Invalid(e) = translate(NODE, &config(), &r).unwrap_err() else { panic!() };
    assert_eq!(e.field, "spec.volumes[0].projected.sources[2].downwardAPI.items[0].fieldRef.fieldPath");
    assert!(e.message.contains("spec.nodeName"));
}

fn everything() -> ResolvedPod {
    let mut r = resolved(&pod("pod-everything.yaml"));
    r.env.push(ContainerEnv {
        container: "web".into(),
        vars: vec![vk_provider_sdk::kv("MODE", "production"), vk_provider_sdk::kv("DB_PASSWORD", "s3cr3t")],
    });
    r.config_maps.push(ConfigMap {
        name: "web-config".into(),
        data: vec![vk_provider_sdk::kv("web.conf", "listen 8080\n"), vk_provider_sdk::kv("unused", "x")],
        binary_data: vec![],
    });
    r.secrets.push(secret("web-tls", "kubernetes.io/tls", &[("tls.crt", b"CRT"), ("tls.key", b"KEY")]));
    r
}

#[test]
fn every_field_of_the_cube_dialect_is_carried() {
    let req = ok(&everything());
    let p = cube_pod(&req);
    let spec = &p["spec"];
    assert_eq!(spec["restartPolicy"], "OnFailure");
    assert_eq!(spec["hostname"], "web-0");
    assert_eq!(spec["hostAliases"], json!([{"ip": "10.0.0.10", "hostnames": ["db.internal"]}]));
    assert_eq!(spec["dnsConfig"], json!({"nameservers": ["10.0.0.2"]}));
    let web = &spec["containers"][0];
    assert_eq!(web["command"], json!(["/bin/web"]));
    assert_eq!(web["args"], json!(["--port", "8080"]));
    assert_eq!(web["workingDir"], "/srv");
    assert_eq!(
        web["env"],
        json!([{"name": "MODE", "value": "production"}, {"name": "DB_PASSWORD", "value": "s3cr3t"}])
    );
    assert_eq!(
        web["volumeMounts"][0],
        json!({"name": "config", "mountPath": "/etc/web/web.conf", "subPath": "web.conf"})
    );
    assert_eq!(spec["initContainers"][0]["command"], json!(["/migrate"]));
    assert_eq!(spec["initContainers"][0]["args"], json!(["--up"]));
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "config", "configMap": {"web.conf": "listen 8080\n"}},
            {"name": "tls", "secret": {"tls.crt": B64.encode("CRT"), "tls.key": B64.encode("KEY")}},
            {"name": "shared", "nfs": {"address": "10.0.0.50:/exports/shop"}},
            {"name": "cache", "emptyDir": {}},
        ])
    );
    // Effective requests: containers 800m/1280Mi, init 1/512Mi → cpu 1, memory 1280Mi → 1-2Gi.
    assert_eq!(req.size.to_string(), "1-2Gi");
    assert_eq!(limits(&p, "containers"), vec![("800m".into(), "1792Mi".into()), ("200m".into(), "256Mi".into())]);
    assert_eq!(limits(&p, "initContainers"), vec![("1".into(), "2Gi".into())]);
    assert_eq!(reasons(&req), vec!["FieldsIgnored", "SizeRounded", "FileModeIgnored"]);
    assert!(req.events[1].message.contains("rounded up to the Cube size 1-2Gi"), "{}", req.events[1].message);
    // Billing and the Cube-side annotations.
    assert_eq!((req.params["ChargeType"].as_str(), req.params["Quantity"].as_str()), ("Month", "0"));
    let ann = &p["metadata"]["annotations"];
    assert_eq!(ann["cube.ucloud.cn/cube-eip-release"], "false");
    assert_eq!(ann["cube.ucloud.cn/size"], "1-2Gi");
    assert!(ann.get("kubectl.kubernetes.io/last-applied-configuration").is_none());
    assert!(p["metadata"].get("labels").is_none());
    let eip = req.settings.eip.as_ref().unwrap();
    assert_eq!((eip.bandwidth, eip.pay_mode.api(), eip.charge_type.api(), eip.quantity), (5, "Traffic", "Month", 0));
}

#[test]
fn container_limits_always_add_up_to_one_table_size() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("100m", "100Mi")], "500m-512Mi"),
        (&[("100m", "100Mi"), ("100m", "100Mi"), ("100m", "100Mi")], "500m-512Mi"),
        (&[("1500m", "3Gi"), ("250m", "")], "2-4Gi"),
        (&[("", ""), ("", "")], "1-2Gi"),
        (&[("7", "15Gi"), ("1", "1Gi")], "8-16Gi"),
    ];
    for (asked, size) in cases {
        let containers: Vec<Value> = asked
            .iter()
            .enumerate()
            .map(|(i, (cpu, mem))| {
                let mut requests = serde_json::Map::new();
                if !cpu.is_empty() {
                    requests.insert("cpu".into(), json!(cpu));
                }
                if !mem.is_empty() {
                    requests.insert("memory".into(), json!(mem));
                }
                json!({"name": format!("c{i}"), "image": "uhub.service.ucloud.cn/a/b:1", "resources": {"requests": requests}})
            })
            .collect();
        let p = json!({"metadata": {"name": "p", "namespace": "d", "uid": "u-1"}, "spec": {"containers": containers}});
        let req = ok(&resolved(&p));
        assert_eq!(req.size.to_string(), *size, "{asked:?}");
        let cube = cube_pod(&req);
        let l = limits(&cube, "containers");
        let cpu: u64 = l.iter().map(|(c, _)| cube_provider::sizes::parse_cpu_millis(c).unwrap()).sum();
        let mem: u64 = l.iter().map(|(_, m)| cube_provider::sizes::parse_memory_bytes(m).unwrap()).sum();
        assert_eq!((cpu, mem), (req.size.cpu_millis, req.size.memory_bytes()), "{asked:?} → {l:?}");
        assert!(l.iter().all(|(c, m)| c != "0" && m != "0"), "{l:?}");
    }
}

/// One change to a valid pod, and the refusal it must cause.
type Mutation = fn(&mut Value);

#[test]
fn pods_cube_cannot_run_are_refused_naming_the_field() {
    let cases: &[(&str, Mutation, &str, &str)] = &[
        ("hostNetwork", |p| p["spec"]["hostNetwork"] = json!(true), "UnsupportedField", "spec.hostNetwork"),
        ("hostPID", |p| p["spec"]["hostPID"] = json!(true), "UnsupportedField", "spec.hostPID"),
        ("hostIPC", |p| p["spec"]["hostIPC"] = json!(true), "UnsupportedField", "spec.hostIPC"),
        (
            "shareProcessNamespace",
            |p| p["spec"]["shareProcessNamespace"] = json!(true),
            "UnsupportedField",
            "spec.shareProcessNamespace",
        ),
        ("restartPolicy", |p| p["spec"]["restartPolicy"] = json!("Sometimes"), "InvalidPod", "spec.restartPolicy"),
        (
            "privileged",
            |p| p["spec"]["containers"][1]["securityContext"] = json!({"privileged": true}),
            "UnsupportedField",
            "spec.containers[1].securityContext.privileged",
        ),
        (
            "hostPort",
            |p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}]),
            "UnsupportedField",
            "spec.containers[0].ports[0].hostPort",
        ),
        (
            "volumeDevices",
            |p| p["spec"]["containers"][0]["volumeDevices"] = json!([{"name": "x", "devicePath": "/dev/x"}]),
            "UnsupportedField",
            "spec.containers[0].volumeDevices",
        ),
        (
            "sidecar",
            |p| p["spec"]["initContainers"][0]["restartPolicy"] = json!("Always"),
            "UnsupportedField",
            "spec.initContainers[0].restartPolicy",
        ),
        (
            "long container name",
            |p| p["spec"]["containers"][1]["name"] = json!("a-container-name-that-is-much-too-long"),
            "InvalidContainerName",
            "spec.containers[1].name",
        ),
        (
            "dotted container name",
            |p| p["spec"]["containers"][1]["name"] = json!("log.agent"),
            "InvalidContainerName",
            "spec.containers[1].name",
        ),
        (
            "ephemeral storage",
            |p| p["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] = json!("20Gi"),
            "EphemeralStorageTooLarge",
            "spec.containers[0].resources.limits.ephemeral-storage",
        ),
        (
            "hostPath",
            |p| p["spec"]["volumes"][3] = json!({"name": "cache", "hostPath": {"path": "/var/log"}}),
            "UnsupportedVolume",
            "spec.volumes[3].hostPath",
        ),
        (
            "downwardAPI volume",
            |p| p["spec"]["volumes"][3] = json!({"name": "cache", "downwardAPI": {"items": []}}),
            "UnsupportedVolume",
            "spec.volumes[3].downwardAPI",
        ),
        (
            "other csi",
            |p| p["spec"]["volumes"][3] = json!({"name": "cache", "csi": {"driver": "x"}}),
            "UnsupportedVolume",
            "spec.volumes[3].csi",
        ),
        (
            "subPathExpr",
            |p| p["spec"]["containers"][0]["volumeMounts"][0]["subPathExpr"] = json!("$(POD)"),
            "UnsupportedVolumeMount",
            "spec.containers[0].volumeMounts[0].subPathExpr",
        ),
        (
            "mount of no volume",
            |p| p["spec"]["containers"][1]["volumeMounts"][0]["name"] = json!("nope"),
            "InvalidVolumeMount",
            "spec.containers[1].volumeMounts[0].name",
        ),
        (
            "docker hub",
            |p| p["spec"]["containers"][1]["image"] = json!("nginx"),
            "ImageRegistryNotAllowed",
            "spec.containers[1].image",
        ),
        (
            "foreign registry",
            |p| p["spec"]["initContainers"][0]["image"] = json!("ghcr.io/a/b:1"),
            "ImageRegistryNotAllowed",
            "spec.initContainers[0].image",
        ),
        (
            "too large",
            |p| p["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("9"),
            "PodTooLarge",
            "spec.containers[*].resources.requests",
        ),
        (
            "too much memory",
            |p| p["spec"]["initContainers"][0]["resources"]["requests"]["memory"] = json!("17Gi"),
            "PodTooLarge",
            "spec.containers[*].resources.requests",
        ),
        (
            "bad quantity",
            |p| p["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("lots"),
            "InvalidResources",
            "spec.containers[0].resources.requests.cpu",
        ),
        (
            "bad memory",
            |p| p["spec"]["containers"][1]["resources"]["requests"]["memory"] = json!("1 GB"),
            "InvalidResources",
            "spec.containers[1].resources.requests.memory",
        ),
        (
            "bad limit standing in",
            |p| p["spec"]["containers"][1]["resources"] = json!({"limits": {"cpu": "x"}}),
            "InvalidResources",
            "spec.containers[1].resources.limits.cpu",
        ),
        (
            "bad ephemeral storage",
            |p| p["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] = json!("lots"),
            "InvalidResources",
            "spec.containers[0].resources.limits.ephemeral-storage",
        ),
        (
            "ephemeral request",
            |p| p["spec"]["containers"][1]["resources"]["requests"]["ephemeral-storage"] = json!("11Gi"),
            "EphemeralStorageTooLarge",
            "spec.containers[1].resources.requests.ephemeral-storage",
        ),
        (
            "privileged init",
            |p| p["spec"]["initContainers"][0]["securityContext"] = json!({"privileged": true}),
            "UnsupportedField",
            "spec.initContainers[0].securityContext.privileged",
        ),
        (
            "resourceFieldRef",
            |p| p["spec"]["volumes"][3] = json!({"name": "cache", "projected": {"sources": [{"downwardAPI": {"items": [{"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}}]}}),
            "UnsupportedProjection",
            "spec.volumes[3].projected.sources[0].downwardAPI.items[0].resourceFieldRef",
        ),
        (
            "empty image",
            |p| p["spec"]["containers"][1]["image"] = json!(""),
            "InvalidImage",
            "spec.containers[1].image",
        ),
        (
            "bad annotation",
            |p| p["metadata"]["annotations"]["cube.ucloud.cn/cube-eip-paymode"] = json!("sharebandwidth"),
            "InvalidAnnotation",
            "metadata.annotations[cube.ucloud.cn/cube-eip-bandwidth]",
        ),
        ("no uid", |p| p["metadata"]["uid"] = json!(""), "InvalidPod", "metadata.uid"),
        ("no containers", |p| p["spec"]["containers"] = json!([]), "InvalidPod", "spec.containers"),
        (
            "item path",
            |p| p["spec"]["volumes"][0]["configMap"]["items"][0]["path"] = json!("../x"),
            "InvalidVolume",
            "spec.volumes[0].configMap.items[0].path",
        ),
    ];
    for (name, mutate, reason, field) in cases {
        let mut r = everything();
        let mut p: Value = serde_json::from_str(&r.pod).unwrap();
        mutate(&mut p);
        r.pod = p.to_string();
        match translate(NODE, &config(), &r) {
            Err(TranslateError::Invalid(e)) => {
                assert_eq!((e.reason.as_str(), e.field.as_str()), (*reason, *field), "{name}: {}", e.message);
                assert!(!e.message.is_empty());
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn config_and_secret_data_over_30_mib_is_refused() {
    let mut r = everything();
    r.secrets[0].data.push(vk_provider_sdk::entry("big", vec![b'x'; 31 * 1024 * 1024]));
    let TranslateError::Invalid(e) = translate(NODE, &config(), &r).unwrap_err() else { panic!() };
    assert_eq!((e.reason.as_str(), e.field.as_str()), ("ConfigDataTooLarge", "spec.volumes"));
    assert!(e.message.contains("30 MiB"));
}

#[test]
fn config_map_items_select_and_rename_keys_and_binary_data_goes_base64() {
    let mut r = everything();
    let mut p: Value = serde_json::from_str(&r.pod).unwrap();
    p["spec"]["volumes"][0]["configMap"]["items"] = json!([{"key": "web.conf", "path": "conf/main.conf"}]);
    r.pod = p.to_string();
    let v = cube_pod(&ok(&r));
    assert_eq!(v["spec"]["volumes"][0]["configMap"], json!({"conf/main.conf": "listen 8080\n"}));

    r.config_maps[0].binary_data.push(vk_provider_sdk::entry("logo.png", vec![0x89, 0x50, 0xff]));
    p["spec"]["volumes"][0]["configMap"].as_object_mut().unwrap().remove("items");
    r.pod = p.to_string();
    let v = cube_pod(&ok(&r));
    let files = &v["spec"]["volumes"][0]["secret"];
    assert_eq!(files["logo.png"], B64.encode([0x89, 0x50, 0xff]));
    assert_eq!(files["web.conf"], B64.encode("listen 8080\n"));

    // A missing optional ConfigMap mounts an empty directory's worth of files.
    p["spec"]["volumes"][0]["configMap"] = json!({"name": "absent", "optional": true});
    r.pod = p.to_string();
    let v = cube_pod(&ok(&r));
    assert_eq!(v["spec"]["volumes"][0]["configMap"], json!({}));
}

#[test]
fn misspelt_annotations_warn_but_do_not_fail() {
    let mut p = pod("guide-pod-nginx.yaml");
    p["metadata"]["annotations"] = json!({"cube.ucloud.cn/cube-eip-bandwith": "5"});
    let req = ok(&resolved(&p));
    assert_eq!(req.events.len(), 1);
    assert_eq!(req.events[0].kind, vk_provider_sdk::EventKind::Warning);
    assert!(req.events[0].message.contains("did you mean cube.ucloud.cn/cube-eip-bandwidth?"));
}

#[test]
fn unresolved_env_waits_for_the_host_and_literal_env_passes_through() {
    let mut r = everything();
    r.env.clear();
    let err = translate(NODE, &config(), &r).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("DB_PASSWORD")), "{err:?}");
    let p = pod("guide-pod-nginx.yaml");
    let mut p2 = p.clone();
    p2["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
    let v = cube_pod(&ok(&resolved(&p2)));
    assert_eq!(v["spec"]["containers"][0]["env"], json!([{"name": "A", "value": "1"}]));
}

#[test]
fn a_broken_node_config_is_reported_as_such() {
    let TranslateError::Invalid(e) = translate(NODE, "{}", &resolved(&pod("guide-pod-nginx.yaml"))).unwrap_err() else {
        panic!()
    };
    assert_eq!(e.field, "config.region");
}

#[test]
fn translation_is_deterministic() {
    let a = ok(&everything());
    let b = ok(&everything());
    assert_eq!(a.params, b.params);
    assert!(a.render().contains("Action: CreateCubePod") && a.render().contains("  kind: Pod"));
}

#[test]
fn the_guides_manifests_translate_as_written() {
    let udisk = {
        let mut r = cube_provider::pod_from_manifest(&fixture("guide-manifest-udisk.yaml")).unwrap();
        r.claims.push(VolumeClaim {
            claim_name: "logdisk-claim".into(),
            claim: fixture("guide-pvc-udisk.json"),
            volume: Some(fixture("guide-pv-udisk.json")),
        });
        r
    };
    let sa = {
        let mut r = cube_provider::pod_from_manifest(&fixture("guide-manifest-deployment-sa.yaml")).unwrap();
        r.secrets.push(secret(
            "default-token",
            "kubernetes.io/service-account-token",
            &[("token", b"t"), ("ca.crt", b"c"), ("namespace", b"default")],
        ));
        r
    };
    let myhub = {
        let mut r = cube_provider::pod_from_manifest(&fixture("guide-manifest-myhub.yaml")).unwrap();
        r.secrets.push(secret(
            "myhub",
            "kubernetes.io/dockerconfigjson",
            &[(".dockerconfigjson", fixture("guide-dockerconfig.json").as_bytes())],
        ));
        r
    };
    let cases = [
        (udisk, "nginx", "udisk"),
        (sa, "nginx-deployment-dryrun", "secret"),
        (myhub, "nginx-myhub-deployment-dryrun", ""),
    ];
    for (pod, name, volume) in cases {
        let req = ok(&pod);
        let p = cube_pod(&req);
        assert_eq!(p["metadata"]["name"], name);
        assert_eq!(req.size.to_string(), "1-2Gi", "{name}: the node's default size");
        if !volume.is_empty() {
            assert!(p["spec"]["volumes"][0].get(volume).is_some(), "{name}: {}", p["spec"]["volumes"]);
        }
    }
}

#[test]
fn the_guides_self_hosted_registry_needs_only_its_pull_secret() {
    let guide_node = json!({
        "region": "cn-bj2", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub", "private_key": "priv", "uhub_hosts": ["uhub.an-link.com"],
    })
    .to_string();
    let mut r = cube_provider::pod_from_manifest(&fixture("guide-manifest-myhub.yaml")).unwrap();
    r.secrets.push(secret(
        "myhub",
        "kubernetes.io/dockerconfigjson",
        &[(".dockerconfigjson", fixture("guide-dockerconfig.json").as_bytes())],
    ));
    let req = translate(NODE, &guide_node, &r).unwrap();
    assert_eq!(req.params["Zone"], "cn-bj2-05", "the zone defaults to the region's Cube zone");
    // Without the pull secret, the registry is refused, naming both ways to allow it.
    r.secrets.clear();
    let TranslateError::Invalid(e) = translate(NODE, &guide_node, &r).unwrap_err() else { panic!() };
    assert_eq!(e.reason, "ImageRegistryNotAllowed");
    assert!(e.message.contains("registryaddr and vpcid") && e.message.contains("node's registries"), "{}", e.message);
}

#[test]
fn an_rssd_udisk_carries_the_guides_advice() {
    let mut pv = guide_pv();
    pv["spec"]["csi"]["volumeAttributes"] = json!({"type": "rssd"});
    let req = ok(&udisk_pod(Some(pv)));
    let advice = req.events.iter().find(|e| e.reason == "RSSDUDisk").expect("an RSSD event");
    assert_eq!(advice.kind, vk_provider_sdk::EventKind::Warning);
    assert!(advice.message.contains("SSD or SATA") && advice.message.contains("RDMA"), "{}", advice.message);
    assert!(ok(&udisk_pod(Some(guide_pv()))).events.iter().all(|e| e.reason != "RSSDUDisk"));
}

#[test]
fn an_unreadable_pod_is_refused() {
    let r = ResolvedPod::from_pod_json("{\"spec\": {\"containers\": 3}}");
    let TranslateError::Invalid(e) = translate(NODE, &config(), &r).unwrap_err() else { panic!() };
    assert_eq!((e.reason.as_str(), e.field.as_str()), ("InvalidPod", "pod"));
}

#[test]
fn a_missing_config_map_key_waits_unless_optional() {
    let mut r = everything();
    r.config_maps[0].data.retain(|e| e.key != "web.conf");
    let err = translate(NODE, &config(), &r).unwrap_err();
    assert!(matches!(&err, TranslateError::NotReady(m) if m.contains("has no key web.conf")), "{err:?}");
    let mut p: Value = serde_json::from_str(&r.pod).unwrap();
    p["spec"]["volumes"][0]["configMap"]["optional"] = json!(true);
    r.pod = p.to_string();
    assert_eq!(cube_pod(&ok(&r))["spec"]["volumes"][0]["configMap"], json!({}));
}

#[test]
fn dns_searches_and_options_are_ignored_with_a_warning() {
    let mut r = everything();
    let mut p: Value = serde_json::from_str(&r.pod).unwrap();
    p["spec"]["dnsConfig"] = json!({"nameservers": ["10.0.0.2"], "searches": ["svc.cluster.local"], "options": [{"name": "ndots", "value": "2"}]});
    r.pod = p.to_string();
    let req = ok(&r);
    let warning = req.events.iter().find(|e| e.reason == "FieldsIgnored").unwrap();
    assert_eq!(warning.kind, vk_provider_sdk::EventKind::Warning);
    assert!(warning.message.contains("spec.dnsConfig.searches") && warning.message.contains("spec.dnsConfig.options"));
    assert!(warning.message.contains("spec.containers[0].readinessProbe"));
    assert_eq!(cube_pod(&req)["spec"]["dnsConfig"], json!({"nameservers": ["10.0.0.2"]}));
}
