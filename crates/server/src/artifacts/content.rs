//! What a logged artifact folder holds: its regular files (sorted relative paths, modes,
//! sizes) and the content hash that names its version. The same bytes under the same paths
//! and modes always hash the same, wherever and whenever they were logged.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One file of an artifact: its path relative to the artifact's folder (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFile {
    pub relative: String,
    pub path: PathBuf,
    pub size: u64,
    /// Only the executable bits matter: the rest depends on the umask of whoever copied it.
    pub executable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub files: Vec<ContentFile>,
    pub size: u64,
    pub hash: String,
}

/// Scans `dir` (no symlink is followed: a job must not make the server read outside its
/// outputs) and hashes it. Errors are messages for people, naming the offending path.
pub fn scan(dir: &Path) -> Result<Content, String> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| e.to_string())?
            .to_str()
            .ok_or_else(|| format!("{}: the path is not UTF-8", entry.path().display()))?
            .to_string();
        if !kind.is_file() {
            return Err(format!(
                "{relative} is a symlink or a special file; artifacts hold regular files only"
            ));
        }
        let metadata = entry
            .metadata()
            .map_err(|e| format!("cannot read {relative}: {e}"))?;
        files.push(ContentFile {
            relative,
            path: entry.path().to_path_buf(),
            size: metadata.len(),
            executable: metadata.permissions().mode() & 0o111 != 0,
        });
    }
    // Byte order of the relative paths, independent of how the walk sorted components.
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    for file in &files {
        hasher.update(file.relative.as_bytes());
        hasher.update([0, u8::from(file.executable)]);
        hasher.update(file.size.to_le_bytes());
        let mut reader = std::fs::File::open(&file.path)
            .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        size += file.size;
    }
    Ok(Content {
        files,
        size,
        hash: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::scan;

    #[test]
    fn same_content_same_hash_and_any_change_changes_it() {
        let a = tempfile::tempdir().expect("dir");
        let b = tempfile::tempdir().expect("dir");
        for root in [a.path(), b.path()] {
            std::fs::create_dir_all(root.join("sub")).expect("mkdir");
            std::fs::write(root.join("x.txt"), b"hello").expect("write");
            std::fs::write(root.join("sub/y.bin"), b"\x00\x01").expect("write");
        }
        let first = scan(a.path()).expect("scan");
        assert_eq!(first.hash, scan(b.path()).expect("scan").hash);
        assert_eq!(first.size, 7);
        let names: Vec<_> = first.files.iter().map(|f| f.relative.as_str()).collect();
        assert_eq!(names, ["sub/y.bin", "x.txt"]);
        std::fs::write(b.path().join("x.txt"), b"hellO").expect("write");
        assert_ne!(first.hash, scan(b.path()).expect("scan").hash);
        std::fs::write(b.path().join("x.txt"), b"hello").expect("write");
        std::fs::rename(b.path().join("x.txt"), b.path().join("z.txt")).expect("rename");
        assert_ne!(first.hash, scan(b.path()).expect("scan").hash);
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).expect("symlink");
        let error = scan(dir.path()).expect_err("a symlink");
        assert!(error.contains("link is a symlink"), "{error}");
    }
}
