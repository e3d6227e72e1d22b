//! What Cube cannot honour (P7): host namespaces, privileged containers, host ports, sidecars,
//! ephemeral storage over 10 GiB. Refused by field before anything is created; fields Cube merely
//! ignores (probes, lifecycle hooks, DNS searches) are let through with a Warning event.

use crate::error::InvalidInput;
use crate::k8s::{Container, Pod};
use crate::sizes::{format_memory, parse_memory_bytes};
use vk_provider_sdk::Event;

/// Ephemeral storage each container gets.
pub const MAX_EPHEMERAL_BYTES: u64 = 10 * 1024 * 1024 * 1024;

fn refuse(reason: &str, field: impl Into<String>, message: impl Into<String>) -> InvalidInput {
    InvalidInput::new(reason, field, message)
}

/// Checks the pod against Cube's limits; returns warnings for what Cube will ignore.
pub fn check(pod: &Pod) -> Result<Vec<Event>, InvalidInput> {
    let spec = &pod.spec;
    if spec.host_network {
        return Err(refuse(
            "UnsupportedField",
            "spec.hostNetwork",
            "hostNetwork is true, but Cube pods have their own VPC address; remove hostNetwork",
        ));
    }
    if spec.host_pid {
        return Err(refuse(
            "UnsupportedField",
            "spec.hostPID",
            "hostPID is true, but a Cube pod has no host to share processes with",
        ));
    }
    if spec.host_ipc {
        return Err(refuse(
            "UnsupportedField",
            "spec.hostIPC",
            "hostIPC is true, but a Cube pod has no host to share IPC with",
        ));
    }
    if spec.share_process_namespace == Some(true) {
        return Err(refuse(
            "UnsupportedField",
            "spec.shareProcessNamespace",
            "shareProcessNamespace is true, which Cube cannot honour",
        ));
    }
    if spec.containers.is_empty() {
        return Err(refuse("InvalidPod", "spec.containers", "the pod has no containers"));
    }
    if let Some(policy) = &spec.restart_policy
        && !["Always", "OnFailure", "Never"].contains(&policy.as_str())
    {
        return Err(refuse(
            "InvalidPod",
            "spec.restartPolicy",
            format!("restartPolicy is {policy:?}, but must be Always, OnFailure or Never"),
        ));
    }

    let mut events = Vec::new();
    let mut ignored = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c, true))
        .chain(spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c, false)));
    for (field, c, init) in all {
        check_container(&field, c, init)?;
        for (name, present) in [
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
        ] {
            if present {
                ignored.push(format!("{field}.{name}"));
            }
        }
    }
    if let Some(dns) = &spec.dns_config {
        if !dns.searches.is_empty() {
            ignored.push("spec.dnsConfig.searches".into());
        }
        if !dns.options.is_empty() {
            ignored.push("spec.dnsConfig.options".into());
        }
    }
    if !ignored.is_empty() {
        events.push(Event::warning(
            "FieldsIgnored",
            format!("Cube does not support and ignores: {}", ignored.join(", ")),
        ));
    }
    Ok(events)
}

fn check_container(field: &str, c: &Container, init: bool) -> Result<(), InvalidInput> {
    let valid_name = (1..=32).contains(&c.name.len())
        && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    if !valid_name {
        return Err(refuse(
            "InvalidContainerName",
            format!("{field}.name"),
            format!("container name {:?} is not accepted by Cube: use 1 to 32 letters, digits, '-' or '_'", c.name),
        ));
    }
    if init && c.restart_policy.as_deref() == Some("Always") {
        return Err(refuse(
            "UnsupportedField",
            format!("{field}.restartPolicy"),
            "sidecar init containers (restartPolicy: Always) are not supported by Cube",
        ));
    }
    if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
        return Err(refuse(
            "UnsupportedField",
            format!("{field}.securityContext.privileged"),
            "privileged containers are not supported by Cube",
        ));
    }
    for (j, p) in c.ports.iter().enumerate() {
        if let Some(hp) = p.host_port.filter(|hp| *hp != 0) {
            return Err(refuse(
                "UnsupportedField",
                format!("{field}.ports[{j}].hostPort"),
                format!("hostPort {hp} is not supported: a Cube pod has no host; reach it on its pod IP (or an EIP)"),
            ));
        }
    }
    if !c.volume_devices.is_empty() {
        return Err(refuse(
            "UnsupportedField",
            format!("{field}.volumeDevices"),
            "raw block volumeDevices are not supported by Cube; mount the UDisk as a filesystem",
        ));
    }
    for kind in ["requests", "limits"] {
        let map = if kind == "requests" { &c.resources.requests } else { &c.resources.limits };
        if let Some(q) = map.get("ephemeral-storage") {
            let f = format!("{field}.resources.{kind}.ephemeral-storage");
            let bytes = parse_memory_bytes(q)
                .ok_or_else(|| refuse("InvalidResources", &f, format!("{q:?} is not a quantity")))?;
            if bytes > MAX_EPHEMERAL_BYTES {
                return Err(refuse(
                    "EphemeralStorageTooLarge",
                    f,
                    format!(
                        "ephemeral-storage is {q}, but Cube gives each container at most {} (mount a UDisk for more)",
                        format_memory(MAX_EPHEMERAL_BYTES)
                    ),
                ));
            }
        }
    }
    Ok(())
}
