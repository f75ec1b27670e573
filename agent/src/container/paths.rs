//! Validation of ids and paths that come from the host (untrusted).

use std::path::{Component, Path, PathBuf};

use super::ContainerError;

/// Longest container or exec id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Container and exec ids become directory and cgroup names: `[A-Za-z0-9][A-Za-z0-9_.-]*`,
/// at most [`MAX_ID_LEN`] bytes, never `.` or `..`.
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId {
            kind,
            id: id.chars().take(MAX_ID_LEN).collect(),
        })
    }
}

/// An absolute path with no `.`/`..` components and no NUL, e.g. a mount destination inside
/// the container. Returns it relative to `/`, ready to join onto a root directory.
pub fn relative_inside(what: &'static str, path: &str) -> Result<PathBuf, ContainerError> {
    let bad = || ContainerError::InvalidPath {
        what,
        path: path.to_string(),
    };
    if path.contains('\0') || !path.starts_with('/') || path.len() > 4096 {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    // `Path::components` folds `a/./b`; reject textual `.` segments too, to keep one spelling.
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_usual_names_and_refuse_traversal() {
        validate_id("container", "abc-1.2_x").unwrap();
        for bad in ["", "..", ".", "a/b", "-x", "a\0b", &"a".repeat(129)] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_must_be_absolute_and_normal() {
        assert_eq!(
            relative_inside("mount", "/proc").unwrap(),
            PathBuf::from("proc")
        );
        assert_eq!(relative_inside("mount", "/").unwrap(), PathBuf::new());
        for bad in ["proc", "/a/../b", "/a/./b", "/..", "/a\0"] {
            let err = relative_inside("mount destination", bad).unwrap_err();
            assert!(err.to_string().contains("mount destination"), "{err}");
        }
    }
}
