//! Whether a container was killed for going past its memory limit.
//!
//! The engine's `State.OOMKilled` is the first witness, but Podman with runc on a cgroup v1
//! host whose engine runs in a nested cgroup never sets it (conmon cannot watch the memory
//! cgroup's OOM events there), although the kernel enforces the limit and kills the process.
//! The kernel's own log is the second witness: its `oom-kill:` line names the memory cgroup,
//! and the engine's cgroup names carry the container's full id. It is only readable when the
//! engine runs on this kernel (a local socket), and only consulted for a container that died
//! of SIGKILL.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;

/// Whether the kernel's log tells of an OOM kill in the memory cgroup of `container_id`.
pub fn kernel_killed(container_id: &str) -> bool {
    // A short id could match another container's; the engine hands out 64 hex digits.
    if container_id.len() < 32 {
        return false;
    }
    let Ok(mut kmsg) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    // One record per read, from the oldest one still in the ring buffer, until EAGAIN.
    let mut record = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if is_oom_kill_of(&record[..n], container_id) {
                    return true;
                }
            }
            // Records overwritten while reading: go on with the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// `6,1234,567,-;oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/.../libpod-<id>,...`
fn is_oom_kill_of(record: &[u8], container_id: &str) -> bool {
    let text = String::from_utf8_lossy(record);
    let Some(message) = text.split_once(';').map(|(_, message)| message) else {
        return false;
    };
    message.starts_with("oom-kill:")
        && message
            .split(',')
            .filter_map(|field| field.strip_prefix("oom_memcg="))
            .any(|memcg| memcg.contains(container_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_oom_kill_in_the_containers_cgroup_counts() {
        let id = "bf8fe215c18ac75c676817df75462f18c78cf781afec8fc71b763d931f8a6e8e";
        let line = format!(
            "6,812,20331804771,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=libpod-{id},mems_allowed=0,oom_memcg=/libpod_parent/libpod-{id},task_memcg=/libpod_parent/libpod-{id},task=python3,pid=15806,uid=0"
        );
        assert!(is_oom_kill_of(line.as_bytes(), id));
        let other = id.replace('b', "c");
        assert!(!is_oom_kill_of(line.as_bytes(), &other));
        let unrelated = format!("6,813,1,-;Memory cgroup out of memory: libpod-{id}");
        assert!(!is_oom_kill_of(unrelated.as_bytes(), id));
        assert!(!kernel_killed("short"));
    }
}
