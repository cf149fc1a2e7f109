//! Finding a handler in parsed source and reading its parameters, so that a run's parameters
//! can be checked without importing the code.
//!
//! A handler is a function defined with `def` or `async def` at the top level of its module, or
//! imported there from another module of the same source (`from .impl import handler`), which
//! is followed. Anything else (a method, a nested or conditional `def`, an assignment such as
//! `handler = make_handler()`) is refused with a hint: its parameters cannot be known without
//! running the code. Decorators are assumed to keep the signature (as `functools.wraps` does).

use super::handler::{module_files, module_of, HandlerRef};
use super::source::{locate, parse_module, strip_bom, SyntaxProblem};
use crate::archive::SourceFile;
use rustpython_parser::ast::{Arguments, Expr, Ranged, Stmt};
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

/// Reads the signature of a `def`.
fn signature_of(args: &Arguments, is_async: bool, defined_at: String) -> Signature {
    let mut parameters = Vec::new();
    let groups = [
        (&args.posonlyargs, ParameterKind::PositionalOnly),
        (&args.args, ParameterKind::PositionalOrKeyword),
        (&args.kwonlyargs, ParameterKind::KeywordOnly),
    ];
    for (group, kind) in groups {
        for arg in group {
            parameters.push(Parameter {
                name: arg.def.arg.as_str().to_string(),
                kind,
                has_default: arg.default.is_some(),
            });
        }
    }
    let takes_context = parameters
        .iter()
        .any(|p| p.name == CONTEXT && p.kind != ParameterKind::PositionalOnly);
    Signature {
        parameters,
        var_positional: args.vararg.is_some(),
        var_keyword: args.kwarg.is_some(),
        takes_context,
        is_async,
        defined_at,
    }
}

/// What last binds a name at the top level of a module.
enum Binding<'a> {
    Def {
        args: &'a Arguments,
        is_async: bool,
        offset: usize,
    },
    FromImport {
        module: Option<&'a str>,
        level: usize,
        name: &'a str,
        offset: usize,
    },
    Other {
        what: &'static str,
        offset: usize,
    },
}

fn start(node: &impl Ranged) -> usize {
    node.start().to_usize()
}

/// The statement that binds `name` last among the module's top-level statements (the one in
/// effect once the module is imported).
fn last_binding<'a>(body: &'a [Stmt], name: &str) -> Option<Binding<'a>> {
    let mut found = None;
    for stmt in body {
        let binding = match stmt {
            Stmt::FunctionDef(def) if def.name.as_str() == name => Some(Binding::Def {
                args: &def.args,
                is_async: false,
                offset: start(stmt),
            }),
            Stmt::AsyncFunctionDef(def) if def.name.as_str() == name => Some(Binding::Def {
                args: &def.args,
                is_async: true,
                offset: start(stmt),
            }),
            Stmt::ClassDef(class) if class.name.as_str() == name => Some(Binding::Other {
                what: "a class",
                offset: start(stmt),
            }),
            Stmt::ImportFrom(import) => import
                .names
                .iter()
                .rfind(|alias| alias.asname.as_ref().unwrap_or(&alias.name).as_str() == name)
                .map(|alias| Binding::FromImport {
                    module: import.module.as_ref().map(|m| m.as_str()),
                    level: import.level.as_ref().map_or(0, |l| l.to_usize()),
                    name: alias.name.as_str(),
                    offset: start(stmt),
                }),
            Stmt::Import(import) => import
                .names
                .iter()
                .any(|alias| match &alias.asname {
                    Some(asname) => asname.as_str() == name,
                    None => alias.name.as_str().split('.').next() == Some(name),
                })
                .then(|| Binding::Other {
                    what: "a module (bound by `import`)",
                    offset: start(stmt),
                }),
            Stmt::Assign(assign) if assign.targets.iter().any(|t| binds(t, name)) => {
                Some(Binding::Other {
                    what: "a variable (bound by an assignment)",
                    offset: start(stmt),
                })
            }
            Stmt::AnnAssign(assign) if assign.value.is_some() && binds(&assign.target, name) => {
                Some(Binding::Other {
                    what: "a variable (bound by an assignment)",
                    offset: start(stmt),
                })
            }
            Stmt::AugAssign(assign) if binds(&assign.target, name) => Some(Binding::Other {
                what: "a variable (bound by an assignment)",
                offset: start(stmt),
            }),
            _ => None,
        };
        if binding.is_some() {
            found = binding;
        }
    }
    found
}

/// Whether an assignment target binds `name` (recursion is bounded by the nesting guard).
fn binds(target: &Expr, name: &str) -> bool {
    match target {
        Expr::Name(n) => n.id.as_str() == name,
        Expr::Tuple(t) => t.elts.iter().any(|e| binds(e, name)),
        Expr::List(l) => l.elts.iter().any(|e| binds(e, name)),
        Expr::Starred(s) => binds(&s.value, name),
        _ => false,
    }
}

/// Why a name is not at the top level, when it is defined one level down.
fn nested_hint(body: &[Stmt], name: &str) -> Option<String> {
    let defines = |stmts: &[Stmt]| {
        stmts.iter().any(|s| match s {
            Stmt::FunctionDef(d) => d.name.as_str() == name,
            Stmt::AsyncFunctionDef(d) => d.name.as_str() == name,
            _ => false,
        })
    };
    for stmt in body {
        let place = match stmt {
            Stmt::ClassDef(c) if defines(&c.body) => {
                format!("is a method of class {}", c.name.as_str())
            }
            Stmt::FunctionDef(f) if defines(&f.body) => {
                format!("is nested inside function {}", f.name.as_str())
            }
            Stmt::AsyncFunctionDef(f) if defines(&f.body) => {
                format!("is nested inside function {}", f.name.as_str())
            }
            Stmt::If(s) if defines(&s.body) || defines(&s.orelse) => {
                "is defined inside an `if` block".to_string()
            }
            Stmt::Try(s) if defines(&s.body) || defines(&s.orelse) || defines(&s.finalbody) => {
                "is defined inside a `try` block".to_string()
            }
            Stmt::With(s) if defines(&s.body) => "is defined inside a `with` block".to_string(),
            _ => continue,
        };
        return Some(format!(
            "; a function {name} {place}, but a handler must be a function defined at the top level of its module"
        ));
    }
    None
}

fn top_level_functions(body: &[Stmt]) -> Vec<&str> {
    body.iter()
        .filter_map(|s| match s {
            Stmt::FunctionDef(d) => Some(d.name.as_str()),
            Stmt::AsyncFunctionDef(d) => Some(d.name.as_str()),
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

/// The source's files by path, for looking modules up.
pub(crate) struct SourceTree<'a> {
    files: BTreeMap<&'a str, &'a [u8]>,
}

impl<'a> SourceTree<'a> {
    pub(crate) fn new(files: &'a [SourceFile]) -> Self {
        Self {
            files: files
                .iter()
                .map(|f| (f.path.as_str(), f.contents.as_slice()))
                .collect(),
        }
    }

    /// The file defining `module`, if the source has it.
    pub(crate) fn module_file(&self, module: &str) -> Option<&'a str> {
        module_files(module).into_iter().find_map(|path| {
            self.files
                .get_key_value(path.as_str())
                .map(|(path, _)| *path)
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
            let bytes = self.files.get(path).copied().unwrap_or_default();
            let text = std::str::from_utf8(bytes).map_err(|_| {
                HandlerError::Lookup(format!(
                    "{path} is not UTF-8 text; runplane reads Python sources as UTF-8"
                ))
            })?;
            let text = strip_bom(text);
            let body = parse_module(text, path).map_err(|problem| HandlerError::Syntax {
                path: path.to_string(),
                problem,
            })?;
            let at = |offset: usize| format!("{path}:{}", locate(text, offset).0);
            match last_binding(&body, &function) {
                Some(Binding::Def {
                    args,
                    is_async,
                    offset,
                }) => {
                    return Ok(signature_of(args, is_async, at(offset)));
                }
                Some(Binding::FromImport {
                    module: target,
                    level,
                    name,
                    offset,
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
                                at(offset),
                                target.unwrap_or_default()
                            )));
                        }
                    }
                }
                Some(Binding::Other { what, offset }) => {
                    return Err(HandlerError::Lookup(format!(
                        "{function} in {} is {what}, not a function defined with `def`; runplane reads a handler's parameters from its `def`",
                        at(offset)
                    )));
                }
                None => {
                    let hint = nested_hint(&body, &function).unwrap_or_else(|| {
                        let functions = top_level_functions(&body);
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

/// The handler of inline code (module `main`).
pub(crate) fn find_inline(code: &str, handler: &HandlerRef) -> Result<Signature, HandlerError> {
    let files = [SourceFile {
        path: "main.py".to_string(),
        mode: 0o644,
        contents: code.as_bytes().to_vec(),
    }];
    SourceTree::new(&files).find_handler(handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(code: &str) -> Result<Signature, String> {
        find_inline(code, &HandlerRef::parse("handler").unwrap()).map_err(|e| e.to_string())
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
        let files = tree(files);
        SourceTree::new(&files)
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
        let error = SourceTree::new(&files)
            .find_handler(&HandlerRef::parse("handler").unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }
}
