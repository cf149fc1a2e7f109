//! Run parameters from the command line: `-p k=v` values are YAML scalars (`n=3` is a number,
//! `ok=true` a boolean, `s='3'` a string), `--params-file` a YAML/JSON map.

use crate::exit::CliError;
use serde_json::{Map, Value};
use std::path::Path;

pub fn parse_pair(pair: &str) -> Result<(String, Value), CliError> {
    let (key, text) = pair
        .split_once('=')
        .ok_or_else(|| CliError::invalid(format!("-p {pair:?}: expected key=value")))?;
    if key.is_empty() {
        return Err(CliError::invalid(format!("-p {pair:?}: the key is empty")));
    }
    let as_string = || Value::String(text.to_string());
    let value = match serde_yaml_ng::from_str::<Value>(text) {
        _ if text.is_empty() => as_string(),
        // Collections only when written as flow collections: `a: b` stays a string.
        Ok(Value::Object(_)) if !text.trim_start().starts_with('{') => as_string(),
        Ok(Value::Array(_)) if !text.trim_start().starts_with('[') => as_string(),
        Ok(value) => value,
        Err(_) => as_string(),
    };
    Ok((key.to_string(), value))
}

pub fn read_params_file(path: &Path) -> Result<Map<String, Value>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::invalid(format!("--params-file {}: {error}", path.display())))?;
    match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(CliError::invalid(format!(
            "--params-file {}: expected a map of parameter names to values",
            path.display()
        ))),
        Err(error) => Err(CliError::invalid(format!(
            "--params-file {}: {error}",
            path.display()
        ))),
    }
}

/// The file's parameters, overridden by the `-p` pairs.
pub fn collect(pairs: &[String], file: Option<&Path>) -> Result<Map<String, Value>, CliError> {
    let mut params = match file {
        Some(path) => read_params_file(path)?,
        None => Map::new(),
    };
    for pair in pairs {
        let (key, value) = parse_pair(pair)?;
        params.insert(key, value);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_yaml_scalars() {
        let cases = [
            ("n=3", json!(3)),
            ("x=2.5", json!(2.5)),
            ("ok=true", json!(true)),
            ("name=Ann", json!("Ann")),
            ("s='3'", json!("3")),
            ("empty=", json!("")),
            ("list=[1, 2]", json!([1, 2])),
            ("text=a: b", json!("a: b")),
            ("map={a: 1}", json!({"a": 1})),
            ("nothing=~", json!(null)),
            ("colon=a=b", json!("a=b")),
        ];
        for (pair, expected) in cases {
            assert_eq!(parse_pair(pair).unwrap().1, expected, "{pair}");
        }
    }

    #[test]
    fn rejects_pairs_without_a_key() {
        assert!(parse_pair("novalue").is_err());
        assert!(parse_pair("=3").is_err());
    }
}
