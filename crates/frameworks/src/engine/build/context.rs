//! The build context: checked, then written as one tar file under the attempt folder that the
//! engine's builder receives (the Containerfile at its root, the `context` files, the
//! `context_dirs` copied whole with their symlinks kept as links).

use crate::attempt::check_file_path;
use runplane_domain::Build;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The Containerfile's name at the context's root, what the builder is told to read.
pub const CONTAINERFILE: &str = "Containerfile";

/// Checks what the build asks for; each error names the field at fault.
pub fn check(build: &Build) -> Result<(), String> {
    if build.containerfile.trim().is_empty() {
        return Err("build.containerfile is empty".into());
    }
    check_reference(&build.image)?;
    for (index, file) in build.context.iter().enumerate() {
        check_entry_path(&file.path, &format!("build.context[{index}].path"))?;
    }
    for (index, dir) in build.context_dirs.iter().enumerate() {
        check_entry_path(&dir.path, &format!("build.context_dirs[{index}].path"))?;
        let host = Path::new(&dir.host_path);
        if !host.is_absolute() {
            return Err(format!(
                "build.context_dirs[{index}].host_path {:?} must be an absolute path",
                dir.host_path
            ));
        }
        if !host.is_dir() {
            return Err(format!(
                "build.context_dirs[{index}].host_path {:?} is not a folder on this host",
                dir.host_path
            ));
        }
    }
    for name in build.args.keys() {
        if name.is_empty() || name.contains('=') {
            return Err(format!("build.args: {name:?} is not a build argument name"));
        }
    }
    Ok(())
}

fn check_entry_path(path: &str, field: &str) -> Result<PathBuf, String> {
    let checked = check_file_path(path).map_err(|_| {
        format!("{field} {path:?} must be relative, without '..', '.' or empty segments")
    })?;
    if path == CONTAINERFILE {
        return Err(format!(
            "{field} {path:?} is reserved for build.containerfile"
        ));
    }
    Ok(checked)
}

/// An image reference the engine can tag: `[registry/]repo[:tag]`, lowercase repository,
/// no spaces; a digest (`@sha256:`) cannot be a build's target.
fn check_reference(image: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("build.image {image:?} {why}"));
    if image.is_empty() {
        return bad("is empty");
    }
    if image.contains('@') {
        return bad("must be a tag (repo:tag), not a digest");
    }
    if !image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    {
        return bad("holds characters an image reference cannot have");
    }
    let (repo, _) = split_reference(image);
    let path = match repo.split_once('/') {
        Some((first, rest)) if is_registry(first) => rest,
        _ => repo,
    };
    if path.is_empty() || path.bytes().any(|b| b.is_ascii_uppercase() || b == b':') {
        return bad("must name a lowercase repository");
    }
    Ok(())
}

/// `repo[:tag]` → (`repo`, `tag`), `latest` when no tag is given. A `:` before the last `/`
/// is a registry's port, not a tag.
pub fn split_reference(image: &str) -> (&str, &str) {
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => (&image[..colon], &image[colon + 1..]),
        _ => (image, "latest"),
    }
}

/// Whether the first component of a reference names a registry host (Docker's rule).
fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// The registry host (without its port) a reference is pushed to, when it names one.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    if !is_registry(first) {
        return None;
    }
    Some(match first.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => first.split(':').next().unwrap_or(first),
    })
}

/// Writes the context tar to `target`. Blocking: run it off the async threads.
pub fn write_tar(build: &Build, target: &Path) -> Result<(), String> {
    let file =
        File::create(target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    // Links stay links: the builder resolves them inside the context as `COPY` would.
    tar.follow_symlinks(false);
    let write_error =
        |what: &str, e: std::io::Error| format!("cannot add {what} to the build context: {e}");
    append_file(
        &mut tar,
        CONTAINERFILE,
        0o644,
        build.containerfile.as_bytes(),
    )
    .map_err(|e| write_error("the Containerfile", e))?;
    for file in &build.context {
        append_file(&mut tar, &file.path, file.mode, &file.contents)
            .map_err(|e| write_error(&file.path, e))?;
    }
    for dir in &build.context_dirs {
        tar.append_dir_all(&dir.path, &dir.host_path)
            .map_err(|e| write_error(&dir.host_path, e))?;
    }
    let mut out = tar
        .into_inner()
        .map_err(|e| write_error("the end of the archive", e))?;
    out.flush()
        .map_err(|e| write_error("the end of the archive", e))?;
    Ok(())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    contents: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(mode & 0o7777);
    header.set_entry_type(tar::EntryType::Regular);
    // A fixed time: the same contents give the same layer (the builder's cache).
    header.set_mtime(0);
    tar.append_data(&mut header, path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        assert_eq!(split_reference("a/b:1"), ("a/b", "1"));
        assert_eq!(
            split_reference("127.0.0.1:5000/b"),
            ("127.0.0.1:5000/b", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/b:v2"),
            ("127.0.0.1:5000/b", "v2")
        );
        assert_eq!(registry_host("127.0.0.1:5000/b:v2"), Some("127.0.0.1"));
        assert_eq!(registry_host("localhost/b"), Some("localhost"));
        assert_eq!(registry_host("[::1]:5000/b"), Some("::1"));
        assert_eq!(registry_host("library/b"), None);
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in ["", "Upper/case", "a b", "x@sha256:00", "host:5000/"] {
            assert!(check_reference(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["localhost/x:1", "127.0.0.1:5000/a/b:c", "busybox"] {
            assert!(check_reference(good).is_ok(), "{good:?} was refused");
        }
    }
}
