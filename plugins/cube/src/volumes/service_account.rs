//! Service-account tokens (P4): Cube cannot mount projected volumes, so the automatic
//! `kube-api-access-*` projection (token, `ca.crt`, `namespace`) becomes an inline Secret volume at
//! the same path, filled with the token the host minted. `update` renews it when the token rotates.

use std::collections::BTreeMap;

use super::{config_map_files, secret_files};
use crate::error::{InvalidInput, TranslateError};
use crate::k8s::{self, ProjectedSource};
use vk_provider_sdk::ResolvedPod;

fn unsupported(field: String, message: String) -> TranslateError {
    InvalidInput::new("UnsupportedProjection", field, message).into()
}

/// The files of a projected volume: service-account token, ConfigMap and Secret sources, and the
/// downward API's pod name, namespace and uid.
pub fn project(
    index: usize,
    volume: &str,
    projected: &ProjectedSource,
    pod: &k8s::Pod,
    resolved: &ResolvedPod,
) -> Result<BTreeMap<String, Vec<u8>>, TranslateError> {
    let mut files = BTreeMap::new();
    for (j, source) in projected.sources.iter().enumerate() {
        let field = format!("spec.volumes[{index}].projected.sources[{j}]");
        if let Some(t) = &source.service_account_token {
            let token = resolved
                .tokens
                .iter()
                .find(|tok| tok.volume_name == volume && tok.path == t.path)
                .or_else(|| resolved.tokens.iter().find(|tok| tok.volume_name == volume))
                .ok_or_else(|| {
                    TranslateError::NotReady(format!(
                        "{field}.serviceAccountToken: no token minted yet for volume {volume:?}"
                    ))
                })?;
            files.insert(t.path.clone(), token.token.clone().into_bytes());
        } else if let Some(cm) = &source.config_map {
            let f = format!("{field}.configMap");
            files.extend(config_map_files(resolved, &cm.name, &cm.items, cm.optional.unwrap_or(false), &f)?);
        } else if let Some(s) = &source.secret {
            let f = format!("{field}.secret");
            files.extend(secret_files(resolved, &s.name, &s.items, s.optional.unwrap_or(false), &f)?);
        } else if let Some(d) = &source.downward_api {
            for (k, item) in d.items.iter().enumerate() {
                let f = format!("{field}.downwardAPI.items[{k}]");
                let path = item.field_ref.as_ref().map(|r| r.field_path.as_str());
                let value = match path {
                    Some("metadata.namespace") => &pod.metadata.namespace,
                    Some("metadata.name") => &pod.metadata.name,
                    Some("metadata.uid") => &pod.metadata.uid,
                    Some(other) => {
                        return Err(unsupported(
                            format!("{f}.fieldRef.fieldPath"),
                            format!(
                                "projected downward API field {other} is not supported; accepted: metadata.namespace, metadata.name, metadata.uid"
                            ),
                        ));
                    }
                    None => {
                        return Err(unsupported(
                            format!("{f}.resourceFieldRef"),
                            "projected downward API resource fields are not supported; accepted: fieldRef metadata.namespace, metadata.name, metadata.uid".into(),
                        ));
                    }
                };
                files.insert(item.path.clone(), value.clone().into_bytes());
            }
        } else {
            let kind = source.other.keys().next().cloned().unwrap_or_else(|| "unknown".into());
            return Err(unsupported(
                format!("{field}.{kind}"),
                format!(
                    "volume {volume:?} projects a {kind} source, which Cube cannot mount; projections may hold serviceAccountToken, configMap, secret and downwardAPI (metadata.namespace/name/uid) sources"
                ),
            ));
        }
    }
    Ok(files)
}
