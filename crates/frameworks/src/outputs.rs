//! Collecting an ended execution's outputs folder (`RUNPLANE_OUTPUTS`) into
//! [`ExitOutcome::outputs`](runplane_domain::ExitOutcome::outputs): what every framework whose
//! outputs land on the server's disk hands back when a job ends.

use runplane_domain::OutputFile;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

/// The most of one output file handed back in [`ExitOutcome::outputs`]; `size` tells the rest.
pub const OUTPUT_CAP: u64 = 4 << 20;
/// The top-level regular files of the outputs folder, each read up to [`OUTPUT_CAP`]. Symlinks
/// and folders are skipped: a job must not make the server read files outside its folder.
pub(crate) fn collect_outputs(dir: &Path) -> BTreeMap<String, OutputFile> {
    let mut outputs = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the outputs folder");
            return outputs;
        }
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if !file_type.is_file() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(file = ?entry.file_name(), "skipping an output whose name is not UTF-8");
            continue;
        };
        match read_capped(&entry.path()) {
            Ok(file) => {
                outputs.insert(name, file);
            }
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot read an output file")
            }
        }
    }
    outputs
}

fn read_capped(path: &Path) -> std::io::Result<OutputFile> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: the file was a regular file when listed; refuse it if swapped for a link.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let size = file.metadata()?.len();
    let mut contents = Vec::new();
    file.take(OUTPUT_CAP).read_to_end(&mut contents)?;
    Ok(OutputFile {
        size: size.max(contents.len() as u64),
        contents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_top_level_regular_files_capped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("small.json"), b"{}").unwrap();
        fs::write(
            dir.path().join("big.bin"),
            vec![7u8; OUTPUT_CAP as usize + 10],
        )
        .unwrap();
        fs::create_dir(dir.path().join("folder")).unwrap();
        fs::write(dir.path().join("folder").join("inner"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        let outputs = collect_outputs(dir.path());
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            vec!["big.bin", "small.json"]
        );
        assert_eq!(outputs["small.json"].contents, b"{}");
        assert!(!outputs["small.json"].is_truncated());
        assert_eq!(outputs["big.bin"].contents.len() as u64, OUTPUT_CAP);
        assert_eq!(outputs["big.bin"].size, OUTPUT_CAP + 10);
        assert!(collect_outputs(&dir.path().join("missing")).is_empty());
    }
}
