//! Cube's status words and container states → the Kubernetes pod status: phase, reason, container
//! states with their reasons, restart counts, pod IP and start time.

use vk_provider_sdk::{
    ContainerState, ContainerStatus, PodPhase, PodStatus, StateRunning, StateTerminated, StateWaiting,
};

use crate::cube_pod::{Returned, ReturnedContainerStatus, ReturnedState};

/// The Kubernetes phase and pod reason for a Cube status word. `ContainerCreating` is the
/// containers' waiting reason only, as a kubelet shows it (`kubectl get pods` prints it from the
/// containers): Cube's `Pending` and `ContainerCreating` then show the same pod status, and a
/// start costs no apiserver write between the create and Running.
pub fn phase_of(word: &str) -> (PodPhase, &'static str) {
    match word {
        "Pending" | "ContainerCreating" => (PodPhase::Pending, ""),
        "ErrImagePull" => (PodPhase::Pending, "ErrImagePull"),
        "ImagePullBackOff" => (PodPhase::Pending, "ImagePullBackOff"),
        "CreateContainerError" => (PodPhase::Pending, "CreateContainerError"),
        "Running" => (PodPhase::Running, ""),
        "CrashLoopBackOff" => (PodPhase::Running, "CrashLoopBackOff"),
        "Terminating" => (PodPhase::Running, "Terminating"),
        "Completed" | "Succeeded" => (PodPhase::Succeeded, "Completed"),
        "Error" | "Failed" => (PodPhase::Failed, "Error"),
        _ => (PodPhase::Unknown, ""),
    }
}

/// The pod status of a Cube instance as GetCubePod/ListCubePod return it.
pub fn pod_status(pod: &Returned) -> PodStatus {
    let word = pod.status.phase.as_deref().unwrap_or("Pending");
    let (phase, reason) = phase_of(word);
    let reason = pod.status.reason.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| reason.to_string());
    let message = pod.status.message.clone().unwrap_or_default();
    let message = if message.is_empty() && phase == PodPhase::Unknown {
        format!("Cube reports status {word:?}")
    } else {
        message
    };

    let spec_containers = pod.spec.containers.clone().unwrap_or_default();
    let container_statuses = match &pod.status.container_statuses {
        Some(list) if !list.is_empty() => {
            list.iter().map(|c| container_status(c, &spec_image(&spec_containers, &c.name))).collect()
        }
        _ => spec_containers.iter().map(|c| synthesized(&c.name, &c.image, word, &message)).collect(),
    };
    let spec_inits = pod.spec.init_containers.clone().unwrap_or_default();
    let init_container_statuses = match &pod.status.init_container_statuses {
        Some(list) if !list.is_empty() => {
            list.iter().map(|c| container_status(c, &spec_image(&spec_inits, &c.name))).collect()
        }
        _ => spec_inits
            .iter()
            .map(|c| {
                let state = if matches!(phase, PodPhase::Running | PodPhase::Succeeded) {
                    ContainerState::Terminated(StateTerminated {
                        exit_code: 0,
                        reason: "Completed".into(),
                        message: String::new(),
                        started_at: String::new(),
                        finished_at: String::new(),
                    })
                } else {
                    ContainerState::Waiting(StateWaiting { reason: "PodInitializing".into(), message: String::new() })
                };
                ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    ready: matches!(phase, PodPhase::Running | PodPhase::Succeeded),
                    restart_count: 0,
                    state,
                    last_state: None,
                }
            })
            .collect(),
    };

    PodStatus {
        phase,
        reason,
        message,
        pod_ip: pod.status.pod_ip.clone().filter(|ip| !ip.is_empty()),
        start_time: pod.status.start_time.clone().filter(|t| !t.is_empty()),
        init_container_statuses,
        container_statuses,
    }
}

fn spec_image(spec: &[crate::cube_pod::ReturnedContainer], name: &str) -> String {
    spec.iter().find(|c| c.name == name).map(|c| c.image.clone()).unwrap_or_default()
}

fn state(s: &ReturnedState) -> Option<ContainerState> {
    if let Some(t) = &s.terminated {
        let exit_code = t.exit_code.unwrap_or(0);
        return Some(ContainerState::Terminated(StateTerminated {
            exit_code,
            reason: t
                .reason
                .clone()
                .unwrap_or_else(|| if exit_code == 0 { "Completed".into() } else { "Error".into() }),
            message: t.message.clone().unwrap_or_default(),
            started_at: t.started_at.clone().unwrap_or_default(),
            finished_at: t.finished_at.clone().unwrap_or_default(),
        }));
    }
    if let Some(r) = &s.running {
        return Some(ContainerState::Running(StateRunning { started_at: r.started_at.clone().unwrap_or_default() }));
    }
    s.waiting.as_ref().map(|w| {
        ContainerState::Waiting(StateWaiting {
            reason: w.reason.clone().unwrap_or_else(|| "ContainerCreating".into()),
            message: w.message.clone().unwrap_or_default(),
        })
    })
}

fn container_status(c: &ReturnedContainerStatus, spec_image: &str) -> ContainerStatus {
    let current = c.state.as_ref().and_then(state).unwrap_or(ContainerState::Waiting(StateWaiting {
        reason: "ContainerCreating".into(),
        message: String::new(),
    }));
    let ready = c.ready.unwrap_or(matches!(current, ContainerState::Running(_)));
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| spec_image.to_string()),
        ready,
        restart_count: c.restart_count.unwrap_or(0),
        state: current,
        last_state: c.last_state.as_ref().and_then(state),
    }
}

/// A container status from the pod's status word alone, when Cube gives no per-container detail.
fn synthesized(name: &str, image: &str, word: &str, message: &str) -> ContainerStatus {
    let waiting =
        |reason: &str| ContainerState::Waiting(StateWaiting { reason: reason.into(), message: message.into() });
    let terminated = |code: i32, reason: &str| {
        ContainerState::Terminated(StateTerminated {
            exit_code: code,
            reason: reason.into(),
            message: message.into(),
            started_at: String::new(),
            finished_at: String::new(),
        })
    };
    let state = match word {
        "Running" | "Terminating" => ContainerState::Running(StateRunning { started_at: String::new() }),
        "Completed" | "Succeeded" => terminated(0, "Completed"),
        "Error" | "Failed" => terminated(1, "Error"),
        "Pending" => waiting("ContainerCreating"),
        other => waiting(other),
    };
    let ready = matches!(state, ContainerState::Running(_));
    ContainerStatus { name: name.into(), image: image.into(), ready, restart_count: 0, state, last_state: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned(yaml: &str) -> Returned {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// A starting instance shows one pod status from the create to Running, so the host has
    /// nothing to write between them.
    #[test]
    fn pending_and_container_creating_show_the_same_pod_status() {
        let status = |word: &str| {
            pod_status(&returned(&format!(
                "spec: {{containers: [{{name: app, image: uhub.service.ucloud.cn/a/b:1}}]}}\nstatus: {{phase: {word}}}"
            )))
        };
        assert_eq!(status("Pending"), status("ContainerCreating"));
        let ContainerState::Waiting(w) = &status("ContainerCreating").container_statuses[0].state else {
            panic!("a creating container waits")
        };
        assert_eq!(w.reason, "ContainerCreating", "kubectl shows it from the container");
    }

    #[test]
    fn every_status_word_maps_to_a_phase() {
        let cases = [
            ("Pending", "Pending", ""),
            ("ContainerCreating", "Pending", ""),
            ("ErrImagePull", "Pending", "ErrImagePull"),
            ("ImagePullBackOff", "Pending", "ImagePullBackOff"),
            ("CreateContainerError", "Pending", "CreateContainerError"),
            ("Running", "Running", ""),
            ("CrashLoopBackOff", "Running", "CrashLoopBackOff"),
            ("Terminating", "Running", "Terminating"),
            ("Completed", "Succeeded", "Completed"),
            ("Error", "Failed", "Error"),
            ("Exploded", "Unknown", ""),
        ];
        for (word, phase, reason) in cases {
            let s = pod_status(&returned(&format!(
                "spec: {{containers: [{{name: app, image: uhub.service.ucloud.cn/a/b:1}}]}}\nstatus: {{phase: {word}}}"
            )));
            assert_eq!((s.phase.as_str(), s.reason.as_str()), (phase, reason), "{word}");
            let c = &s.container_statuses[0];
            assert_eq!(c.image, "uhub.service.ucloud.cn/a/b:1");
            let expected_state = match word {
                "Running" | "Terminating" => "running",
                "Completed" | "Error" => "terminated",
                _ => "waiting",
            };
            let got = match &c.state {
                ContainerState::Waiting(StateWaiting { reason, .. }) => {
                    if word != "Pending" && word != "Exploded" {
                        assert_eq!(reason, word);
                    }
                    "waiting"
                }
                ContainerState::Running(_) => "running",
                ContainerState::Terminated(StateTerminated { exit_code, .. }) => {
                    assert_eq!(*exit_code, if word == "Completed" { 0 } else { 1 });
                    "terminated"
                }
            };
            assert_eq!(got, expected_state, "{word}");
        }
    }

    #[test]
    fn reads_container_states_restart_counts_ip_and_start_time() {
        let s = pod_status(&returned(
            r#"
metadata: {name: web, namespace: shop, uid: u1, cubeId: cube-abc}
spec:
  initContainers: [{name: migrate, image: m}]
  containers: [{name: web, image: w}, {name: agent, image: a}]
status:
  phase: CrashLoopBackOff
  podIp: 10.23.0.7
  startTime: "2026-11-26T16:00:00Z"
  containerStatuses:
  - name: web
    ready: false
    restartCount: 4
    state: {waiting: {reason: CrashLoopBackOff}}
    lastState: {terminated: {exitCode: 2, reason: Error, startedAt: "2026-11-26T16:01:00Z", finishedAt: "2026-11-26T16:01:01Z"}}
  - name: agent
    image: a
    ready: true
    restartCount: 0
    state: {running: {startedAt: "2026-11-26T16:00:05Z"}}
"#,
        ));
        assert_eq!((s.phase.as_str(), s.reason.as_str()), ("Running", "CrashLoopBackOff"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.23.0.7"));
        assert_eq!(s.start_time.as_deref(), Some("2026-11-26T16:00:00Z"));
        let web = &s.container_statuses[0];
        assert_eq!((web.image.as_str(), web.ready, web.restart_count), ("w", false, 4));
        assert_eq!(
            web.state,
            ContainerState::Waiting(StateWaiting { reason: "CrashLoopBackOff".into(), message: "".into() })
        );
        assert_eq!(
            web.last_state,
            Some(ContainerState::Terminated(StateTerminated {
                exit_code: 2,
                reason: "Error".into(),
                message: "".into(),
                started_at: "2026-11-26T16:01:00Z".into(),
                finished_at: "2026-11-26T16:01:01Z".into()
            }))
        );
        assert_eq!(
            s.container_statuses[1].state,
            ContainerState::Running(StateRunning { started_at: "2026-11-26T16:00:05Z".into() })
        );
        assert!(s.container_statuses[1].ready);
        // Init containers of a running pod have completed.
        assert!(matches!(
            &s.init_container_statuses[0].state,
            ContainerState::Terminated(StateTerminated { exit_code: 0, .. })
        ));
    }

    #[test]
    fn an_empty_pod_ip_is_no_ip() {
        let s = pod_status(&returned("status: {phase: Pending, podIp: ''}"));
        assert_eq!(s.pod_ip, None);
        assert_eq!(s.phase, PodPhase::Pending);
    }
}
