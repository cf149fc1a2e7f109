//! `${{ expression }}` templates inside JSON values: how workflow steps take their parameters
//! from earlier steps and how triggers fill a run template from what fired them.
//!
//! The expression language is Jinja's (minijinja), evaluated with strict undefined: reading a
//! field that does not exist is an error naming it, never an empty value.
//!
//! - A string that is one template and nothing else (`"${{ steps.train.results }}"`) becomes
//!   the expression's value with its JSON type (a number, a list, an object...).
//! - A string with templates amid text (`"model-${{ params.n }}.pkl"`) stays a string: each
//!   template is replaced by its value (strings as they are, anything else as JSON).
//! - `$${{` is a literal `${{`.
//! - Objects and lists are rendered member by member; other values are kept.
//!
//! Pure: no IO.

use crate::invalid::{Invalid, Problems};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

const OPEN: &str = "${{";
const CLOSE: &str = "}}";
const ESCAPED_OPEN: &str = "$${{";

/// An expression that failed at render time, with where it sits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    /// The field path of the string holding the expression (`parameters.model`).
    pub field: String,
    pub message: String,
}

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Strict);
        // Expressions are data, never markup.
        environment.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        environment
    })
}

/// One piece of a string: literal text or an expression's source.
#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Text(String),
    Expression(&'a str),
}

/// Splits a string into text and `${{ }}` expressions. Err names the problem (unclosed).
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    loop {
        let escaped = rest.find(ESCAPED_OPEN);
        let open = rest.find(OPEN);
        match (escaped, open) {
            // `$${{` starts one byte before the `${{` it contains.
            (Some(e), Some(o)) if e < o => {
                literal.push_str(&rest[..e]);
                literal.push_str(OPEN);
                rest = &rest[e + ESCAPED_OPEN.len()..];
            }
            (_, Some(o)) => {
                literal.push_str(&rest[..o]);
                let after = &rest[o + OPEN.len()..];
                let close = after
                    .find(CLOSE)
                    .ok_or_else(|| format!("`{OPEN}` at byte {o} is never closed by `{CLOSE}`"))?;
                let source = after[..close].trim();
                if source.is_empty() {
                    return Err("an empty `${{ }}`".to_string());
                }
                if !literal.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut literal)));
                }
                out.push(Piece::Expression(source));
                rest = &after[close + CLOSE.len()..];
            }
            (_, None) => {
                literal.push_str(rest);
                if !literal.is_empty() {
                    out.push(Piece::Text(literal));
                }
                return Ok(out);
            }
        }
    }
}

/// Whether a string holds at least one `${{ }}` template.
pub fn is_template(text: &str) -> bool {
    matches!(pieces(text), Ok(p) if p.iter().any(|p| matches!(p, Piece::Expression(_))))
        || pieces(text).is_err()
}

/// The variables an expression reads, as dotted paths as deep as they are written
/// (`steps.train.results.accuracy`, `params`, `item`). Err: a syntax error.
pub fn expression_references(source: &str) -> Result<BTreeSet<String>, String> {
    let expression = environment()
        .compile_expression(source)
        .map_err(|error| describe(&error))?;
    Ok(expression.undeclared_variables(true).into_iter().collect())
}

/// Checks every template in `value` (syntax only) and returns the variables they read.
/// Errors carry field paths under `field` (`spec.steps[1].parameters.x`).
pub fn references(value: &Value, field: &str) -> Result<BTreeSet<String>, Invalid> {
    let mut problems = Problems::new();
    let mut found = BTreeSet::new();
    walk_strings(value, field, &mut |path, text| match pieces(text) {
        Err(message) => problems.add(path, message),
        Ok(pieces) => {
            for piece in pieces {
                if let Piece::Expression(source) = piece {
                    match expression_references(source) {
                        Ok(names) => found.extend(names),
                        Err(message) => {
                            problems.add(path.clone(), format!("in `{source}`: {message}"))
                        }
                    }
                }
            }
        }
    });
    problems.finish()?;
    Ok(found)
}

/// Checks one bare expression (an `if` condition may be written with or without `${{ }}`).
pub fn condition_references(source: &str, field: &str) -> Result<BTreeSet<String>, Invalid> {
    let bare = bare_expression(source);
    expression_references(bare)
        .map_err(|message| Invalid::field(field, format!("in `{bare}`: {message}")))
}

/// `"${{ x }}"` → `x`; anything else is taken as the expression itself.
fn bare_expression(source: &str) -> &str {
    let trimmed = source.trim();
    match pieces(trimmed) {
        Ok(pieces) => match pieces.as_slice() {
            [Piece::Expression(inner)] => inner,
            _ => trimmed,
        },
        Err(_) => trimmed,
    }
}

/// Renders every template in `value` against `context` (a JSON object whose keys are the
/// variables: `params`, `steps`, `item`, `trigger`...).
pub fn render(value: &Value, context: &Value, field: &str) -> Result<Value, RenderError> {
    match value {
        Value::String(text) => render_string(text, context, field),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| render(item, context, &format!("{field}[{index}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(members) => members
            .iter()
            .map(|(key, member)| {
                render(member, context, &join(field, key)).map(|value| (key.clone(), value))
            })
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// Evaluates a condition: Jinja truthiness (`false`, `0`, `""`, `[]`, `none` are false).
pub fn evaluate_condition(source: &str, context: &Value, field: &str) -> Result<bool, RenderError> {
    let bare = bare_expression(source);
    let value = evaluate(bare, context).map_err(|message| RenderError {
        field: field.to_string(),
        message: format!("in `{bare}`: {message}"),
    })?;
    Ok(truthy(&value))
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn render_string(text: &str, context: &Value, field: &str) -> Result<Value, RenderError> {
    let fail = |message: String| RenderError {
        field: field.to_string(),
        message,
    };
    let pieces = pieces(text).map_err(fail)?;
    match pieces.as_slice() {
        [] => Ok(Value::String(String::new())),
        [Piece::Expression(source)] => {
            evaluate(source, context).map_err(|message| fail(format!("in `{source}`: {message}")))
        }
        _ => {
            let mut out = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Text(text) => out.push_str(text),
                    Piece::Expression(source) => {
                        match evaluate(source, context)
                            .map_err(|message| fail(format!("in `{source}`: {message}")))?
                        {
                            Value::String(s) => out.push_str(&s),
                            other => out.push_str(&other.to_string()),
                        }
                    }
                }
            }
            Ok(Value::String(out))
        }
    }
}

/// One expression's value as JSON.
fn evaluate(source: &str, context: &Value) -> Result<Value, String> {
    let expression = environment()
        .compile_expression(source)
        .map_err(|error| describe(&error))?;
    let value = expression
        .eval(minijinja::value::Serde(context))
        .map_err(|error| describe(&error))?;
    if value.is_undefined() {
        return Err("is undefined".to_string());
    }
    serde_json::to_value(&value).map_err(|error| format!("has no JSON form: {error}"))
}

/// minijinja's message without its template-name decoration.
fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", kind_text(error.kind())),
        None => kind_text(error.kind()),
    }
}

fn kind_text(kind: minijinja::ErrorKind) -> String {
    match kind {
        minijinja::ErrorKind::UndefinedError => "a variable or field that does not exist".into(),
        minijinja::ErrorKind::SyntaxError => "syntax error".into(),
        other => other.to_string(),
    }
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

fn walk_strings(value: &Value, field: &str, visit: &mut dyn FnMut(String, &str)) {
    match value {
        Value::String(text) => visit(field.to_string(), text),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk_strings(item, &format!("{field}[{index}]"), visit);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                walk_strings(member, &join(field, key), visit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "params": {"n": 3, "name": "iris"},
            "steps": {"train": {"results": {"accuracy": 0.91, "model": "m.pkl"}, "state": "COMPLETED"}},
            "item": {"lr": 0.1},
        })
    }

    #[test]
    fn a_whole_template_keeps_the_json_type() {
        let rendered = render(
            &json!({"n": "${{ params.n }}", "acc": "${{steps.train.results.accuracy}}", "all": "${{ steps.train.results }}", "lr": "${{ item.lr * 2 }}"}),
            &context(),
            "parameters",
        )
        .expect("renders");
        assert_eq!(
            rendered,
            json!({"n": 3, "acc": 0.91, "all": {"accuracy": 0.91, "model": "m.pkl"}, "lr": 0.2})
        );
    }

    #[test]
    fn templates_amid_text_make_a_string() {
        let rendered = render(
            &json!([
                "model-${{ params.name }}-${{ params.n }}.pkl",
                "cost: $${{ not }}",
                7,
                null
            ]),
            &context(),
            "x",
        )
        .expect("renders");
        assert_eq!(
            rendered,
            json!(["model-iris-3.pkl", "cost: ${{ not }}", 7, null])
        );
    }

    #[test]
    fn a_missing_field_is_an_error_with_its_path() {
        let error = render(
            &json!({"a": {"b": "${{ steps.train.results.loss }}"}}),
            &context(),
            "parameters",
        )
        .expect_err("loss does not exist");
        assert_eq!(error.field, "parameters.a.b");
        assert!(
            error.message.contains("steps.train.results.loss"),
            "{error}"
        );
        let error = render(&json!("${{ steps.prepare.results }}"), &context(), "p")
            .expect_err("no step prepare");
        assert_eq!(error.field, "p");
    }

    #[test]
    fn references_are_dotted_paths_and_syntax_errors_have_fields() {
        let found = references(
            &json!({"a": "${{ steps.train.results.accuracy > params.min }}", "b": ["x ${{ item }}"]}),
            "spec.steps[0].parameters",
        )
        .expect("valid");
        assert!(found.contains("steps.train.results.accuracy"), "{found:?}");
        assert!(found.contains("params.min"), "{found:?}");
        assert!(found.contains("item"), "{found:?}");
        let invalid = references(
            &json!({"a": "${{ steps.( }}", "b": "${{ unclosed"}),
            "spec.steps[0].parameters",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = invalid.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.steps[0].parameters.a", "spec.steps[0].parameters.b"]
        );
    }

    #[test]
    fn conditions_take_bare_or_wrapped_expressions() {
        let ctx = context();
        assert!(evaluate_condition("steps.train.results.accuracy > 0.9", &ctx, "if").unwrap());
        assert!(!evaluate_condition("${{ params.n > 5 }}", &ctx, "if").unwrap());
        assert!(evaluate_condition("steps.train.state == 'COMPLETED'", &ctx, "if").unwrap());
        assert!(evaluate_condition("nothing", &ctx, "if").is_err());
        assert!(condition_references("${{ a.b and c }}", "if")
            .unwrap()
            .contains("a.b"));
        assert!(condition_references("a and", "if").is_err());
    }

    #[test]
    fn is_template_tells_plain_strings_apart() {
        assert!(is_template("${{ x }}"));
        assert!(is_template("a ${{ x }} b"));
        assert!(!is_template("plain"));
        assert!(!is_template("$${{ literal }}"));
    }
}
