//! What the service task asks of the engine: a replica's container created and started,
//! started again, taken over, followed and probed; all of them removed.

use super::run::{Replica, ServiceRun};
use crate::copied_log::CopiedLog;
use crate::engine::container::{self, ReplicaPort, DEFAULT_SERVICE_PORT};
use crate::engine::probe;
use crate::engine::replica::{Report, Watch};
use crate::engine::{is_gone, message};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use std::sync::Arc;
use tokio::time::Instant;

impl ServiceRun {
    /// Creates and starts the container of replica `index` (`host_port`: the one it had).
    pub(super) async fn launch(
        &mut self,
        index: u32,
        host_port: Option<u16>,
    ) -> Result<(), String> {
        let service = self.service();
        let job = &service.replica;
        let body = container::create_body(
            &self.file.image,
            &self.home,
            &self.execution,
            job,
            &self.dir,
        )?;
        let port = service.http.then(|| ReplicaPort {
            container_port: service.port.unwrap_or(DEFAULT_SERVICE_PORT),
            host_port,
        });
        let body = container::replica_body(body, index, port, service.port.is_none());
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(|e| {
                format!(
                    "cannot create a container from image {}: {}",
                    self.file.image,
                    message(&e)
                )
            })?;
        let replica = self
            .replicas
            .entry(index)
            .or_insert_with(|| Replica::new(index));
        replica.container = Some(created.id.clone());
        replica.cursor = Default::default();
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = remove(&self.docker, &created.id).await;
            if let Some(replica) = self.replicas.get_mut(&index) {
                replica.container = None;
            }
            return Err(format!("cannot start its container: {}", message(&e)));
        }
        self.started_container(index, &created.id, None).await;
        Ok(())
    }

    /// Starts replica `index`'s stopped container again, or a new one when it is gone.
    pub(super) async fn restart(&mut self, index: u32) -> Result<(), String> {
        let Some(replica) = self.replicas.get(&index) else {
            return Ok(());
        };
        let (container, port) = (replica.container.clone(), replica.port);
        let Some(container) = container else {
            return self.launch(index, port).await;
        };
        match self.docker.start_container(&container, None).await {
            // 304: it runs already (started by someone else): follow it all the same.
            Ok(()) => {
                self.started_container(index, &container, None).await;
                Ok(())
            }
            Err(e) if is_not_modified(&e) => {
                self.started_container(index, &container, None).await;
                Ok(())
            }
            Err(e) if is_gone(&e) => {
                // Removed behind our back: a new container, on the same host port if free.
                self.launch(index, port).await
            }
            Err(e) => Err(format!("cannot start its container: {}", message(&e))),
        }
    }

    /// Takes over a container a previous server started.
    pub(super) async fn adopt(
        &mut self,
        index: u32,
        container: String,
        copied: Option<Arc<CopiedLog>>,
    ) {
        let mut replica = Replica::new(index);
        replica.container = Some(container.clone());
        // Whether it served before is unknown: it was, if the service had started.
        replica.ever_ready = self.started;
        self.replicas.insert(index, replica);
        self.started_container(index, &container, copied).await;
    }

    /// Follows (and probes) a container that was just started or taken over.
    async fn started_container(
        &mut self,
        index: u32,
        container: &str,
        copied: Option<Arc<CopiedLog>>,
    ) {
        let http = self.service().http;
        let path = self.service().readiness_path.clone();
        let port = if http {
            published_port(&self.docker, container).await
        } else {
            None
        };
        self.generations += 1;
        let generation = self.generations;
        let Some(replica) = self.replicas.get_mut(&index) else {
            return;
        };
        replica.not_ready();
        replica.generation = generation;
        replica.running = true;
        if port.is_some() {
            replica.port = port;
        }
        let watch = Watch {
            docker: self.docker.clone(),
            container: container.to_string(),
            index,
            generation,
            log: self.log.clone(),
            cursor: replica.cursor.clone(),
            copied,
            reports: self.reports_tx.clone(),
        };
        self.tasks.spawn(watch.run());
        let short = &container[..container.len().min(12)];
        if !http {
            replica.ready_since = Some(Instant::now());
            replica.ever_ready = true;
            self.log
                .system(&format!("replica {index} started (container {short})"));
            return;
        }
        match replica.port {
            Some(port) => {
                let reports = self.reports_tx.clone();
                replica.probe = Some(self.tasks.spawn(async move {
                    probe::until_ready(port, &path).await;
                    let _ = reports.send(Report::Ready { index, generation });
                }));
                self.log.system(&format!(
                    "replica {index} started (container {short}, port {port})"
                ));
            }
            None => self.log.system(&format!(
                "replica {index} started (container {short}) but the engine published no port: it cannot be probed"
            )),
        }
    }

    /// Removes every replica's container at once (a failed start or a failed service).
    pub(super) async fn remove_all(&mut self) {
        for replica in self.replicas.values_mut() {
            replica.not_ready();
        }
        let containers: Vec<String> = self
            .replicas
            .values()
            .filter_map(|r| r.container.clone())
            .collect();
        let removals = containers.iter().map(|id| remove(&self.docker, id));
        for (id, result) in containers
            .iter()
            .zip(futures::future::join_all(removals).await)
        {
            if let Err(e) = result {
                tracing::warn!("removing replica container {id}: {e}");
            }
        }
    }
}

/// The host port the engine published the container's one port on.
async fn published_port(docker: &Docker, container: &str) -> Option<u16> {
    let inspected = docker.inspect_container(container, None).await.ok()?;
    let ports = inspected.network_settings?.ports?;
    ports
        .into_values()
        .flatten()
        .flatten()
        .find_map(|binding| binding.host_port?.parse().ok())
}

pub(super) async fn remove(docker: &Docker, container: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(container, Some(options)).await {
        Err(e) if !is_gone(&e) => Err(e),
        _ => Ok(()),
    }
}

/// 304 to a start: the container runs already.
fn is_not_modified(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}
