//! The parts of a `python` spec about what the function runs with, beyond its code:
//! `requirements` (what users declare), `lock` (what the server resolved them to, once),
//! and, on versions made by a `build` run, `image` and `built_from`.
//!
//! Everything here is checked as text only: resolving and installing are the server's and the
//! environment build's job. The checks keep out what would let a spec steer `uv` beyond
//! "install these packages" (pip options such as `--index-url` or `-r /etc/...`), since a lock's
//! text ends up as the `-r` file of `uv pip install`.

use runplane_domain::invalid::Problems;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most requirements a function may declare.
pub(crate) const MAX_REQUIREMENTS: usize = 200;
/// Longest single requirement (a URL requirement can be long, but not unbounded).
const MAX_REQUIREMENT_CHARS: usize = 1000;
/// Largest lock text: hundreds of pinned packages with hashes fit well within it.
const MAX_LOCK_BYTES: usize = 1024 * 1024;
/// Longest image reference (`registry/path:tag` or `...@sha256:<64 hex>`).
const MAX_IMAGE_CHARS: usize = 512;
/// Longest `built_from` id (function versions and run ids are far shorter).
const MAX_ID_CHARS: usize = 128;

/// The resolved form of `requirements`, recorded by the server (`Runtime::with_lock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    /// `uv pip compile` output: `name==version` lines, comments.
    pub text: String,
    /// sha256 hex of `text`: names the environment folder.
    pub hash: String,
}

/// Which version and run a built version comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltFrom {
    /// The function version the build run executed.
    pub version: String,
    /// The build run's id.
    pub run: String,
}

/// sha256 hex of a lock's text.
pub(crate) fn lock_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Checks each requirement (problems on `requirements[i]`) and returns them trimmed.
pub(crate) fn check_requirements(given: &[String], problems: &mut Problems) -> Vec<String> {
    if given.len() > MAX_REQUIREMENTS {
        problems.add(
            "requirements",
            format!(
                "has {} entries, more than the {MAX_REQUIREMENTS} allowed",
                given.len()
            ),
        );
    }
    let mut kept = Vec::with_capacity(given.len());
    for (index, requirement) in given.iter().enumerate() {
        let field = format!("requirements[{index}]");
        let trimmed = requirement.trim();
        match requirement_problem(trimmed) {
            Some(problem) => problems.add(field, problem),
            None => kept.push(trimmed.to_string()),
        }
    }
    kept
}

/// Why `requirement` (trimmed) is not a PEP 508 requirement runplane accepts, if it is not.
fn requirement_problem(requirement: &str) -> Option<String> {
    const EXAMPLE: &str = "a requirement specifier such as `requests>=2` or `six==1.17.0`";
    if requirement.is_empty() {
        return Some(format!("is empty; expected {EXAMPLE}"));
    }
    if requirement.contains(['\n', '\r', '\0']) {
        return Some(format!("must be one line: {EXAMPLE}"));
    }
    if requirement.chars().count() > MAX_REQUIREMENT_CHARS {
        return Some(format!("is longer than {MAX_REQUIREMENT_CHARS} characters"));
    }
    if requirement.starts_with('-') {
        return Some(format!(
            "{requirement:?} is a pip option; options (`-r`, `-e`, `--index-url`, ...) are not accepted: list {EXAMPLE}"
        ));
    }
    // PEP 508 names start with a letter or digit; this also refuses paths (`./pkg`, `/x.whl`)
    // and comments, which are not requirements.
    if !requirement.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some(format!(
            "{requirement:?} does not start with a package name; expected {EXAMPLE}"
        ));
    }
    None
}

/// Checks a lock given with the spec (a stored spec applied again, or a built version): well
/// formed, its hash that of its text, and nothing in it but requirement lines.
pub(crate) fn check_lock(lock: &LockSpec, has_requirements: bool, problems: &mut Problems) {
    if !has_requirements {
        problems.add(
            "lock",
            "only a function with `requirements` has a lock (the server records it)",
        );
    }
    let hash_ok = lock.hash.len() == 64
        && lock
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hash_ok {
        problems.add(
            "lock.hash",
            "must be the sha256 of lock.text as 64 lowercase hex digits",
        );
    }
    if lock.text.len() > MAX_LOCK_BYTES {
        problems.add(
            "lock.text",
            format!(
                "is {} bytes, more than the {MAX_LOCK_BYTES} allowed",
                lock.text.len()
            ),
        );
        return;
    }
    if hash_ok {
        let actual = lock_hash(&lock.text);
        if actual != lock.hash {
            problems.add(
                "lock.hash",
                format!("does not match lock.text, which hashes to {actual}"),
            );
        }
    }
    for (number, line) in lock.text.lines().enumerate() {
        let line = line.trim();
        // `uv pip compile --generate-hashes` continues a requirement with `--hash=` lines.
        if line.starts_with('-') && !line.starts_with("--hash=") {
            problems.add(
                "lock.text",
                format!(
                    "line {}: {line:?} is a pip option; a lock holds pinned requirements only",
                    number + 1
                ),
            );
            return;
        }
        if line.contains('\0') {
            problems.add("lock.text", format!("line {} holds a NUL byte", number + 1));
            return;
        }
    }
}

/// Checks `image` (loosely: a reference's characters, not its grammar) and `built_from`.
pub(crate) fn check_built(
    image: Option<&str>,
    built_from: Option<&BuiltFrom>,
    problems: &mut Problems,
) {
    if let Some(image) = image {
        let chars_ok = image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
        if image.is_empty() {
            problems.add("image", "is empty; expected an image reference");
        } else if image.len() > MAX_IMAGE_CHARS {
            problems.add(
                "image",
                format!("is longer than {MAX_IMAGE_CHARS} characters"),
            );
        } else if !chars_ok || !image.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            problems.add(
                "image",
                format!("{image:?} is not an image reference such as `localhost/runplane/demo-f:0123abcd` or `registry:5000/app@sha256:...`"),
            );
        }
    }
    if let Some(built_from) = built_from {
        if image.is_none() {
            problems.add(
                "built_from",
                "is only set on a built version, which has an `image`",
            );
        }
        for (field, value) in [
            ("built_from.version", &built_from.version),
            ("built_from.run", &built_from.run),
        ] {
            let ok = !value.is_empty()
                && value.len() <= MAX_ID_CHARS
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                problems.add(
                    field,
                    format!("{value:?} is not an id (letters, digits, `-` and `_`, at most {MAX_ID_CHARS})"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(check: impl FnOnce(&mut Problems)) -> Vec<(String, String)> {
        let mut problems = Problems::new();
        check(&mut problems);
        match problems.finish() {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid
                .0
                .into_iter()
                .map(|e| (e.field, e.problem))
                .collect(),
        }
    }

    #[test]
    fn requirements_are_trimmed_and_checked_one_by_one() {
        let given: Vec<String> = [
            " six==1.17.0 ",
            "requests[socks]>=2; python_version >= '3.8'",
            "pkg @ https://example.com/pkg-1.0.tar.gz",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut problems = Problems::new();
        let kept = check_requirements(&given, &mut problems);
        assert!(problems.finish().is_ok());
        assert_eq!(kept[0], "six==1.17.0");
        assert_eq!(kept.len(), 3);

        let bad = [
            ("", "is empty"),
            ("   ", "is empty"),
            ("six\nnumpy", "one line"),
            ("-r /etc/passwd", "pip option"),
            ("--index-url=http://evil", "pip option"),
            ("-e .", "pip option"),
            ("./local/pkg", "does not start with a package name"),
            ("# a comment", "does not start with a package name"),
        ];
        for (requirement, expected) in bad {
            let given = vec!["ok==1".to_string(), requirement.to_string()];
            let got = problems_of(|p| {
                check_requirements(&given, p);
            });
            assert_eq!(got.len(), 1, "{requirement:?}: {got:?}");
            assert_eq!(got[0].0, "requirements[1]");
            assert!(got[0].1.contains(expected), "{requirement:?}: {got:?}");
        }
        let long = vec!["a".repeat(MAX_REQUIREMENT_CHARS + 1)];
        assert_eq!(
            problems_of(|p| {
                check_requirements(&long, p);
            })[0]
                .0,
            "requirements[0]"
        );
        let many: Vec<String> = (0..=MAX_REQUIREMENTS).map(|i| format!("p{i}")).collect();
        let got = problems_of(|p| {
            check_requirements(&many, p);
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "requirements");
        assert!(got[0].1.contains("201 entries"), "{got:?}");
    }

    fn lock(text: &str) -> LockSpec {
        LockSpec {
            text: text.to_string(),
            hash: lock_hash(text),
        }
    }

    #[test]
    fn locks_must_match_their_hash_and_hold_requirements_only() {
        let text = "# uv pip compile\nsix==1.17.0 \\\n    --hash=sha256:ff\n    # via -r requirements.in\n";
        assert!(problems_of(|p| check_lock(&lock(text), true, p)).is_empty());
        assert_eq!(
            lock_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );

        let got = problems_of(|p| check_lock(&lock(text), false, p));
        assert_eq!(got[0].0, "lock");

        let mut wrong = lock(text);
        wrong.hash = lock_hash("other");
        let got = problems_of(|p| check_lock(&wrong, true, p));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "lock.hash");
        assert!(got[0].1.contains(&lock_hash(text)), "{got:?}");

        for hash in ["", "xyz", &"A".repeat(64), &"0".repeat(63)] {
            let mut bad = lock(text);
            bad.hash = hash.to_string();
            let got = problems_of(|p| check_lock(&bad, true, p));
            assert_eq!(got.len(), 1, "{hash}: {got:?}");
            assert!(got[0].1.contains("64 lowercase hex"), "{got:?}");
        }

        let got =
            problems_of(|p| check_lock(&lock("six==1.17.0\n--index-url http://evil/\n"), true, p));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "lock.text");
        assert!(got[0].1.starts_with("line 2:"), "{got:?}");
    }

    #[test]
    fn images_and_built_from_are_checked_loosely() {
        let from = BuiltFrom {
            version: "0123456789abcdef".into(),
            run: "0190d7a8-0000-7000-8000-000000000001".into(),
        };
        for image in [
            "localhost/runplane/demo-f:0123456789ab-000000000001",
            "127.0.0.1:5000/runplane/demo-f@sha256:0123",
        ] {
            assert!(problems_of(|p| check_built(Some(image), Some(&from), p)).is_empty());
        }
        for image in ["", "has space", "-flag", "a\nb", &"a".repeat(600)] {
            let got = problems_of(|p| check_built(Some(image), None, p));
            assert_eq!(got.len(), 1, "{image:?}");
            assert_eq!(got[0].0, "image");
        }
        let got = problems_of(|p| check_built(None, Some(&from), p));
        assert_eq!(got[0].0, "built_from");
        let bad = BuiltFrom {
            version: "".into(),
            run: "x/y".into(),
        };
        let got = problems_of(|p| check_built(Some("img"), Some(&bad), p));
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["built_from.version", "built_from.run"]);
    }
}
