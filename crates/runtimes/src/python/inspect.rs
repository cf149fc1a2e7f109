//! Reading Python sources at apply time with the target interpreter's own `ast` module: the
//! code is parsed by the grammar it will run under, never imported or executed.
//!
//! The runtime does no IO, so running the interpreter is left to a [`HandlerInspector`] (the
//! server's runs it as a process, off the async workers). The inspector runs [`INSPECT_SCRIPT`]
//! with the function's interpreter in isolated mode and feeds it the request on stdin; the
//! script answers with a summary of each module's top-level statements (what binds which name,
//! a `def`'s parameters), or the module's syntax error with its line and column. Code too deep
//! or too large for the parser is such an error, located at the first line where the parser
//! gives up. `signature.rs` finds the handler in the summaries.

use super::signature::Parameter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The script the inspector runs (see its docstring for the protocol).
pub const INSPECT_SCRIPT: &str = include_str!("inspect.py");

/// What the inspector is asked to run.
#[derive(Debug, Clone, Copy)]
pub struct Inspection<'a> {
    /// The interpreter the function's runs use (absolute).
    pub interpreter: &'a str,
    /// [`INSPECT_SCRIPT`].
    pub script: &'a str,
    /// The request, fed on the script's stdin.
    pub input: &'a [u8],
}

/// Runs [`INSPECT_SCRIPT`] with a Python interpreter: the one IO a `python` function's apply
/// needs. Implementations run it in isolated mode (`-I -S`: no site or user paths, so nothing
/// from the function's environment runs) with a timeout and a limit on what it answers.
pub trait HandlerInspector: Send + Sync {
    /// The script's stdout once it exited successfully.
    fn run(&self, inspection: Inspection<'_>) -> Result<Vec<u8>, InspectionError>;
}

/// Why the sources could not be inspected (a problem of the whole source, not of one file).
#[derive(Debug, thiserror::Error)]
pub enum InspectionError {
    #[error("the Python interpreter {interpreter} could not be started: {reason}")]
    Start { interpreter: String, reason: String },
    #[error("Python took more than {seconds} seconds to read it; make it smaller")]
    TimedOut { seconds: u64 },
    #[error("Python's summary of it is larger than the {limit} bytes allowed; make it smaller")]
    TooLarge { limit: u64 },
    #[error("Python failed while reading it ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error(
        "runplane could not read Python's summary of it (a bug in runplane, please report it): {0}"
    )]
    Unreadable(String),
}

/// A syntax error (or code the parser gives up on), located in its file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyntaxProblem {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SyntaxProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// One name in an `import` or `from ... import` statement.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Alias {
    pub name: String,
    pub asname: Option<String>,
}

/// A top-level statement that binds names (others are left out of the summary). `defines`
/// lists the functions defined directly inside a statement's blocks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Statement {
    /// `def` or `async def`.
    Def {
        line: usize,
        name: String,
        is_async: bool,
        /// Positional-only, then the others, then keyword-only.
        parameters: Vec<Parameter>,
        var_positional: bool,
        var_keyword: bool,
        defines: Vec<String>,
    },
    Class {
        line: usize,
        name: String,
        defines: Vec<String>,
    },
    ImportFrom {
        line: usize,
        module: Option<String>,
        level: usize,
        names: Vec<Alias>,
    },
    Import {
        line: usize,
        names: Vec<Alias>,
    },
    /// An assignment (plain, augmented, or annotated with a value): the names its targets bind.
    Assign {
        line: usize,
        names: Vec<String>,
    },
    /// `if`, `try` or `with`.
    Block {
        line: usize,
        block: String,
        defines: Vec<String>,
    },
}

/// A module as the interpreter read it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ModuleReport {
    Statements(Vec<Statement>),
    Error(SyntaxProblem),
}

#[derive(Serialize)]
struct Request<'a> {
    files: Vec<RequestFile<'a>>,
}

#[derive(Serialize)]
struct RequestFile<'a> {
    path: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    modules: BTreeMap<String, ModuleReport>,
}

/// Python accepts (and ignores) a UTF-8 byte order mark at the start of a file.
pub(crate) fn strip_bom(source: &str) -> &str {
    source.strip_prefix('\u{feff}').unwrap_or(source)
}

/// Reads `files` (path, text) with `interpreter` in one run of the script: a report for each.
pub(crate) fn inspect(
    inspector: &dyn HandlerInspector,
    interpreter: &str,
    files: &[(&str, &str)],
) -> Result<BTreeMap<String, ModuleReport>, InspectionError> {
    let request = Request {
        files: files
            .iter()
            .map(|(path, text)| RequestFile {
                path,
                text: strip_bom(text),
            })
            .collect(),
    };
    let input = serde_json::to_vec(&request)
        .map_err(|error| InspectionError::Unreadable(error.to_string()))?;
    let output = inspector.run(Inspection {
        interpreter,
        script: INSPECT_SCRIPT,
        input: &input,
    })?;
    let answer: Answer = serde_json::from_slice(&output)
        .map_err(|error| InspectionError::Unreadable(error.to_string()))?;
    Ok(answer.modules)
}

/// An inspector running the real interpreter, for this crate's tests (the server's also has a
/// timeout and limits).
#[cfg(test)]
#[path = "../../tests/support/interpreter.rs"]
pub(crate) mod interpreter;

#[cfg(test)]
mod tests {
    use super::interpreter::{inspector, INTERPRETER};
    use super::*;

    fn report(code: &str) -> ModuleReport {
        inspect(&inspector(), INTERPRETER, &[("m.py", code)])
            .unwrap()
            .remove("m.py")
            .unwrap()
    }

    fn problem(code: &str) -> SyntaxProblem {
        match report(code) {
            ModuleReport::Error(problem) => problem,
            other => panic!("{code:?} parsed: {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let problem = self::problem("def f():\n    return (1,\n\nx = 1 +\n");
        assert!(problem.line >= 2, "{problem}");
        let problem = self::problem("x = 1\ndef f(:\n    pass\n");
        assert_eq!((problem.line, problem.column), (2, 7), "{problem}");
        assert!(!problem.message.is_empty());
        // Columns count characters, not bytes.
        let problem = self::problem("é = (1,\n");
        assert_eq!((problem.line, problem.column), (1, 5), "{problem}");
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let ModuleReport::Statements(statements) = report("\u{feff}def f():\n    pass\n") else {
            panic!("a BOM is refused");
        };
        assert_eq!(statements.len(), 1);
    }

    #[test]
    fn deep_code_is_refused_with_a_location() {
        let source = format!("x = 1\ny = {}1\n", "-".repeat(5000));
        let problem = problem(&source);
        assert_eq!(problem.line, 2);
        assert!(problem.message.contains("nests too deeply"), "{problem}");
        let source = format!("x = 1\n\ny = 1{}\n", "+1".repeat(100_000));
        assert_eq!(self::problem(&source).line, 3);
        let source = format!("x = {}1\n", "not ".repeat(100_000));
        assert!(self::problem(&source).message.contains("nests too deeply"));
    }

    #[test]
    fn null_bytes_are_located() {
        let problem = problem("x = 1\nab\0c\n");
        assert_eq!((problem.line, problem.column), (2, 3), "{problem}");
    }

    #[test]
    fn summaries_hold_what_binds_names() {
        let code = "import a.b as c, d.e\nfrom ..x import y as z, w\n((a,), [b, *s]) = 1\nn: int\nm: int = 1\nclass C:\n    def h(self): pass\ntry:\n    pass\nexcept E:\n    pass\nelse:\n    def g(): pass\nprint(1)\n";
        let ModuleReport::Statements(statements) = report(code) else {
            panic!("{code:?} did not parse");
        };
        let alias = |name: &str, asname: Option<&str>| Alias {
            name: name.into(),
            asname: asname.map(str::to_string),
        };
        assert_eq!(
            statements,
            [
                Statement::Import {
                    line: 1,
                    names: vec![alias("a.b", Some("c")), alias("d.e", None)]
                },
                Statement::ImportFrom {
                    line: 2,
                    module: Some("x".into()),
                    level: 2,
                    names: vec![alias("y", Some("z")), alias("w", None)]
                },
                Statement::Assign {
                    line: 3,
                    names: vec!["s".into(), "b".into(), "a".into()]
                },
                Statement::Assign {
                    line: 5,
                    names: vec!["m".into()]
                },
                Statement::Class {
                    line: 6,
                    name: "C".into(),
                    defines: vec!["h".into()]
                },
                Statement::Block {
                    line: 8,
                    block: "try".into(),
                    defines: vec!["g".into()]
                },
            ]
        );
    }
}
