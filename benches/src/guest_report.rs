//! The benchmark lines the virtio test guests (`tests/guests/virtio_blk.c`,
//! `virtio_vsock.c`) print on their serial console, e.g.
//! `bench blk mib=16 write_cycles=123 read_cycles=456` and
//! `bench vsock mib=4 stream_echo_cycles=789 rtt_1000_cycles=1011`.

/// Errors in a guest's benchmark output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestReportError {
    #[error("the guest printed no line starting {prefix:?}")]
    NoLine { prefix: &'static str },
    #[error("line {line:?} has no {key}=")]
    NoField { line: String, key: &'static str },
    #[error("{key}={value:?} in line {line:?} is not a whole number")]
    NotANumber {
        line: String,
        key: &'static str,
        value: String,
    },
    #[error("the guest reported a failure: {0:?}")]
    GuestFailed(String),
    #[error("the guest did not finish (no `done` line); its last line was {0:?}")]
    NotDone(String),
}

/// What `blk.bench_mib=N` reports: N MiB written (then flushed) and read sequentially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkBench {
    pub mib: u64,
    /// Writes of the whole range plus the flush.
    pub write_cycles: u64,
    pub read_cycles: u64,
}

/// The random pass after it: `ops` 4 KiB writes at pseudo-random offsets, then reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRandomBench {
    pub ops: u64,
    pub write_cycles: u64,
    pub read_cycles: u64,
}

/// What `vsock.bench_mib=N` reports: N MiB streamed to the host and echoed back, then 1000
/// one-byte round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VsockBench {
    pub mib: u64,
    pub stream_echo_cycles: u64,
    pub rtt_1000_cycles: u64,
}

/// Round trips timed by the vsock guest's `rtt_1000_cycles`.
pub const VSOCK_ROUND_TRIPS: u64 = 1000;

/// Checks the whole console output: no `FAIL` line, ends with `done`.
pub fn check_finished(lines: &[String]) -> Result<(), GuestReportError> {
    if let Some(fail) = lines.iter().find(|l| l.starts_with("FAIL")) {
        return Err(GuestReportError::GuestFailed(fail.trim_end().to_string()));
    }
    match lines.iter().rev().find(|l| !l.trim().is_empty()) {
        Some(last) if last.trim_end() == "done" => Ok(()),
        last => Err(GuestReportError::NotDone(
            last.map_or(String::new(), |l| l.trim_end().to_string()),
        )),
    }
}

fn find_line<'a>(lines: &'a [String], prefix: &'static str) -> Result<&'a str, GuestReportError> {
    lines
        .iter()
        .map(|l| l.trim_end())
        .find(|l| l.starts_with(prefix))
        .ok_or(GuestReportError::NoLine { prefix })
}

fn field(line: &str, key: &'static str) -> Result<u64, GuestReportError> {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .ok_or_else(|| GuestReportError::NoField {
            line: line.to_string(),
            key,
        })?;
    value.parse().map_err(|_| GuestReportError::NotANumber {
        line: line.to_string(),
        key,
        value: value.to_string(),
    })
}

pub fn parse_blk(lines: &[String]) -> Result<BlkBench, GuestReportError> {
    check_finished(lines)?;
    let line = find_line(lines, "bench blk ")?;
    Ok(BlkBench {
        mib: field(line, "mib")?,
        write_cycles: field(line, "write_cycles")?,
        read_cycles: field(line, "read_cycles")?,
    })
}

pub fn parse_blk_random(lines: &[String]) -> Result<BlkRandomBench, GuestReportError> {
    check_finished(lines)?;
    let line = find_line(lines, "bench blk4k ")?;
    Ok(BlkRandomBench {
        ops: field(line, "ops")?,
        write_cycles: field(line, "write_cycles")?,
        read_cycles: field(line, "read_cycles")?,
    })
}

pub fn parse_vsock(lines: &[String]) -> Result<VsockBench, GuestReportError> {
    check_finished(lines)?;
    let line = find_line(lines, "bench vsock ")?;
    Ok(VsockBench {
        mib: field(line, "mib")?,
        stream_echo_cycles: field(line, "stream_echo_cycles")?,
        rtt_1000_cycles: field(line, "rtt_1000_cycles")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.split_inclusive('\n').map(String::from).collect()
    }

    #[test]
    fn random_blk_line_is_parsed_and_required() {
        let out = lines("bench blk mib=1 write_cycles=1 read_cycles=1\nbench blk4k ops=1024 write_cycles=20 read_cycles=10\ndone\n");
        let r = parse_blk_random(&out).unwrap();
        assert_eq!((r.ops, r.write_cycles, r.read_cycles), (1024, 20, 10));
        let out = lines("bench blk mib=1 write_cycles=1 read_cycles=1\ndone\n");
        assert!(parse_blk_random(&out).is_err());
    }

    #[test]
    fn blk_report() {
        let out = lines(
            "veil-test-guest virtio_blk\nblk devices=1\nblk0 addr=0xd0001000 irq=5 capacity=32768 ro=0 flush=1 queue=64\nbench blk mib=16 write_cycles=912345678 read_cycles=45678\ndone\n",
        );
        assert_eq!(
            parse_blk(&out),
            Ok(BlkBench {
                mib: 16,
                write_cycles: 912_345_678,
                read_cycles: 45_678
            })
        );
    }

    #[test]
    fn vsock_report() {
        let out = lines(
            "vsock addr=0xd0001000 irq=5 cid=3 features=0x100000000\nbench vsock mib=4 stream_echo_cycles=300000 rtt_1000_cycles=7000\ndone\n",
        );
        assert_eq!(
            parse_vsock(&out),
            Ok(VsockBench {
                mib: 4,
                stream_echo_cycles: 300_000,
                rtt_1000_cycles: 7000
            })
        );
    }

    #[test]
    fn a_guest_failure_is_reported_with_its_line() {
        let out = lines("blk devices=0\nFAIL: no virtio-blk device on the command line\nfailed\n");
        assert_eq!(
            parse_blk(&out),
            Err(GuestReportError::GuestFailed(
                "FAIL: no virtio-blk device on the command line".into()
            ))
        );
    }

    #[test]
    fn an_unfinished_guest_is_not_trusted() {
        let out = lines("bench blk mib=1 write_cycles=1 read_cycles=1\n");
        assert_eq!(
            parse_blk(&out),
            Err(GuestReportError::NotDone(
                "bench blk mib=1 write_cycles=1 read_cycles=1".into()
            ))
        );
        assert_eq!(
            parse_blk(&[]),
            Err(GuestReportError::NotDone(String::new()))
        );
    }

    #[test]
    fn missing_and_malformed_fields() {
        let out = lines("bench blk mib=1 read_cycles=1\ndone\n");
        assert!(matches!(
            parse_blk(&out),
            Err(GuestReportError::NoField {
                key: "write_cycles",
                ..
            })
        ));
        let out = lines("bench vsock mib=4 stream_echo_cycles=-3 rtt_1000_cycles=1\ndone\n");
        assert!(matches!(
            parse_vsock(&out),
            Err(GuestReportError::NotANumber {
                key: "stream_echo_cycles",
                ..
            })
        ));
        // A key that only ends like the one asked for is not it.
        let out = lines("bench blk mib=1 xwrite_cycles=5 read_cycles=1\ndone\n");
        assert!(matches!(
            parse_blk(&out),
            Err(GuestReportError::NoField {
                key: "write_cycles",
                ..
            })
        ));
        assert_eq!(
            parse_vsock(&lines("done\n")),
            Err(GuestReportError::NoLine {
                prefix: "bench vsock "
            })
        );
    }
}
