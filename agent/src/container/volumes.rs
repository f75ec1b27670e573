//! Kubernetes volumes without a file system shared with the host, as Kata's agent serves
//! confidential pods: files the host copies in (`CopyFile`: ConfigMaps, Secrets, service
//! account tokens, /etc/hosts, resolv.conf) under Kata's shared-containers directory, and
//! `emptyDir` volumes as storages of a container (`ephemeral`: a guest tmpfs; `local`: a
//! directory), both sandbox-wide so every container of the pod sees the same one.

use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::bundle::{EPHEMERAL_PREFIX, SHARED_PREFIX};
use super::paths::relative_inside;
use super::{sys, ContainerError};
use crate::protocols::agent::{CopyFileRequest, Storage};

/// Largest file CopyFile builds.
pub const MAX_COPY_FILE: i64 = 64 << 20;
/// Largest chunk one CopyFile request carries.
pub const MAX_COPY_CHUNK: usize = 4 << 20;
/// Storage drivers that are volumes rather than image layers.
pub const VOLUME_DRIVERS: &[&str] = &["ephemeral", "local"];

fn bad_path(what: &'static str, path: &str) -> ContainerError {
    ContainerError::InvalidPath {
        what,
        path: path.to_string(),
    }
}

/// `path` (below `prefix`) as a path below `dir`, refusing traversal and the prefix itself.
fn below(
    prefix: &str,
    dir: &Path,
    path: &str,
    what: &'static str,
) -> Result<PathBuf, ContainerError> {
    let rest = path
        .strip_prefix(prefix)
        .ok_or_else(|| bad_path(what, path))?;
    let rel = relative_inside(what, &format!("/{rest}"))?;
    if rel.as_os_str().is_empty() {
        return Err(bad_path(what, path));
    }
    Ok(dir.join(rel))
}

/// Creates the directories from `base` down to `dir` with `mode`, refusing any existing
/// component that is not a real directory (a symlink the host made earlier could point out).
fn make_dirs(base: &Path, dir: &Path, mode: u32) -> Result<(), ContainerError> {
    let rel = dir
        .strip_prefix(base)
        .map_err(|_| bad_path("directory", &dir.display().to_string()))?;
    let mut cur = base.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad_path(
                    "directory (exists and is not a directory)",
                    &cur.display().to_string(),
                ))
            }
            Err(_) => std::fs::DirBuilder::new()
                .mode(mode)
                .create(&cur)
                .map_err(|e| ContainerError::io("creating", &cur, e))?,
        }
    }
    Ok(())
}

/// CopyFile: one chunk of a file (or a directory, or a symlink, by `file_mode`'s type bits)
/// below Kata's `/run/kata-containers/shared/containers/`, kept in `shared_dir`. Chunks come
/// in order; the file replaces the old one atomically once `file_size` bytes have arrived, so
/// a container bound to its directory sees either the old or the new file.
pub fn copy_file(shared_dir: &Path, req: &CopyFileRequest) -> Result<(), ContainerError> {
    let target = below(SHARED_PREFIX, shared_dir, &req.path, "CopyFile path")?;
    if req.data.len() > MAX_COPY_CHUNK {
        return Err(ContainerError::WriteTooLarge {
            len: req.data.len(),
            max: MAX_COPY_CHUNK,
        });
    }
    if !(0..=MAX_COPY_FILE).contains(&req.file_size)
        || req.offset < 0
        || req.offset.saturating_add(req.data.len() as i64) > req.file_size
    {
        return Err(ContainerError::InvalidSpec(format!(
            "CopyFile {}: offset {} + {} bytes outside a file of {} bytes (at most {MAX_COPY_FILE})",
            req.path,
            req.offset,
            req.data.len(),
            req.file_size
        )));
    }
    let parent = target.parent().unwrap_or(shared_dir);
    std::fs::create_dir_all(shared_dir)
        .map_err(|e| ContainerError::io("creating", shared_dir, e))?;
    let dir_mode = if req.dir_mode == 0 {
        0o755
    } else {
        req.dir_mode & 0o7777
    };
    make_dirs(shared_dir, parent, dir_mode)?;
    let name = target
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.veil-copy"));
    match req.file_mode & libc::S_IFMT {
        libc::S_IFDIR => return make_dirs(shared_dir, &target, req.file_mode & 0o7777),
        libc::S_IFLNK => {
            let link = String::from_utf8(req.data.clone())
                .map_err(|_| bad_path("CopyFile symlink target (not UTF-8)", &req.path))?;
            if link.is_empty()
                || link.starts_with('/')
                || link.contains('\0')
                || Path::new(&link)
                    .components()
                    .any(|c| matches!(c, Component::ParentDir))
            {
                return Err(bad_path(
                    "CopyFile symlink target (must stay inside its directory)",
                    &link,
                ));
            }
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&link, &tmp)
                .map_err(|e| ContainerError::io("linking", &tmp, e))?;
            return std::fs::rename(&tmp, &target)
                .map_err(|e| ContainerError::io("renaming", &target, e));
        }
        0 | libc::S_IFREG => {}
        other => {
            return Err(ContainerError::Unsupported(format!(
                "CopyFile {}: file type {other:o}",
                req.path
            )))
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(req.offset == 0)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| ContainerError::io("opening", &tmp, e))?;
    let have = file
        .metadata()
        .map_err(|e| ContainerError::io("stat", &tmp, e))?
        .len();
    if have != req.offset as u64 {
        return Err(ContainerError::InvalidSpec(format!(
            "CopyFile {}: chunk at offset {}, but {have} bytes arrived so far",
            req.path, req.offset
        )));
    }
    file.write_all_at(&req.data, req.offset as u64)
        .map_err(|e| ContainerError::io("writing", &tmp, e))?;
    if req.offset + req.data.len() as i64 == req.file_size {
        let mode = if req.file_mode & 0o7777 == 0 {
            0o644
        } else {
            req.file_mode & 0o7777
        };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| ContainerError::io("chmod", &tmp, e))?;
        std::os::unix::fs::fchown(&file, Some(req.uid as u32), Some(req.gid as u32))
            .map_err(|e| ContainerError::io("chown", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &target).map_err(|e| ContainerError::io("renaming", &target, e))?;
    }
    Ok(())
}

/// An `emptyDir` storage: `ephemeral` is a tmpfs at a mount point below Kata's
/// `/run/kata-containers/sandbox/ephemeral/`, `local` a directory below the shared-containers
/// directory. Made once per sandbox; a second container naming it shares it.
pub fn prepare_volume(
    storage: &Storage,
    shared_dir: &Path,
    ephemeral_dir: &Path,
) -> Result<(), ContainerError> {
    match storage.driver.as_str() {
        "ephemeral" => {
            let dir = below(
                EPHEMERAL_PREFIX,
                ephemeral_dir,
                &storage.mount_point,
                "ephemeral storage mount point",
            )?;
            if storage.fstype != "tmpfs" {
                return Err(ContainerError::Unsupported(format!(
                    "ephemeral storage file system {:?} (only tmpfs)",
                    storage.fstype
                )));
            }
            make_dirs(ephemeral_dir, &dir, 0o755)?;
            if is_mount_point(&dir) {
                return Ok(());
            }
            let mut data = Vec::new();
            for opt in &storage.options {
                let ok = opt.starts_with("size=")
                    || opt.starts_with("mode=")
                    || opt.starts_with("nr_inodes=");
                if !ok || opt.contains(',') || opt.contains('\0') {
                    return Err(ContainerError::Unsupported(format!(
                        "ephemeral storage option {opt:?}"
                    )));
                }
                data.push(opt.as_str());
            }
            let c = |s: &str| std::ffi::CString::new(s).map_err(|_| bad_path("mount option", s));
            let target = sys::cstr(&dir).map_err(|e| ContainerError::io("naming", &dir, e))?;
            sys::mount(
                &c("tmpfs")?,
                &target,
                &c("tmpfs")?,
                libc::MS_NODEV | libc::MS_NOSUID,
                Some(&c(&data.join(","))?),
            )
            .map_err(|e| ContainerError::Mount {
                what: format!("tmpfs on {}", dir.display()),
                source: e,
            })
        }
        "local" => {
            let dir = below(
                SHARED_PREFIX,
                shared_dir,
                &storage.mount_point,
                "local storage mount point",
            )?;
            make_dirs(shared_dir, &dir, 0o777)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| ContainerError::io("chmod", &dir, e))
        }
        other => Err(ContainerError::Unsupported(format!(
            "volume driver {other:?}"
        ))),
    }
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts every ephemeral volume (DestroySandbox, agent exit).
pub fn remove_ephemeral(ephemeral_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(ephemeral_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_mount_point(&path) {
            if let Err(e) = sys::umount(&path, libc::MNT_DETACH) {
                tracing::warn!(path = %path.display(), error = %e, "ephemeral volume not unmounted");
            }
        }
        let _ = std::fs::remove_dir(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, data: &[u8], size: i64, offset: i64) -> CopyFileRequest {
        CopyFileRequest {
            path: path.into(),
            data: data.to_vec(),
            file_size: size,
            offset,
            file_mode: 0o100644,
            ..Default::default()
        }
    }

    #[test]
    fn copy_file_builds_files_in_chunks_and_replaces_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = format!("{SHARED_PREFIX}pod-cm/config/key");
        copy_file(dir.path(), &req(&path, b"hel", 5, 0)).unwrap();
        let target = dir.path().join("pod-cm/config/key");
        assert!(!target.exists(), "not in place before the last chunk");
        copy_file(dir.path(), &req(&path, b"lo", 5, 3)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        // An out-of-order chunk is refused.
        copy_file(dir.path(), &req(&path, b"ab", 4, 0)).unwrap();
        assert!(copy_file(dir.path(), &req(&path, b"cd", 4, 3)).is_err());
    }

    #[test]
    fn copy_file_refuses_paths_outside_the_shared_directory_and_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for path in [
            "/etc/passwd".to_string(),
            format!("{SHARED_PREFIX}../x"),
            format!("{SHARED_PREFIX}a/../../x"),
            SHARED_PREFIX.to_string(),
        ] {
            assert!(
                copy_file(dir.path(), &req(&path, b"x", 1, 0)).is_err(),
                "{path}"
            );
        }
        let path = format!("{SHARED_PREFIX}f");
        assert!(copy_file(dir.path(), &req(&path, b"xx", 1, 0)).is_err());
        assert!(copy_file(dir.path(), &req(&path, b"x", -1, 0)).is_err());
        assert!(copy_file(dir.path(), &req(&path, b"x", 2, -1)).is_err());
        let mut link = req(&format!("{SHARED_PREFIX}l"), b"../../etc", 9, 0);
        link.file_mode = libc::S_IFLNK | 0o777;
        assert!(copy_file(dir.path(), &link).is_err());
    }
}
