//! Process-tree helpers over `/proc` (Linux): finding every descendant of a process, whatever
//! session or process group it moved to, and checking whether a recorded pid is still the
//! process we think it is.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

/// One row of the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// Exited but not yet reaped by its parent.
    pub zombie: bool,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid ...`, where `comm` may itself contain
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(pid: i32, stat: &str) -> Option<ProcInfo> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process visible in `/proc`. Processes vanish while we read; those are skipped.
pub(crate) fn process_table() -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// The processes whose parent chain leads to `root` (not `root` itself), zombies included.
///
/// For a child subreaper this is exactly "everything the job started that is still around":
/// orphans re-parent to the subreaper, so double-forked daemons in their own sessions are
/// found too.
pub(crate) fn descendants(root: i32) -> Vec<ProcInfo> {
    descendants_in(&process_table(), root)
}

fn descendants_in(table: &[ProcInfo], root: i32) -> Vec<ProcInfo> {
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for info in table {
        children.entry(info.ppid).or_default().push(info);
    }
    let mut found = Vec::new();
    let mut seen = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child.pid) {
                found.push(**child);
                stack.push(child.pid);
            }
        }
    }
    found
}

/// Whether `pid` is a live (non-zombie) process whose command line mentions `needle` — how a
/// recorded supervisor pid is told apart from an unrelated process that reused the number.
pub(crate) fn is_live_with_arg(pid: i32, needle: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if parse_stat(pid, &stat).is_none_or(|info| info.zombie) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = needle.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let info = parse_stat(42, "42 (a) b (c)) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            info,
            ProcInfo {
                pid: 42,
                ppid: 7,
                zombie: false
            }
        );
        let info = parse_stat(43, "43 (sleep) Z 1 43 43").unwrap();
        assert!(info.zombie);
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn descendants_follow_the_whole_chain() {
        let table = [
            ProcInfo {
                pid: 10,
                ppid: 1,
                zombie: false,
            },
            ProcInfo {
                pid: 11,
                ppid: 10,
                zombie: false,
            },
            ProcInfo {
                pid: 12,
                ppid: 11,
                zombie: true,
            },
            ProcInfo {
                pid: 13,
                ppid: 12,
                zombie: false,
            },
            ProcInfo {
                pid: 20,
                ppid: 1,
                zombie: false,
            },
        ];
        let mut pids: Vec<i32> = descendants_in(&table, 10).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![11, 12, 13]);
        assert!(descendants_in(&table, 20).is_empty());
    }

    #[test]
    fn this_process_is_live_with_its_own_program() {
        let me = std::process::id() as i32;
        let exe = std::env::args().next().unwrap();
        assert!(is_live_with_arg(me, Path::new(&exe)));
        assert!(!is_live_with_arg(
            me,
            Path::new("/definitely/not/an/argument")
        ));
    }
}
