//! A running process's memory, read from /proc: resident set, its peak, its proportional share,
//! and how much of the guest's RAM mapping is resident (what the guest, or the VMM loading it,
//! touched).

use std::path::PathBuf;

/// Errors reading a process's memory figures.
#[derive(Debug, thiserror::Error)]
pub enum ProcMemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no {field} line")]
    Missing { path: PathBuf, field: &'static str },
}

/// Memory of one process, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcMem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub pss_kib: u64,
    /// Resident part of the mapping(s) that look like guest RAM.
    pub guest_rss_kib: u64,
}

impl ProcMem {
    /// Resident memory that is not guest RAM: the VMM's own overhead.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// The value of a `Name:   1234 kB` line.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Sums the resident KiB of anonymous mappings whose size is that of the guest's RAM: between
/// 3/4 of `guest_bytes` (RAM split around a hole) and `guest_bytes` + 256 MiB (alignment
/// padding). Thread stacks and malloc arenas (64 MiB) stay below for guests of 128 MiB and up.
pub fn guest_ram_rss_kib(smaps: &str, guest_bytes: u64) -> u64 {
    let lo = guest_bytes / 4 * 3 / 1024;
    let hi = (guest_bytes + (256 << 20)) / 1024;
    let mut total = 0;
    let mut anonymous = false;
    let mut size = 0;
    for line in smaps.lines() {
        if is_mapping_header(line) {
            // "start-end perms offset dev inode [path]": anonymous when inode is 0 and the
            // path is empty or an `[anon:...]` name.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields.get(5).copied().unwrap_or("");
            anonymous =
                fields.get(4) == Some(&"0") && (path.is_empty() || path.starts_with("[anon"));
            size = 0;
        } else if let Some(v) = kib_field(line, "Size") {
            size = v;
        } else if let Some(v) = kib_field(line, "Rss") {
            if anonymous && size > lo && size <= hi {
                total += v;
            }
        }
    }
    total
}

fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_hexdigit())
                && b.bytes().all(|c| c.is_ascii_hexdigit())
        })
}

fn read(path: PathBuf) -> Result<(PathBuf, String), ProcMemError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ProcMemError::Read { path, source }),
    }
}

fn field(path: &std::path::Path, text: &str, name: &'static str) -> Result<u64, ProcMemError> {
    kib_field(text, name).ok_or_else(|| ProcMemError::Missing {
        path: path.to_owned(),
        field: name,
    })
}

/// Reads the memory figures of process `pid` whose guest has `guest_bytes` of RAM.
pub fn read_proc_mem(pid: i32, guest_bytes: u64) -> Result<ProcMem, ProcMemError> {
    let (status_path, status) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    let (rollup_path, rollup) = read(PathBuf::from(format!("/proc/{pid}/smaps_rollup")))?;
    let (_, smaps) = read(PathBuf::from(format!("/proc/{pid}/smaps")))?;
    Ok(ProcMem {
        rss_kib: field(&status_path, &status, "VmRSS")?,
        hwm_kib: field(&status_path, &status, "VmHWM")?,
        pss_kib: field(&rollup_path, &rollup, "Pss")?,
        guest_rss_kib: guest_ram_rss_kib(&smaps, guest_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tveil\nVmPeak:\t  140000 kB\nVmHWM:\t    2100 kB\nVmRSS:\t    1900 kB\nRssAnon:\t     300 kB\n";

    #[test]
    fn status_fields() {
        assert_eq!(kib_field(STATUS, "VmRSS"), Some(1900));
        assert_eq!(kib_field(STATUS, "VmHWM"), Some(2100));
        assert_eq!(
            kib_field(STATUS, "Rss"),
            None,
            "a prefix of another name is no match"
        );
        assert_eq!(kib_field(STATUS, "VmSwap"), None);
    }

    /// A smaps excerpt: the binary, a 128 MiB + 2 MiB anonymous mapping (guest RAM with
    /// alignment padding), a 64 MiB malloc arena, a named anonymous mapping of guest size and a
    /// 128 MiB file mapping.
    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234   /usr/bin/veil
Size:               1024 kB
Rss:                 900 kB
7f0000000000-7f0008200000 rw-p 00000000 00:00 0 
Size:             133120 kB
Rss:                 120 kB
Pss:                 120 kB
7f1000000000-7f1004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                 132 kB
7f2000000000-7f2008000000 rw-p 00000000 00:00 0    [anon:guest-ram]
Size:             131072 kB
Rss:                  16 kB
7f3000000000-7f3008000000 r--p 00000000 08:01 99   /tmp/disk.img
Size:             131072 kB
Rss:                4000 kB
";

    #[test]
    fn guest_ram_is_the_anonymous_mappings_of_guest_size() {
        assert_eq!(guest_ram_rss_kib(SMAPS, 128 << 20), 136);
        // For a 1 GiB guest none of these qualify.
        assert_eq!(guest_ram_rss_kib(SMAPS, 1 << 30), 0);
    }

    #[test]
    fn overhead_never_underflows() {
        let m = ProcMem {
            rss_kib: 100,
            hwm_kib: 100,
            pss_kib: 50,
            guest_rss_kib: 150,
        };
        assert_eq!(m.overhead_kib(), 0);
        let m = ProcMem {
            guest_rss_kib: 40,
            ..m
        };
        assert_eq!(m.overhead_kib(), 60);
    }

    #[test]
    fn reads_this_process() {
        let m = read_proc_mem(std::process::id() as i32, 128 << 20).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib && m.pss_kib > 0);
    }
}
