//! Parsing Python source text at apply time: never importing or executing it, guarded against
//! code that would overflow the parser's stack ([`nesting`](super::nesting)), and reporting
//! problems with a line and a column a person can find.

use super::nesting;
use rustpython_parser::ast::{Mod, Suite};
use rustpython_parser::{parse, Mode};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A syntax error (or code refused before parsing), located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Python accepts (and ignores) a UTF-8 byte order mark at the start of a file.
pub(crate) fn strip_bom(source: &str) -> &str {
    source.strip_prefix('\u{feff}').unwrap_or(source)
}

/// Parses a module's source into its top-level statements.
pub(crate) fn parse_module(source: &str, path: &str) -> Result<Suite, SyntaxProblem> {
    let source = strip_bom(source);
    if let Err(too_deep) = nesting::check(source) {
        let (line, column) = locate(source, too_deep.offset);
        return Err(SyntaxProblem {
            line,
            column,
            message: format!(
                "the code nests more than {} levels deep (expressions, brackets or blocks); runplane does not parse code this deep, and Python itself refuses most of it",
                nesting::MAX_NESTING
            ),
        });
    }
    // The parser is not expected to panic; if a corner of it does, the user gets an error
    // about their code instead of a failed request.
    let parsed = catch_unwind(AssertUnwindSafe(|| parse(source, Mode::Module, path)));
    match parsed {
        Ok(Ok(Mod::Module(module))) => Ok(module.body),
        Ok(Ok(_)) => Ok(Vec::new()),
        Ok(Err(error)) => {
            let (line, column) = locate(source, error.offset.to_usize());
            Err(SyntaxProblem {
                line,
                column,
                message: error.error.to_string(),
            })
        }
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(SyntaxProblem {
                line: 1,
                column: 1,
                message: format!("the Python parser failed on this code (a bug in runplane, please report it): {detail}"),
            })
        }
    }
}

/// 1-based line and column (in characters) of a byte offset; offsets past the end or inside a
/// character are clamped.
pub(crate) fn locate(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_in_lines_and_characters() {
        let source = "ab\né=1\n";
        assert_eq!(locate(source, 0), (1, 1));
        assert_eq!(locate(source, 3), (2, 1));
        assert_eq!(locate(source, 5), (2, 2)); // after the 2-byte `é`
        assert_eq!(locate(source, 4), (2, 1)); // inside `é`: clamped back
        assert_eq!(locate(source, 1000), (3, 1));
    }

    #[test]
    fn syntax_errors_say_where() {
        let problem = parse_module("def f():\n    return (1,\n\nx = 1 +\n", "m.py").unwrap_err();
        assert!(problem.line >= 2, "{problem}");
        let problem = parse_module("x = 1\ndef f(:\n    pass\n", "m.py").unwrap_err();
        assert_eq!((problem.line, problem.column), (2, 7), "{problem}");
        assert!(!problem.message.is_empty());
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        assert_eq!(
            parse_module("\u{feff}def f():\n    pass\n", "m.py")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn deep_code_is_refused_with_a_location() {
        let source = format!("x = 1\ny = {}1\n", "-".repeat(5000));
        let problem = parse_module(&source, "m.py").unwrap_err();
        assert_eq!(problem.line, 2);
        assert!(problem.message.contains("nests more than"), "{problem}");
    }
}
