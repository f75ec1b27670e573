//! Undoing what a sandbox left on the host: mounts, cgroups, loop devices, directories.
//! Every step is best effort and logged, so one stuck resource does not keep the others.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Detaches the mount at `path` (lazily, so busy mounts cannot block teardown).
pub fn unmount(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) with a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        tracing::warn!(path = %path.display(), error = %err, "unmount failed");
    }
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Unmounts everything under `dir`, then removes it.
pub fn remove_tree(dir: &Path) {
    for m in mounts_under(dir) {
        unmount(&m);
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing directory failed");
        }
    }
}

/// Detaches a loop device.
pub fn detach_loop(device: &str) {
    let status = Command::new(crate::rootfs::tool("losetup"))
        .args(["-d", device])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::warn!(device, ?status, "losetup -d failed");
    }
}

/// Kills every process in cgroup `dir` and its descendants, then removes the cgroups.
pub fn kill_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // cgroup.kill (Linux 5.14) signals the whole subtree at once, including processes
    // forked while it runs.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in cgroup_pids(dir) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Killed processes leave their cgroup once the kernel has reaped them; rmdir succeeds
    // only then, so retry (bounded) until the tree is gone.
    for _ in 0..500 {
        if remove_cgroup_tree(dir) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(cgroup = %dir.display(), "cgroup still busy after kill");
}

/// Every pid in `dir`'s subtree.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Removes the cgroup tree bottom-up; true when `dir` is gone.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn remove_tree_removes_plain_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("x/y");
        std::fs::create_dir_all(&sub).unwrap();
        remove_tree(&dir.path().join("x"));
        assert!(!dir.path().join("x").exists());
    }
}
