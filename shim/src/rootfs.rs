//! Container root file systems as read-only block images, built once per image layer chain.
//!
//! containerd hands the shim the snapshotter's mounts (an overlay of the image's layers plus an
//! empty writable upper layer). The sandbox shares no file system with the host, so the layers
//! are packed into an ext4 image (with a dm-verity hash tree after the data when asked) that
//! reaches the agent as a block device; the agent puts a tmpfs-backed overlay on top for the
//! container's writes. The image is keyed on the layer chain (the lower directories), never
//! on the per-container upper directory, so every container of an image shares one file.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// ext4 block size: dm-verity's data block, which ext4 blocks must not be smaller than.
const BLOCK: u64 = 4096;
/// Free space and metadata room added to the files' own size.
const SLACK_BYTES: u64 = 16 << 20;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("unsupported rootfs mount type {0:?} (overlay and bind are supported)")]
    MountType(String),
    #[error("overlay rootfs mount without lowerdir: {0:?}")]
    NoLowerDir(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("veritysetup printed no root hash")]
    NoRootHash,
    #[error("image record {path}: {source}")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One of containerd's rootfs mounts.
#[derive(Debug, Clone)]
pub struct SnapshotMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where the root's files are on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    /// Read-only lower directories, top first (overlay order).
    Chain(Vec<PathBuf>),
    /// One directory used as is (a bind mount, or the bundle's pre-mounted rootfs).
    Dir(PathBuf),
}

impl Layers {
    /// Reads the layer chain from containerd's mounts; no mounts means `bundle_rootfs`.
    pub fn from_mounts(
        mounts: &[SnapshotMount],
        bundle_rootfs: &Path,
    ) -> Result<Self, RootfsError> {
        let Some(m) = mounts.first() else {
            return Ok(Self::Dir(bundle_rootfs.to_path_buf()));
        };
        match m.kind.as_str() {
            "overlay" => {
                let lower = m
                    .options
                    .iter()
                    .find_map(|o| o.strip_prefix("lowerdir="))
                    .ok_or_else(|| RootfsError::NoLowerDir(m.options.join(",")))?;
                Ok(Self::Chain(lower.split(':').map(PathBuf::from).collect()))
            }
            "bind" | "rbind" => Ok(Self::Dir(PathBuf::from(&m.source))),
            other => Err(RootfsError::MountType(other.to_string())),
        }
    }

    /// The cache key: SHA-256 over the chain's paths (snapshot directories never change
    /// content once committed).
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Self::Chain(dirs) => {
                h.update(b"chain\0");
                for d in dirs {
                    h.update(d.as_os_str().as_encoded_bytes());
                    h.update(b"\0");
                }
            }
            Self::Dir(d) => {
                h.update(b"dir\0");
                h.update(d.as_os_str().as_encoded_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub path: PathBuf,
    pub fstype: String,
    /// dm-verity root hash and where the hash tree starts, when built with one.
    pub verity: Option<Verity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    pub root_hash: String,
    pub hash_offset: u64,
}

impl Image {
    /// The agent's `driver_options` for this image.
    pub fn driver_options(&self) -> Vec<String> {
        match &self.verity {
            Some(v) => vec![
                format!("verity.root_hash={}", v.root_hash),
                format!("verity.hash_offset={}", v.hash_offset),
            ],
            None => Vec::new(),
        }
    }
}

/// The image cache directory.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
    verity: bool,
}

impl ImageCache {
    pub fn new(dir: PathBuf, verity: bool) -> Self {
        Self { dir, verity }
    }

    /// The image for `layers`, built now when the cache has none.
    pub fn get_or_build(&self, layers: &Layers, scratch: &Path) -> Result<Image, RootfsError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| RootfsError::Io { what, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("creating image cache", &self.dir))?;
        let suffix = if self.verity { "verity" } else { "plain" };
        let key = format!("{}-{suffix}", layers.key());
        let record = self.dir.join(format!("{key}.json"));
        if let Ok(text) = std::fs::read(&record) {
            let image: Image =
                serde_json::from_slice(&text).map_err(|source| RootfsError::Record {
                    path: record.clone(),
                    source,
                })?;
            if image.path.exists() {
                tracing::debug!(image = %image.path.display(), "rootfs image from cache");
                return Ok(image);
            }
        }
        // Built under a name of its own and renamed into place, so concurrent builders of
        // the same chain never see a half-written image.
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let result = self.build(layers, &tmp, scratch, &key, &record);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn build(
        &self,
        layers: &Layers,
        tmp: &Path,
        scratch: &Path,
        key: &str,
        record: &Path,
    ) -> Result<Image, RootfsError> {
        let view = LayerView::open(layers, scratch)?;
        let data_bytes = round_up(tree_size(view.path())? + SLACK_BYTES, 4 << 20);
        run(Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-b", "4096", "-d"])
            .arg(view.path())
            .arg(tmp)
            .arg(format!("{}k", data_bytes / 1024)))?;
        drop(view);
        let verity = if self.verity {
            let out = run(Command::new(tool("veritysetup"))
                .arg("format")
                .arg(format!("--hash-offset={data_bytes}"))
                .arg(format!("--data-blocks={}", data_bytes / BLOCK))
                .arg(tmp)
                .arg(tmp))?;
            let root_hash = out
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .map(|h| h.trim().to_string())
                .ok_or(RootfsError::NoRootHash)?;
            Some(Verity {
                root_hash,
                hash_offset: data_bytes,
            })
        } else {
            None
        };
        let path = self.dir.join(format!("{key}.img"));
        let image = Image {
            path: path.clone(),
            fstype: "ext4".into(),
            verity,
        };
        let text = serde_json::to_vec(&image).expect("image record serializes");
        let record_tmp = tmp.with_extension("json");
        std::fs::write(&record_tmp, text).map_err(|source| RootfsError::Io {
            what: "writing image record",
            path: record_tmp.clone(),
            source,
        })?;
        std::fs::rename(tmp, &path).map_err(|source| RootfsError::Io {
            what: "renaming image into the cache",
            path: path.clone(),
            source,
        })?;
        std::fs::rename(&record_tmp, record).map_err(|source| RootfsError::Io {
            what: "renaming image record",
            path: record.to_path_buf(),
            source,
        })?;
        tracing::info!(image = %path.display(), "rootfs image built");
        Ok(image)
    }
}

/// A directory showing the merged layers: the only layer itself, or a read-only overlay of
/// the chain mounted under `scratch` (unmounted and removed on drop).
struct LayerView {
    path: PathBuf,
    mounted: bool,
}

impl LayerView {
    fn open(layers: &Layers, scratch: &Path) -> Result<Self, RootfsError> {
        match layers {
            Layers::Dir(d) => Ok(Self {
                path: d.clone(),
                mounted: false,
            }),
            Layers::Chain(dirs) if dirs.len() == 1 => Ok(Self {
                path: dirs[0].clone(),
                mounted: false,
            }),
            Layers::Chain(dirs) => {
                let target = scratch.join("layers");
                std::fs::create_dir_all(&target).map_err(|source| RootfsError::Io {
                    what: "creating overlay mount point",
                    path: target.clone(),
                    source,
                })?;
                let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                let data = format!("lowerdir={}", lower.join(":"));
                let c = |s: &str| CString::new(s).expect("no NUL in paths");
                let (src, tgt, fs, opts) = (
                    c("overlay"),
                    c(&target.display().to_string()),
                    c("overlay"),
                    c(&data),
                );
                // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
                let rc = unsafe {
                    libc::mount(
                        src.as_ptr(),
                        tgt.as_ptr(),
                        fs.as_ptr(),
                        libc::MS_RDONLY,
                        opts.as_ptr().cast(),
                    )
                };
                if rc != 0 {
                    let source = std::io::Error::last_os_error();
                    let _ = std::fs::remove_dir(&target);
                    return Err(RootfsError::Io {
                        what: "mounting the layer chain",
                        path: target,
                        source,
                    });
                }
                Ok(Self {
                    path: target,
                    mounted: true,
                })
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LayerView {
    fn drop(&mut self) {
        if self.mounted {
            crate::cleanup::unmount(&self.path);
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Bytes of all files under `dir` (directories and inodes count a block each).
fn tree_size(dir: &Path) -> Result<u64, RootfsError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| RootfsError::Io {
            what: "reading layer directory",
            path: d.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += round_up(meta.len(), BLOCK).max(BLOCK);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// A system tool by name, preferring the sbin directories containerd's PATH may lack.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Runs a tool, returning its stdout; failure carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String, RootfsError> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| RootfsError::Io {
        what: "running",
        path: PathBuf::from(&name),
        source,
    })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            tool: name,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(lower: &str) -> SnapshotMount {
        SnapshotMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("lowerdir={lower}"),
                "upperdir=/s/9/fs".into(),
                "workdir=/s/9/work".into(),
            ],
        }
    }

    #[test]
    fn chain_key_ignores_the_containers_upper_dir() {
        let a = Layers::from_mounts(&[overlay("/s/2/fs:/s/1/fs")], Path::new("/b")).unwrap();
        let mut other = overlay("/s/2/fs:/s/1/fs");
        other.options[2] = "upperdir=/s/10/fs".into();
        let b = Layers::from_mounts(&[other], Path::new("/b")).unwrap();
        assert_eq!(a, Layers::Chain(vec!["/s/2/fs".into(), "/s/1/fs".into()]));
        assert_eq!(a.key(), b.key());
        let c = Layers::from_mounts(&[overlay("/s/3/fs:/s/1/fs")], Path::new("/b")).unwrap();
        assert_ne!(a.key(), c.key());
    }

    #[test]
    fn bind_and_empty_mounts_and_refusals() {
        let bind = SnapshotMount {
            kind: "bind".into(),
            source: "/s/1/fs".into(),
            options: vec!["rbind".into(), "rw".into()],
        };
        assert_eq!(
            Layers::from_mounts(&[bind], Path::new("/b")).unwrap(),
            Layers::Dir("/s/1/fs".into())
        );
        assert_eq!(
            Layers::from_mounts(&[], Path::new("/b/rootfs")).unwrap(),
            Layers::Dir("/b/rootfs".into())
        );
        let zfs = SnapshotMount {
            kind: "zfs".into(),
            source: "pool".into(),
            options: vec![],
        };
        let err = Layers::from_mounts(&[zfs], Path::new("/b")).unwrap_err();
        assert!(err.to_string().contains("zfs"), "{err}");
    }

    #[test]
    fn driver_options_follow_the_agents_names() {
        let image = Image {
            path: "/c/x.img".into(),
            fstype: "ext4".into(),
            verity: Some(Verity {
                root_hash: "ab".into(),
                hash_offset: 4096,
            }),
        };
        assert_eq!(
            image.driver_options(),
            ["verity.root_hash=ab", "verity.hash_offset=4096"]
        );
    }

    /// Builds a real image from a directory once and serves the second request from the cache.
    /// Needs mkfs.ext4 (e2fsprogs), which CI installs.
    #[test]
    fn builds_once_per_chain() {
        let mkfs = tool("mkfs.ext4");
        if !mkfs.is_absolute() {
            assert!(
                std::env::var_os("CI").is_none(),
                "mkfs.ext4 missing in CI (apt-get install e2fsprogs)"
            );
            eprintln!("SKIPPED: mkfs.ext4 missing");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::write(layer.join("bin/hello"), b"hello").unwrap();
        let cache = ImageCache::new(dir.path().join("cache"), false);
        let layers = Layers::Chain(vec![layer]);
        let first = cache.get_or_build(&layers, dir.path()).unwrap();
        assert!(first.path.exists());
        assert_eq!(first.verity, None);
        let modified = std::fs::metadata(&first.path).unwrap().modified().unwrap();
        let second = cache.get_or_build(&layers, dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(
            std::fs::metadata(&second.path).unwrap().modified().unwrap(),
            modified
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "image and record only: {names:?}");
    }
}
