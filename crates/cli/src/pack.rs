//! Client-side packing of a file or a directory into a `python` function's `source.archive` (or
//! a `container` function's `build.context.archive`): the base64 of a gzip'd tar.
//!
//! The archive is deterministic (entries sorted by path; mtime, uid and gid 0; no owner names;
//! modes reduced to `0o644` / `0o755`; a gzip header without timestamp or file name), so packing
//! the same files twice gives the same bytes. The server hashes versions over the files, not the
//! archive, but a stable archive keeps `apply` idempotent end to end and diffs quiet.
//!
//! What is packed: a single file as itself at the archive's root (`foo.py` → `foo.py`); a
//! directory's regular files, minus what its `.runplaneignore` (gitignore syntax, at the
//! directory's root only) excludes, and always minus `__pycache__/`, `.git/` and `*.pyc` (which
//! a `!` pattern cannot bring back). Symbolic links are followed when they point inside the
//! directory (their content is packed as a regular file or folder: the server accepts no links)
//! and refused when they point outside it, since the function would silently depend on files
//! that are not part of it. Empty directories are not packed.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::{Compression, GzBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The ignore file read at the root of a packed directory.
pub const IGNORE_FILE: &str = ".runplaneignore";
/// Most files a packed source may hold (the server's limit on archive entries).
pub const MAX_FILES: usize = 10_000;

/// A packed source, ready for `source.archive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedSource {
    /// Standard base64 of the gzip'd tar.
    pub archive: String,
    /// How many files were packed.
    pub files: u64,
    /// Their total size, uncompressed (what the server's source limit applies to).
    pub bytes: u64,
    /// The gzip'd tar's size, before base64.
    pub compressed_bytes: u64,
}

/// `3 files, 1.2 KiB (812 B compressed)`, for `apply` to say what it sent.
impl std::fmt::Display for PackedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let noun = if self.files == 1 { "file" } else { "files" };
        write!(
            f,
            "{} {noun}, {} ({} compressed)",
            self.files,
            human_bytes(self.bytes),
            human_bytes(self.compressed_bytes)
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    IgnoreFile { path: PathBuf, message: String },
    #[error(
        "{path} is a symbolic link to {target}, outside {root}; a packed function may only use its own files (copy the file in, or pack a folder that contains it)"
    )]
    LinkOutside {
        path: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    #[error("{path} is a broken symbolic link")]
    BrokenLink { path: PathBuf },
    #[error("{path} is a symbolic link to {target}, a folder that contains it (a loop)")]
    LinkLoop { path: PathBuf, target: PathBuf },
    #[error(
        "packing {path} takes the source to {total} bytes, more than the {max} allowed; list what the function does not need in {IGNORE_FILE}"
    )]
    TooLarge { path: PathBuf, total: u64, max: u64 },
    #[error("{root} has more than {max} files to pack; list what the function does not need in {IGNORE_FILE}")]
    TooManyFiles { root: PathBuf, max: usize },
    #[error("{path}: the name is not valid UTF-8, which packed sources require")]
    NotUtf8 { path: PathBuf },
    #[error("{path} is neither a file nor a folder (a socket, a pipe or a device)")]
    NotAFile { path: PathBuf },
    #[error("{path} has no files to pack (it is empty, or everything in it is ignored)")]
    Empty { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file to pack.
struct Entry {
    /// Relative, `/`-separated.
    path: String,
    mode: u32,
    contents: Vec<u8>,
}

/// Packs a file or a directory; fails on the first path that breaks a rule, naming it.
pub fn pack_path(path: &Path, max_bytes: u64) -> Result<PackedSource, PackError> {
    let metadata = std::fs::metadata(path).map_err(io_error(path))?;
    let mut packer = Packer {
        root: path.to_path_buf(),
        real_root: std::fs::canonicalize(path).map_err(io_error(path))?,
        max_bytes,
        total: 0,
        entries: Vec::new(),
        ignore: Gitignore::empty(),
    };
    if metadata.is_file() {
        let name = path.file_name().ok_or_else(|| PackError::NotAFile {
            path: path.to_path_buf(),
        })?;
        let name = name.to_str().ok_or_else(|| PackError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        packer.add_file(name.to_string(), path, &metadata)?;
    } else if metadata.is_dir() {
        packer.ignore = load_ignore_file(path)?;
        packer.walk()?;
    } else {
        return Err(PackError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if packer.entries.is_empty() {
        return Err(PackError::Empty {
            path: path.to_path_buf(),
        });
    }
    let files = packer.entries.len() as u64;
    let bytes = packer.total;
    let compressed = archive(packer.entries).map_err(io_error(path))?;
    Ok(PackedSource {
        compressed_bytes: compressed.len() as u64,
        archive: STANDARD.encode(compressed),
        files,
        bytes,
    })
}

/// The directory's `.runplaneignore`, if it has one.
fn load_ignore_file(root: &Path) -> Result<Gitignore, PackError> {
    let file = root.join(IGNORE_FILE);
    if !file.exists() {
        return Ok(Gitignore::empty());
    }
    let mut builder = GitignoreBuilder::new(root);
    if let Some(error) = builder.add(&file) {
        return Err(PackError::IgnoreFile {
            path: file,
            message: error.to_string(),
        });
    }
    builder.build().map_err(|error| PackError::IgnoreFile {
        path: file,
        message: error.to_string(),
    })
}

/// Names never packed, whatever the ignore file says: caches and version control that no
/// function needs and that would make the same code pack differently.
fn always_skipped(name: &str) -> bool {
    name == "__pycache__" || name == ".git" || name.ends_with(".pyc")
}

struct Packer {
    /// The directory as the user named it (for messages).
    root: PathBuf,
    /// The same, with links resolved (to decide what is inside).
    real_root: PathBuf,
    max_bytes: u64,
    total: u64,
    entries: Vec<Entry>,
    ignore: Gitignore,
}

/// A directory still to read: its path as seen from the root, its relative name, and the real
/// directories it lies in (to notice links that loop).
struct Pending {
    path: PathBuf,
    relative: String,
    real_ancestors: Vec<PathBuf>,
}

impl Packer {
    fn walk(&mut self) -> Result<(), PackError> {
        let mut pending = vec![Pending {
            path: self.root.clone(),
            relative: String::new(),
            real_ancestors: vec![self.real_root.clone()],
        }];
        while let Some(directory) = pending.pop() {
            let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(&directory.path)
                .map_err(io_error(&directory.path))?
                .collect::<Result<_, _>>()
                .map_err(io_error(&directory.path))?;
            children.sort_by_key(|child| child.file_name());
            for child in children {
                let path = child.path();
                let name = child.file_name();
                let name = name
                    .to_str()
                    .ok_or_else(|| PackError::NotUtf8 { path: path.clone() })?;
                if always_skipped(name) {
                    continue;
                }
                let relative = if directory.relative.is_empty() {
                    name.to_string()
                } else {
                    format!("{}/{name}", directory.relative)
                };
                let file_type = child.file_type().map_err(io_error(&path))?;
                // Follows links; an ignored path is skipped before any of its links is judged.
                let followed = std::fs::metadata(&path);
                let is_dir = followed.as_ref().is_ok_and(|m| m.is_dir());
                if self.ignore.matched(&relative, is_dir).is_ignore() {
                    continue;
                }
                let real = if file_type.is_symlink() {
                    Some(self.link_target(&path)?)
                } else {
                    None
                };
                let metadata = followed.map_err(io_error(&path))?;
                if metadata.is_dir() {
                    let real = match real {
                        Some(real) => real,
                        None => std::fs::canonicalize(&path).map_err(io_error(&path))?,
                    };
                    if directory
                        .real_ancestors
                        .iter()
                        .any(|ancestor| ancestor == &real)
                    {
                        return Err(PackError::LinkLoop { path, target: real });
                    }
                    let mut real_ancestors = directory.real_ancestors.clone();
                    real_ancestors.push(real);
                    pending.push(Pending {
                        path,
                        relative,
                        real_ancestors,
                    });
                } else if metadata.is_file() {
                    self.add_file(relative, &path, &metadata)?;
                } else {
                    return Err(PackError::NotAFile { path });
                }
            }
        }
        Ok(())
    }

    /// Where a symbolic link leads, if that is inside the packed directory.
    fn link_target(&self, link: &Path) -> Result<PathBuf, PackError> {
        let target = match std::fs::canonicalize(link) {
            Ok(target) => target,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(PackError::BrokenLink {
                    path: link.to_path_buf(),
                });
            }
            Err(error) => return Err(io_error(link)(error)),
        };
        if !target.starts_with(&self.real_root) {
            return Err(PackError::LinkOutside {
                path: link.to_path_buf(),
                target,
                root: self.root.clone(),
            });
        }
        Ok(target)
    }

    fn add_file(
        &mut self,
        relative: String,
        path: &Path,
        metadata: &std::fs::Metadata,
    ) -> Result<(), PackError> {
        if self.entries.len() >= MAX_FILES {
            return Err(PackError::TooManyFiles {
                root: self.root.clone(),
                max: MAX_FILES,
            });
        }
        // Checked before reading, so that a huge file is refused without loading it.
        let total = self.total.saturating_add(metadata.len());
        if total > self.max_bytes {
            return Err(PackError::TooLarge {
                path: path.to_path_buf(),
                total,
                max: self.max_bytes,
            });
        }
        let contents = std::fs::read(path).map_err(io_error(path))?;
        // The file may have changed since its metadata was read.
        self.total = self.total.saturating_add(contents.len() as u64);
        if self.total > self.max_bytes {
            return Err(PackError::TooLarge {
                path: path.to_path_buf(),
                total: self.total,
                max: self.max_bytes,
            });
        }
        let mode = if metadata.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        self.entries.push(Entry {
            path: relative,
            mode,
            contents,
        });
        Ok(())
    }
}

/// The deterministic gzip'd tar of the entries.
fn archive(mut entries: Vec<Entry>) -> std::io::Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(entry.contents.len() as u64);
        header.set_mode(entry.mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, &entry.path, entry.contents.as_slice())?;
    }
    let tar = builder.into_inner()?;
    let mut gzip = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    gzip.write_all(&tar)?;
    gzip.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    /// (path, mode, mtime, uid, gid, contents) of every entry of a packed source.
    fn unpack(packed: &PackedSource) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
        let bytes = STANDARD.decode(&packed.archive).unwrap();
        let mut archive = tar::Archive::new(GzDecoder::new(bytes.as_slice()));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                assert_eq!(header.entry_type(), tar::EntryType::Regular);
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents).unwrap();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.mtime().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    contents,
                )
            })
            .collect()
    }

    fn paths(packed: &PackedSource) -> Vec<String> {
        unpack(packed).into_iter().map(|entry| entry.0).collect()
    }

    fn write(root: &Path, path: &str, contents: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "main.py", "def handler():\n    return 1\n");
        write(dir.path(), "pkg/__init__.py", "");
        write(dir.path(), "pkg/util.py", "X = 1\n");
        write(dir.path(), "pkg.txt", "sorts before pkg/ by bytes");
        write(dir.path(), "run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(
            dir.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::set_permissions(
            dir.path().join("main.py"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        dir
    }

    #[test]
    fn packs_a_directory_sorted_with_normalized_headers() {
        let dir = project();
        let packed = pack_path(dir.path(), 1 << 20).unwrap();
        let entries = unpack(&packed);
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            summary,
            [
                ("main.py", 0o644),
                ("pkg.txt", 0o644),
                ("pkg/__init__.py", 0o644),
                ("pkg/util.py", 0o644),
                ("run.sh", 0o755)
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0 && e.4 == 0));
        assert_eq!(entries[0].5, b"def handler():\n    return 1\n");
        assert_eq!(packed.files, 5);
        let bytes: usize = entries.iter().map(|e| e.5.len()).sum();
        assert_eq!(packed.bytes, bytes as u64);
        assert_eq!(
            packed.compressed_bytes,
            STANDARD.decode(&packed.archive).unwrap().len() as u64
        );
    }

    #[test]
    fn packing_is_deterministic() {
        let dir = project();
        let first = pack_path(dir.path(), 1 << 20).unwrap();
        // Touch every file: timestamps must not matter.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for name in ["main.py", "pkg/util.py"] {
            let contents = std::fs::read(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        assert_eq!(pack_path(dir.path(), 1 << 20).unwrap(), first);
        write(dir.path(), "pkg/util.py", "X = 2\n");
        assert_ne!(
            pack_path(dir.path(), 1 << 20).unwrap().archive,
            first.archive
        );
    }

    #[test]
    fn a_single_file_is_packed_at_the_root() {
        let dir = project();
        let packed = pack_path(&dir.path().join("pkg/util.py"), 1 << 20).unwrap();
        assert_eq!(paths(&packed), ["util.py"]);
        assert_eq!(packed.files, 1);
    }

    #[test]
    fn honours_the_ignore_file_and_always_skips_caches() {
        let dir = project();
        write(
            dir.path(),
            IGNORE_FILE,
            "*.txt\n/data/\n!keep.txt\nbuild\n# comment\n!*.pyc\n!__pycache__/\n",
        );
        write(dir.path(), "keep.txt", "kept by negation");
        write(dir.path(), "data/big.csv", "1,2,3");
        write(
            dir.path(),
            "sub/data/small.csv",
            "only the root data/ is anchored",
        );
        write(dir.path(), "sub/build/out.o", "ignored anywhere");
        write(dir.path(), "__pycache__/main.cpython-311.pyc", "cache");
        write(dir.path(), "pkg/__pycache__/util.cpython-311.pyc", "cache");
        write(dir.path(), "pkg/stale.pyc", "cache");
        write(dir.path(), ".git/HEAD", "ref: refs/heads/main");
        let packed = pack_path(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            paths(&packed),
            [
                IGNORE_FILE,
                "keep.txt",
                "main.py",
                "pkg/__init__.py",
                "pkg/util.py",
                "run.sh",
                "sub/data/small.csv"
            ]
        );
    }

    #[test]
    fn a_broken_ignore_file_is_reported() {
        let dir = project();
        write(dir.path(), IGNORE_FILE, "{unclosed\n");
        let error = pack_path(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(error, PackError::IgnoreFile { .. }), "{error}");
        assert!(error.to_string().contains(IGNORE_FILE), "{error}");
    }

    #[test]
    fn too_large_names_the_path() {
        let dir = project();
        write(dir.path(), "pkg/weights.bin", &"x".repeat(2000));
        let error = pack_path(dir.path(), 1000).unwrap_err();
        match &error {
            PackError::TooLarge { path, max, .. } => {
                assert!(path.ends_with("pkg/weights.bin"), "{error}");
                assert_eq!(*max, 1000);
            }
            other => panic!("{other}"),
        }
        assert!(error.to_string().contains("weights.bin"), "{error}");
    }

    #[test]
    fn links_inside_are_followed_and_links_outside_refused() {
        let dir = project();
        symlink(dir.path().join("pkg/util.py"), dir.path().join("alias.py")).unwrap();
        symlink("pkg", dir.path().join("pkg_link")).unwrap();
        let packed = pack_path(dir.path(), 1 << 20).unwrap();
        let entries = unpack(&packed);
        let alias = entries.iter().find(|e| e.0 == "alias.py").unwrap();
        assert_eq!(alias.5, b"X = 1\n");
        assert!(entries.iter().any(|e| e.0 == "pkg_link/util.py"));

        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.py", "TOKEN = 1\n");
        symlink(
            outside.path().join("secret.py"),
            dir.path().join("secret.py"),
        )
        .unwrap();
        let error = pack_path(dir.path(), 1 << 20).unwrap_err();
        assert!(
            matches!(&error, PackError::LinkOutside { path, .. } if path.ends_with("secret.py")),
            "{error}"
        );
        assert!(error.to_string().contains("secret.py"), "{error}");
    }

    #[test]
    fn broken_and_looping_links_are_refused() {
        let dir = project();
        symlink("nowhere.py", dir.path().join("broken.py")).unwrap();
        assert!(matches!(
            pack_path(dir.path(), 1 << 20),
            Err(PackError::BrokenLink { .. })
        ));
        std::fs::remove_file(dir.path().join("broken.py")).unwrap();

        symlink("..", dir.path().join("pkg/up")).unwrap();
        assert!(matches!(
            pack_path(dir.path(), 1 << 20),
            Err(PackError::LinkLoop { .. })
        ));
        // Ignored paths are not followed, nor judged.
        symlink("nowhere.py", dir.path().join("broken.py")).unwrap();
        symlink("/etc/hostname", dir.path().join("outside.txt")).unwrap();
        write(dir.path(), IGNORE_FILE, "up\nbroken.py\noutside.txt\n");
        assert!(pack_path(dir.path(), 1 << 20).is_ok());
    }

    #[test]
    fn empty_and_missing_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            pack_path(dir.path(), 100),
            Err(PackError::Empty { .. })
        ));
        write(dir.path(), "__pycache__/x.pyc", "");
        assert!(matches!(
            pack_path(dir.path(), 100),
            Err(PackError::Empty { .. })
        ));
        let missing = dir.path().join("missing");
        let error = pack_path(&missing, 100).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    #[test]
    fn names_must_be_utf8() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = project();
        let name = OsStr::from_bytes(b"bad\xffname.py");
        if std::fs::write(dir.path().join(name), "x").is_err() {
            return; // a filesystem that refuses such names cannot hold them either
        }
        assert!(matches!(
            pack_path(dir.path(), 1 << 20),
            Err(PackError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn stats_read_well() {
        let packed = PackedSource {
            archive: String::new(),
            files: 3,
            bytes: 1260,
            compressed_bytes: 812,
        };
        assert_eq!(packed.to_string(), "3 files, 1.2 KiB (812 B compressed)");
        assert_eq!(human_bytes(16 * 1024 * 1024), "16.0 MiB");
    }

    #[test]
    fn long_paths_survive() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}.py", "d".repeat(120), "m".repeat(120));
        write(dir.path(), &long, "X = 1\n");
        assert_eq!(paths(&pack_path(dir.path(), 1 << 20).unwrap()), [long]);
    }
}
