//! Small state files of an attempt folder: replaced atomically, made durable apart, read
//! back leniently; and io errors as people read them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The temporary `write_atomically` writes `name` under before renaming it (the local
/// framework's spare attempt folders make it in advance).
pub(crate) fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Replaces `dir/name` with `contents` so that a crash of any process leaves readers the old
/// file or the new one, never a part: temp file, rename. Nothing is forced to disk: what must
/// outlive a crash of the machine is made durable apart ([`make_durable`]).
pub(crate) fn write_atomically(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> io::Result<()> {
    let temp = dir.join(temporary_name(name));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        fs::rename(&temp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Makes `dir/name`, written by [`write_atomically`], outlive a crash of the machine: fsync of
/// the file, then of the folder naming it. Until then a machine crash may leave the file
/// missing or empty, which every reader takes as no file.
pub(crate) fn make_durable(dir: &Path, name: &str) -> io::Result<()> {
    File::open(dir.join(name))?.sync_all()?;
    File::open(dir)?.sync_all()
}

/// Reads a small JSON file of the attempt folder; `None` when it is missing or unreadable.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// An io error's text without Rust's " (os error N)" suffix, for messages people read.
pub(crate) fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
