//! The virtio-blk device model.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::request::{execute, Disk};
use super::{BlockConfig, BlockError, ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use super::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use crate::virtio::drain::{drain, Step};
use crate::virtio::{device_type, ActivateContext, ActivateError, GuestMemory};
use crate::virtio::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
}

/// A virtio-blk device backed by a raw image file.
pub struct Block {
    disk: Disk,
    path: Option<PathBuf>,
    active: Option<Active>,
}

fn open_image(path: &Path, read_only: bool) -> Result<(File, u64), BlockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| BlockError::Open {
            path: path.to_owned(),
            source,
        })?;
    let len = file
        .metadata()
        .map_err(|source| BlockError::Size {
            path: path.to_owned(),
            source,
        })?
        .len();
    Ok((file, len / SECTOR_SIZE))
}

impl Block {
    /// Opens the image (read-write unless `read_only`).
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if config.id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong { id: config.id });
        }
        let (file, sectors) = match &config.path {
            Some(path) => {
                let (file, sectors) = open_image(path, config.read_only)?;
                (Some(file), sectors)
            }
            None => (None, 0),
        };
        Ok(Self {
            disk: Disk {
                file,
                sectors,
                read_only: config.read_only,
                id: config.id.into_bytes(),
            },
            path: config.path,
            active: None,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.sectors
    }

    /// The current backing file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Replaces the backing file (same read-only mode). The capacity follows the new file;
    /// the caller then raises a config-change interrupt (`MmioTransport::swap_disk` does both).
    /// On error the old file stays in place.
    pub fn swap_backing_file(&mut self, path: &Path) -> Result<(), BlockError> {
        let (file, sectors) = open_image(path, self.disk.read_only)?;
        self.install(file, sectors, path);
        Ok(())
    }

    /// Replaces the backing file with one already open (a VMM that cannot open files any
    /// more gets it from its owner); `name` names it in messages. The file must be open for
    /// writing unless the drive is read-only.
    pub fn swap_backing_open_file(&mut self, file: File, name: &Path) -> Result<(), BlockError> {
        let len = file
            .metadata()
            .map_err(|source| BlockError::Size {
                path: name.to_owned(),
                source,
            })?
            .len();
        self.install(file, len / SECTOR_SIZE, name);
        Ok(())
    }

    fn install(&mut self, file: File, sectors: u64, name: &Path) {
        self.disk.file = Some(file);
        self.disk.sectors = sectors;
        self.path = Some(name.to_owned());
        tracing::info!(path = %name.display(), sectors, "virtio-blk backing file swapped");
    }

    fn process_requests(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let disk = &mut self.disk;
        let mut used_any = false;
        drain(&mut active.queue, mem, |queue| {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Step::Empty;
            };
            let head = chain.head_index();
            let used_len = execute(disk, mem, chain);
            // A head past the queue size cannot be returned; the driver broke its own ring.
            match queue.add_used(mem, head, used_len) {
                Ok(()) => used_any = true,
                Err(e) => tracing::warn!(head, "cannot return virtio-blk request: {e}"),
            }
            Step::Processed
        });
        if used_any {
            match active.queue.needs_notification(mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => active.interrupt.signal_used_queue(),
            }
        }
    }
}

impl crate::virtio::MmioTransport<Block> {
    /// Swaps the disk's backing file and tells the driver its capacity may have changed.
    pub fn swap_disk(&mut self, path: &Path) -> Result<(), BlockError> {
        self.device_mut().swap_backing_file(path)?;
        self.notify_config_change();
        Ok(())
    }

    /// [`swap_disk`](Self::swap_disk) with a file already open.
    pub fn swap_disk_open_file(&mut self, file: File, name: &Path) -> Result<(), BlockError> {
        self.device_mut().swap_backing_open_file(file, name)?;
        self.notify_config_change();
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (le64 at offset 0) is offered; the rest of the space reads as zero.
        let config = self.disk.sectors.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = start
                .checked_add(i)
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: ctx.queues.len(),
            });
        }
        let queue = ctx.queues.remove(0);
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) {
        if index == 0 {
            self.process_requests();
        }
    }
}
