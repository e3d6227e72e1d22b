//! Volumes and image pull secrets: a mandatory ConfigMap, Secret or claim a volume names must
//! exist; optional ones that do not are mounted empty with a warning; a missing pull secret only
//! warns (the pull may still work), as the kubelet does.

use k8s_openapi::api::core::v1::PodSpec;

use super::{Lookup, Missing};

pub(super) fn check_volumes(spec: &PodSpec, lookup: &mut Lookup<'_>) -> Result<(), Missing> {
    let ns = lookup.namespace.clone();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(cm) = &v.config_map {
            if lookup.config_map(&cm.name).is_some() {
                lookup.used_config_maps.insert(cm.name.clone());
            } else if cm.optional.unwrap_or(false) {
                lookup.warn(
                    "OptionalConfigMapNotFound",
                    format!("ConfigMap {ns}/{} (volume {}) not found; mounting it empty", cm.name, v.name),
                );
            } else {
                return Err(lookup.missing("ConfigMap", &cm.name, format!("spec.volumes[{i}].configMap")));
            }
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            if lookup.secret(&name).is_some() {
                lookup.used_secrets.insert(name);
            } else if s.optional.unwrap_or(false) {
                lookup.warn(
                    "OptionalSecretNotFound",
                    format!("Secret {ns}/{name} (volume {}) not found; mounting it empty", v.name),
                );
            } else {
                return Err(lookup.missing("Secret", &name, format!("spec.volumes[{i}].secret")));
            }
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                if lookup.config_map(&cm.name).is_some() {
                    lookup.used_config_maps.insert(cm.name.clone());
                } else if !cm.optional.unwrap_or(false) {
                    return Err(lookup.missing(
                        "ConfigMap",
                        &cm.name,
                        format!("spec.volumes[{i}].projected.sources.configMap"),
                    ));
                }
            }
            if let Some(s) = &src.secret {
                if lookup.secret(&s.name).is_some() {
                    lookup.used_secrets.insert(s.name.clone());
                } else if !s.optional.unwrap_or(false) {
                    return Err(lookup.missing(
                        "Secret",
                        &s.name,
                        format!("spec.volumes[{i}].projected.sources.secret"),
                    ));
                }
            }
        }
        if let Some(c) = &v.persistent_volume_claim
            && !lookup.has_claim(&c.claim_name)
        {
            return Err(lookup.missing(
                "PersistentVolumeClaim",
                &c.claim_name,
                format!("spec.volumes[{i}].persistentVolumeClaim"),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_pull_secrets(spec: &PodSpec, lookup: &mut Lookup<'_>) {
    for (i, s) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if lookup.secret(&s.name).is_some() {
            lookup.used_secrets.insert(s.name.clone());
        } else {
            let message = format!(
                "Secret {}/{} (spec.imagePullSecrets[{i}]) not found; pulling without it",
                lookup.namespace, s.name
            );
            lookup.warn("FailedToRetrieveImagePullSecret", message);
        }
    }
}
