//! Apply-time reading of `python` sources with the real interpreter, through the server's
//! inspector: what a user sees for valid, broken, deep, huge and slow-to-read code.

use runplane_runtimes::python::{PythonConfig, PythonRuntime};
use runplane_runtimes::Runtime;
use runplane_server::inspector::InterpreterInspector;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

fn python_missing() -> bool {
    let missing = !Path::new(PYTHON).exists();
    if missing {
        eprintln!("skipped: {PYTHON} is not installed");
    }
    missing
}

fn runtime_with(interpreter: &str, inspector: InterpreterInspector) -> PythonRuntime {
    PythonRuntime::new(
        PythonConfig {
            interpreter: interpreter.to_string(),
            ..PythonConfig::default()
        },
        Arc::new(inspector),
    )
}

fn runtime() -> PythonRuntime {
    runtime_with(PYTHON, InterpreterInspector::new(None))
}

fn inline(code: &str) -> Value {
    json!({"source": {"code": code}, "handler": "handler"})
}

/// The one problem of a refused spec: (field, problem).
fn refused(runtime: &PythonRuntime, spec: &Value) -> (String, String) {
    let invalid = runtime.normalize_function(spec).unwrap_err();
    assert_eq!(invalid.0.len(), 1, "{invalid:?}");
    let problem = &invalid.0[0];
    (problem.field.clone(), problem.problem.clone())
}

#[test]
fn signatures_are_read_by_the_interpreter() {
    if python_missing() {
        return;
    }
    let spec = runtime()
        .normalize_function(&inline(
            "import functools\n\n@functools.cache\nasync def handler(a=0, /, b=1, *, context, **kw):\n    pass\n",
        ))
        .unwrap();
    assert_eq!(
        spec["signature"],
        json!({
            "parameters": [
                {"name": "a", "kind": "positional_only", "has_default": true},
                {"name": "b", "kind": "positional_or_keyword", "has_default": true},
                {"name": "context", "kind": "keyword_only", "has_default": false}
            ],
            "var_positional": false,
            "var_keyword": true,
            "takes_context": true,
            "is_async": true,
            "defined_at": "main.py:4"
        })
    );
}

#[test]
fn syntax_errors_name_the_field_and_the_place() {
    if python_missing() {
        return;
    }
    let (field, problem) = refused(&runtime(), &inline("x = 1\ndef handler(:\n    pass\n"));
    assert_eq!(field, "source.code");
    assert!(problem.starts_with("line 2, column 13: "), "{problem}");
}

#[test]
fn deep_or_huge_code_is_a_problem_of_the_source() {
    if python_missing() {
        return;
    }
    let deep = format!("x = 1\ny = {}1\n", "-".repeat(100_000));
    let (field, problem) = refused(&runtime(), &inline(&deep));
    assert_eq!(field, "source.code");
    assert!(
        problem.contains("line 2") && problem.contains("nests too deeply"),
        "{problem}"
    );

    let long_sum = format!(
        "def handler():\n    pass\n\nx = 1{}\n",
        "+1".repeat(1_000_000)
    );
    let (field, problem) = refused(&runtime(), &inline(&long_sum));
    assert_eq!(field, "source.code");
    assert!(
        problem.contains("line 4") && problem.contains("nests too deeply"),
        "{problem}"
    );

    // Many ordinary lines are fine.
    let many = format!(
        "{}def handler():\n    pass\n",
        "x = [1, 2, 3]\n".repeat(200_000)
    );
    assert!(runtime().normalize_function(&inline(&many)).is_ok());
}

#[test]
fn reading_that_takes_too_long_is_stopped() {
    if python_missing() {
        return;
    }
    let inspector = InterpreterInspector {
        timeout: Duration::from_millis(1),
        ..InterpreterInspector::new(None)
    };
    let started = Instant::now();
    let (field, problem) = refused(
        &runtime_with(PYTHON, inspector),
        &inline("def handler():\n    pass\n"),
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(field, "source.code");
    assert!(problem.contains("took more than"), "{problem}");
}

#[test]
fn answers_over_the_limit_are_refused() {
    if python_missing() {
        return;
    }
    let inspector = InterpreterInspector {
        max_answer_bytes: 10,
        ..InterpreterInspector::new(None)
    };
    let (field, problem) = refused(
        &runtime_with(PYTHON, inspector),
        &inline("def handler():\n    pass\n"),
    );
    assert_eq!(field, "source.code");
    assert!(problem.contains("larger than the 10 bytes"), "{problem}");
}

#[test]
fn a_missing_interpreter_falls_back_or_says_so() {
    if python_missing() {
        return;
    }
    let missing = "/usr/bin/python9";
    let spec = inline("def handler(n=1):\n    return n\n");
    let fallback = runtime_with(missing, InterpreterInspector::new(Some(PYTHON.to_string())));
    assert!(fallback.normalize_function(&spec).is_ok());
    let (field, problem) = refused(
        &runtime_with(missing, InterpreterInspector::new(None)),
        &spec,
    );
    assert_eq!(field, "source.code");
    assert!(
        problem.contains("/usr/bin/python9 could not be started"),
        "{problem}"
    );
}

#[test]
fn nothing_from_the_environment_runs() {
    if python_missing() {
        return;
    }
    // A sitecustomize on PYTHONPATH would run at start-up of a non-isolated interpreter.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    std::fs::write(
        dir.path().join("sitecustomize.py"),
        format!("open({:?}, 'w').close()\n", marker.to_string_lossy()),
    )
    .unwrap();
    std::env::set_var("PYTHONPATH", dir.path());
    let result = runtime().normalize_function(&inline("def handler():\n    pass\n"));
    std::env::remove_var("PYTHONPATH");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !marker.exists(),
        "the interpreter ran code from the environment"
    );
}
