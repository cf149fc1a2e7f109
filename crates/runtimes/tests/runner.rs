//! The embedded runner, run for real: `to_runnable`'s files are written into a temporary
//! folder and its command is started with `/usr/bin/python3`, as the local framework would,
//! then `interpret` reads the real outcome.
//!
//! Skipped (with a note on stderr) where `/usr/bin/python3` does not exist.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use runplane_domain::{ExitOutcome, Job, OutputFile, Run, RunState, Runnable};
use runplane_runtimes::{Interpretation, Runtime};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use support::{python_missing, run_of, runtime, write_files, PYTHON};

/// What one real execution left behind.
struct Executed {
    outcome: ExitOutcome,
    stdout: String,
    stderr: String,
    outputs: PathBuf,
    _dir: tempfile::TempDir,
}

impl Executed {
    fn output_json(&self, name: &str) -> Value {
        let file = &self.outcome.outputs[name];
        serde_json::from_slice(&file.contents).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

/// Writes the job's files into a fresh folder and runs its command there, as the local
/// framework does (`RUNPLANE_OUTPUTS` is an empty folder outside the working directory).
fn execute_job(job: &Job, wrap: Option<&[&str]>) -> Executed {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let outputs = dir.path().join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    write_files(&job.files, &work);
    let argv: Vec<&str> = match wrap {
        Some(argv) => argv.to_vec(),
        None => job.command.iter().map(String::as_str).collect(),
    };
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(&work)
        .env_clear()
        .envs(&job.env)
        .env("RUNPLANE_OUTPUTS", &outputs)
        .output()
        .unwrap();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&outputs).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            continue;
        }
        let contents = std::fs::read(entry.path()).unwrap();
        let size = contents.len() as u64;
        files.insert(
            entry.file_name().to_string_lossy().into_owned(),
            OutputFile { contents, size },
        );
    }
    Executed {
        outcome: ExitOutcome {
            exit_code: output.status.code(),
            signal: output.status.signal(),
            outputs: files,
            failure: None,
            outputs_dir: Some(outputs.clone()),
        },
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        outputs,
        _dir: dir,
    }
}

fn job_of(run: &Run) -> Job {
    match runtime().to_runnable(run).unwrap() {
        Runnable::Job(job) => job,
        other => panic!("not a job: {other:?}"),
    }
}

fn execute(run: &Run) -> (Executed, Interpretation) {
    let executed = execute_job(&job_of(run), None);
    let interpretation = runtime().interpret(run, &executed.outcome);
    (executed, interpretation)
}

fn inline(code: &str, parameters: Value) -> Run {
    run_of(
        json!({"source": {"code": code}, "handler": "handler"}),
        parameters,
    )
}

#[test]
fn a_handler_returns_results() {
    if python_missing() {
        return;
    }
    let run = run_of(
        json!({
            "source": {"code": "import os\n\ndef handler(name='world', punctuation='.'):\n    return {'greeting': os.environ['GREETING'] + ' ' + name + punctuation, 'n': [1, 2.5, None, True]}\n"},
            "handler": "handler",
            "default_parameters": {"punctuation": "!"},
        }),
        json!({"name": "ada"}),
    );
    let (executed, got) = execute(&run);
    assert_eq!(executed.outcome.exit_code, Some(0), "{}", executed.stderr);
    assert_eq!(executed.stdout, "");
    assert_eq!(executed.stderr, "");
    let expected = json!({"greeting": "hello ada!", "n": [1, 2.5, null, true]});
    assert_eq!(executed.output_json("results.json"), expected);
    assert_eq!(got.state, RunState::Completed);
    assert_eq!(got.reason, "succeeded");
    assert_eq!(got.results, Some(expected));
    // Nothing but results: no temporary files left behind.
    let names: Vec<&String> = executed.outcome.outputs.keys().collect();
    assert_eq!(names, ["results.json"]);
}

#[test]
fn the_context_and_metrics_work() {
    if python_missing() {
        return;
    }
    let code = r#"
def handler(epochs, context, lr=0.1):
    for step in range(epochs):
        context.log_metric("loss", 1.0 / (step + 1), step=step)
    context.log_metric("accuracy", 1)
    for bad in [("", 1), ("x", "1"), ("x", True), ("x", float("nan"))]:
        try:
            context.log_metric(*bad)
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError("accepted %r" % (bad,))
    context.log("a line for the log")
    return {"run_id": context.run_id, "project": context.project, "parameters": context.parameters, "repr": repr(context)}
"#;
    let run = inline(code, json!({"epochs": 3}));
    let (executed, got) = execute(&run);
    assert_eq!(executed.outcome.exit_code, Some(0), "{}", executed.stderr);
    assert_eq!(executed.stdout, "a line for the log\n");
    let results = got.results.unwrap();
    assert_eq!(results["run_id"], run.metadata.id);
    assert_eq!(results["project"], "demo");
    assert_eq!(results["parameters"], json!({"epochs": 3}));
    let metrics =
        String::from_utf8(executed.outcome.outputs["metrics.jsonl"].contents.clone()).unwrap();
    let lines: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        (
            lines[0]["name"].as_str(),
            lines[0]["value"].as_f64(),
            lines[0]["step"].as_i64()
        ),
        (Some("loss"), Some(1.0), Some(0))
    );
    assert_eq!(
        lines[2]["value"].as_f64().map(|v| (v * 1000.0).round()),
        Some(333.0)
    );
    assert_eq!(
        (lines[3]["name"].as_str(), lines[3]["value"].as_i64()),
        (Some("accuracy"), Some(1))
    );
    assert!(lines[3].get("step").is_none() && lines[3]["time"].as_f64().unwrap() > 1.7e9);
}

#[test]
fn log_artifact_copies_files_and_folders() {
    if python_missing() {
        return;
    }
    let code = r#"
import os

def handler(context):
    with open("model.bin", "wb") as f:
        f.write(b"weights")
    os.makedirs("data/sub")
    with open("data/a.csv", "w") as f:
        f.write("x,y\n1,2\n")
    with open("data/sub/b.txt", "w") as f:
        f.write("b")
    context.log_artifact("model", "model.bin", labels={"kind": "weights"})
    context.log_artifact("dataset", "data")
    for bad in ["", "Bad", "-x", "a_b", "x" * 64, 3]:
        try:
            context.log_artifact(bad, "model.bin")
        except ValueError as e:
            assert "artifact name" in str(e), str(e)
        else:
            raise AssertionError("accepted %r" % (bad,))
    try:
        context.log_artifact("missing", "nope.txt")
    except FileNotFoundError as e:
        assert "missing" in str(e)
    else:
        raise AssertionError("accepted a missing path")
"#;
    let run = inline(code, json!({}));
    let (executed, got) = execute(&run);
    assert_eq!(executed.outcome.exit_code, Some(0), "{}", executed.stderr);
    assert_eq!(got.state, RunState::Completed, "{:?}", got.message);
    let index =
        String::from_utf8(executed.outcome.outputs["artifacts.jsonl"].contents.clone()).unwrap();
    let lines: Vec<Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"name": "model", "type": "file", "labels": {"kind": "weights"}}),
            json!({"name": "dataset", "type": "dir", "labels": {}}),
        ]
    );
    let artifacts = executed.outputs.join("artifacts");
    assert_eq!(
        std::fs::read(artifacts.join("model/model.bin")).unwrap(),
        b"weights"
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join("dataset/a.csv")).unwrap(),
        "x,y\n1,2\n"
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join("dataset/sub/b.txt")).unwrap(),
        "b"
    );
    assert!(!artifacts.join("missing").exists());
}

#[test]
fn an_exception_fails_the_run_with_its_traceback() {
    if python_missing() {
        return;
    }
    let code = "def check(n):\n    if n < 0:\n        raise ValueError('n must be >= 0, got %d' % n)\n\ndef handler(n):\n    print('checking', n)\n    check(n)\n";
    let run = inline(code, json!({"n": -1}));
    let (executed, got) = execute(&run);
    assert_eq!(executed.outcome.exit_code, Some(1));
    assert_eq!(executed.stdout, "checking -1\n");
    assert!(
        executed
            .stderr
            .starts_with("Traceback (most recent call last):"),
        "{}",
        executed.stderr
    );
    assert!(
        executed.stderr.contains("main.py\", line 3, in check"),
        "{}",
        executed.stderr
    );
    assert!(
        executed
            .stderr
            .contains("ValueError: n must be >= 0, got -1"),
        "{}",
        executed.stderr
    );
    assert!(
        !executed.stderr.contains("runner.py"),
        "the runner's frames are hidden: {}",
        executed.stderr
    );
    assert_eq!(
        executed.output_json("error.json"),
        json!({"type": "ValueError", "message": "n must be >= 0, got -1", "where": "main.py:3"})
    );
    assert!(!executed.outcome.outputs.contains_key("results.json"));
    assert_eq!(got.state, RunState::Error);
    assert_eq!(got.reason, "failed");
    assert_eq!(
        got.message.as_deref(),
        Some("ValueError: n must be >= 0, got -1")
    );
}

#[test]
fn results_that_are_not_json_are_invalid_output() {
    if python_missing() {
        return;
    }
    for (value, detail) in [
        ("{1, 2}", "Object of type set is not JSON serializable"),
        (
            "float('nan')",
            "Out of range float values are not JSON compliant",
        ),
        (
            "{(1, 2): 'tuple key'}",
            "keys must be str, int, float, bool or None",
        ),
    ] {
        let run = inline(&format!("def handler():\n    return {value}\n"), json!({}));
        let (executed, got) = execute(&run);
        assert_eq!(executed.outcome.exit_code, Some(1), "{value}");
        let error = executed.output_json("error.json");
        assert_eq!(error["type"], "ResultNotSerializable", "{value}");
        assert!(
            error["message"].as_str().unwrap().contains(detail),
            "{error}"
        );
        assert_eq!(got.state, RunState::Error);
        assert_eq!(got.reason, "invalid_output");
        assert!(got.message.unwrap().starts_with(
            "ResultNotSerializable: the handler's return value is not JSON-serializable"
        ));
    }
    let circular = inline(
        "def handler():\n    a = []\n    a.append(a)\n    return a\n",
        json!({}),
    );
    let (executed, _) = execute(&circular);
    assert_eq!(
        executed.output_json("error.json")["type"],
        "ResultNotSerializable"
    );
}

#[test]
fn results_over_the_limit_are_refused_by_the_runner() {
    if python_missing() {
        return;
    }
    let run = inline(
        "def handler():\n    return 'x' * (2 * 1024 * 1024)\n",
        json!({}),
    );
    let (executed, got) = execute(&run);
    assert_eq!(executed.output_json("error.json")["type"], "ResultTooLarge");
    assert_eq!(got.reason, "invalid_output");
}

#[test]
fn none_async_exit_codes_and_signals() {
    if python_missing() {
        return;
    }
    let (executed, got) = execute(&inline("def handler():\n    pass\n", json!({})));
    assert_eq!(executed.outcome.outputs["results.json"].contents, b"null");
    assert_eq!((got.state, got.results), (RunState::Completed, None));

    let code = "import asyncio\n\nasync def handler(x=2):\n    await asyncio.sleep(0)\n    return x * 21\n";
    let (executed, got) = execute(&inline(code, json!({})));
    assert_eq!(got.results, Some(json!(42)), "{}", executed.stderr);

    let (_, got) = execute(&inline(
        "import sys\n\ndef handler():\n    sys.exit(3)\n",
        json!({}),
    ));
    assert_eq!(
        (got.reason.as_str(), got.message.as_deref()),
        ("failed", Some("the process exited with code 3"))
    );

    let (executed, got) = execute(&inline(
        "import os\n\ndef handler():\n    os.kill(os.getpid(), 9)\n",
        json!({}),
    ));
    assert_eq!(executed.outcome.signal, Some(9));
    assert_eq!(
        (got.reason.as_str(), got.message.as_deref()),
        ("killed", Some("killed by signal 9 (SIGKILL)"))
    );
}

#[test]
fn import_errors_are_reported_like_exceptions() {
    if python_missing() {
        return;
    }
    let (executed, got) = execute(&inline(
        "import no_such_module\n\ndef handler():\n    pass\n",
        json!({}),
    ));
    assert_eq!(executed.outcome.exit_code, Some(1));
    assert_eq!(
        executed.output_json("error.json"),
        json!({"type": "ModuleNotFoundError", "message": "No module named 'no_such_module'", "where": "main.py:1"})
    );
    assert_eq!(
        got.message.as_deref(),
        Some("ModuleNotFoundError: No module named 'no_such_module'")
    );
}

fn packed(files: &[(&str, &[u8])]) -> String {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *contents).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    STANDARD.encode(gz.finish().unwrap())
}

#[test]
fn a_packed_package_runs_from_its_own_folder() {
    if python_missing() {
        return;
    }
    let archive = packed(&[
        ("app/__init__.py", b"from .jobs import count as handler\n"),
        (
            "app/jobs.py",
            b"from . import util\n\ndef count(word, context=None):\n    with open('data/words.txt') as f:\n        words = f.read().split()\n    return {'count': util.count(words, word), 'project': context.project}\n",
        ),
        ("app/util.py", b"def count(words, word):\n    return sum(1 for w in words if w == word)\n"),
        ("data/words.txt", b"a b a c a\n"),
    ]);
    let run = run_of(
        json!({"source": {"archive": archive}, "handler": "app:handler"}),
        json!({"word": "a"}),
    );
    let (executed, got) = execute(&run);
    assert_eq!(
        got.results,
        Some(json!({"count": 3, "project": "demo"})),
        "{}",
        executed.stderr
    );
}

#[test]
fn the_runner_works_without_the_json_accelerator() {
    if python_missing() {
        return;
    }
    // Blocks `_json`, so that the runner falls back on the `json` module.
    let wrapper = [
        PYTHON,
        "-c",
        "import sys; sys.modules['_json'] = None; import runpy; runpy.run_path('runner.py', run_name='__main__')",
    ];
    let ok = inline(
        "def handler(x):\n    return {'x': x, 'é': [1.5, None]}\n",
        json!({"x": "ü"}),
    );
    let executed = execute_job(&job_of(&ok), Some(&wrapper));
    assert_eq!(executed.outcome.exit_code, Some(0), "{}", executed.stderr);
    assert_eq!(
        executed.output_json("results.json"),
        json!({"x": "ü", "é": [1.5, null]})
    );

    let bad = inline("def handler():\n    return object()\n", json!({}));
    let executed = execute_job(&job_of(&bad), Some(&wrapper));
    assert_eq!(
        executed.output_json("error.json")["type"],
        "ResultNotSerializable"
    );

    let failing = inline("def handler():\n    raise KeyError('k')\n", json!({}));
    let executed = execute_job(&job_of(&failing), Some(&wrapper));
    assert_eq!(
        executed.output_json("error.json"),
        json!({"type": "KeyError", "message": "'k'", "where": "main.py:2"})
    );
    assert!(executed.outputs.join("error.json").exists());
}

/// Modules imported at start-up, as `-X importtime` lists them.
fn imported_modules(
    argv: &[&str],
    dir: &Path,
    env: &BTreeMap<String, String>,
    outputs: &Path,
) -> BTreeSet<String> {
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .env("RUNPLANE_OUTPUTS", outputs)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| line.strip_prefix("import time:"))
        .filter_map(|line| line.rsplit('|').next())
        .map(|name| name.trim().to_string())
        .filter(|name| name != "package")
        .collect()
}

/// The runner's own start-up imports are `_json` only (plus the handler's module): no `json`,
/// `re`, `inspect`, `typing`, `traceback` or `asyncio` on the success path.
#[test]
fn the_runner_imports_almost_nothing() {
    if python_missing() {
        return;
    }
    let run = inline("def handler(x=1):\n    return x\n", json!({}));
    let job = job_of(&run);
    let executed = execute_job(&job, None);
    assert_eq!(executed.outcome.exit_code, Some(0));
    let work = executed._dir.path().join("work");
    std::fs::remove_dir_all(&executed.outputs).unwrap();
    std::fs::create_dir_all(&executed.outputs).unwrap();

    let bare = imported_modules(
        &[PYTHON, "-X", "importtime", "-c", "pass"],
        &work,
        &job.env,
        &executed.outputs,
    );
    let runner = imported_modules(
        &[PYTHON, "-X", "importtime", "runner.py"],
        &work,
        &job.env,
        &executed.outputs,
    );
    let extra: BTreeSet<&str> = runner.difference(&bare).map(String::as_str).collect();
    assert_eq!(
        extra,
        BTreeSet::from(["_json", "main"]),
        "the runner imported more than expected"
    );
}
