//! The `handler` field: `function` (in module `main`) or `module:function` /
//! `pkg.mod:function`, and where such a module lives in a source.

use std::fmt;

/// The module inline code becomes, and the one a bare `function` handler refers to.
pub(crate) const MAIN_MODULE: &str = "main";

/// Top-level modules already imported when the runner imports the handler's module (by the
/// interpreter at start-up, or by the runner). A handler module of that name would silently be
/// Python's own module, so it is refused at apply time.
const PREIMPORTED: &[&str] = &[
    "_json",
    "abc",
    "builtins",
    "codecs",
    "encodings",
    "genericpath",
    "io",
    "json",
    "marshal",
    "os",
    "posixpath",
    "site",
    "stat",
    "sys",
];

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// A parsed `handler` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandlerRef {
    /// Dotted module name, e.g. `pkg.mod`.
    pub module: String,
    pub function: String,
}

impl fmt::Display for HandlerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module, self.function)
    }
}

impl HandlerRef {
    /// Parses `function` or `module:function`; the error is a problem for the `handler` field.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (module, function) = match text.split_once(':') {
            Some((module, function)) => (module, function),
            None => (MAIN_MODULE, text),
        };
        if text.is_empty() {
            return Err("is empty; expected `function` or `module:function`".to_string());
        }
        if !is_identifier(function) {
            return Err(format!(
                "{text:?} does not name a function: expected `function` or `module:function`, where the function is a Python identifier"
            ));
        }
        if module.is_empty() || !module.split('.').all(is_identifier) {
            return Err(format!(
                "{text:?} does not name a module: expected `module:function` with a dotted module name such as `pkg.mod`"
            ));
        }
        let top = module.split('.').next().unwrap_or(module);
        if PREIMPORTED.contains(&top) {
            return Err(format!(
                "module {top} would be Python's own module, which is loaded before the function's code; rename your module"
            ));
        }
        Ok(Self {
            module: module.to_string(),
            function: function.to_string(),
        })
    }
}

/// A Python identifier that is not a keyword. Unicode letters count as letters, as in
/// Python 3 (an approximation of XID_Start / XID_Continue).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic());
    starts_well && chars.all(|c| c == '_' || c.is_alphanumeric()) && !KEYWORDS.contains(&name)
}

/// Files that can hold module `a.b`, in the order Python's import system prefers them: a
/// package's `__init__.py` before a plain module.
pub(crate) fn module_files(module: &str) -> [String; 2] {
    let base = module.replace('.', "/");
    [format!("{base}/__init__.py"), format!("{base}.py")]
}

/// The module a file defines, when it is a Python module: `a/b.py` → `a.b`,
/// `a/__init__.py` → `a`.
pub(crate) fn module_of(path: &str) -> Option<String> {
    let stem = path.strip_suffix(".py")?;
    let stem = stem.strip_suffix("/__init__").unwrap_or(stem);
    let valid = !stem.is_empty() && stem.split('/').all(is_identifier);
    valid.then(|| stem.replace('/', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            HandlerRef::parse("handler").unwrap().to_string(),
            "main:handler"
        );
        assert_eq!(
            HandlerRef::parse("pkg.mod:run_it").unwrap().to_string(),
            "pkg.mod:run_it"
        );
        assert_eq!(
            HandlerRef::parse("données:été").unwrap().to_string(),
            "données:été"
        );
    }

    #[test]
    fn refuses_what_python_could_not_import() {
        for text in [
            "", ":f", "m:", "m:f:g", "a..b:f", "1mod:f", "m:1f", "m:class", "m-x:f", "m:f()",
            "os:f", "json.x:f",
        ] {
            assert!(HandlerRef::parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn maps_modules_to_files_and_back() {
        assert_eq!(
            module_files("pkg.mod"),
            ["pkg/mod/__init__.py".to_string(), "pkg/mod.py".to_string()]
        );
        assert_eq!(module_of("pkg/mod.py").as_deref(), Some("pkg.mod"));
        assert_eq!(module_of("pkg/__init__.py").as_deref(), Some("pkg"));
        assert_eq!(module_of("my-tool/x.py"), None);
        assert_eq!(module_of("data.txt"), None);
    }
}
