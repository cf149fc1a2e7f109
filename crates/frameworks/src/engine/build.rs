//! Image builds on the engine: the context assembled as a tar file, the engine's builder run on
//! it, its output into the run's log, the image tagged (and pushed) or nothing left.
//!
//! A build has no container: its attempt folder holds [`BUILD_MARKER`] so that a restarted
//! server can tell it from a job whose container vanished. A build cannot be re-attached (the
//! engine ends it once the connection that asked for it is gone), so recovery reports it lost.

mod context;
mod log;
mod push;

use self::log::BuildLog;
use super::{message, EngineFramework};
use crate::attempt::attempt_dir;
use crate::files::describe;
use crate::{EventKind, EventSender, ExecutionId};
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptions};
use bollard::{body_try_stream, Docker};
use bytes::Bytes;
use futures::StreamExt;
use runplane_domain::runnable::DEFAULT_LOG_LIMIT_BYTES;
use runplane_domain::{reason, Build, BuiltImage, ExitOutcome, Failure, OutputFile, BUILD_OUTPUT};
use runplane_logstore::file::FileLogStore;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::AsyncReadExt;
use tokio::task::AbortHandle;

/// The file that marks an attempt folder as a build's (it holds the image reference).
pub(super) const BUILD_MARKER: &str = "build.json";
/// The context handed to the builder, removed once the builder has it.
const CONTEXT_TAR: &str = "context.tar";
/// What a stopped build reports: ended by a stop, as a job killed by SIGTERM would.
const STOP_SIGNAL: i32 = 15;

/// The builds this framework instance runs.
#[derive(Default)]
pub(super) struct Builds(Mutex<HashMap<ExecutionId, Handle>>);

struct Handle {
    task: AbortHandle,
    /// Set by whichever of the build's end and a stop comes first: only that one reports
    /// `Exited`.
    ended: Arc<AtomicBool>,
    image: String,
}

impl Builds {
    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Handle>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn contains(&self, execution: &ExecutionId) -> bool {
        self.lock().contains_key(execution)
    }

    /// Forgets a build (its cleanup), aborting it if it still runs.
    pub(super) fn forget(&self, execution: &ExecutionId) {
        if let Some(handle) = self.lock().remove(execution) {
            handle.task.abort();
        }
    }

    pub(super) fn abort_all(&self) {
        for (_, handle) in self.lock().drain() {
            handle.task.abort();
        }
    }
}

/// Whether an attempt folder is a build's.
pub(super) fn is_build(attempt_dir: &Path) -> bool {
    attempt_dir.join(BUILD_MARKER).exists()
}

/// The builds whose attempt folders are under `runs_dir`, as `<run id>/<attempt>/`.
pub(super) fn build_executions(runs_dir: &Path) -> Vec<ExecutionId> {
    let mut found = Vec::new();
    let Ok(runs) = std::fs::read_dir(runs_dir) else {
        return found;
    };
    for run in runs.flatten() {
        let Ok(attempts) = std::fs::read_dir(run.path()) else {
            continue;
        };
        let run_id = run.file_name().to_string_lossy().into_owned();
        for attempt in attempts.flatten() {
            let number = attempt.file_name().to_str().and_then(|n| n.parse().ok());
            if let Some(attempt_number) = number.filter(|_| is_build(&attempt.path())) {
                found.push(ExecutionId {
                    run_id: run_id.clone(),
                    attempt: attempt_number,
                });
            }
        }
    }
    found
}

impl EngineFramework {
    pub(super) async fn start_build(
        &self,
        execution: &ExecutionId,
        build: &Build,
    ) -> Result<(), String> {
        context::check(build)?;
        if self.builds.contains(execution) {
            return Err("a build of this attempt is already running".into());
        }
        let dir = attempt_dir(&self.options.runs_dir, execution)?;
        let tar = prepare(&dir, build).await?;
        let writer = FileLogStore::new(self.options.logs_dir.clone())
            .open_writer(&execution.run_id, execution.attempt)
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let ended = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            docker: self.docker.clone(),
            events: self.events.clone(),
            execution: execution.clone(),
            build: build.clone(),
            tar,
            log: BuildLog::new(
                writer,
                build.log_limit_bytes.unwrap_or(DEFAULT_LOG_LIMIT_BYTES),
            ),
            ended: ended.clone(),
        };
        self.emit(execution, EventKind::Started).await;
        let mut builds = self.builds.lock();
        let task = tokio::spawn(runner.run()).abort_handle();
        builds.insert(
            execution.clone(),
            Handle {
                task,
                ended,
                image: build.image.clone(),
            },
        );
        Ok(())
    }

    /// Stops a build this instance runs: the builder is abandoned (the engine ends it after
    /// its current step and tags nothing), whatever got tagged is removed, `Exited` is sent
    /// now. False when `execution` is not a build of this instance.
    pub(super) async fn stop_build(&self, execution: &ExecutionId) -> bool {
        let image = {
            let builds = self.builds.lock();
            let Some(handle) = builds.get(execution) else {
                return false;
            };
            if handle.ended.swap(true, Ordering::SeqCst) {
                return true;
            }
            handle.task.abort();
            handle.image.clone()
        };
        self.emit(
            execution,
            EventKind::Exited(ExitOutcome {
                exit_code: None,
                signal: Some(STOP_SIGNAL),
                outputs: BTreeMap::new(),
                failure: None,
                outputs_dir: None,
            }),
        )
        .await;
        let docker = self.docker.clone();
        tokio::spawn(async move { untag(&docker, &image).await });
        true
    }
}

/// A fresh attempt folder holding the marker and the context tar.
async fn prepare(dir: &Path, build: &Build) -> Result<PathBuf, String> {
    let dir = dir.to_path_buf();
    let build = build.clone();
    tokio::task::spawn_blocking(move || {
        if dir.exists() {
            // Left by a start that failed half-way or a crash before cleanup.
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot clear {}: {}", dir.display(), describe(&e)))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {}", dir.display(), describe(&e)))?;
        let marker = serde_json::json!({ "image": build.image }).to_string();
        std::fs::write(dir.join(BUILD_MARKER), marker)
            .map_err(|e| format!("cannot write {BUILD_MARKER}: {}", describe(&e)))?;
        let tar = dir.join(CONTEXT_TAR);
        context::write_tar(&build, &tar)?;
        Ok(tar)
    })
    .await
    .map_err(|e| format!("the build context could not be assembled: {e}"))?
}

/// One build, from handing the context over to `Exited`.
struct Runner {
    docker: Docker,
    events: EventSender,
    execution: ExecutionId,
    build: Build,
    tar: PathBuf,
    log: BuildLog,
    ended: Arc<AtomicBool>,
}

impl Runner {
    async fn emit(&self, kind: EventKind) {
        self.events.emit(&self.execution, kind).await;
    }

    async fn report_log(&mut self) {
        if let Some(end) = self.log.take_news() {
            if !self.ended.load(Ordering::SeqCst) {
                self.emit(EventKind::LogAppended { end_offset: end }).await;
            }
        }
    }

    async fn run(mut self) {
        let outcome = match self.build_and_push().await {
            Ok(built) => success(&built),
            Err(message) => {
                untag(&self.docker, &self.build.image).await;
                if let Err(e) = self.log.system(&format!("build failed: {message}")) {
                    tracing::warn!(execution = ?self.execution, "{e}");
                }
                ExitOutcome {
                    exit_code: Some(1),
                    signal: None,
                    outputs: BTreeMap::new(),
                    failure: Some(Failure {
                        reason: reason::BUILD_FAILED.to_string(),
                        message,
                    }),
                    outputs_dir: None,
                }
            }
        };
        let _ = tokio::fs::remove_file(&self.tar).await;
        if let Err(e) = self.log.finish() {
            tracing::warn!(execution = ?self.execution, "{e}");
        }
        self.report_log().await;
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.emit(EventKind::Exited(outcome)).await;
        }
    }

    async fn build_and_push(&mut self) -> Result<BuiltImage, String> {
        let id = match self.run_builder().await {
            // Podman's layer cache can lose a layer to a concurrent removal between its cache
            // lookup and its use; the build itself is sound, and a second try finds a
            // consistent cache.
            Err(error) if error.contains(LAYER_RACE) => {
                self.log.output(&format!(
                    "the engine's layer cache changed under the build ({error}); building again\n"
                ))?;
                self.run_builder().await?
            }
            other => other?,
        };
        let digest = if self.build.push {
            Some(self.push().await?)
        } else {
            None
        };
        Ok(BuiltImage {
            image: self.build.image.clone(),
            id,
            digest,
        })
    }

    /// Runs the builder; the new image's id once it is tagged.
    async fn run_builder(&mut self) -> Result<String, String> {
        let image = self.build.image.clone();
        let args: HashMap<String, String> = self.build.args.clone().into_iter().collect();
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(context::CONTAINERFILE)
            .t(&image)
            .rm(true)
            .forcerm(true);
        if !args.is_empty() {
            options = options.buildargs(&args);
        }
        let body = body_try_stream(file_chunks(
            tokio::fs::File::open(&self.tar)
                .await
                .map_err(|e| format!("cannot read the build context: {}", describe(&e)))?,
        ));
        let docker = self.docker.clone();
        let mut stream = docker.build_image(options.build(), None, Some(body));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        self.log.output(&text)?;
                        self.report_log().await;
                    }
                }
                // The builder's own error (a failed step, a bad Containerfile, a missing base).
                Err(DockerError::DockerStreamError { error }) => {
                    return Err(error.trim_end().to_string())
                }
                Err(e) => return Err(format!("the engine's builder failed: {}", message(&e))),
            }
        }
        let inspected =
            self.docker.inspect_image(&image).await.map_err(|e| {
                format!("the builder ended without tagging {image}: {}", message(&e))
            })?;
        inspected
            .id
            .ok_or_else(|| format!("the engine reports no id for {image}"))
    }
}

/// What Podman answers when a cached layer vanished under a build (a storage race).
const LAYER_RACE: &str = "layer not known";

fn success(built: &BuiltImage) -> ExitOutcome {
    let contents = serde_json::to_vec(built).unwrap_or_default();
    let size = contents.len() as u64;
    ExitOutcome {
        exit_code: Some(0),
        signal: None,
        outputs: BTreeMap::from([(BUILD_OUTPUT.to_string(), OutputFile { contents, size })]),
        failure: None,
        outputs_dir: None,
    }
}

/// Removes the tag a failed or stopped build may have left (the image too when nothing else
/// names it).
async fn untag(docker: &Docker, image: &str) {
    let options = RemoveImageOptions {
        force: false,
        noprune: false,
        platforms: None,
    };
    match docker.remove_image(image, Some(options), None).await {
        Ok(_) => tracing::debug!("removed the tag {image} of a build that did not succeed"),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => tracing::warn!("cannot remove the tag {image}: {}", message(&e)),
    }
}

/// The context file as a stream of chunks; ends after the first error.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
