//! Entity names follow DNS-1123 label rules, so that every name can become a Kubernetes object
//! name, a host label or a path segment without escaping.

use crate::Invalid;

pub const MAX_NAME_LEN: usize = 63;

/// Checks a DNS-1123 label: 1–63 characters of `a-z`, `0-9` and `-`, starting and ending with an
/// alphanumeric character. `field` names the field in the error.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    let problem = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            name.len()
        ))
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(format!(
            "invalid character {bad:?} in {name:?}: use lowercase letters, digits and '-'"
        ))
    } else if name.starts_with('-') || name.ends_with('-') {
        Some(format!(
            "{name:?} must start and end with a letter or digit"
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Invalid::field(field, problem)),
        None => Ok(()),
    }
}

/// Label keys: like Kubernetes, an optional DNS prefix and `/`, then up to 63 of
/// `[A-Za-z0-9._-]`. Values: up to 63 of the same, possibly empty.
pub fn validate_label(field: &str, key: &str, value: &str) -> Result<(), Invalid> {
    fn ok_segment(s: &str) -> bool {
        s.len() <= MAX_NAME_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    }
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.is_empty() || !ok_segment(name) || key.len() > 253 {
        return Err(Invalid::field(
            format!("{field}.{key}"),
            "label keys are up to 63 characters of letters, digits, '.', '_' and '-'",
        ));
    }
    if !ok_segment(value) {
        return Err(Invalid::field(
            format!("{field}.{key}"),
            "label values are up to 63 characters of letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["a", "hello", "train-model-2", "0abc", &"x".repeat(63)] {
            assert!(validate_name("metadata.name", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names_naming_the_field() {
        for name in ["", "Hello", "a_b", "-a", "a-", "a.b", &"x".repeat(64), "é"] {
            let err = validate_name("metadata.name", name).unwrap_err();
            assert_eq!(err.0[0].field, "metadata.name");
        }
    }

    proptest::proptest! {
        #[test]
        fn valid_names_are_exactly_the_dns_label_regex(name in "\\PC{0,70}") {
            let expected = !name.is_empty()
                && name.len() <= 63
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-') && !name.ends_with('-');
            proptest::prop_assert_eq!(validate_name("n", &name).is_ok(), expected);
        }
    }
}
