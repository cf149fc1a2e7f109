//! Reading what the cluster says about a Job and its pods: pure functions from Kubernetes
//! status objects to what runplane makes of them (started, failed to start, ended how).

use super::manifests::{FILES_CONTAINER, MAIN_CONTAINER};
use crate::exit_code::split_code;
use k8s_openapi::api::batch::v1::Job as K8sJob;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use runplane_domain::{reason, Failure, ReplicaStatus};

/// Waiting reasons that mean the container will not start without someone changing
/// something: the run fails with a clear reason instead of waiting forever.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerError",
    "RunContainerError",
];

/// What a Job's conditions say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Running,
    Succeeded,
    /// `reason` is the condition's (`DeadlineExceeded`, `BackoffLimitExceeded`, ...).
    Failed {
        reason: String,
        message: String,
    },
}

pub fn job_end(job: &K8sJob) -> JobEnd {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for condition in conditions {
        if condition.status != "True" {
            continue;
        }
        match condition.type_.as_str() {
            "Complete" => return JobEnd::Succeeded,
            "Failed" => {
                return JobEnd::Failed {
                    reason: condition.reason.unwrap_or_default(),
                    message: condition.message.unwrap_or_default(),
                }
            }
            _ => {}
        }
    }
    JobEnd::Running
}

/// How the main container of a pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `OOMKilled`, `Error`, `Completed`...
    pub reason: String,
    /// The termination message (or the end of the log, `FallbackToLogsOnError`).
    pub message: String,
}

impl Terminated {
    /// What the framework itself has to say about the end (an OOM kill).
    pub fn failure(&self) -> Option<Failure> {
        (self.reason == "OOMKilled").then(|| Failure {
            reason: reason::OOM_KILLED.to_string(),
            message: "the container went past its memory limit and was killed".to_string(),
        })
    }
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == MAIN_CONTAINER)
}

/// Whether the pod's main container runs (or ran: it got as far as running user code).
pub fn main_started(pod: &Pod) -> bool {
    main_status(pod).is_some_and(|c| {
        c.state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            || c.restart_count > 0
    })
}

/// The main container's restart count.
pub fn restarts(pod: &Pod) -> i32 {
    main_status(pod).map_or(0, |c| c.restart_count)
}

/// How the main container ended, when it did.
pub fn terminated(pod: &Pod) -> Option<Terminated> {
    let state = main_status(pod)?.state.as_ref()?.terminated.as_ref()?;
    let (exit_code, signal) = split_code(state.exit_code);
    Some(Terminated {
        exit_code,
        signal: state.signal.or(signal),
        reason: state.reason.clone().unwrap_or_default(),
        message: state.message.clone().unwrap_or_default(),
    })
}

/// Why the pod will not start on its own, as a run's failure (`start_failed`): an image that
/// cannot be pulled, a container that cannot be created, the files step that failed.
pub fn start_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let all = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in all {
        let Some(state) = &container.state else {
            continue;
        };
        if let Some(waiting) = &state.waiting {
            let why = waiting.reason.as_deref().unwrap_or("");
            if FATAL_WAITING.contains(&why) {
                let image = container.image.as_str();
                let detail = waiting.message.as_deref().unwrap_or("");
                let message = if why.contains("Image") {
                    format!("cannot pull image {image:?} ({why}): {detail}")
                } else {
                    format!(
                        "cannot start container {:?} ({why}): {detail}",
                        container.name
                    )
                };
                return Some(Failure {
                    reason: reason::START_FAILED.to_string(),
                    message: message.trim_end_matches([' ', ':']).to_string(),
                });
            }
        }
        if container.name == FILES_CONTAINER {
            if let Some(terminated) = &state.terminated {
                if terminated.exit_code != 0 {
                    return Some(Failure {
                        reason: reason::START_FAILED.to_string(),
                        message: format!(
                            "cannot copy the job's files into the pod (exit code {}): {}",
                            terminated.exit_code,
                            terminated.message.as_deref().unwrap_or("").trim()
                        ),
                    });
                }
            }
        }
    }
    // Evicted, or refused by the node (e.g. a runtime class it does not have).
    if status.phase.as_deref() == Some("Failed") && main_status(pod).is_none() {
        return Some(Failure {
            reason: reason::START_FAILED.to_string(),
            message: format!(
                "the pod failed before its container started ({}): {}",
                status.reason.as_deref().unwrap_or("Failed"),
                status.message.as_deref().unwrap_or("")
            ),
        });
    }
    None
}

/// Whether the pod is Ready (its readiness probe answers).
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The replica list of a service from its pods: ordered by creation (then name), so that the
/// oldest pods keep the low indexes; pods being deleted are left out.
pub fn replicas(pods: &[Pod], port: Option<u16>) -> Vec<ReplicaStatus> {
    let mut live: Vec<&Pod> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    live.iter()
        .enumerate()
        .map(|(index, pod)| {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let main = main_status(pod);
            ReplicaStatus {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                endpoint: match (port, ip) {
                    (Some(port), Some(ip)) => format!("{ip}:{port}"),
                    _ => String::new(),
                },
                ready: is_ready(pod),
                restarts: main.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
                pid: None,
                last_exit: main
                    .and_then(|c| c.last_state.as_ref()?.terminated.as_ref())
                    .map(|t| match split_code(t.exit_code) {
                        (_, Some(signal)) => format!("signal {signal}"),
                        (code, _) => format!("exit code {}", code.unwrap_or(t.exit_code)),
                    }),
            }
        })
        .collect()
}
