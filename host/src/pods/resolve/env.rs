//! A container's environment, in Kubernetes order: service links, then `envFrom` sources (with
//! their prefix), then `env` entries — plain values with `$(VAR)` expansion, ConfigMap and Secret
//! keys, the downward API. Later definitions win; the first-seen order is kept.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVarSource, Pod};

use super::{ContainerAt, Lookup, Missing, downward};
use crate::plugin::{ContainerEnv, KeyValue};

pub(super) fn container_env(
    pod: &Pod,
    at: ContainerAt,
    c: &Container,
    links: &[(String, String)],
    lookup: &mut Lookup<'_>,
) -> Result<ContainerEnv, Missing> {
    let mut vars: Vec<(String, String)> = links.to_vec();
    for (fi, f) in c.env_from.iter().flatten().enumerate() {
        vars.extend(env_from(f, &at.field(&format!("envFrom[{fi}]")), &c.name, lookup)?);
    }
    for (ei, e) in c.env.iter().flatten().enumerate() {
        let value = match &e.value_from {
            Some(source) => value_from(pod, c, &e.name, source, &at.field(&format!("env[{ei}].valueFrom")), lookup)?,
            None => Some(expand(e.value.as_deref().unwrap_or_default(), &vars)),
        };
        if let Some(v) = value {
            vars.push((e.name.clone(), v));
        }
    }
    Ok(ContainerEnv { container: c.name.clone(), vars: last_wins(vars) })
}

/// The variables of one `envFrom` source; a missing optional source gives none and a warning.
fn env_from(
    f: &EnvFromSource,
    field: &str,
    container: &str,
    lookup: &mut Lookup<'_>,
) -> Result<Vec<(String, String)>, Missing> {
    let prefix = f.prefix.clone().unwrap_or_default();
    let ns = lookup.namespace.clone();
    let mut vars = Vec::new();
    if let Some(r) = &f.config_map_ref {
        match lookup.config_map(&r.name) {
            Some(data) => {
                lookup.used_config_maps.insert(r.name.clone());
                vars.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            }
            None if r.optional.unwrap_or(false) => lookup.warn(
                "OptionalConfigMapNotFound",
                format!("ConfigMap {ns}/{} (envFrom of container {container}) not found; skipped", r.name),
            ),
            None => return Err(lookup.missing("ConfigMap", &r.name, format!("{field}.configMapRef"))),
        }
    }
    if let Some(r) = &f.secret_ref {
        match lookup.secret(&r.name) {
            Some(data) => {
                lookup.used_secrets.insert(r.name.clone());
                vars.extend(
                    data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned())),
                );
            }
            None if r.optional.unwrap_or(false) => lookup.warn(
                "OptionalSecretNotFound",
                format!("Secret {ns}/{} (envFrom of container {container}) not found; skipped", r.name),
            ),
            None => return Err(lookup.missing("Secret", &r.name, format!("{field}.secretRef"))),
        }
    }
    Ok(vars)
}

/// The value of one `env[].valueFrom`; `None` when an optional source is missing (the variable
/// is left out, with a warning).
fn value_from(
    pod: &Pod,
    c: &Container,
    name: &str,
    source: &EnvVarSource,
    field: &str,
    lookup: &mut Lookup<'_>,
) -> Result<Option<String>, Missing> {
    let ns = lookup.namespace.clone();
    if let Some(r) = &source.config_map_key_ref {
        return match lookup.config_map(&r.name).and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => {
                lookup.used_config_maps.insert(r.name.clone());
                Ok(Some(v))
            }
            None if r.optional.unwrap_or(false) => {
                lookup.warn(
                    "OptionalConfigMapNotFound",
                    format!(
                        "ConfigMap key {ns}/{}[{}] (env {name} of container {}) not found; skipped",
                        r.name, r.key, c.name
                    ),
                );
                Ok(None)
            }
            None => Err(lookup.missing("ConfigMap", &r.name, format!("{field}.configMapKeyRef (key {})", r.key))),
        };
    }
    if let Some(r) = &source.secret_key_ref {
        return match lookup.secret(&r.name).and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => {
                lookup.used_secrets.insert(r.name.clone());
                Ok(Some(String::from_utf8_lossy(&v).into_owned()))
            }
            None if r.optional.unwrap_or(false) => {
                lookup.warn(
                    "OptionalSecretNotFound",
                    format!(
                        "Secret key {ns}/{}[{}] (env {name} of container {}) not found; skipped",
                        r.name, r.key, c.name
                    ),
                );
                Ok(None)
            }
            None => Err(lookup.missing("Secret", &r.name, format!("{field}.secretKeyRef (key {})", r.key))),
        };
    }
    if let Some(f) = &source.field_ref {
        return Ok(Some(downward::downward_field(pod, &f.field_path)));
    }
    if let Some(r) = &source.resource_field_ref {
        let divisor = r.divisor.as_ref().map(|q| q.0.as_str());
        return Ok(Some(downward::resource_field(pod, c, r.container_name.as_deref(), &r.resource, divisor)));
    }
    Ok(None)
}

/// Later definitions win, as in Kubernetes; the first-seen order is kept.
fn last_wins(vars: Vec<(String, String)>) -> Vec<KeyValue> {
    let mut order = Vec::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in vars {
        if !last.contains_key(&k) {
            order.push(k.clone());
        }
        last.insert(k, v);
    }
    order.into_iter().map(|k| KeyValue { value: last[&k].clone(), key: k }).collect()
}

/// Kubernetes `$(VAR)` expansion against earlier variables; `$$` escapes, unknown refs stay.
pub(super) fn expand(value: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut out = String::new();
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}
