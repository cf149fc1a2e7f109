//! Admin-defined profiles: named sets of scheduling settings (node selector, tolerations,
//! runtime class, extra labels, default resources) that users pick by name
//! (`RUNPLANE_PROFILE` in a task's env, see `RunOptions`). Loaded once from the server's
//! configuration and checked then, so that a bad profile is the admin's error at start-up and
//! never a run's.

use super::quantity::check_quantity;
use k8s_openapi::api::core::v1::Toleration;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One profile, as an admin writes it (YAML, Kubernetes' own spelling for tolerations).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Profile {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub runtime_class: Option<String>,
    /// Added to every object of the runs that use it (cost centres, policies).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources given to runs that ask for none of that name (`nvidia.com/gpu`,
    /// `ephemeral-storage`, or cpu/memory defaults).
    #[serde(default)]
    pub resources: ProfileResources,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileResources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// The profiles of a server, by name; `default` is used by runs that name none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the profiles: {0}")]
    Syntax(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("unknown profile {name:?}; the profiles are: {}", known_list(.known))]
    Unknown { name: String, known: Vec<String> },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "(none defined)".to_string()
    } else {
        known.join(", ")
    }
}

impl Profiles {
    /// Reads and checks profiles from YAML (or JSON): `{default: NAME, profiles: {NAME: ...}}`.
    pub fn from_yaml(text: &str) -> Result<Profiles, ProfileError> {
        let profiles: Profiles =
            serde_yaml_ng::from_str(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        profiles.check()?;
        Ok(profiles)
    }

    /// Every field an admin can get wrong, named by its path.
    pub fn check(&self) -> Result<(), ProfileError> {
        let invalid = |field: String, message: String| ProfileError::Invalid { field, message };
        for (name, profile) in &self.profiles {
            let at = format!("profiles.{name}");
            if !is_label_value(name) || name.is_empty() {
                return Err(invalid(
                    at,
                    "a profile name is 1-63 letters, digits, '-', '_' or '.'".into(),
                ));
            }
            for (key, value) in profile.labels.iter().chain(&profile.node_selector) {
                if !is_label_key(key) {
                    return Err(invalid(
                        format!("{at}.labels.{key}"),
                        "not a valid label key".into(),
                    ));
                }
                if !is_label_value(value) {
                    return Err(invalid(
                        format!("{at}.labels.{key}"),
                        format!("{value:?} is not a valid label value"),
                    ));
                }
            }
            if let Some(class) = &profile.runtime_class {
                if !is_dns_subdomain(class) {
                    return Err(invalid(
                        format!("{at}.runtime_class"),
                        format!("{class:?} is not a valid RuntimeClass name"),
                    ));
                }
            }
            for (kind, map) in [
                ("requests", &profile.resources.requests),
                ("limits", &profile.resources.limits),
            ] {
                for (resource, value) in map {
                    check_quantity(&format!("{at}.resources.{kind}.{resource}"), value)
                        .map_err(|e| invalid(e.field, e.message))?;
                }
            }
        }
        if let Some(default) = &self.default {
            self.profile(Some(default))
                .map_err(|e| invalid("default".into(), e.to_string()))?;
        }
        Ok(())
    }

    /// The profile a run asked for (or the default one); an unknown name is an error naming
    /// the known ones.
    pub fn profile(&self, name: Option<&str>) -> Result<Option<&Profile>, ProfileError> {
        let Some(name) = name.or(self.default.as_deref()) else {
            return Ok(None);
        };
        self.profiles
            .get(name)
            .map(Some)
            .ok_or_else(|| ProfileError::Unknown {
                name: name.to_string(),
                known: self.profiles.keys().cloned().collect(),
            })
    }
}

/// A label value: at most 63 of `[A-Za-z0-9_.-]`, starting and ending alphanumeric (or empty).
pub(crate) fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value.as_bytes()[0].is_ascii_alphanumeric()
            && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric())
}

/// `[prefix/]name`: a DNS subdomain prefix and a label-value-like name.
pub(crate) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    !name.is_empty() && is_label_value(name) && prefix.is_none_or(is_dns_subdomain)
}

pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILES: &str = r#"
default: standard
profiles:
  standard: {}
  gpu:
    node_selector: { "nvidia.com/gpu.present": "true" }
    tolerations:
      - { key: nvidia.com/gpu, operator: Exists, effect: NoSchedule }
    runtime_class: nvidia
    labels: { team: ml }
    resources:
      limits: { nvidia.com/gpu: "1", memory: 16Gi }
"#;

    #[test]
    fn profiles_load_and_are_found_by_name() {
        let profiles = Profiles::from_yaml(PROFILES).unwrap();
        let gpu = profiles.profile(Some("gpu")).unwrap().unwrap();
        assert_eq!(gpu.runtime_class.as_deref(), Some("nvidia"));
        assert_eq!(gpu.tolerations[0].operator.as_deref(), Some("Exists"));
        let default = profiles.profile(None).unwrap().unwrap();
        assert_eq!(default, &Profile::default());
        assert_eq!(Profiles::default().profile(None).unwrap(), None);
    }

    #[test]
    fn an_unknown_profile_names_the_known_ones() {
        let profiles = Profiles::from_yaml(PROFILES).unwrap();
        let error = profiles.profile(Some("huge")).unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown profile \"huge\"; the profiles are: gpu, standard"
        );
        let none = Profiles::default().profile(Some("x")).unwrap_err();
        assert!(none.to_string().ends_with("(none defined)"), "{none}");
    }

    #[test]
    fn bad_profiles_name_their_field() {
        let error = |text: &str| Profiles::from_yaml(text).unwrap_err().to_string();
        assert_eq!(
            error("profiles: { a: { resources: { limits: { memory: 12XB } } } }"),
            "profiles.a.resources.limits.memory: \"12XB\" is not a Kubernetes quantity (like 500m, 2, 1.5Gi, 64M)"
        );
        assert!(error("profiles: { a: { runtime_class: Bad_Class } }")
            .starts_with("profiles.a.runtime_class:"));
        assert!(error("profiles: { a: { labels: { x: \"-no\" } } }")
            .starts_with("profiles.a.labels.x:"));
        assert!(error("default: b\nprofiles: { a: {} }").starts_with("default: unknown profile"));
        assert!(error("profiles: { a: { nodes: {} } }").starts_with("cannot read the profiles"));
    }
}
