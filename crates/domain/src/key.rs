//! Entity keys: `store://<project>/<entity>/<kind>/<name>:<version>`; without `:<version>` a
//! key means the latest version.

use crate::Invalid;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub project: String,
    /// `function`, `workflow`, `task`, `run`, `artifact`...
    pub entity: String,
    pub kind: String,
    pub name: String,
    pub version: Option<String>,
}

impl Key {
    pub fn new(project: &str, entity: &str, kind: &str, name: &str, version: Option<&str>) -> Self {
        Key {
            project: project.to_string(),
            entity: entity.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            version: version.map(str::to_string),
        }
    }

    pub fn parse(text: &str) -> Result<Key, Invalid> {
        let bad = |problem: &str| Invalid::field("key", format!("{text:?}: {problem}"));
        let rest = text
            .strip_prefix("store://")
            .ok_or_else(|| bad("a key starts with store://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [project, entity, kind, name_version] = parts[..] else {
            return Err(bad(
                "expected store://<project>/<entity>/<kind>/<name>[:<version>]",
            ));
        };
        let (name, version) = match name_version.split_once(':') {
            Some((name, version)) if !version.is_empty() => (name, Some(version)),
            Some(_) => return Err(bad("empty version after ':'")),
            None => (name_version, None),
        };
        if [project, entity, kind, name].iter().any(|p| p.is_empty()) {
            return Err(bad("empty segment"));
        }
        Ok(Key::new(project, entity, kind, name, version))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store://{}/{}/{}/{}",
            self.project, self.entity, self.kind, self.name
        )?;
        if let Some(version) = &self.version {
            write!(f, ":{version}")?;
        }
        Ok(())
    }
}

/// A reference typed by a user: `name` or `name:version`.
pub fn split_name_version(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once(':') {
        Some((name, version)) if !version.is_empty() => (name, Some(version)),
        Some((name, _)) => (name, None),
        None => (reference, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "store://demo/function/python/hello:0123abcd",
            "store://demo/function/python/hello",
        ] {
            assert_eq!(Key::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_keys() {
        for text in [
            "demo/function/python/hello",
            "store://demo/function/hello",
            "store://demo/function/python/hello:",
            "store:///function/python/x",
        ] {
            assert!(Key::parse(text).is_err(), "{text}");
        }
    }
}
