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

/// The mounts that make up one container's root, under `<state_dir>/<id>/`.
#[derive(Debug)]
pub struct RootFs {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
    verity: Option<VerityDevice>,
}

impl RootFs {
    /// The merged, writable root the container sees (host view).
    pub fn merged(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Mounts `storage` read-only and an overlay over it, under `dir` (created here). A layer
    /// with verity options is checked against its root hash first and mounted only through
    /// dm-verity. `dm_name` names the dm device. On error everything done so far is undone.
    pub fn mount(dir: &Path, storage: &Storage, dm_name: &str) -> Result<Self, ContainerError> {
        let device = validate_layer(storage)?;
        let verity_params = match verity::parse_options(&storage.driver_options)? {
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
            None => None,
        };
        std::fs::create_dir_all(dir).map_err(|e| ContainerError::io("creating", dir, e))?;
        let mut root = RootFs {
            dir: dir.to_path_buf(),
            mounted: Vec::new(),
            verity: None,
        };
        let device = match verity_params {
            Some(params) => {
                // The node lives next to the control node, as udev would put it: the agent's
                // state directory is on a nodev mount (/run), where device nodes cannot open.
                let node = Path::new(devmapper::CONTROL).with_file_name(dm_name);
                match VerityDevice::create(dm_name, &device, &params, &node) {
                    Ok(v) => {
                        let node = v.node().to_path_buf();
                        root.verity = Some(v);
                        node
                    }
                    Err(e) => {
                        root.unmount();
                        return Err(e);
                    }
                }
            }
            None => device,
        };
        match root.mount_all(&device, &storage.fstype) {
            Ok(()) => Ok(root),
            Err(e) => {
                root.unmount();
                Err(e)
            }
        }
    }

    fn mount_all(&mut self, device: &Path, fstype: &str) -> Result<(), ContainerError> {
        let layer = self.dir.join("layer");
        let rw = self.dir.join("rw");
        let merged = self.merged();
        for d in [&layer, &rw, &merged] {
            std::fs::create_dir_all(d).map_err(|e| ContainerError::io("creating", d, e))?;
        }
        let c = |p: &Path| sys::cstr(p).map_err(|e| ContainerError::io("naming", p, e));
        let cs = |s: &str| CString::new(s).expect("static strings have no NUL");

        sys::mount(
            &c(device)?,
            &c(&layer)?,
            &cs(fstype),
            libc::MS_RDONLY | libc::MS_NODEV,
            None,
        )
        .map_err(|e| ContainerError::Mount {
            what: format!("{} ({fstype}) on {}", device.display(), layer.display()),
            source: e,
        })?;
        self.mounted.push(layer.clone());

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
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            layer.display(),
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
        }
        if let Some(v) = self.verity.take() {
            v.remove();
        }
        for d in ["rootfs", "rw", "layer"] {
            let _ = std::fs::remove_dir(self.dir.join(d));
        }
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
