//! The container root file system: a read-only block device (ext4 or erofs) with a writable
//! overlay (tmpfs upper layer) on top.

use std::ffi::CString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::devmapper::{self, VerityDevice};
use super::paths::relative_inside;
use super::sys;
use super::verity;
use super::ContainerError;
use crate::protocols::agent::Storage;

/// File systems accepted for image layers.
const LAYER_FSTYPES: &[&str] = &["ext4", "erofs"];

/// Drivers (Kata's names) that mean "a block device inside the VM".
const BLOCK_DRIVERS: &[&str] = &["blk", "virtio-blk", "virtio-blk-mmio", "block"];

/// Most image layers accepted for one container.
pub const MAX_LAYERS: usize = 64;

/// The mounts that make up one container's root, under `<state_dir>/<id>/`: each layer a
/// read-only block device (through dm-verity when its storage pins a root hash), combined
/// with overlayfs under a tmpfs upper directory for the container's writes.
#[derive(Debug)]
pub struct RootFs {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
    verity: Vec<VerityDevice>,
}

impl RootFs {
    /// The merged, writable root the container sees (host view).
    pub fn merged(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Mounts `layers` (lowest first) read-only and an overlay over them, under `dir`
    /// (created here). A layer with verity options is checked against its root hash first and
    /// mounted only through dm-verity, as `<dm_name>-<n>`; a layer without them is refused
    /// unless `allow_unverified`. On error everything done so far is undone.
    pub fn mount(
        dir: &Path,
        layers: &[Storage],
        dm_name: &str,
        allow_unverified: bool,
    ) -> Result<Self, ContainerError> {
        if layers.is_empty() || layers.len() > MAX_LAYERS {
            return Err(ContainerError::InvalidSpec(format!(
                "{} storages: a container needs 1 to {MAX_LAYERS} image layers",
                layers.len()
            )));
        }
        let mut checked = Vec::with_capacity(layers.len());
        for layer in layers {
            let device = validate_layer(layer)?;
            let params = match verity::parse_options(&layer.driver_options)? {
                Some(opts) => {
                    let params = verity::check(&device, &opts)?;
                    if !devmapper::available() {
                        return Err(ContainerError::Unsupported(format!(
                            "dm-verity layer {} needs device-mapper ({} is missing)",
                            device.display(),
                            devmapper::CONTROL
                        )));
                    }
                    Some(params)
                }
                None if allow_unverified => None,
                None => {
                    return Err(ContainerError::UnverifiedLayer {
                        device: device.display().to_string(),
                    })
                }
            };
            checked.push((device, params, layer.fstype.as_str()));
        }
        std::fs::create_dir_all(dir).map_err(|e| ContainerError::io("creating", dir, e))?;
        let mut root = RootFs {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
            verity: Vec::new(),
        };
        match root.mount_all(checked, dm_name) {
            Ok(()) => Ok(root),
            Err(e) => {
                root.unmount();
                Err(e)
            }
        }
    }

    fn mount_all(
        &mut self,
        layers: Vec<(PathBuf, Option<verity::VerityParams>, &str)>,
        dm_name: &str,
    ) -> Result<(), ContainerError> {
        let c = |p: &Path| sys::cstr(p).map_err(|e| ContainerError::io("naming", p, e));
        let cs = |s: &str| CString::new(s).expect("static strings have no NUL");
        let mut lower = Vec::with_capacity(layers.len());
        for (n, (device, params, fstype)) in layers.into_iter().enumerate() {
            let device = match params {
                Some(params) => {
                    // The node lives next to the control node, as udev would put it: the
                    // agent's state directory is on a nodev mount (/run).
                    let name = format!("{dm_name}-{n}");
                    let node = Path::new(devmapper::CONTROL).with_file_name(&name);
                    let v = VerityDevice::create(&name, &device, &params, &node)?;
                    let node = v.node().to_path_buf();
                    self.verity.push(v);
                    node
                }
                None => device,
            };
            let target = self.dir.join(format!("layer{n}"));
            std::fs::create_dir_all(&target)
                .map_err(|e| ContainerError::io("creating", &target, e))?;
            sys::mount(
                &c(&device)?,
                &c(&target)?,
                &cs(fstype),
                libc::MS_RDONLY | libc::MS_NODEV,
                None,
            )
            .map_err(|e| ContainerError::Mount {
                what: format!("{} ({fstype}) on {}", device.display(), target.display()),
                source: e,
            })?;
            self.mounted.push(target.clone());
            lower.push(target);
        }
        let rw = self.dir.join("rw");
        let merged = self.merged();
        for d in [&rw, &merged] {
            std::fs::create_dir_all(d).map_err(|e| ContainerError::io("creating", d, e))?;
        }
        sys::mount(
            &cs("tmpfs"),
            &c(&rw)?,
            &cs("tmpfs"),
            libc::MS_NODEV,
            Some(&cs("mode=0755")),
        )
        .map_err(|e| ContainerError::Mount {
            what: format!("tmpfs on {}", rw.display()),
            source: e,
        })?;
        self.mounted.push(rw.clone());
        let upper = rw.join("upper");
        let work = rw.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| ContainerError::io("creating", d, e))?;
        }
        // overlayfs lists the top layer first.
        let lowerdir: Vec<String> = lower
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let options = CString::new(options).map_err(|_| ContainerError::InvalidPath {
            what: "overlay directory",
            path: self.dir.display().to_string(),
        })?;
        sys::mount(
            &cs("overlay"),
            &c(&merged)?,
            &cs("overlay"),
            0,
            Some(&options),
        )
        .map_err(|e| ContainerError::Mount {
            what: format!("overlay on {}", merged.display()),
            source: e,
        })?;
        self.mounted.push(merged);
        Ok(())
    }

    /// Unmounts in reverse order and removes the directories; best effort, logs what stays.
    pub fn unmount(&mut self) {
        while let Some(target) = self.mounted.pop() {
            if let Err(e) = sys::umount(&target, 0) {
                tracing::warn!(target = %target.display(), error = %e, "unmount failed; detaching");
                if let Err(e) = sys::umount(&target, libc::MNT_DETACH) {
                    tracing::error!(target = %target.display(), error = %e, "detach failed");
                }
            }
            let _ = std::fs::remove_dir(&target);
        }
        while let Some(v) = self.verity.pop() {
            v.remove();
        }
        let _ = std::fs::remove_dir(self.dir.join("rootfs"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Checks a layer storage: a block driver, ext4/erofs, and a source that is a block device
/// under `/dev` (no traversal).
fn validate_layer(storage: &Storage) -> Result<PathBuf, ContainerError> {
    if !BLOCK_DRIVERS.contains(&storage.driver.as_str()) {
        return Err(ContainerError::Unsupported(format!(
            "storage driver {:?} (supported: {BLOCK_DRIVERS:?})",
            storage.driver
        )));
    }
    if !LAYER_FSTYPES.contains(&storage.fstype.as_str()) {
        return Err(ContainerError::Unsupported(format!(
            "layer file system {:?} (supported: {LAYER_FSTYPES:?})",
            storage.fstype
        )));
    }
    let rel = relative_inside("storage source", &storage.source)?;
    if !rel.starts_with("dev") {
        return Err(ContainerError::InvalidPath {
            what: "storage source (must be under /dev)",
            path: storage.source.clone(),
        });
    }
    let device = Path::new("/").join(rel);
    let meta = std::fs::metadata(&device).map_err(|e| ContainerError::io("stat", &device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(ContainerError::InvalidPath {
            what: "storage source (not a block device)",
            path: storage.source.clone(),
        });
    }
    wait_for_capacity(&device)?;
    Ok(device)
}

/// How long a layer device may take to show the capacity of an image the VMM just swapped in.
const CAPACITY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (bounded) until `device` has a non-zero size. The VMM attaches layers by swapping an
/// image into a placeholder drive and raising a config-change interrupt; the kernel reads the
/// new capacity asynchronously, so a request right after the swap can find the drive empty.
fn wait_for_capacity(device: &Path) -> Result<(), ContainerError> {
    let Some(name) = device.file_name() else {
        return Ok(());
    };
    let size_file = Path::new("/sys/class/block").join(name).join("size");
    let started = std::time::Instant::now();
    loop {
        let sectors = match std::fs::read_to_string(&size_file) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
            // Not a kernel block device name sysfs knows: nothing to wait for.
            Err(_) => return Ok(()),
        };
        if sectors > 0 {
            return Ok(());
        }
        if started.elapsed() > CAPACITY_WAIT {
            return Err(ContainerError::InvalidPath {
                what: "storage source (still empty: no image attached to the drive)",
                path: device.display().to_string(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, fstype: &str, source: &str) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.fstype = fstype.into();
        s.source = source.into();
        s
    }

    #[test]
    fn layer_source_outside_dev_is_refused() {
        for src in ["/etc/passwd", "/dev/../etc/passwd", "dev/loop0"] {
            let err = validate_layer(&storage("blk", "ext4", src)).unwrap_err();
            assert!(
                matches!(err, ContainerError::InvalidPath { .. }),
                "{src}: {err}"
            );
        }
    }

    #[test]
    fn non_block_device_is_refused() {
        let err = validate_layer(&storage("blk", "ext4", "/dev/null")).unwrap_err();
        assert!(err.to_string().contains("not a block device"), "{err}");
    }

    #[test]
    fn unknown_driver_and_fstype_are_refused() {
        assert!(validate_layer(&storage("9p", "ext4", "/dev/vda")).is_err());
        assert!(validate_layer(&storage("blk", "xfs", "/dev/vda")).is_err());
    }
}
