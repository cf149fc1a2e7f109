//! Finding a handler in the source, as the interpreter read it (`inspect.rs`), and reading its
//! parameters, so that a run's parameters can be checked without importing the code.
//!
//! A handler is a function defined with `def` or `async def` at the top level of its module, or
//! imported there from another module of the same source (`from .impl import handler`), which
//! is followed. Anything else (a method, a nested or conditional `def`, an assignment such as
//! `handler = make_handler()`) is refused with a hint: its parameters cannot be known without
//! running the code. Decorators are assumed to keep the signature (as `functools.wraps` does).

use super::handler::{module_files, module_of, HandlerRef};
use super::inspect::{
    self, HandlerInspector, InspectionError, ModuleReport, Statement, SyntaxProblem,
};
use crate::archive::SourceFile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How many `from ... import` hops are followed before giving up.
const MAX_IMPORT_HOPS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParameterKind {
    /// Before `/`: cannot be passed by name, so runplane can never fill it.
    PositionalOnly,
    PositionalOrKeyword,
    /// After `*` or `*args`.
    KeywordOnly,
}

/// One named parameter of a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    pub kind: ParameterKind,
    pub has_default: bool,
}

/// What runplane knows of a handler's parameters (stored in the normalized spec, so that runs
/// are checked without parsing the code again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The named parameters in order: positional-only, then the others, then keyword-only.
    pub parameters: Vec<Parameter>,
    /// `*args`: never filled, since runplane passes parameters by name.
    pub var_positional: bool,
    /// `**kwargs`: any parameter name is accepted.
    pub var_keyword: bool,
    /// A parameter named `context` (not positional-only): runplane passes the run's context.
    pub takes_context: bool,
    /// `async def`: the runner awaits it with `asyncio.run`.
    pub is_async: bool,
    /// Where the `def` is, `path:line` within the source.
    pub defined_at: String,
}

/// The parameter name runplane fills itself.
pub const CONTEXT: &str = "context";

impl Signature {
    /// The handler can take a parameter `name` by name (not `context`, which runplane fills).
    pub fn accepts(&self, name: &str) -> bool {
        name != CONTEXT && (self.var_keyword || self.named().any(|p| p.name == name))
    }

    /// Parameters a run can set by name, in order.
    pub fn named(&self) -> impl Iterator<Item = &Parameter> {
        self.parameters
            .iter()
            .filter(|p| p.kind != ParameterKind::PositionalOnly && p.name != CONTEXT)
    }

    /// Parameters a run must provide.
    pub fn required(&self) -> impl Iterator<Item = &Parameter> {
        self.named().filter(|p| !p.has_default)
    }

    /// `a, b, **kwargs` for messages.
    pub fn describe_accepted(&self) -> String {
        let mut names: Vec<String> = self.named().map(|p| p.name.clone()).collect();
        if self.var_keyword {
            names.push("any other name (**kwargs)".to_string());
        }
        if names.is_empty() {
            "no parameters".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// What last binds a name at the top level of a module.
enum Binding<'a> {
    Def {
        line: usize,
        is_async: bool,
        parameters: &'a [Parameter],
        var_positional: bool,
        var_keyword: bool,
    },
    FromImport {
        module: Option<&'a str>,
        level: usize,
        name: &'a str,
        line: usize,
    },
    Other {
        what: &'static str,
        line: usize,
    },
}

/// The statement that binds `name` last among the module's top-level statements (the one in
/// effect once the module is imported).
fn last_binding<'a>(body: &'a [Statement], name: &str) -> Option<Binding<'a>> {
    let mut found = None;
    for stmt in body {
        let binding = match stmt {
            Statement::Def {
                name: defined,
                line,
                is_async,
                parameters,
                var_positional,
                var_keyword,
                ..
            } if defined == name => Some(Binding::Def {
                line: *line,
                is_async: *is_async,
                parameters,
                var_positional: *var_positional,
                var_keyword: *var_keyword,
            }),
            Statement::Class {
                name: defined,
                line,
                ..
            } if defined == name => Some(Binding::Other {
                what: "a class",
                line: *line,
            }),
            Statement::ImportFrom {
                line,
                module,
                level,
                names,
            } => names
                .iter()
                .rfind(|alias| alias.asname.as_ref().unwrap_or(&alias.name) == name)
                .map(|alias| Binding::FromImport {
                    module: module.as_deref(),
                    level: *level,
                    name: alias.name.as_str(),
                    line: *line,
                }),
            Statement::Import { line, names } => names
                .iter()
                .any(|alias| match &alias.asname {
                    Some(asname) => asname == name,
                    None => alias.name.split('.').next() == Some(name),
                })
                .then_some(Binding::Other {
                    what: "a module (bound by `import`)",
                    line: *line,
                }),
            Statement::Assign { line, names } if names.iter().any(|n| n == name) => {
                Some(Binding::Other {
                    what: "a variable (bound by an assignment)",
                    line: *line,
                })
            }
            _ => None,
        };
        if binding.is_some() {
            found = binding;
        }
    }
    found
}

/// Why a name is not at the top level, when it is defined one level down.
fn nested_hint(body: &[Statement], name: &str) -> Option<String> {
    let defines = |functions: &[String]| functions.iter().any(|f| f == name);
    for stmt in body {
        let place = match stmt {
            Statement::Class {
                name: class,
                defines: functions,
                ..
            } if defines(functions) => format!("is a method of class {class}"),
            Statement::Def {
                name: function,
                defines: functions,
                ..
            } if defines(functions) => format!("is nested inside function {function}"),
            Statement::Block {
                block,
                defines: functions,
                ..
            } if defines(functions) => {
                let article = if block == "if" { "an" } else { "a" };
                format!("is defined inside {article} `{block}` block")
            }
            _ => continue,
        };
        return Some(format!(
            "; a function {name} {place}, but a handler must be a function defined at the top level of its module"
        ));
    }
    None
}

fn top_level_functions(body: &[Statement]) -> Vec<&str> {
    body.iter()
        .filter_map(|s| match s {
            Statement::Def { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

/// Module `a.b.c` imported with `level` leading dots from `module` (a package when
/// `is_package`), as Python resolves relative imports.
fn absolute_module(
    current: &str,
    is_package: bool,
    level: usize,
    target: Option<&str>,
) -> Option<String> {
    if level == 0 {
        return target.map(str::to_string);
    }
    let mut package: Vec<&str> = current.split('.').collect();
    if !is_package {
        package.pop();
    }
    for _ in 1..level {
        package.pop()?;
    }
    // A relative import needs a package to be relative to (Python: "attempted relative import
    // with no known parent package").
    if package.is_empty() {
        return None;
    }
    if let Some(target) = target {
        package.extend(target.split('.'));
    }
    Some(package.join("."))
}

/// Why a handler's signature could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandlerError {
    /// A module on the way does not parse: a problem of the source.
    Syntax {
        path: String,
        problem: SyntaxProblem,
    },
    /// Anything else: a problem of the `handler` field.
    Lookup(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Syntax { path, problem } => write!(f, "{path}, {problem}"),
            HandlerError::Lookup(problem) => f.write_str(problem),
        }
    }
}

/// The source's files by path, for looking modules up, and its Python files as the
/// interpreter read them.
pub(crate) struct SourceTree {
    files: BTreeMap<String, Vec<u8>>,
    /// Each `.py` file that is UTF-8 text, by path.
    modules: BTreeMap<String, ModuleReport>,
}

impl SourceTree {
    /// Reads the `.py` files that are UTF-8 text with `interpreter`, in one run of the
    /// inspector. (A file that is not UTF-8 is only reported if it holds the handler: it may be
    /// data, or declare another encoding.)
    pub(crate) fn inspect(
        files: Vec<SourceFile>,
        inspector: &dyn HandlerInspector,
        interpreter: &str,
    ) -> Result<Self, InspectionError> {
        let files: BTreeMap<String, Vec<u8>> =
            files.into_iter().map(|f| (f.path, f.contents)).collect();
        let python: Vec<(&str, &str)> = files
            .iter()
            .filter(|(path, _)| path.ends_with(".py"))
            .filter_map(|(path, contents)| {
                Some((path.as_str(), std::str::from_utf8(contents).ok()?))
            })
            .collect();
        let modules = inspect::inspect(inspector, interpreter, &python)?;
        Ok(Self { files, modules })
    }

    /// The syntax problems of the Python files, by path.
    pub(crate) fn syntax_problems(&self) -> impl Iterator<Item = (&str, &SyntaxProblem)> {
        self.modules
            .iter()
            .filter_map(|(path, report)| match report {
                ModuleReport::Error(problem) => Some((path.as_str(), problem)),
                ModuleReport::Statements(_) => None,
            })
    }

    /// The file defining `module`, if the source has it.
    pub(crate) fn module_file(&self, module: &str) -> Option<&str> {
        module_files(module).into_iter().find_map(|path| {
            self.files
                .get_key_value(path.as_str())
                .map(|(path, _)| path.as_str())
        })
    }

    /// Up to ten modules of the source, for "it has: ..." hints.
    fn some_modules(&self) -> String {
        let modules: Vec<String> = self
            .files
            .keys()
            .filter_map(|p| module_of(p))
            .take(10)
            .collect();
        if modules.is_empty() {
            "no Python modules".to_string()
        } else {
            modules.join(", ")
        }
    }

    /// Finds the handler's `def`, following `from ... import` within the source, and reads its
    /// signature. The error is a problem for the `handler` field.
    pub(crate) fn find_handler(&self, handler: &HandlerRef) -> Result<Signature, HandlerError> {
        let mut module = handler.module.clone();
        let mut function = handler.function.clone();
        for _ in 0..MAX_IMPORT_HOPS {
            let Some(path) = self.module_file(&module) else {
                let [package, plain] = module_files(&module);
                return Err(HandlerError::Lookup(format!(
                    "module {module} is not in the source: expected {plain} or {package} (the source has {})",
                    self.some_modules()
                )));
            };
            if std::str::from_utf8(&self.files[path]).is_err() {
                return Err(HandlerError::Lookup(format!(
                    "{path} is not UTF-8 text; runplane reads Python sources as UTF-8"
                )));
            }
            let body = match self.modules.get(path) {
                Some(ModuleReport::Statements(body)) => body,
                Some(ModuleReport::Error(problem)) => {
                    return Err(HandlerError::Syntax {
                        path: path.to_string(),
                        problem: problem.clone(),
                    })
                }
                None => {
                    return Err(HandlerError::Lookup(format!(
                        "{path} was not read by Python (a bug in runplane, please report it)"
                    )))
                }
            };
            let at = |line: usize| format!("{path}:{line}");
            match last_binding(body, &function) {
                Some(Binding::Def {
                    line,
                    is_async,
                    parameters,
                    var_positional,
                    var_keyword,
                }) => {
                    let takes_context = parameters
                        .iter()
                        .any(|p| p.name == CONTEXT && p.kind != ParameterKind::PositionalOnly);
                    return Ok(Signature {
                        parameters: parameters.to_vec(),
                        var_positional,
                        var_keyword,
                        takes_context,
                        is_async,
                        defined_at: at(line),
                    });
                }
                Some(Binding::FromImport {
                    module: target,
                    level,
                    name,
                    line,
                }) => {
                    let is_package = path.ends_with("__init__.py");
                    let resolved = absolute_module(&module, is_package, level, target);
                    match resolved.filter(|m| self.module_file(m).is_some()) {
                        Some(next) => {
                            module = next;
                            function = name.to_string();
                        }
                        None => {
                            let dots = ".".repeat(level);
                            return Err(HandlerError::Lookup(format!(
                                "{function} in {} is imported from {dots}{}, which is not in the source; define the handler in the function's own code",
                                at(line),
                                target.unwrap_or_default()
                            )));
                        }
                    }
                }
                Some(Binding::Other { what, line }) => {
                    return Err(HandlerError::Lookup(format!(
                        "{function} in {} is {what}, not a function defined with `def`; runplane reads a handler's parameters from its `def`",
                        at(line)
                    )));
                }
                None => {
                    let hint = nested_hint(body, &function).unwrap_or_else(|| {
                        let functions = top_level_functions(body);
                        if functions.is_empty() {
                            " (it defines no top-level functions)".to_string()
                        } else {
                            format!(" (its top-level functions: {})", functions.join(", "))
                        }
                    });
                    return Err(HandlerError::Lookup(format!(
                        "{path} has no top-level function {function}{hint}"
                    )));
                }
            }
        }
        Err(HandlerError::Lookup(format!(
            "{handler} is imported through more than {MAX_IMPORT_HOPS} modules (or in a circle); define it closer to where the handler names it"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::super::inspect::interpreter::{inspector, INTERPRETER};
    use super::*;

    fn inline(code: &str) -> Result<Signature, String> {
        find(&[("main.py", code)], "handler")
    }

    fn params(sig: &Signature) -> Vec<(String, ParameterKind, bool)> {
        sig.parameters
            .iter()
            .map(|p| (p.name.clone(), p.kind, p.has_default))
            .collect()
    }

    use ParameterKind::*;

    #[test]
    fn reads_plain_parameters_and_defaults() {
        let sig = inline("def handler(a, b=2, c: int = 3):\n    return a\n").unwrap();
        assert_eq!(
            params(&sig),
            [
                ("a".into(), PositionalOrKeyword, false),
                ("b".into(), PositionalOrKeyword, true),
                ("c".into(), PositionalOrKeyword, true)
            ]
        );
        assert!(!sig.var_positional && !sig.var_keyword && !sig.takes_context && !sig.is_async);
        assert_eq!(sig.defined_at, "main.py:1");
        assert_eq!(sig.describe_accepted(), "a, b, c");
        assert_eq!(
            sig.required().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn reads_star_args_keyword_only_and_kwargs() {
        let sig = inline("def handler(p, /, q, *args, k, m=1, **kwargs):\n    pass\n").unwrap();
        assert_eq!(
            params(&sig),
            [
                ("p".into(), PositionalOnly, false),
                ("q".into(), PositionalOrKeyword, false),
                ("k".into(), KeywordOnly, false),
                ("m".into(), KeywordOnly, true)
            ]
        );
        assert!(sig.var_positional && sig.var_keyword);
        assert!(sig.accepts("anything") && sig.accepts("q") && !sig.accepts("context"));
        let sig = inline("def handler(*, k):\n    pass\n").unwrap();
        assert_eq!(params(&sig), [("k".into(), KeywordOnly, false)]);
        assert!(!sig.accepts("x"));
    }

    #[test]
    fn notices_context_in_any_named_position() {
        for code in [
            "def handler(context):\n    pass\n",
            "def handler(a, context=None):\n    pass\n",
            "def handler(a, *, context):\n    pass\n",
        ] {
            let sig = inline(code).unwrap();
            assert!(sig.takes_context, "{code}");
            assert!(sig.required().all(|p| p.name != "context"));
        }
        assert!(
            !inline("def handler(context, /):\n    pass\n")
                .unwrap()
                .takes_context
        );
        assert!(
            !inline("def handler(**context):\n    pass\n")
                .unwrap()
                .takes_context
        );
    }

    #[test]
    fn async_and_decorated_handlers_are_found() {
        let sig = inline("async def handler(x):\n    return x\n").unwrap();
        assert!(sig.is_async);
        let code = "import functools\n\ndef deco(f):\n    return f\n\n@deco\n@functools.lru_cache(maxsize=None)\ndef handler(n=1):\n    return n\n";
        let sig = inline(code).unwrap();
        assert_eq!(params(&sig), [("n".into(), PositionalOrKeyword, true)]);
    }

    #[test]
    fn the_last_top_level_binding_wins() {
        let sig = inline("def handler(a):\n    pass\n\ndef handler(b):\n    pass\n").unwrap();
        assert_eq!(sig.parameters[0].name, "b");
        assert_eq!(sig.defined_at, "main.py:4");
        let error = inline("def handler(a):\n    pass\n\nhandler = wrap(handler)\n").unwrap_err();
        assert!(error.contains("main.py:4 is a variable"), "{error}");
    }

    #[test]
    fn what_is_not_a_top_level_function_is_not_found() {
        let cases = [
            ("def outer():\n    def handler():\n        pass\n", "nested inside function outer"),
            ("class Jobs:\n    def handler(self):\n        pass\n", "method of class Jobs"),
            ("if True:\n    def handler():\n        pass\n", "inside an `if` block"),
            ("try:\n    from x import y\nexcept ImportError:\n    pass\nelse:\n    def handler():\n        pass\n", "`try` block"),
            ("def other():\n    pass\n", "its top-level functions: other"),
            ("x = 1\n", "defines no top-level functions"),
            ("class handler:\n    pass\n", "is a class"),
            ("handler = lambda: 1\n", "a variable"),
            ("a, *handler = 1, 2\n", "a variable"),
            ("import handler\n", "a module"),
            ("import handler.sub as other\nimport x.y as handler\n", "a module"),
        ];
        for (code, expected) in cases {
            let error = inline(code).unwrap_err();
            assert!(error.contains(expected), "{code:?} → {error}");
        }
    }

    #[test]
    fn syntax_errors_surface_with_their_location() {
        let error = inline("def handler(:\n    pass\n").unwrap_err();
        assert!(error.starts_with("main.py, line 1, column 13"), "{error}");
    }

    fn tree(files: &[(&str, &str)]) -> Vec<SourceFile> {
        files
            .iter()
            .map(|(path, code)| SourceFile {
                path: path.to_string(),
                mode: 0o644,
                contents: code.as_bytes().to_vec(),
            })
            .collect()
    }

    fn find(files: &[(&str, &str)], handler: &str) -> Result<Signature, String> {
        SourceTree::inspect(tree(files), &inspector(), INTERPRETER)
            .unwrap()
            .find_handler(&HandlerRef::parse(handler).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn finds_modules_and_packages() {
        let files = [
            ("main.py", "def handler(a):\n    pass\n"),
            ("pkg/__init__.py", "def handler(b):\n    pass\n"),
            ("pkg/mod.py", "def run(c):\n    pass\n"),
            ("both.py", "def f(plain):\n    pass\n"),
            ("both/__init__.py", "def f(package):\n    pass\n"),
        ];
        assert_eq!(find(&files, "handler").unwrap().parameters[0].name, "a");
        assert_eq!(find(&files, "pkg:handler").unwrap().parameters[0].name, "b");
        let sig = find(&files, "pkg.mod:run").unwrap();
        assert_eq!(
            (sig.parameters[0].name.as_str(), sig.defined_at.as_str()),
            ("c", "pkg/mod.py:1")
        );
        assert_eq!(
            find(&files, "both:f").unwrap().parameters[0].name,
            "package"
        );
        let error = find(&files, "nope.x:f").unwrap_err();
        assert!(
            error.contains("expected nope/x.py or nope/x/__init__.py"),
            "{error}"
        );
        assert!(error.contains("main, pkg, pkg.mod"), "{error}");
    }

    #[test]
    fn follows_imports_within_the_source() {
        let files = [
            ("app/__init__.py", "from .jobs import train as handler\n"),
            ("app/jobs/__init__.py", "from .impl import train\n"),
            ("app/jobs/impl.py", "from app.util import real as train\n"),
            (
                "app/util.py",
                "async def real(epochs=1, *, context):\n    pass\n",
            ),
            ("ext.py", "from numpy import handler\n"),
            ("loop_a.py", "from loop_b import f\n"),
            ("loop_b.py", "from loop_a import f\n"),
            ("up/deep/mod.py", "from ..top import g\n"),
            ("up/top.py", "def g(z):\n    pass\n"),
            ("bad.py", "from ...x import y\n"),
        ];
        let sig = find(&files, "app:handler").unwrap();
        assert_eq!(sig.defined_at, "app/util.py:1");
        assert!(sig.is_async && sig.takes_context);
        assert_eq!(
            find(&files, "up.deep.mod:g").unwrap().parameters[0].name,
            "z"
        );
        let error = find(&files, "ext:handler").unwrap_err();
        assert!(
            error.contains("imported from numpy, which is not in the source"),
            "{error}"
        );
        assert!(find(&files, "loop_a:f")
            .unwrap_err()
            .contains("in a circle"));
        assert!(find(&files, "bad:y")
            .unwrap_err()
            .contains("not in the source"));
    }

    #[test]
    fn resolves_relative_imports_like_python() {
        assert_eq!(
            absolute_module("a.b", false, 1, Some("c")).as_deref(),
            Some("a.c")
        );
        assert_eq!(
            absolute_module("a.b", true, 1, Some("c")).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            absolute_module("a.b.c", false, 2, None).as_deref(),
            Some("a")
        );
        assert_eq!(absolute_module("a", false, 1, Some("c")), None);
        assert_eq!(absolute_module("a", false, 2, Some("c")), None);
        assert_eq!(
            absolute_module("a", false, 0, Some("x.y")).as_deref(),
            Some("x.y")
        );
    }

    #[test]
    fn non_utf8_handler_modules_are_reported() {
        let files = vec![SourceFile {
            path: "main.py".into(),
            mode: 0o644,
            contents: vec![0xff, 0xfe, b'x'],
        }];
        let error = SourceTree::inspect(files, &inspector(), INTERPRETER)
            .unwrap()
            .find_handler(&HandlerRef::parse("handler").unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }
}
