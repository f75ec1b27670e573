//! The VMMs being compared and the command line each needs for the same guest.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest::{DEBUG_EXIT_PORT, QEMU_DEBUG_EXIT_STATUS};

/// A VMM in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Veil,
    /// The minimal KVM program in this crate (`kvm-floor`).
    Floor,
    /// `qemu-system-x86_64 -M microvm`.
    Qemu,
}

impl Vmm {
    pub const ALL: [Vmm; 3] = [Vmm::Veil, Vmm::Floor, Vmm::Qemu];

    pub fn name(self) -> &'static str {
        match self {
            Self::Veil => "veil",
            Self::Floor => "floor",
            Self::Qemu => "qemu microvm",
        }
    }

    /// The exit status of a run whose guest ended the VM as intended.
    pub fn clean_exit_status(self) -> i32 {
        match self {
            Self::Veil | Self::Floor => 0,
            Self::Qemu => QEMU_DEBUG_EXIT_STATUS,
        }
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub veil: PathBuf,
    pub floor: PathBuf,
    /// None when QEMU is not installed.
    pub qemu: Option<PathBuf>,
}

/// A machine shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub mem_mib: u64,
}

impl Shape {
    pub const SMALL: Shape = Shape {
        vcpus: 1,
        mem_mib: 128,
    };

    pub fn label(self) -> String {
        let mem = if self.mem_mib % 1024 == 0 {
            format!("{} GiB", self.mem_mib / 1024)
        } else {
            format!("{} MiB", self.mem_mib)
        };
        format!("{} vCPU / {mem}", self.vcpus)
    }
}

fn qemu_base(qemu: &Path, shape: Shape) -> Command {
    let mut c = Command::new(qemu);
    c.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-m")
    .arg(format!("{}M", shape.mem_mib))
    .arg("-smp")
    .arg(shape.vcpus.to_string());
    c
}

impl Tools {
    /// Whether `vmm` can run `shape` (the floor has exactly one vCPU) and is installed.
    pub fn supports(&self, vmm: Vmm, shape: Shape) -> bool {
        match vmm {
            Vmm::Veil => true,
            Vmm::Floor => shape.vcpus == 1,
            Vmm::Qemu => self.qemu.is_some(),
        }
    }

    /// The command that boots a tiny PVH guest ELF; None when `vmm` can't (see [`supports`]).
    ///
    /// [`supports`]: Self::supports
    pub fn tiny_guest(&self, vmm: Vmm, guest: &Path, shape: Shape) -> Option<Command> {
        if !self.supports(vmm, shape) {
            return None;
        }
        Some(match vmm {
            Vmm::Veil => {
                let mut c = Command::new(&self.veil);
                c.arg("run")
                    .arg("--kernel")
                    .arg(guest)
                    .args(["--console", "stdout"])
                    .arg("--mem-mib")
                    .arg(shape.mem_mib.to_string())
                    .arg("--vcpus")
                    .arg(shape.vcpus.to_string());
                c
            }
            Vmm::Floor => {
                let mut c = Command::new(&self.floor);
                c.arg(guest).arg("--mem-mib").arg(shape.mem_mib.to_string());
                c
            }
            Vmm::Qemu => {
                let mut c = qemu_base(self.qemu.as_deref()?, shape);
                c.arg("-device")
                    .arg(format!(
                        "isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"
                    ))
                    .arg("-kernel")
                    .arg(guest);
                c
            }
        })
    }

    /// The command that boots a Linux `vmlinux` through its PVH entry; the floor can't.
    pub fn linux(&self, vmm: Vmm, vmlinux: &Path, cmdline: &str) -> Option<Command> {
        match vmm {
            Vmm::Veil => {
                let mut c = Command::new(&self.veil);
                c.arg("run")
                    .arg("--kernel")
                    .arg(vmlinux)
                    .arg("--cmdline")
                    .arg(cmdline)
                    .args(["--console", "stdout"]);
                Some(c)
            }
            Vmm::Floor => None,
            Vmm::Qemu => {
                let mut c = qemu_base(self.qemu.as_deref()?, Shape::SMALL);
                c.arg("-kernel").arg(vmlinux).arg("-append").arg(cmdline);
                Some(c)
            }
        }
    }

    /// `veil demo`, console on stdout.
    pub fn veil_demo(&self) -> Command {
        let mut c = Command::new(&self.veil);
        c.args(["demo", "--console", "stdout"]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(qemu: bool) -> Tools {
        Tools {
            veil: "/opt/veil".into(),
            floor: "/opt/kvm-floor".into(),
            qemu: qemu.then(|| "/usr/bin/qemu-system-x86_64".into()),
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_vmm_gets_the_same_guest_and_shape() {
        let shape = Shape {
            vcpus: 2,
            mem_mib: 1024,
        };
        let t = tools(true);
        let veil = args(&t.tiny_guest(Vmm::Veil, Path::new("/g.elf"), shape).unwrap());
        assert!(veil.windows(2).any(|w| w == ["--kernel", "/g.elf"]));
        assert!(veil.windows(2).any(|w| w == ["--mem-mib", "1024"]));
        assert!(veil.windows(2).any(|w| w == ["--vcpus", "2"]));
        let qemu = args(&t.tiny_guest(Vmm::Qemu, Path::new("/g.elf"), shape).unwrap());
        assert!(qemu.windows(2).any(|w| w == ["-kernel", "/g.elf"]));
        assert!(qemu.windows(2).any(|w| w == ["-m", "1024M"]));
        assert!(qemu.windows(2).any(|w| w == ["-smp", "2"]));
        assert!(qemu
            .iter()
            .any(|a| a == "isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(t
            .tiny_guest(Vmm::Floor, Path::new("/g.elf"), shape)
            .is_none());
        let floor = args(
            &t.tiny_guest(Vmm::Floor, Path::new("/g.elf"), Shape::SMALL)
                .unwrap(),
        );
        assert_eq!(floor, ["/g.elf", "--mem-mib", "128"]);
    }

    #[test]
    fn qemu_missing_means_no_qemu_command() {
        let t = tools(false);
        assert!(t
            .tiny_guest(Vmm::Qemu, Path::new("/g"), Shape::SMALL)
            .is_none());
        assert!(t
            .linux(Vmm::Qemu, Path::new("/v"), "console=ttyS0")
            .is_none());
        assert!(!t.supports(Vmm::Qemu, Shape::SMALL));
    }

    #[test]
    fn shape_labels() {
        assert_eq!(Shape::SMALL.label(), "1 vCPU / 128 MiB");
        let big = Shape {
            vcpus: 2,
            mem_mib: 1024,
        };
        assert_eq!(big.label(), "2 vCPU / 1 GiB");
    }
}
