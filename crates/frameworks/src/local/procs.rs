//! Process-tree helpers over `/proc` (Linux): finding every descendant of a process, whatever
//! session or process group it moved to, and checking whether a recorded pid is still the
//! process we think it is.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// One row of the process table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
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
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
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

/// The command line of `pid` (NUL-separated arguments), if it is a live (non-zombie) process.
fn live_cmdline(pid: i32) -> Option<Vec<u8>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if parse_stat(pid, &stat).is_none_or(|info| info.zombie) {
        return None;
    }
    fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Whether `pid` is the live supervisor of `attempt_dir`: its command line names the folder
/// (`supervise <folder>`), or it is a standby (`supervise -`) that was handed the folder, and
/// so made it its working directory. How a recorded supervisor pid is told apart from an
/// unrelated process that reused the number.
pub(crate) fn is_supervisor_of(pid: i32, attempt_dir: &Path) -> bool {
    let Some(cmdline) = live_cmdline(pid) else {
        return false;
    };
    let folder = attempt_dir.as_os_str().as_encoded_bytes();
    let mut args = cmdline
        .split(|b| *b == 0)
        .rev()
        .skip_while(|arg| arg.is_empty());
    match (args.next(), args.next()) {
        (Some(last), _) if last == folder => true,
        (Some(last), Some(verb))
            if last == super::STANDBY_ARG.as_bytes() && verb == b"supervise" =>
        {
            match (
                fs::read_link(format!("/proc/{pid}/cwd")),
                fs::canonicalize(attempt_dir),
            ) {
                (Ok(cwd), Ok(dir)) => cwd == dir,
                _ => false,
            }
        }
        _ => false,
    }
}

/// The first live supervisor of `attempt_dir` ([`is_supervisor_of`]): finds one whose
/// `supervisor.pid` was never written (the server died right after spawning it).
pub(crate) fn find_supervisor_of(attempt_dir: &Path) -> Option<i32> {
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| is_supervisor_of(*pid, attempt_dir))
}

/// Whether `pid` is a live process whose environment holds exactly `variable` (`NAME=value`):
/// how a job's recorded pid is told apart from a reused one (every job carries its own
/// `RUNPLANE_OUTPUTS`).
pub(crate) fn is_live_with_env(pid: i32, variable: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if parse_stat(pid, &stat).is_none_or(|info| info.zombie) {
        return false;
    }
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var == variable.as_bytes())
    })
}

/// A pidfd for `pid`: a handle on that very process, which no later process reusing the number
/// can be mistaken for. It polls readable once the process has exited, which lets a server
/// wait for a supervisor it is not the parent of.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned a bad fd"))?;
    // SAFETY: the kernel just handed us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind a pidfd (never to a process that reused its pid).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, a null siginfo (allowed: kill-like semantics) and no
    // flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` was created after this machine booted (by its birth time, a second of
/// margin for /proc/stat's rounding); false when either is unknown.
pub(crate) fn created_since_boot(path: &Path) -> bool {
    let boot = fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|secs| secs.trim().parse::<u64>().ok())
    });
    let created = fs::metadata(path).and_then(|meta| meta.created()).ok();
    match (boot, created) {
        (Some(boot), Some(created)) => created
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|since_epoch| since_epoch.as_secs() > boot + 1),
        _ => false,
    }
}

/// This machine's boot id (a new one at every boot), when the kernel tells. Read once: it
/// cannot change while this process lives, and every start records it.
pub(crate) fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let id = id.trim();
            (!id.is_empty()).then(|| id.to_string())
        })
        .as_deref()
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
                pgrp: 42,
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
                pgrp: 10,
                zombie: false,
            },
            ProcInfo {
                pid: 11,
                ppid: 10,
                pgrp: 11,
                zombie: false,
            },
            ProcInfo {
                pid: 12,
                ppid: 11,
                pgrp: 12,
                zombie: true,
            },
            ProcInfo {
                pid: 13,
                ppid: 12,
                pgrp: 13,
                zombie: false,
            },
            ProcInfo {
                pid: 20,
                ppid: 1,
                pgrp: 20,
                zombie: false,
            },
        ];
        let mut pids: Vec<i32> = descendants_in(&table, 10).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![11, 12, 13]);
        assert!(descendants_in(&table, 20).is_empty());
    }

    #[test]
    fn supervisors_are_told_by_their_folder_argument_or_their_standby_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (mine, other) = (tmp.path().join("mine"), tmp.path().join("other"));
        for dir in [&mine, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        // `sh -c SCRIPT ARG0 ARGS...`: the shell's own command line ends with ARGS (two
        // commands, so that no shell replaces itself with the last one).
        let spawn = |args: &[&std::ffi::OsStr], cwd: &Path| {
            std::process::Command::new("sh")
                .args(["-c", "sleep 30; :", "sh"])
                .args(args)
                .current_dir(cwd)
                .spawn()
                .unwrap()
        };
        let mut named = spawn(&["supervise".as_ref(), mine.as_os_str()], &other);
        let mut standby = spawn(&["supervise".as_ref(), "-".as_ref()], &mine);
        let mut stranger = spawn(&["-".as_ref()], &mine);
        let pid = |child: &std::process::Child| child.id() as i32;
        assert!(is_supervisor_of(pid(&named), &mine));
        assert!(!is_supervisor_of(pid(&named), &other));
        assert!(is_supervisor_of(pid(&standby), &mine));
        assert!(!is_supervisor_of(pid(&standby), &other));
        assert!(!is_supervisor_of(pid(&stranger), &mine));
        assert_eq!(find_supervisor_of(&other), None);
        for child in [&mut named, &mut standby, &mut stranger] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert!(
            !is_supervisor_of(pid(&standby), &mine),
            "not once it is gone"
        );
    }

    #[test]
    fn pidfds_signal_the_process_they_were_opened_for() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        use std::os::fd::AsFd;
        pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd now names nothing, and signalling it fails instead of hitting a
        // process that reused the pid.
        assert!(pidfd_send_signal(pidfd.as_fd(), libc::SIGTERM).is_err());
        assert!(pidfd_open(i32::MAX).is_err());
    }
}
