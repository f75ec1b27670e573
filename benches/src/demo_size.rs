//! The size of `veil demo`'s built-in guest, read from the `veil` binary's symbol table: the
//! guest's code lies between the symbols `veil_demo_guest_start` and `veil_demo_guest_end`
//! (`veil/src/demo.rs`). Wrapped in an IGVM file, that code would be the guest's only NORMAL
//! (measured) data.

use std::path::Path;
use std::process::Command;

pub const START: &str = "veil_demo_guest_start";
pub const END: &str = "veil_demo_guest_end";

/// Errors finding the demo guest's size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DemoSizeError {
    #[error("cannot run nm on {binary}: {error} (install binutils)")]
    Nm { binary: String, error: String },
    #[error("symbol {0} not in nm's output (is the veil binary stripped?)")]
    NoSymbol(&'static str),
    #[error("{END} ({end:#x}) lies before {START} ({start:#x})")]
    Reversed { start: u64, end: u64 },
}

/// The address of `name` in `nm` output (`<hex address> <type> <name>` per line).
fn address(nm: &str, name: &'static str) -> Result<u64, DemoSizeError> {
    nm.lines()
        .find_map(|line| {
            let mut w = line.split_whitespace();
            let (addr, _kind, sym) = (w.next()?, w.next()?, w.next()?);
            (sym == name)
                .then(|| u64::from_str_radix(addr, 16).ok())
                .flatten()
        })
        .ok_or(DemoSizeError::NoSymbol(name))
}

/// The demo guest's code size in bytes from `nm` output.
pub fn code_bytes(nm: &str) -> Result<u64, DemoSizeError> {
    let (start, end) = (address(nm, START)?, address(nm, END)?);
    end.checked_sub(start)
        .ok_or(DemoSizeError::Reversed { start, end })
}

/// Runs `nm` on `veil` and returns the demo guest's code size in bytes.
pub fn measure(veil: &Path) -> Result<u64, DemoSizeError> {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(veil)
        .output()
        .map_err(|e| DemoSizeError::Nm {
            binary: veil.display().to_string(),
            error: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(DemoSizeError::Nm {
            binary: veil.display().to_string(),
            error: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    code_bytes(&String::from_utf8_lossy(&out.stdout))
}

/// Bytes measured as NORMAL pages for `bytes` of data: whole 4 KiB pages.
pub fn page_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(4096) * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_from_the_two_symbols() {
        let nm = "0000000000001000 T main\n00000000000a2f40 R veil_demo_guest_end\n00000000000a2ef0 R veil_demo_guest_start\n";
        assert_eq!(code_bytes(nm), Ok(0x50));
    }

    #[test]
    fn missing_or_reversed_symbols() {
        assert_eq!(
            code_bytes("00000000000a2ef0 R veil_demo_guest_start\n"),
            Err(DemoSizeError::NoSymbol(END))
        );
        // A longer name that starts like ours is not ours.
        assert_eq!(
            code_bytes("0000000000000010 R veil_demo_guest_start_x\n0000000000000020 R veil_demo_guest_end\n"),
            Err(DemoSizeError::NoSymbol(START))
        );
        assert_eq!(
            code_bytes("0000000000000020 R veil_demo_guest_start\n0000000000000010 R veil_demo_guest_end\n"),
            Err(DemoSizeError::Reversed {
                start: 0x20,
                end: 0x10
            })
        );
    }

    #[test]
    fn whole_pages() {
        assert_eq!(page_bytes(0), 0);
        assert_eq!(page_bytes(1), 4096);
        assert_eq!(page_bytes(4096), 4096);
        assert_eq!(page_bytes(4097), 8192);
    }
}
