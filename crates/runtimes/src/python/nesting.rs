//! A guard against code nested so deeply that parsing it would overflow the stack.
//!
//! The parser builds (and later drops) the syntax tree recursively, so code such as
//! `x = 1+1+1+...` with 100 000 terms (200 KB) aborts the whole server with a stack overflow,
//! which no `catch_unwind` can stop. Before parsing, this module lexes the code (the lexer is
//! iterative) and computes an upper bound of the tree's depth; code over [`MAX_NESTING`] is
//! refused without being parsed. CPython itself refuses most such code ("too many nested
//! parentheses", "maximum recursion depth exceeded during compilation").
//!
//! The bound: a logical line is split into elements at commas and semicolons (siblings in the
//! tree); an element's depth is at most the number of non-leaf tokens in it (operators, dots,
//! keywords, brackets: every node on a path down the tree consumes one) plus the depth of the
//! deepest bracketed group inside it. Leaves (names, numbers, plain strings) add one. Blocks add
//! their indentation level, and an `elif` chain adds one level per `elif` (each is nested in
//! the previous `if`'s `orelse`). An f-string is a single token whose replacement fields are
//! parsed later, so the tokens inside its braces count too.

use rustpython_parser::lexer::lex;
use rustpython_parser::{Mode, StringKind, Tok};

/// Deepest code accepted, in the units of the bound above. Real code stays far below (a long
/// line of ordinary code is 10 to 50), and trees this deep are parsed and dropped well within
/// a 2 MiB thread stack, even unoptimised.
pub(crate) const MAX_NESTING: usize = 1000;

/// The code is nested deeper than [`MAX_NESTING`]; `offset` is where that was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooDeep {
    pub offset: usize,
}

/// A bracketed group (or a logical line) being read.
#[derive(Default)]
struct Group {
    /// Non-leaf tokens of the current element.
    cost: usize,
    /// Deepest group closed inside the current element.
    child: usize,
    /// Deepest element finished so far.
    deepest: usize,
}

impl Group {
    fn end_element(&mut self) {
        self.deepest = self.deepest.max(self.cost + self.child + 1);
        self.cost = 0;
        self.child = 0;
    }

    fn depth(mut self) -> usize {
        self.end_element();
        self.deepest
    }
}

/// Checks that `source` nests at most [`MAX_NESTING`] levels deep. Lexical errors end the scan
/// early and are left for the parser to report: it stops at the same place.
pub(crate) fn check(source: &str) -> Result<(), TooDeep> {
    let mut groups: Vec<Group> = vec![Group::default()];
    // `elif` chain length at each open indentation level, and what each level adds to `base`.
    let mut chains: Vec<usize> = vec![0];
    let mut opened: Vec<usize> = Vec::new();
    let mut base = 0usize;
    let mut line_start = true;
    let mut offset = 0usize;

    let too_deep = |depth: usize, offset: usize| {
        if depth > MAX_NESTING {
            Err(TooDeep { offset })
        } else {
            Ok(())
        }
    };

    for token in lex(source, Mode::Module) {
        let Ok((token, range)) = token else { break };
        offset = range.start().to_usize();
        match token {
            Tok::Indent => {
                let add = 1 + chains.last().copied().unwrap_or(0);
                opened.push(add);
                base += add;
                chains.push(0);
                too_deep(base, offset)?;
                line_start = true;
                continue;
            }
            Tok::Dedent => {
                if let Some(add) = opened.pop() {
                    base -= add;
                    chains.pop();
                }
                line_start = true;
                continue;
            }
            Tok::Newline | Tok::EndOfFile => {
                let depth = close_all(&mut groups);
                too_deep(base + depth, offset)?;
                line_start = true;
                continue;
            }
            _ => {}
        }
        if line_start {
            line_start = false;
            if let Some(chain) = chains.last_mut() {
                match token {
                    Tok::Elif => *chain += 1,
                    Tok::Else => {}
                    _ => *chain = 0,
                }
            }
            too_deep(base + chains.last().copied().unwrap_or(0), offset)?;
        }
        let Some(group) = groups.last_mut() else {
            break;
        };
        match token {
            Tok::Lpar | Tok::Lsqb | Tok::Lbrace => {
                group.cost += 1;
                groups.push(Group::default());
                too_deep(base + groups.len(), offset)?;
            }
            Tok::Rpar | Tok::Rsqb | Tok::Rbrace => {
                // An unmatched closing bracket is a syntax error; the parser reports it.
                if groups.len() > 1 {
                    if let Some(closed) = groups.pop() {
                        let depth = closed.depth();
                        if let Some(parent) = groups.last_mut() {
                            parent.child = parent.child.max(depth);
                        }
                    }
                }
            }
            Tok::Comma | Tok::Semi => group.end_element(),
            Tok::Name { .. }
            | Tok::Int { .. }
            | Tok::Float { .. }
            | Tok::Complex { .. }
            | Tok::True
            | Tok::False
            | Tok::None
            | Tok::Ellipsis => {}
            Tok::String { value, kind, .. } => {
                if matches!(kind, StringKind::FString | StringKind::RawFString) {
                    group.cost += fstring_cost(&value);
                }
            }
            _ => group.cost += 1,
        }
    }
    // Code that ends inside brackets (or at a lexical error) is parsed up to there too.
    let depth = close_all(&mut groups);
    too_deep(base + depth, offset)
}

/// Closes every open group into the line's group and returns the line's depth, leaving one
/// fresh line group.
fn close_all(groups: &mut Vec<Group>) -> usize {
    while groups.len() > 1 {
        if let Some(closed) = groups.pop() {
            let depth = closed.depth();
            if let Some(parent) = groups.last_mut() {
                parent.child = parent.child.max(depth);
            }
        }
    }
    let line = groups.pop().unwrap_or_default();
    groups.push(Group::default());
    line.depth()
}

/// An upper bound of the tokens inside an f-string's replacement fields: punctuation characters
/// and words between braces (`{{` and `}}` outside fields are literal braces).
fn fstring_cost(value: &str) -> usize {
    let mut cost = 0usize;
    let mut depth = 0usize;
    let mut in_word = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if depth == 0 {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                }
                '{' => {
                    depth = 1;
                    cost += 1;
                }
                _ => {}
            }
            in_word = false;
            continue;
        }
        match c {
            '{' => {
                depth += 1;
                cost += 1;
                in_word = false;
            }
            '}' => {
                depth -= 1;
                in_word = false;
            }
            c if c.is_alphanumeric() || c == '_' => {
                if !in_word {
                    cost += 1;
                    in_word = true;
                }
            }
            c if c.is_whitespace() => in_word = false,
            _ => {
                cost += 1;
                in_word = false;
            }
        }
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustpython_parser::{parse, Mode};

    /// Runs `f` on a thread with the stack of a tokio worker, as the server would.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn deep_sources(n: usize) -> Vec<(&'static str, String)> {
        let mut elifs = String::from("if a:\n    pass\n");
        for _ in 0..n {
            elifs.push_str("elif a:\n    pass\n");
        }
        let mut blocks = String::new();
        for level in 0..n.min(2000) {
            blocks.push_str(&" ".repeat(level));
            blocks.push_str("if a:\n");
        }
        blocks.push_str(&" ".repeat(n.min(2000)));
        blocks.push_str("pass\n");
        vec![
            ("binary operators", format!("x = {}1\n", "1+".repeat(n))),
            ("unary operators", format!("x = {}1\n", "-".repeat(n))),
            ("not", format!("x = {}y\n", "not ".repeat(n))),
            (
                "parentheses",
                format!("x = {}1{}\n", "(".repeat(n), ")".repeat(n)),
            ),
            ("unclosed parentheses", format!("x = {}1\n", "(".repeat(n))),
            (
                "lists",
                format!("x = {}1{}\n", "[".repeat(n), "]".repeat(n)),
            ),
            ("attributes", format!("x = a{}\n", ".b".repeat(n))),
            ("calls", format!("x = f{}\n", "()".repeat(n))),
            ("subscripts", format!("x = a{}\n", "[0]".repeat(n))),
            ("lambdas", format!("x = {}1\n", "lambda: ".repeat(n))),
            (
                "conditionals",
                format!("x = 1{}\n", " if a else 1".repeat(n)),
            ),
            ("f-string", format!("x = f'{{{}1}}'\n", "1+".repeat(n))),
            ("elif chain", elifs),
            ("blocks", blocks),
            (
                "then a lexical error",
                format!("x = {}1 $\n", "1+".repeat(n)),
            ),
        ]
    }

    #[test]
    fn refuses_deep_code_of_every_shape_without_overflowing() {
        on_small_stack(|| {
            for (shape, source) in deep_sources(100_000) {
                assert!(check(&source).is_err(), "{shape} was accepted");
            }
        });
    }

    #[test]
    fn code_just_under_the_limit_parses_and_drops_on_a_small_stack() {
        on_small_stack(|| {
            for (shape, source) in deep_sources(MAX_NESTING / 2 - 10) {
                if check(&source).is_ok() {
                    // Parse errors are fine here; what matters is that nothing overflows.
                    let _ = parse(&source, Mode::Module, "deep.py");
                } else {
                    assert!(
                        shape == "blocks" || shape == "elif chain",
                        "{shape} was refused"
                    );
                }
            }
        });
    }

    /// Valid code nested at random in many ways, up to about the limit: whatever the guard lets
    /// through must parse (and drop) on a small stack.
    #[test]
    fn random_deep_valid_code_is_refused_or_parsed_safely() {
        on_small_stack(|| {
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let wrappers: [(&str, &str); 16] = [
                ("-(", ")"),
                ("(not (", "))"),
                ("[", "]"),
                ("(", ").a"),
                ("(", ")(x)"),
                ("(", ")[0]"),
                ("(lambda: (", "))"),
                ("(", " if c else 1)"),
                ("(await (", "))"),
                ("{", ": 1}"),
                ("{**", "}"),
                ("[x for x in ", "]"),
                ("1 + (", ")"),
                ("(", " + 1)"),
                ("~(", ")"),
                ("f(", ", y=2)"),
            ];
            let blocks = [
                "if a:\n",
                "with a:\n",
                "for a in b:\n",
                "while a:\n",
                "def f():\n",
                "class C:\n",
            ];
            let (mut parsed, mut refused) = (0, 0);
            for _ in 0..150 {
                let (mut prefix, mut suffix) = (String::new(), String::new());
                for _ in 0..(next() % 600) {
                    let (open, close) = wrappers[(next() % wrappers.len() as u64) as usize];
                    prefix.push_str(open);
                    suffix.insert_str(0, close);
                }
                let mut code = String::new();
                let depth = (next() % 400) as usize;
                for level in 0..depth {
                    code.push_str(&" ".repeat(level));
                    code.push_str(blocks[(next() % blocks.len() as u64) as usize]);
                }
                code.push_str(&" ".repeat(depth));
                code.push_str(&format!("x = {prefix}1{suffix}\nif a:\n    pass\n"));
                for _ in 0..(next() % 800) {
                    code.push_str("elif a:\n    pass\n");
                }
                if check(&code).is_ok() {
                    assert!(parse(&code, Mode::Module, "deep.py").is_ok());
                    parsed += 1;
                } else {
                    refused += 1;
                }
            }
            assert!(
                parsed > 20 && refused > 20,
                "{parsed} parsed, {refused} refused"
            );
        });
    }

    #[test]
    fn ordinary_code_and_big_flat_literals_pass() {
        let data = format!(
            "DATA = [{}]\n",
            (0..100_000)
                .map(|i| format!("-{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let strings = format!("TEXT = ({})\n", "'abc' ".repeat(20_000));
        let mut long_function = String::from("def handler(a, b=1, *args, c, **kw):\n");
        for i in 0..5000 {
            long_function.push_str(&format!(
                "    x{i} = a.b(c)[0] + {{'k': [1, 2, (3, 4)]}}['k'][i] if a else None\n"
            ));
        }
        let fstring = "x = f'{{literal}} {a + b:>{width}} and {c[0]!r} ' + f\"{'x' * 3}\"\n";
        for source in [data, strings, long_function, fstring.to_string()] {
            assert_eq!(
                check(&source),
                Ok(()),
                "{}",
                &source[..60.min(source.len())]
            );
        }
    }

    #[test]
    fn reports_where_the_depth_was_noticed() {
        let source = format!("a = 1\nb = 2\nx = {}1\n", "1+".repeat(2 * MAX_NESTING));
        let offset = check(&source).unwrap_err().offset;
        assert!(offset >= "a = 1\nb = 2\n".len(), "{offset}");
    }

    #[test]
    fn fstring_cost_counts_only_replacement_fields() {
        assert_eq!(fstring_cost("plain text, with (punctuation)!"), 0);
        assert_eq!(fstring_cost("{{escaped}}"), 0);
        assert!(fstring_cost("{a + b.c}") >= 4);
        assert!(fstring_cost("{x:{y:{z}}}") >= 5);
    }
}
