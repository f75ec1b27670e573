//! The tiny PVH guests every VMM in the comparison boots: a few dozen bytes of 32-bit code
//! with the Xen PVH entry note, assembled at run time with the system `as` and `ld` (no binary
//! is committed).
//!
//! Two variants share one source:
//! - [`TinyGuest::Exit`] prints its line on COM1, then ends the VM: `out 0xfe, 0x64` (an i8042
//!   reset, which Veil and the floor treat as a clean end) and then `out 0xfe, 0xf4`, which ends
//!   QEMU when it has `-device isa-debug-exit,iobase=0xf4` (QEMU microvm has no i8042; a triple
//!   fault is no option here, as this host's software KVM cannot emulate `int3`).
//! - [`TinyGuest::Idle`] prints its line and halts with interrupts off, forever: an idle VM for
//!   memory and density figures, stopped by the harness with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The line the exiting guest prints.
pub const EXIT_GREETING: &str = "Hello from the tiny PVH guest";
/// The line the idling guest prints.
pub const IDLE_GREETING: &str = "Tiny PVH guest idling";
/// The port QEMU's isa-debug-exit device must listen on.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// QEMU's exit status after the guest writes 0xfe to isa-debug-exit: (0xfe << 1) | 1, mod 256.
pub const QEMU_DEBUG_EXIT_STATUS: i32 = 0xfd;

/// Which tiny guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyGuest {
    Exit,
    Idle,
}

impl TinyGuest {
    /// The line it prints on the console.
    pub fn greeting(self) -> &'static str {
        match self {
            Self::Exit => EXIT_GREETING,
            Self::Idle => IDLE_GREETING,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Self::Exit => "tiny-exit",
            Self::Idle => "tiny-idle",
        }
    }

    /// The assembly source of this guest.
    pub fn source(self) -> String {
        let ending = match self {
            Self::Exit => "    mov $0xfe, %al\n    outb %al, $0x64\n    outb %al, $0xf4\n",
            Self::Idle => "",
        };
        format!(
            r#"    .code32
    .section .text
    .globl _start
_start:
    mov $msg, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    outb %al, %dx
    jmp 1b
2:
{ending}3:  cli
    hlt
    jmp 3b
msg:
    .asciz "{greeting}\n"

    # Xen PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (18), the 32-bit physical entry point.
    .section .note.Xen, "a"
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start
"#,
            greeting = self.greeting()
        )
    }
}

/// Links the code at 1 MiB, where every VMM in the comparison can load it, and keeps only the
/// code and the note.
const LINKER_SCRIPT: &str = "ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.text) }
  .note : { *(.note.Xen) }
  /DISCARD/ : { *(*) }
}
";

/// Errors while building a tiny guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run `{tool}` (install binutils): {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("`{tool}` failed on {input}: {stderr}")]
    Tool {
        tool: &'static str,
        input: PathBuf,
        stderr: String,
    },
}

/// Assembles and links `guest` into `dir`, returning the ELF's path.
pub fn build(guest: TinyGuest, dir: &Path) -> Result<PathBuf, GuestBuildError> {
    let stem = guest.file_stem();
    let source = dir.join(format!("{stem}.S"));
    let object = dir.join(format!("{stem}.o"));
    let script = dir.join("tiny-guest.ld");
    let elf = dir.join(format!("{stem}.elf"));
    write(&source, &guest.source())?;
    write(&script, LINKER_SCRIPT)?;
    run_tool("as", &source, |c| {
        c.arg("--64").arg("-o").arg(&object).arg(&source);
    })?;
    run_tool("ld", &object, |c| {
        c.args(["-m", "elf_x86_64", "-nostdlib", "-static", "-T"])
            .arg(&script)
            .arg("-o")
            .arg(&elf)
            .arg(&object);
    })?;
    Ok(elf)
}

fn write(path: &Path, text: &str) -> Result<(), GuestBuildError> {
    std::fs::write(path, text).map_err(|source| GuestBuildError::Write {
        path: path.to_owned(),
        source,
    })
}

fn run_tool(
    tool: &'static str,
    input: &Path,
    args: impl FnOnce(&mut Command),
) -> Result<(), GuestBuildError> {
    let mut command = Command::new(tool);
    args(&mut command);
    let output = command
        .output()
        .map_err(|source| GuestBuildError::Spawn { tool, source })?;
    if !output.status.success() {
        return Err(GuestBuildError::Tool {
            tool,
            input: input.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvh_elf::PvhElf;

    #[test]
    fn both_guests_build_into_small_pvh_elfs() {
        let dir = tempfile::tempdir().unwrap();
        for guest in [TinyGuest::Exit, TinyGuest::Idle] {
            let path = build(guest, dir.path()).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let elf = PvhElf::parse(&bytes).unwrap();
            assert_eq!(elf.pvh_entry, 0x10_0000, "{guest:?}: entry is _start");
            let loaded: usize = elf.segments.iter().map(|s| s.file.len()).sum();
            assert!(loaded < 128, "{guest:?} grew to {loaded} bytes");
            let text = guest.greeting().as_bytes();
            let image = &elf.segments[0].file;
            assert!(image.windows(text.len()).any(|w| w == text));
        }
    }
}
