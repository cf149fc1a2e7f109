//! The `build` action: the function's Containerfile and packed context as a [`Build`], and a
//! successful build read back into a new function version.
//!
//! Each build tags a reference of its own, `<registry>/runplane/<project>-<name>:<version first
//! 12>-<run id last 12>` (`localhost/...` and kept on the engine without a registry), so that
//! two builds never overwrite each other's image and a version keeps naming what it ran. The new
//! version is the built one's spec with `image` set to the pushed digest (or the tag when
//! nothing was pushed), `build` kept (a rebuild starts from the same Containerfile) and
//! `built_from` naming the version and run it came from.

use super::spec::{check_image_reference, BuiltFrom, ContainerSpec};
use super::ContainerConfig;
use crate::archive;
use crate::outcome::{error, stopped};
use crate::{Interpretation, RuntimeError};
use runplane_domain::{
    reason, Build, BuiltImage, ExitOutcome, FileEntry, Run, RunState, BUILD_OUTPUT,
};
use serde_json::json;
use std::collections::BTreeMap;

/// Characters of the version and of the run id kept in a build's tag.
const TAG_PART_CHARS: usize = 12;

/// The build of a run whose action is `build`.
pub(crate) fn build(run: &Run, config: &ContainerConfig) -> Result<Build, RuntimeError> {
    let spec = ContainerSpec::from_value(&run.spec.function_spec).map_err(RuntimeError::BadSpec)?;
    let build = spec.build.ok_or_else(|| {
        RuntimeError::BadSpec("the function has no `build` (a Containerfile)".to_string())
    })?;
    let context = match &build.context {
        None => Vec::new(),
        Some(context) => {
            let files = archive::unpack(&context.archive, config.max_context_bytes)
                .map_err(|error| RuntimeError::BadSpec(format!("build.context.archive {error}")))?;
            let actual = archive::digest(&files);
            if actual != context.digest {
                return Err(RuntimeError::BadSpec(format!(
                    "build.context.archive hashes to {actual}, not to its recorded digest {}",
                    context.digest
                )));
            }
            files
                .into_iter()
                .map(|file| FileEntry {
                    path: file.path,
                    mode: file.mode,
                    contents: file.contents,
                })
                .collect()
        }
    };
    let image = image_reference(run, config);
    check_image_reference(&image).map_err(|problem| {
        RuntimeError::BadSpec(format!("the image to build is unusable: {problem}"))
    })?;
    Ok(Build {
        containerfile: build.containerfile,
        context,
        context_dirs: Vec::new(),
        image,
        push: config.registry.is_some(),
        args: BTreeMap::new(),
        log_limit_bytes: run.spec.settings.log_limit_bytes,
    })
}

/// Lowercase letters, digits, `.`, `_` and `-`; anything else becomes `-`.
fn path_safe(text: &str) -> String {
    text.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn alphanumeric(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// See the module documentation.
pub(crate) fn image_reference(run: &Run, config: &ContainerConfig) -> String {
    let registry = config
        .registry
        .as_deref()
        .map(|r| r.trim_end_matches('/'))
        .unwrap_or("localhost");
    let version: String = alphanumeric(&run.spec.function_version)
        .chars()
        .take(TAG_PART_CHARS)
        .collect();
    let run_id = alphanumeric(&run.metadata.id);
    let run_tail = &run_id[run_id.len().saturating_sub(TAG_PART_CHARS)..];
    format!(
        "{registry}/runplane/{}-{}:{}-{}",
        path_safe(&run.metadata.project),
        path_safe(&run.spec.function_name),
        if version.is_empty() { "0" } else { &version },
        run_tail
    )
}

/// How a build run ended. A build the framework failed carries `failure` (`build_failed`),
/// which the controller applies before asking; what reaches here without it is read here.
pub(crate) fn interpret(run: &Run, outcome: &ExitOutcome) -> Interpretation {
    let stopping = run.status.state == RunState::Stop;
    match (outcome.exit_code, outcome.signal) {
        (Some(0), _) => built(run, outcome),
        (Some(code), _) if stopping => stopped(
            run,
            format!("the build exited with code {code} while stopping"),
        ),
        (None, Some(signal)) if stopping => {
            stopped(run, format!("the build ended by signal {signal}"))
        }
        (Some(code), _) => error(
            reason::BUILD_FAILED,
            format!("the build exited with code {code}; its output is in the run's log"),
        ),
        (None, Some(signal)) => error(
            reason::KILLED,
            format!("the build was killed by signal {signal}"),
        ),
        (None, None) => error(
            reason::LOST,
            "the build ended without an exit code or a signal".to_string(),
        ),
    }
}

fn built(run: &Run, outcome: &ExitOutcome) -> Interpretation {
    let Some(file) = outcome.outputs.get(BUILD_OUTPUT) else {
        return error(
            reason::BUILD_FAILED,
            format!("the build ended without {BUILD_OUTPUT}: no image was recorded"),
        );
    };
    let image = match serde_json::from_slice::<BuiltImage>(&file.contents) {
        Ok(image) if !file.is_truncated() => image,
        Ok(_) => {
            return error(
                reason::BUILD_FAILED,
                format!("{BUILD_OUTPUT} is {} bytes, cut short", file.size),
            )
        }
        Err(parse_error) => {
            return error(
                reason::BUILD_FAILED,
                format!("{BUILD_OUTPUT} is not a built image: {parse_error}"),
            )
        }
    };
    let reference = image.digest.clone().unwrap_or_else(|| image.image.clone());
    if let Err(problem) = check_image_reference(&reference) {
        return error(
            reason::BUILD_FAILED,
            format!("{BUILD_OUTPUT} names an unusable image: {problem}"),
        );
    }
    let built_from = BuiltFrom {
        version: run.spec.function_version.clone(),
        run: run.metadata.id.clone(),
    };
    let new_version = ContainerSpec::from_value(&run.spec.function_spec)
        .map(|spec| ContainerSpec {
            image: Some(reference),
            built_from: Some(built_from.clone()),
            ..spec
        })
        .and_then(|spec| serde_json::to_value(spec).map_err(|e| e.to_string()));
    let new_version = match new_version {
        Ok(value) => value,
        Err(problem) => {
            return error(
                reason::BUILD_FAILED,
                format!("the built function's spec is unusable: {problem}"),
            )
        }
    };
    Interpretation {
        state: RunState::Completed,
        reason: reason::SUCCEEDED.to_string(),
        message: None,
        results: Some(json!({
            "image": image.image,
            "id": image.id,
            "digest": image.digest,
            "built_from": built_from,
        })),
        new_version: Some(new_version),
    }
}

#[cfg(test)]
mod tests {
    use super::super::outcome::tests::outcome;
    use super::super::runnable::tests::{busybox, run_of, RUN_ID, VERSION};
    use super::super::ContainerRuntime;
    use super::*;
    use crate::archive::tests::{b64, Item};
    use crate::Runtime;
    use runplane_domain::{Runnable, Transition};
    use serde_json::Value;

    const CONTAINERFILE: &str = "FROM localhost/runplane-busybox:latest\nCOPY . /app\n";

    fn build_spec() -> Value {
        let archive = b64(&[
            Item::File("bin/serve.sh", 0o755, b"#!/bin/sh\nexec httpd -f\n"),
            Item::File("index.html", 0o644, b"hello"),
        ]);
        busybox(json!({"build": {"containerfile": CONTAINERFILE, "context": {"archive": archive}}}))
    }

    fn build_of(run: &Run, config: ContainerConfig) -> Build {
        match ContainerRuntime::new(config).to_runnable(run).unwrap() {
            Runnable::Build(build) => build,
            other => panic!("not a build: {other:?}"),
        }
    }

    #[test]
    fn a_build_run_becomes_a_build_of_its_own_tag() {
        let run = run_of(build_spec(), "build", json!({}));
        let build = build_of(&run, ContainerConfig::default());
        assert_eq!(
            build,
            Build {
                containerfile: CONTAINERFILE.into(),
                context: vec![
                    FileEntry {
                        path: "bin/serve.sh".into(),
                        mode: 0o755,
                        contents: b"#!/bin/sh\nexec httpd -f\n".to_vec(),
                    },
                    FileEntry {
                        path: "index.html".into(),
                        mode: 0o644,
                        contents: b"hello".to_vec(),
                    },
                ],
                context_dirs: Vec::new(),
                image: "localhost/runplane/demo-hello:0123456789ab-00000000abcd".into(),
                push: false,
                args: BTreeMap::new(),
                log_limit_bytes: Some(4096),
            }
        );
        assert!(build.image.contains(&VERSION[..12]) && build.image.ends_with(&RUN_ID[24..]));

        let pushed = build_of(
            &run,
            ContainerConfig {
                registry: Some("127.0.0.1:5000/team/".into()),
                ..ContainerConfig::default()
            },
        );
        assert_eq!(
            pushed.image,
            "127.0.0.1:5000/team/runplane/demo-hello:0123456789ab-00000000abcd"
        );
        assert!(pushed.push);

        // Without a context, the context is empty.
        let run = run_of(
            json!({"build": {"containerfile": CONTAINERFILE}}),
            "build",
            json!({}),
        );
        assert!(build_of(&run, ContainerConfig::default())
            .context
            .is_empty());
    }

    #[test]
    fn unusable_builds_are_refused() {
        let runtime = ContainerRuntime::default();
        let mut run = run_of(build_spec(), "build", json!({}));
        run.spec.function_spec["build"]["context"]["digest"] = json!("sha256:0000");
        let error = runtime.to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("recorded digest"), "{error}");

        let run = run_of(busybox(json!({})), "build", json!({}));
        let error = runtime.to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("no `build`"), "{error}");

        let run = run_of(build_spec(), "build", json!({}));
        let bad_registry = ContainerRuntime::new(ContainerConfig {
            registry: Some("Not A Registry".into()),
            ..ContainerConfig::default()
        });
        let error = bad_registry.to_runnable(&run).unwrap_err();
        assert!(error.to_string().contains("image to build"), "{error}");
    }

    fn image_json(image: &str, digest: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&BuiltImage {
            image: image.into(),
            id: "sha256:abc".into(),
            digest: digest.map(str::to_string),
        })
        .unwrap()
    }

    #[test]
    fn a_successful_build_makes_a_new_version_with_the_image() {
        let runtime = ContainerRuntime::default();
        let run = run_of(build_spec(), "build", json!({}));
        let tag = "localhost/runplane/demo-hello:0123456789ab-00000000abcd";
        let got = runtime.interpret(
            &run,
            &outcome(Some(0), None, &[(BUILD_OUTPUT, &image_json(tag, None))]),
        );
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Completed, "succeeded")
        );
        assert_eq!(
            got.results,
            Some(json!({
                "image": tag, "id": "sha256:abc", "digest": null,
                "built_from": {"version": VERSION, "run": RUN_ID},
            }))
        );
        let new_version = got.new_version.unwrap();
        let mut expected = run.spec.function_spec.clone();
        expected["image"] = json!(tag);
        expected["built_from"] = json!({"version": VERSION, "run": RUN_ID});
        assert_eq!(new_version, expected);
        // What the controller stores is a valid spec as it is: build kept, command kept.
        assert_eq!(
            runtime.normalize_function(&new_version).unwrap(),
            new_version
        );
        assert_eq!(new_version["build"], run.spec.function_spec["build"]);

        // Pushed: the version names the digest.
        let digest = "127.0.0.1:5000/runplane/demo-hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let got = runtime.interpret(
            &run,
            &outcome(
                Some(0),
                None,
                &[(BUILD_OUTPUT, &image_json(tag, Some(digest)))],
            ),
        );
        assert_eq!(got.new_version.unwrap()["image"], digest);
        assert_eq!(got.results.unwrap()["digest"], digest);

        // A build-only function gets its first image.
        let run = run_of(
            json!({"build": {"containerfile": CONTAINERFILE}}),
            "build",
            json!({}),
        );
        let got = runtime.interpret(
            &run,
            &outcome(Some(0), None, &[(BUILD_OUTPUT, &image_json(tag, None))]),
        );
        let new_version = got.new_version.unwrap();
        assert_eq!(new_version["image"], tag);
        assert_eq!(
            runtime.normalize_function(&new_version).unwrap(),
            new_version
        );
    }

    #[test]
    fn failed_builds_make_no_version() {
        let runtime = ContainerRuntime::default();
        let run = run_of(build_spec(), "build", json!({}));
        let cases = [
            (
                outcome(Some(0), None, &[]),
                "build_failed",
                "without image.json",
            ),
            (
                outcome(Some(0), None, &[(BUILD_OUTPUT, b"{\"image\": 1}")]),
                "build_failed",
                "not a built image",
            ),
            (
                outcome(
                    Some(0),
                    None,
                    &[(BUILD_OUTPUT, &image_json("Bad Image", None))],
                ),
                "build_failed",
                "unusable image",
            ),
            (
                outcome(Some(1), None, &[]),
                "build_failed",
                "exited with code 1",
            ),
            (outcome(None, Some(9), &[]), "killed", "signal 9"),
            (outcome(None, None, &[]), "lost", "without an exit code"),
        ];
        for (ended, reason, message) in cases {
            let got = runtime.interpret(&run, &ended);
            assert_eq!(
                (got.state, got.reason.as_str()),
                (RunState::Error, reason),
                "{ended:?}"
            );
            assert!(got.message.as_deref().unwrap().contains(message), "{got:?}");
            assert_eq!((got.results, got.new_version), (None, None));
        }
        let mut truncated = outcome(
            Some(0),
            None,
            &[(BUILD_OUTPUT, &image_json("localhost/a:b", None))],
        );
        truncated.outputs.get_mut(BUILD_OUTPUT).unwrap().size = 1 << 30;
        assert_eq!(runtime.interpret(&run, &truncated).reason, "build_failed");

        let mut stopping = run.clone();
        stopping.status.state = RunState::Stop;
        stopping.status.transitions.push(Transition {
            from: Some(RunState::Running),
            to: RunState::Stop,
            at: run.metadata.created,
            attempt: 1,
            reason: Some("timeout".into()),
            message: None,
        });
        let got = runtime.interpret(&stopping, &outcome(None, Some(15), &[]));
        assert_eq!(
            (got.state, got.reason.as_str()),
            (RunState::Error, "timeout")
        );
    }
}
