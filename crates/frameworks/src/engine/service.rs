//! Services on the engine: one container per replica, each publishing its port on loopback,
//! probed for readiness, restarted when it exits, scaled up and down.
//!
//! One task per service execution owns its replicas (`run.rs`): it starts and restarts their
//! containers (`containers.rs`), and hears from their followers (`replica.rs`) and probes
//! (`probe.rs`) through a channel. The attempt folder keeps `service.json` (the spec, the
//! desired count, whether it started) for a restarted server; the containers carry
//! `runplane.replica`.

mod containers;
mod run;

use super::container;
use super::follow::open_writer;
use super::service_log::ServiceLog;
use super::{message, EngineFramework};
use crate::attempt::{attempt_dir, check_readiness_path};
use crate::copied_log::CopiedLog;
use crate::files::read_json;
use crate::log_records::Redactor;
use crate::ExecutionId;
use bollard::query_parameters::ListContainersOptions;
use run::ServiceRun;
use runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES;
use runplane_domain::Service;
use runplane_logstore::file::FileLogStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// The service's spec and state in its attempt folder, for a restarted server.
pub(super) const SERVICE_FILE: &str = "service.json";

#[derive(Serialize, Deserialize)]
struct ServiceFile {
    service: Service,
    image: String,
    desired: u32,
    started: bool,
}

/// How the framework reaches a service's task.
pub(super) struct ServiceHandle {
    commands: mpsc::UnboundedSender<Command>,
    task: AbortHandle,
}

enum Command {
    Scale(u32),
    Stop,
}

impl ServiceHandle {
    /// Idempotent: a service that already ended ignores it.
    pub(super) fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    pub(super) fn scale(&self, replicas: u32) {
        let _ = self.commands.send(Command::Scale(replicas));
    }

    /// Forgets the service without touching its containers (the framework goes away).
    pub(super) fn abort(&self) {
        self.task.abort();
    }
}

impl EngineFramework {
    pub(super) async fn start_service(
        &self,
        execution: &ExecutionId,
        service: &Service,
    ) -> Result<(), String> {
        check(service)?;
        let existing = self
            .containers(Some(execution))
            .await
            .map_err(|e| format!("the engine refused to list containers: {e}"))?;
        if !existing.is_empty() {
            return Err("a container of this attempt already exists".into());
        }
        let dir = attempt_dir(&self.options.runs_dir, execution)?;
        container::materialize(&dir, &service.replica)?;
        let image = service
            .replica
            .image
            .clone()
            .unwrap_or_else(|| self.options.default_image.clone());
        let file = ServiceFile {
            service: service.clone(),
            image,
            desired: service.replicas,
            started: false,
        };
        let mut run = match self.service_run(execution, file, &dir).await {
            Ok(run) => run,
            Err(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(why);
            }
        };
        run.persist();
        for index in 0..service.replicas {
            if let Err(why) = run.launch(index, None).await {
                run.remove_all().await;
                drop(run);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("replica {index}: {why}"));
            }
        }
        run.publish().await;
        self.spawn_service(execution.clone(), run);
        Ok(())
    }

    /// Whether the attempt folder says `execution` is a service.
    pub(super) fn is_service(&self, execution: &ExecutionId) -> bool {
        attempt_dir(&self.options.runs_dir, execution)
            .is_ok_and(|dir| dir.join(SERVICE_FILE).exists())
    }

    /// Takes over a service a previous server started: its containers are found by label,
    /// followed and probed again; missing indexes are started, extra ones retired.
    pub(super) async fn recover_service(&self, execution: &ExecutionId) -> Result<(), String> {
        let dir = attempt_dir(&self.options.runs_dir, execution)?;
        let file: ServiceFile = read_json(&dir.join(SERVICE_FILE))
            .ok_or_else(|| format!("{SERVICE_FILE} of the attempt is unreadable"))?;
        let found = self.replica_containers(execution).await?;
        let mut run = self.service_run(execution, file, &dir).await?;
        let copied = CopiedLog::read(&run.logs, &execution.run_id, execution.attempt).map(Arc::new);
        for (index, id) in found {
            run.adopt(index, id, copied.clone()).await;
        }
        run.log.system(&format!(
            "the server restarted: {} replica container(s) taken over",
            run.replicas.len()
        ));
        run.publish().await;
        self.spawn_service(execution.clone(), run);
        Ok(())
    }

    /// The replica containers of `execution`, by index.
    async fn replica_containers(
        &self,
        execution: &ExecutionId,
    ) -> Result<BTreeMap<u32, String>, String> {
        let filters = vec![
            format!("{}={}", container::LABEL_HOME, self.home),
            format!("{}={}", container::LABEL_RUN, execution.run_id),
            format!("{}={}", container::LABEL_ATTEMPT, execution.attempt),
            container::LABEL_REPLICA.to_string(),
        ];
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), filters)])),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("cannot list the engine's containers: {}", message(&e)))?;
        Ok(found
            .into_iter()
            .filter_map(|summary| {
                let index = container::replica_of(summary.labels.as_ref()?)?;
                Some((index, summary.id?))
            })
            .collect())
    }

    async fn service_run(
        &self,
        execution: &ExecutionId,
        file: ServiceFile,
        dir: &Path,
    ) -> Result<ServiceRun, String> {
        let logs = FileLogStore::new(self.options.logs_dir.clone());
        let writer = open_writer(&logs, execution).await?;
        let limit = file
            .service
            .replica
            .log_limit_bytes
            .unwrap_or(DEFAULT_LOG_LIMIT_BYTES);
        let log = ServiceLog::new(
            execution.clone(),
            self.events.clone(),
            writer,
            limit,
            Redactor::new(&container::redactions(dir)),
        )
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let timeout = Duration::from_secs(file.service.ready_timeout_seconds);
        Ok(ServiceRun {
            docker: self.docker.clone(),
            events: self.events.clone(),
            execution: execution.clone(),
            home: self.home.clone(),
            dir: dir.to_path_buf(),
            logs,
            log: Arc::new(log),
            replicas: BTreeMap::new(),
            desired: file.desired,
            initial: file.desired,
            started: file.started,
            ready_deadline: Instant::now() + timeout,
            stopping: false,
            tasks: JoinSet::new(),
            reports_tx,
            reports,
            published: None,
            generations: 0,
            file,
        })
    }

    fn spawn_service(&self, execution: ExecutionId, run: ServiceRun) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut services = self.services();
        let task = tokio::spawn(run.run(receiver)).abort_handle();
        services.insert(execution, ServiceHandle { commands, task });
    }
}

/// Refuses what could never run, naming the field.
fn check(service: &Service) -> Result<(), String> {
    if service.replica.command.is_empty() {
        return Err("replica.command is empty".into());
    }
    if service.http {
        check_readiness_path(&service.readiness_path)?;
        if service.port == Some(0) {
            return Err("port must be between 1 and 65535".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_services_are_refused_with_their_field() {
        let mut service = Service {
            replica: runplane_domain::Job {
                command: vec![],
                ..Default::default()
            },
            replicas: 1,
            readiness_path: "/".into(),
            ready_timeout_seconds: 5,
            port: None,
            http: true,
        };
        assert!(check(&service).unwrap_err().contains("replica.command"));
        service.replica.command = vec!["true".into()];
        service.readiness_path = "ready".into();
        assert!(check(&service).unwrap_err().contains("readiness path"));
        service.readiness_path = "/ready".into();
        service.port = Some(0);
        assert!(check(&service).unwrap_err().contains("port"));
        service.http = false;
        assert!(check(&service).is_ok());
    }
}
