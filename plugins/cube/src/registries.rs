//! Registries (P6, P7): Cube pulls only from UHub and self-hosted registries of the region — those
//! the node allows, and those a pod's pull secret describes the guide's way (the registry's private
//! address and VPC); image pull secrets become Cube `imagePullSecrets` carrying both.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::cube_pod::PullSecret;
use crate::error::InvalidInput;
use crate::k8s::LocalRef;
use vk_provider_sdk::{Event, ResolvedPod};

/// The registry host of an image reference; `docker.io` for Docker Hub short names.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".into(),
    }
}

/// Refuses images from registries the node does not allow.
pub fn check_image(image: &str, field: &str, allowed: &[String]) -> Result<(), InvalidInput> {
    if image.trim().is_empty() {
        return Err(InvalidInput::new("InvalidImage", field, "the container has no image"));
    }
    let host = registry_of(image);
    if allowed.contains(&host) {
        return Ok(());
    }
    let from = if host == "docker.io" { "Docker Hub (docker.io)".to_string() } else { host };
    Err(InvalidInput::new(
        "ImageRegistryNotAllowed",
        field,
        format!(
            "image {image:?} is from {from}, but Cube pulls images only from {}; push it to UHub, or for a self-hosted registry of the region give the pod a pull secret whose auths entry has its registryaddr and vpcid, or add it to the node's registries",
            allowed.join(", ")
        ),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthEntry {
    username: String,
    password: String,
    auth: String,
    registryaddr: String,
    vpcid: String,
}

/// Registries the pod's pull secrets describe as self-hosted in a VPC (an address and a VPC id).
pub fn self_hosted(secrets: &[PullSecret]) -> impl Iterator<Item = String> + '_ {
    secrets
        .iter()
        .filter(|s| !s.registryaddr.is_empty() && !s.vpc_id.is_empty())
        .map(|s| s.registry_server.to_ascii_lowercase())
}

/// A private IPv4 address (10/8, 172.16/12, 192.168/16, 100.64/10): where a UHost in a VPC is
/// reached.
fn is_private_ipv4(addr: &str) -> bool {
    let host = addr.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map(|(h, _)| h).unwrap_or(addr);
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            let [a, b, ..] = ip.octets();
            ip.is_private() || (a == 100 && (64..128).contains(&b))
        }
        Err(_) => false,
    }
}

/// The pod's image pull secrets in the Cube dialect; secrets that do not exist are skipped with a
/// warning (the pull may still work without them, as in Kubernetes).
pub fn pull_secrets(refs: &[LocalRef], resolved: &ResolvedPod) -> Result<(Vec<PullSecret>, Vec<Event>), InvalidInput> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let field = format!("spec.imagePullSecrets[{i}]");
        let Some(secret) = resolved.secrets.iter().find(|s| s.name == r.name) else {
            events.push(Event::warning(
                "FailedToRetrieveImagePullSecret",
                format!("image pull secret {:?} does not exist; pulling without it", r.name),
            ));
            continue;
        };
        let data = |key: &str| secret.get(key);
        let (data_key, parsed) = if let Some(raw) = data(".dockerconfigjson") {
            #[derive(Deserialize)]
            struct DockerConfig {
                #[serde(default)]
                auths: BTreeMap<String, AuthEntry>,
            }
            (".dockerconfigjson", serde_json::from_slice::<DockerConfig>(raw).map(|c| c.auths))
        } else if let Some(raw) = data(".dockercfg") {
            (".dockercfg", serde_json::from_slice(raw))
        } else {
            return Err(InvalidInput::new(
                "InvalidImagePullSecret",
                field,
                format!(
                    "Secret {} (type {}) has no .dockerconfigjson; image pull secrets must be of type kubernetes.io/dockerconfigjson",
                    r.name, secret.kind
                ),
            ));
        };
        // serde's message quotes the offending value (a password, say): the pod's status, its
        // Events and the logs get only where the document went wrong.
        let auths: BTreeMap<String, AuthEntry> = parsed.map_err(|e| {
            InvalidInput::new(
                "InvalidImagePullSecret",
                &field,
                format!("Secret {} key {data_key} is not a docker config: {}", r.name, json_error_without_content(&e)),
            )
        })?;
        for (server, entry) in auths {
            let (mut username, mut password) = (entry.username, entry.password);
            if username.is_empty() && !entry.auth.is_empty() {
                let decoded =
                    B64.decode(entry.auth.trim()).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
                        InvalidInput::new(
                            "InvalidImagePullSecret",
                            &field,
                            format!("Secret {}: auth of {server} is not base64 of user:password", r.name),
                        )
                    })?;
                let (u, p) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
                (username, password) = (u.to_string(), p.to_string());
            }
            if !entry.registryaddr.is_empty() && !is_private_ipv4(entry.registryaddr.trim()) {
                return Err(InvalidInput::new(
                    "InvalidImagePullSecret",
                    &field,
                    format!(
                        "Secret {}: registryaddr of {server} is {:?}, but must be the registry's private IPv4 address in its VPC (Cube pulls from self-hosted registries of the region, not from the Internet)",
                        r.name, entry.registryaddr
                    ),
                ));
            }
            if !entry.vpcid.is_empty() && !entry.vpcid.starts_with("uvnet-") {
                return Err(InvalidInput::new(
                    "InvalidImagePullSecret",
                    &field,
                    format!(
                        "Secret {}: vpcid of {server} is {:?}, but must be a VPC id (uvnet-…)",
                        r.name, entry.vpcid
                    ),
                ));
            }
            out.push(PullSecret {
                registry_server: registry_server(&server),
                username,
                password,
                registryaddr: entry.registryaddr,
                vpc_id: entry.vpcid,
            });
        }
    }
    Ok((out, events))
}

/// What went wrong in a JSON document and where, without quoting any of it.
fn json_error_without_content(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "it is not valid JSON",
        Category::Eof => "the JSON ends early",
        Category::Data => {
            "a value has the wrong type or shape (auths must map registry to {username, password} or {auth})"
        }
        Category::Io => "it cannot be read",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// `https://myhub.example.com/v1/` → `myhub.example.com`.
fn registry_server(server: &str) -> String {
    let s = server.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    s.split('/').next().unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk_provider_sdk::Secret;

    #[test]
    fn finds_the_registry_of_an_image() {
        for (image, host) in [
            ("nginx", "docker.io"),
            ("library/nginx:1.25", "docker.io"),
            ("uhub.service.ucloud.cn/ucloud/nginx:latest", "uhub.service.ucloud.cn"),
            ("myhub.an-link.com/test/nginx:latest", "myhub.an-link.com"),
            ("10.0.0.5:5000/app@sha256:abc", "10.0.0.5:5000"),
            ("localhost/x", "localhost"),
            ("UHub.Service.UCloud.cn/a/b", "uhub.service.ucloud.cn"),
        ] {
            assert_eq!(registry_of(image), host, "{image}");
        }
    }

    #[test]
    fn refuses_images_from_registries_the_node_does_not_allow() {
        let allowed = vec!["uhub.service.ucloud.cn".to_string(), "myhub.an-link.com".to_string()];
        assert!(check_image("uhub.service.ucloud.cn/ucloud/nginx:latest", "f", &allowed).is_ok());
        assert!(check_image("myhub.an-link.com/test/nginx:latest", "f", &allowed).is_ok());
        let err = check_image("nginx", "spec.containers[0].image", &allowed).unwrap_err();
        assert_eq!(err.field, "spec.containers[0].image");
        assert!(
            err.message.contains("Docker Hub") && err.message.contains("uhub.service.ucloud.cn, myhub.an-link.com"),
            "{}",
            err.message
        );
        let err = check_image("quay.io/x/y", "f", &allowed).unwrap_err();
        assert!(err.message.contains("quay.io"));
        assert_eq!(check_image("", "f", &allowed).unwrap_err().reason, "InvalidImage");
    }

    fn pod_with(secrets: Vec<Secret>) -> ResolvedPod {
        ResolvedPod { secrets, ..Default::default() }
    }

    #[test]
    fn turns_docker_configs_into_cube_pull_secrets() {
        let guide = br#"{"auths":{"myhub.an-link.com":{"username":"user-xxx","password":"passwd-yyy","registryaddr":"10.9.8.7","vpcid":"uvnet-xxx"}}}"#;
        let auth_only = br#"{"auths":{"https://uhub.service.ucloud.cn/v1/":{"auth":"dTE6cDE6eA=="}}}"#;
        let legacy = br#"{"old.example.com":{"username":"a","password":"b"}}"#;
        let resolved = pod_with(vec![
            Secret {
                name: "myhub".into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: vec![vk_provider_sdk::entry(".dockerconfigjson", guide.to_vec())],
            },
            Secret {
                name: "uhub".into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: vec![vk_provider_sdk::entry(".dockerconfigjson", auth_only.to_vec())],
            },
            Secret {
                name: "old".into(),
                kind: "kubernetes.io/dockercfg".into(),
                data: vec![vk_provider_sdk::entry(".dockercfg", legacy.to_vec())],
            },
        ]);
        let refs: Vec<LocalRef> =
            ["myhub", "uhub", "old", "missing"].iter().map(|n| LocalRef { name: n.to_string() }).collect();
        let (secrets, events) = pull_secrets(&refs, &resolved).unwrap();
        assert_eq!(
            secrets,
            vec![
                PullSecret {
                    registry_server: "myhub.an-link.com".into(),
                    username: "user-xxx".into(),
                    password: "passwd-yyy".into(),
                    registryaddr: "10.9.8.7".into(),
                    vpc_id: "uvnet-xxx".into()
                },
                PullSecret {
                    registry_server: "uhub.service.ucloud.cn".into(),
                    username: "u1".into(),
                    password: "p1:x".into(),
                    registryaddr: "".into(),
                    vpc_id: "".into()
                },
                PullSecret {
                    registry_server: "old.example.com".into(),
                    username: "a".into(),
                    password: "b".into(),
                    registryaddr: "".into(),
                    vpc_id: "".into()
                },
            ]
        );
        assert_eq!(events.len(), 1);
        assert!(events[0].message.contains("missing"));
    }

    #[test]
    fn a_pull_secret_with_address_and_vpc_allows_its_registry_and_one_without_does_not() {
        let doc = |entry: &str| Secret {
            name: "s".into(),
            kind: "kubernetes.io/dockerconfigjson".into(),
            data: vec![vk_provider_sdk::entry(
                ".dockerconfigjson",
                format!(r#"{{"auths":{{"myhub.an-link.com":{entry}}}}}"#).into_bytes(),
            )],
        };
        let refs = [LocalRef { name: "s".into() }];
        let guide =
            pod_with(vec![doc(r#"{"username":"u","password":"p","registryaddr":"10.1.2.3","vpcid":"uvnet-x"}"#)]);
        let (secrets, _) = pull_secrets(&refs, &guide).unwrap();
        assert_eq!(self_hosted(&secrets).collect::<Vec<_>>(), vec!["myhub.an-link.com"]);
        let plain = pod_with(vec![doc(r#"{"username":"u","password":"p"}"#)]);
        let (secrets, _) = pull_secrets(&refs, &plain).unwrap();
        assert_eq!(self_hosted(&secrets).count(), 0, "credentials alone do not make a registry self-hosted");
        for (entry, needle) in [
            (r#"{"registryaddr":"8.8.8.8","vpcid":"uvnet-x"}"#, "private IPv4"),
            (r#"{"registryaddr":"myhub.example.com","vpcid":"uvnet-x"}"#, "private IPv4"),
            (r#"{"registryaddr":"10.0.0.1","vpcid":"vpc-1"}"#, "uvnet-"),
        ] {
            let err = pull_secrets(&refs, &pod_with(vec![doc(entry)])).unwrap_err();
            assert!(err.message.contains(needle), "{entry}: {}", err.message);
        }
        assert!(
            pull_secrets(&refs, &pod_with(vec![doc(r#"{"registryaddr":"192.168.0.9:5000","vpcid":"uvnet-x"}"#)]))
                .is_ok()
        );
    }

    #[test]
    fn refuses_pull_secrets_that_are_not_docker_configs() {
        let resolved = pod_with(vec![
            Secret {
                name: "opaque".into(),
                kind: "Opaque".into(),
                data: vec![vk_provider_sdk::entry("x", b"y".to_vec())],
            },
            Secret {
                name: "broken".into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: vec![vk_provider_sdk::entry(".dockerconfigjson", b"{".to_vec())],
            },
            Secret {
                name: "badauth".into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: vec![vk_provider_sdk::entry(".dockerconfigjson", br#"{"auths":{"h":{"auth":"%%%"}}}"#.to_vec())],
            },
        ]);
        for (name, needle) in
            [("opaque", "has no .dockerconfigjson"), ("broken", "not a docker config"), ("badauth", "not base64")]
        {
            let err = pull_secrets(&[LocalRef { name: name.into() }], &resolved).unwrap_err();
            assert_eq!(
                (err.reason.as_str(), err.field.as_str()),
                ("InvalidImagePullSecret", "spec.imagePullSecrets[0]")
            );
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    #[test]
    fn a_malformed_pull_secret_is_reported_by_name_and_key_never_by_value() {
        for doc in [
            &br#"{"auths":{"myhub":{"username":"u","password":["hunter2-secret"]}}}"#[..],
            br#"{"auths":{"myhub":"hunter2-secret"}}"#,
            br#"{"auths":{"myhub":{"auth":"aHVudGVyMi1zZWNyZXQ="}}, "x": hunter2-secret}"#,
            br#"{"auths":{"myhub":{"password":hunter2-secret"#,
        ] {
            let resolved = pod_with(vec![Secret {
                name: "regcred".into(),
                kind: "kubernetes.io/dockerconfigjson".into(),
                data: vec![vk_provider_sdk::entry(".dockerconfigjson", doc.to_vec())],
            }]);
            let err = pull_secrets(&[LocalRef { name: "regcred".into() }], &resolved).unwrap_err();
            let text = format!("{} {} {err:?}", err.field, err.message);
            assert!(!text.contains("hunter2"), "the secret's value leaked: {text}");
            assert!(text.contains("Secret regcred key .dockerconfigjson"), "{text}");
            assert!(text.contains("line 1, column"), "{text}");
        }
    }
}
