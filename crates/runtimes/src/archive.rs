//! Packed sources (`source.archive`): the base64 of a gzip'd tar of a file or directory, as the
//! CLI makes it. Unpacked in memory only, and distrusted: the archive comes from a client, and
//! its files are later written into a run's working directory, so every entry must be a plain
//! file or directory with a relative path that stays inside, and the whole must stay small.
//!
//! The [`digest`] of a source is computed over its files (sorted path, mode, size, bytes), never
//! over the archive's bytes: tar headers carry timestamps and owners, and the same files packed
//! twice must make the same function version.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::rc::Rc;

/// Most entries (files, directories, headers) an archive may hold.
pub(crate) const MAX_ENTRIES: usize = 10_000;
/// What a compressed archive may weigh beyond the source's own limit (tar and gzip framing).
const COMPRESSED_SLACK: usize = 1024 * 1024;
/// Tar framing allowed per entry beyond the files' bytes: a header, a long-name or PAX header
/// with its data, and padding.
const FRAMING_PER_ENTRY: u64 = 4 * 512;

/// One file of a function's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    /// Relative, `/`-separated, without `.` or `..` components.
    pub path: String,
    /// `0o755` when the packed file was executable by anyone, else `0o644`: only the executable
    /// bit means something in a run's working directory, and keeping the rest would make the
    /// same files packed under two umasks two different versions.
    pub mode: u32,
    pub contents: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("is not valid base64: {0}")]
    Base64(String),
    #[error("is not gzip data (a packed source is a gzip'd tar, as `runplane apply` makes it)")]
    NotGzip,
    #[error("is {size} bytes compressed, more than a source of at most {max} bytes can need")]
    CompressedTooLarge { size: usize, max: usize },
    #[error("unpacks to more than {max} bytes, the limit of a function's source")]
    TooLarge { max: usize },
    #[error("has more than {max} entries")]
    TooManyEntries { max: usize },
    #[error("entry {path:?} {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("entry {path:?} is a {kind}; only regular files and directories can be packed")]
    Unsupported { path: String, kind: &'static str },
    #[error("entry {path:?} appears twice")]
    Duplicate { path: String },
    #[error("{path:?} is both a file and a directory")]
    FileAndDirectory { path: String },
    #[error("is not a readable tar archive: {0}")]
    Tar(String),
    #[error("contains no files")]
    Empty,
}

/// Removes the whitespace a YAML block scalar may add to a long base64 string.
pub(crate) fn clean_base64(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(text.chars().filter(|c| !c.is_ascii_whitespace()).collect())
    } else {
        Cow::Borrowed(text)
    }
}

/// Decodes and unpacks a packed source into its files, sorted by path.
pub(crate) fn unpack(
    archive: &str,
    max_source_bytes: usize,
) -> Result<Vec<SourceFile>, ArchiveError> {
    let archive = clean_base64(archive);
    let max_compressed = max_source_bytes.saturating_add(COMPRESSED_SLACK);
    // Base64 carries 3 bytes in 4 characters: refuse before allocating for an oversized one.
    if archive.len() / 4 * 3 > max_compressed.saturating_add(3) {
        return Err(ArchiveError::CompressedTooLarge {
            size: archive.len() / 4 * 3,
            max: max_compressed,
        });
    }
    let compressed = STANDARD
        .decode(archive.as_bytes())
        .map_err(|error| ArchiveError::Base64(error.to_string()))?;
    if compressed.len() > max_compressed {
        return Err(ArchiveError::CompressedTooLarge {
            size: compressed.len(),
            max: max_compressed,
        });
    }
    if !compressed.starts_with(&[0x1f, 0x8b]) {
        return Err(ArchiveError::NotGzip);
    }
    unpack_tar(GzDecoder::new(compressed.as_slice()), max_source_bytes)
}

/// Reads a tar stream, stopping as soon as it holds more than the source limit allows; `limit`
/// also bounds what the tar reader buffers for extension headers of a hostile archive.
fn unpack_tar(stream: impl Read, max_source_bytes: usize) -> Result<Vec<SourceFile>, ArchiveError> {
    let exceeded = Rc::new(Cell::new(false));
    let limit = (max_source_bytes as u64)
        .saturating_add(FRAMING_PER_ENTRY.saturating_mul(MAX_ENTRIES as u64))
        .saturating_add(COMPRESSED_SLACK as u64);
    let limited = LimitedRead {
        inner: stream,
        remaining: limit,
        exceeded: exceeded.clone(),
    };
    let too_large = ArchiveError::TooLarge {
        max: max_source_bytes,
    };
    let tar_error = |error: io::Error| {
        if exceeded.get() {
            too_large.clone()
        } else {
            ArchiveError::Tar(error.to_string())
        }
    };

    let mut archive = tar::Archive::new(limited);
    let mut files: BTreeMap<String, SourceFile> = BTreeMap::new();
    let mut directories: Vec<String> = Vec::new();
    let mut total: u64 = 0;
    let mut count = 0usize;
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries { max: MAX_ENTRIES });
        }
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_type = entry.header().entry_type();
        let kind = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Directory,
            // `git archive` writes one, holding the commit id: nothing to unpack.
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Symlink => return Err(unsupported(raw_path, "symbolic link")),
            tar::EntryType::Link => return Err(unsupported(raw_path, "hard link")),
            tar::EntryType::Char => return Err(unsupported(raw_path, "character device")),
            tar::EntryType::Block => return Err(unsupported(raw_path, "block device")),
            tar::EntryType::Fifo => return Err(unsupported(raw_path, "named pipe")),
            _ => return Err(unsupported(raw_path, "special tar entry")),
        };
        if std::str::from_utf8(&entry.path_bytes()).is_err() {
            return Err(ArchiveError::UnsafePath {
                path: raw_path,
                why: "is not a UTF-8 path",
            });
        }
        let path = normalize_path(&raw_path)?;
        match kind {
            Kind::Directory => {
                if !path.is_empty() {
                    directories.push(path);
                }
            }
            Kind::File => {
                if path.is_empty() {
                    return Err(ArchiveError::UnsafePath {
                        path: raw_path,
                        why: "has an empty path",
                    });
                }
                let size = entry.size();
                total = total.saturating_add(size);
                if total > max_source_bytes as u64 {
                    return Err(too_large);
                }
                let mode = match entry.header().mode() {
                    Ok(mode) if mode & 0o111 != 0 => 0o755,
                    _ => 0o644,
                };
                // `size` is bounded by the check above, so this allocation is too.
                let mut contents = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                entry.read_to_end(&mut contents).map_err(tar_error)?;
                if files.contains_key(&path) {
                    return Err(ArchiveError::Duplicate { path });
                }
                files.insert(
                    path.clone(),
                    SourceFile {
                        path,
                        mode,
                        contents,
                    },
                );
            }
        }
    }
    if files.is_empty() {
        return Err(ArchiveError::Empty);
    }
    check_no_file_is_a_directory(&files, &directories)?;
    Ok(files.into_values().collect())
}

enum Kind {
    File,
    Directory,
}

fn unsupported(path: String, kind: &'static str) -> ArchiveError {
    ArchiveError::Unsupported { path, kind }
}

/// `./a//b/./c.py` → `a/b/c.py`; absolute paths and `..` are refused (an entry must land inside
/// the run's source folder whatever writes it).
fn normalize_path(raw: &str) -> Result<String, ArchiveError> {
    let unsafe_path = |why| ArchiveError::UnsafePath {
        path: raw.to_string(),
        why,
    };
    if raw.starts_with('/') {
        return Err(unsafe_path("is an absolute path"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_path("leaves the source folder (`..`)")),
            part if part.contains('\0') => return Err(unsafe_path("contains a NUL character")),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// A path cannot be a file and also the parent of another entry.
fn check_no_file_is_a_directory(
    files: &BTreeMap<String, SourceFile>,
    directories: &[String],
) -> Result<(), ArchiveError> {
    let parents_of = |path: &str| -> Vec<String> {
        let mut parents = Vec::new();
        let mut rest = path;
        while let Some((parent, _)) = rest.rsplit_once('/') {
            parents.push(parent.to_string());
            rest = parent;
        }
        parents
    };
    for path in files.keys().chain(directories.iter()) {
        if let Some(parent) = parents_of(path)
            .into_iter()
            .find(|parent| files.contains_key(parent))
        {
            return Err(ArchiveError::FileAndDirectory { path: parent });
        }
    }
    if let Some(directory) = directories.iter().find(|d| files.contains_key(*d)) {
        return Err(ArchiveError::FileAndDirectory {
            path: directory.clone(),
        });
    }
    Ok(())
}

/// `sha256:<hex>` over the files sorted by path, each as (path, mode, size, bytes) with lengths
/// written out, so that no two different sources feed the hash the same bytes.
pub(crate) fn digest(files: &[SourceFile]) -> String {
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = Sha256::new();
    for file in sorted {
        hasher.update((file.path.len() as u64).to_be_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update((file.mode & 0o777).to_be_bytes());
        hasher.update((file.contents.len() as u64).to_be_bytes());
        hasher.update(&file.contents);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// A reader that fails once more than `remaining` bytes were asked of it, and says so.
struct LimitedRead<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for LimitedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Only an error if there is more to read.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other(
                        "the archive unpacks to more than the limit",
                    ))
                }
            };
        }
        let wanted = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..wanted])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    /// One entry of a test archive.
    pub(crate) enum Item<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// Writes header fields without the tar crate's path checks, as a hostile client could.
    fn set_raw_path(header: &mut tar::Header, path: &str) {
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
    }

    pub(crate) fn tar_gz(items: &[Item<'_>], mtime: u64) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(mtime);
            header.set_uid(mtime);
            let (path, data): (&str, &[u8]) = match item {
                Item::File(path, mode, data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    (path, data)
                }
                Item::Dir(path) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    (path, &[])
                }
                Item::Symlink(path, target) | Item::HardLink(path, target) => {
                    let kind = if matches!(item, Item::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    header.set_entry_type(kind);
                    header.set_size(0);
                    header.set_link_name(target).unwrap();
                    (path, &[])
                }
                Item::Fifo(path) => {
                    header.set_entry_type(tar::EntryType::Fifo);
                    header.set_size(0);
                    (path, &[])
                }
            };
            set_raw_path(&mut header, path);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    pub(crate) fn b64(items: &[Item<'_>]) -> String {
        STANDARD.encode(tar_gz(items, 0))
    }

    #[test]
    fn unpacks_files_sorted_and_normalized() {
        let files = unpack(
            &b64(&[
                Item::Dir("./pkg/"),
                Item::File("./pkg/mod.py", 0o664, b"x = 1\n"),
                Item::File("main.py", 0o775, b"def handler(): pass\n"),
                Item::File("pkg//./data.txt", 0o600, b"data"),
            ]),
            1000,
        )
        .unwrap();
        let summary: Vec<(&str, u32)> = files.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(
            summary,
            [
                ("main.py", 0o755),
                ("pkg/data.txt", 0o644),
                ("pkg/mod.py", 0o644)
            ]
        );
        assert_eq!(files[2].contents, b"x = 1\n");
    }

    #[test]
    fn refuses_paths_that_leave_the_folder() {
        for path in [
            "../x.py",
            "a/../../x.py",
            "a/../b.py",
            "/etc/passwd",
            "/x.py",
        ] {
            let error = unpack(&b64(&[Item::File(path, 0o644, b"x")]), 1000).unwrap_err();
            assert!(
                matches!(error, ArchiveError::UnsafePath { .. }),
                "{path}: {error}"
            );
            assert!(error.to_string().contains(path), "{error}");
        }
    }

    #[test]
    fn refuses_links_and_devices() {
        let cases = [
            (Item::Symlink("main.py", "/etc/passwd"), "symbolic link"),
            (Item::Symlink("lib", "../outside"), "symbolic link"),
            (Item::HardLink("main.py", "other.py"), "hard link"),
            (Item::Fifo("pipe"), "named pipe"),
        ];
        for (item, kind) in cases {
            let error = unpack(&b64(&[Item::File("ok.py", 0o644, b""), item]), 1000).unwrap_err();
            assert!(error.to_string().contains(kind), "{error}");
        }
    }

    #[test]
    fn refuses_duplicates_conflicts_and_empty_archives() {
        let duplicate = unpack(
            &b64(&[
                Item::File("a.py", 0o644, b"1"),
                Item::File("./a.py", 0o644, b"2"),
            ]),
            100,
        );
        assert_eq!(
            duplicate.unwrap_err(),
            ArchiveError::Duplicate {
                path: "a.py".into()
            }
        );
        let conflict = unpack(
            &b64(&[
                Item::File("a", 0o644, b"1"),
                Item::File("a/b.py", 0o644, b"2"),
            ]),
            100,
        );
        assert_eq!(
            conflict.unwrap_err(),
            ArchiveError::FileAndDirectory { path: "a".into() }
        );
        let conflict = unpack(&b64(&[Item::File("a", 0o644, b"1"), Item::Dir("a/")]), 100);
        assert_eq!(
            conflict.unwrap_err(),
            ArchiveError::FileAndDirectory { path: "a".into() }
        );
        assert_eq!(
            unpack(&b64(&[Item::Dir("a/")]), 100).unwrap_err(),
            ArchiveError::Empty
        );
    }

    #[test]
    fn refuses_sources_over_the_limits() {
        let big = vec![b'x'; 600];
        let error = unpack(
            &b64(&[Item::File("a", 0o644, &big), Item::File("b", 0o644, &big)]),
            1000,
        )
        .unwrap_err();
        assert_eq!(error, ArchiveError::TooLarge { max: 1000 });

        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("f{i}")).collect();
        let items: Vec<Item<'_>> = names.iter().map(|n| Item::File(n, 0o644, b"")).collect();
        let error = unpack(&b64(&items), 1000).unwrap_err();
        assert_eq!(error, ArchiveError::TooManyEntries { max: MAX_ENTRIES });
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compresses to ~64 KiB; declared as one huge file.
        let size = 64 * 1024 * 1024;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        set_raw_path(&mut header, "zeros");
        header.set_cksum();
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut gz, header.as_bytes()).unwrap();
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            std::io::Write::write_all(&mut gz, &zeros).unwrap();
        }
        let archive = STANDARD.encode(gz.finish().unwrap());
        assert_eq!(
            unpack(&archive, 1000).unwrap_err(),
            ArchiveError::TooLarge { max: 1000 }
        );
    }

    #[test]
    fn refuses_what_is_not_a_packed_source() {
        assert!(matches!(
            unpack("not base64!", 100),
            Err(ArchiveError::Base64(_))
        ));
        assert_eq!(
            unpack(&STANDARD.encode(b"plain text"), 100),
            Err(ArchiveError::NotGzip)
        );
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        std::io::Write::write_all(&mut gz, &[7u8; 700]).unwrap();
        let garbage = STANDARD.encode(gz.finish().unwrap());
        assert!(
            matches!(unpack(&garbage, 100), Err(ArchiveError::Tar(_))),
            "{:?}",
            unpack(&garbage, 100)
        );
    }

    #[test]
    fn whitespace_in_the_base64_is_ignored() {
        let text = b64(&[Item::File("a.py", 0o644, b"x = 1")]);
        let wrapped: String = text
            .as_bytes()
            .chunks(20)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n  ");
        assert_eq!(unpack(&wrapped, 100).unwrap(), unpack(&text, 100).unwrap());
    }

    #[test]
    fn the_digest_ignores_order_timestamps_and_owners_but_not_content() {
        let one = tar_gz(
            &[
                Item::File("b.py", 0o644, b"b"),
                Item::File("a/c.py", 0o755, b"c"),
            ],
            1_700_000_000,
        );
        let two = tar_gz(
            &[
                Item::Dir("a"),
                Item::File("./a/c.py", 0o777, b"c"),
                Item::File("b.py", 0o600, b"b"),
            ],
            42,
        );
        assert_ne!(one, two);
        let digest_of = |bytes: &[u8]| digest(&unpack(&STANDARD.encode(bytes), 100).unwrap());
        assert_eq!(digest_of(&one), digest_of(&two));
        assert!(digest_of(&one).starts_with("sha256:"));

        let changed = tar_gz(
            &[
                Item::File("b.py", 0o644, b"B"),
                Item::File("a/c.py", 0o755, b"c"),
            ],
            0,
        );
        let not_executable = tar_gz(
            &[
                Item::File("b.py", 0o644, b"b"),
                Item::File("a/c.py", 0o644, b"c"),
            ],
            0,
        );
        let renamed = tar_gz(
            &[
                Item::File("b.py", 0o644, b"b"),
                Item::File("a/d.py", 0o755, b"c"),
            ],
            0,
        );
        for other in [changed, not_executable, renamed] {
            assert_ne!(digest_of(&one), digest_of(&other));
        }
    }

    #[test]
    fn the_digest_cannot_be_confused_by_moving_bytes_between_fields() {
        let a = [SourceFile {
            path: "ab".into(),
            mode: 0o644,
            contents: b"c".to_vec(),
        }];
        let b = [SourceFile {
            path: "a".into(),
            mode: 0o644,
            contents: b"bc".to_vec(),
        }];
        assert_ne!(digest(&a), digest(&b));
    }
}
