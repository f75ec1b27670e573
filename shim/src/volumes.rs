//! CRI's bind mounts in a sandbox that shares no file system with the host, as Kata does for
//! confidential pods: files and directories (ConfigMaps, Secrets, service-account tokens,
//! /etc/hosts, resolv.conf) are copied into the guest with the agent's `CopyFile` and kept up
//! to date; `emptyDir` volumes and the pod's /dev/shm become guest tmpfs volumes shared by the
//! pod's containers. Every copy and mount passes the agent's policy (`CopyFileRequest`,
//! `CreateContainerRequest`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime as rt;
use veil_agent::client::AgentClient;
use veil_agent::protocols::{agent, oci};

/// Kata's guest directory for copied files.
const SHARED_PREFIX: &str = "/run/kata-containers/shared/containers/";
/// Kata's guest directory for tmpfs volumes.
const EPHEMERAL_PREFIX: &str = "/run/kata-containers/sandbox/ephemeral/";
/// Bytes per CopyFile request.
const CHUNK: usize = 1 << 20;
/// Most entries and bytes copied for one mount.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: u64 = 64 << 20;
/// How often copied directories are checked for changes.
const REFRESH: Duration = Duration::from_secs(2);

/// Errors copying a mount into the guest.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: more than {MAX_ENTRIES} entries or {MAX_BYTES} bytes to copy into the sandbox"
    )]
    TooLarge { path: String },
    #[error("CopyFile {path}: {source}")]
    Copy { path: String, source: ttrpc::Error },
}

/// One host file or directory copied into the guest at `guest` (below [`SHARED_PREFIX`]).
#[derive(Clone, Debug)]
pub struct Copy {
    pub source: PathBuf,
    pub guest: String,
}

/// What a container's bind mounts become in the guest.
#[derive(Default)]
pub struct GuestMounts {
    pub mounts: Vec<oci::Mount>,
    pub storages: Vec<agent::Storage>,
    pub copies: Vec<Copy>,
}

fn is_bind(m: &rt::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// A guest tmpfs volume named `name`, shared by every container of the sandbox naming it.
fn ephemeral(name: &str) -> (agent::Storage, String) {
    let mount_point = format!("{EPHEMERAL_PREFIX}{name}");
    let mut s = agent::Storage::new();
    s.driver = "ephemeral".into();
    s.source = "tmpfs".into();
    s.fstype = "tmpfs".into();
    s.mount_point = mount_point.clone();
    (s, mount_point)
}

/// Plans container `id`'s bind mounts: tmpfs volumes for /dev/shm and emptyDirs, copies for
/// the rest.
pub fn plan(id: &str, mounts: &[rt::Mount]) -> GuestMounts {
    let mut out = GuestMounts::default();
    for (n, m) in mounts.iter().filter(|m| is_bind(m)).enumerate() {
        let Some(source) = m.source().as_ref() else {
            continue;
        };
        let destination = m.destination().display().to_string();
        let empty_dir = source
            .to_str()
            .and_then(|s| s.split("/kubernetes.io~empty-dir/").nth(1))
            .map(|name| format!("emptydir-{}", name.replace('/', "-")));
        let guest_source = if destination == "/dev/shm" || empty_dir.is_some() {
            let (storage, mount_point) = ephemeral(empty_dir.as_deref().unwrap_or("shm"));
            out.storages.push(storage);
            mount_point
        } else {
            let mut guest = format!("{SHARED_PREFIX}{id}-{n}");
            if !source.is_dir() {
                let name = source
                    .file_name()
                    .and_then(|s| s.to_str())
                    .unwrap_or("file");
                guest = format!("{guest}/{name}");
            }
            out.copies.push(Copy {
                source: source.clone(),
                guest: guest.clone(),
            });
            guest
        };
        let mut mount = oci::Mount::new();
        mount.destination = destination;
        mount.source = guest_source;
        mount.type_ = "bind".into();
        mount.options = m.options().clone().unwrap_or_default();
        out.mounts.push(mount);
    }
    out
}

/// One entry of a copied tree: where, what kind, and what tells a change.
#[derive(PartialEq, Eq, Debug)]
struct Entry {
    rel: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i128,
    link: Option<PathBuf>,
}

/// `base/rel`, or `base` itself for the empty `rel` (no trailing slash: `base` may be a file).
fn join(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Lists `source` (a file, or a directory walked depth first), bounded.
fn scan(source: &Path) -> Result<Vec<Entry>, VolumeError> {
    let read_err = |path: &Path, source| VolumeError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let path = join(source, &rel);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| read_err(&path, e))?;
        let link = if meta.file_type().is_symlink() {
            Some(std::fs::read_link(&path).map_err(|e| read_err(&path, e))?)
        } else {
            None
        };
        if meta.is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| read_err(&path, e))?
                .filter_map(|e| e.ok().map(|e| rel.join(e.file_name())))
                .collect();
            children.sort();
            pending.extend(children.into_iter().rev());
        } else {
            bytes += meta.len();
        }
        entries.push(Entry {
            rel,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            link,
        });
        if entries.len() > MAX_ENTRIES || bytes > MAX_BYTES {
            return Err(VolumeError::TooLarge {
                path: source.display().to_string(),
            });
        }
    }
    Ok(entries)
}

/// Copies `copy` into the guest (directories, symlinks and files, in that walk order).
async fn copy_once(client: &AgentClient, copy: &Copy) -> Result<Vec<Entry>, VolumeError> {
    let entries = scan(&copy.source)?;
    for e in &entries {
        let guest = if e.rel.as_os_str().is_empty() {
            copy.guest.clone()
        } else {
            format!("{}/{}", copy.guest, e.rel.display())
        };
        let mut req = agent::CopyFileRequest::new();
        req.path = guest.clone();
        req.file_mode = e.mode;
        req.dir_mode = 0o755;
        req.uid = e.uid as i32;
        req.gid = e.gid as i32;
        let send = |req: agent::CopyFileRequest| async move {
            client
                .agent
                .copy_file(veil_agent_ctx(), &req)
                .await
                .map(|_| ())
        };
        let copy_err = |source| VolumeError::Copy {
            path: guest.clone(),
            source,
        };
        if let Some(link) = &e.link {
            if link.is_absolute() {
                tracing::info!(link = %link.display(), "absolute symlink not copied into the sandbox");
                continue;
            }
            req.data = link.as_os_str().as_encoded_bytes().to_vec();
            req.file_size = req.data.len() as i64;
            send(req).await.map_err(copy_err)?;
        } else if e.mode & libc::S_IFMT == libc::S_IFDIR {
            send(req).await.map_err(copy_err)?;
        } else {
            let path = join(&copy.source, &e.rel);
            let data = tokio::fs::read(&path)
                .await
                .map_err(|source| VolumeError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            req.file_size = data.len() as i64;
            let mut offset = 0;
            loop {
                let end = (offset + CHUNK).min(data.len());
                let mut chunk = req.clone();
                chunk.offset = offset as i64;
                chunk.data = data[offset..end].to_vec();
                send(chunk).await.map_err(copy_err)?;
                offset = end;
                if offset >= data.len() {
                    break;
                }
            }
        }
    }
    Ok(entries)
}

fn veil_agent_ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Copies every planned file into the guest, then keeps directories up to date (Kubernetes
/// updates ConfigMaps and Secrets in place) until the source goes or the sandbox does.
pub async fn copy_in(client: &AgentClient, copies: &[Copy]) -> Result<(), VolumeError> {
    for copy in copies {
        let seen = copy_once(client, copy).await?;
        if copy.source.is_dir() {
            let (client, copy) = (client.clone(), copy.clone());
            tokio::spawn(async move { keep_updated(client, copy, seen).await });
        }
    }
    Ok(())
}

async fn keep_updated(client: AgentClient, copy: Copy, mut seen: Vec<Entry>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Ok(now) = scan(&copy.source) else {
            // The source is gone (the pod's volumes are torn down): nothing left to follow.
            return;
        };
        if now == seen {
            continue;
        }
        match copy_once(&client, &copy).await {
            Ok(entries) => {
                tracing::debug!(source = %copy.source.display(), "volume update copied into the sandbox");
                seen = entries;
            }
            Err(e) => {
                tracing::info!(error = %e, "volume updates stop");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &Path, destination: &str) -> rt::Mount {
        rt::MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap()
    }

    #[test]
    fn binds_become_copies_or_shared_tmpfs_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let empty = dir.path().join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&empty).unwrap();
        let plan = plan(
            "c1",
            &[
                bind(&hosts, "/etc/hosts"),
                bind(dir.path(), "/etc/config"),
                bind(&empty, "/cache"),
                bind(Path::new("/run/x/shm"), "/dev/shm"),
            ],
        );
        let sources: Vec<&str> = plan.mounts.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(
            sources,
            [
                "/run/kata-containers/shared/containers/c1-0/hosts",
                "/run/kata-containers/shared/containers/c1-1",
                "/run/kata-containers/sandbox/ephemeral/emptydir-cache",
                "/run/kata-containers/sandbox/ephemeral/shm",
            ]
        );
        assert_eq!(plan.copies.len(), 2);
        assert_eq!(plan.storages.len(), 2);
    }

    #[test]
    fn scan_sees_changes_and_bounds_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        let before = scan(dir.path()).unwrap();
        std::fs::write(dir.path().join("a"), "22").unwrap();
        assert_ne!(scan(dir.path()).unwrap(), before);
    }
}
