//! `veil run --igvm F --snp-firmware model`: the software model's whole SNP launch sequence
//! (LAUNCH_START, every LAUNCH_UPDATE, LAUNCH_FINISH), timed from spawn to the digest line veil
//! prints on stderr once the launch is done, before the guest runs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::launch::ms_between;

/// What precedes the digest in veil's line.
pub const DIGEST_LINE: &str = "veil: SNP launch digest (INSECURE model firmware): ";

/// The digest and measured bytes of
/// `veil: SNP launch digest (INSECURE model firmware): <96 hex> (<N> measured bytes, ...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDigest {
    pub digest: String,
    pub measured_bytes: u64,
}

pub fn parse_digest_line(line: &str) -> Option<ModelDigest> {
    let rest = line.trim().strip_prefix(DIGEST_LINE)?;
    let (digest, rest) = rest.split_once(" (")?;
    let bytes = rest.split_once(" measured bytes")?.0;
    let valid = digest.len() == 96 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    Some(ModelDigest {
        digest: valid.then(|| digest.to_string())?,
        measured_bytes: bytes.parse().ok()?,
    })
}

/// Errors of a timed model launch.
#[derive(Debug, thiserror::Error)]
pub enum ModelLaunchError {
    #[error("cannot start {veil}: {source}")]
    Spawn {
        veil: String,
        source: std::io::Error,
    },
    #[error("veil printed no SNP launch digest line within {timeout:?}; its stderr: {stderr}")]
    NoDigest { timeout: Duration, stderr: String },
}

/// One timed launch: spawn -> digest line (ms), and the line's contents. The VM is killed
/// right after the line: the guest's own boot is not part of the launch sequence.
pub fn timed_launch(
    veil: &Path,
    igvm: &Path,
    mem_mib: u64,
    timeout: Duration,
) -> Result<(f64, ModelDigest), ModelLaunchError> {
    let mut c = Command::new(veil);
    c.arg("run")
        .arg("--igvm")
        .arg(igvm)
        .args(["--snp-firmware", "model", "--console", "off", "--mem-mib"])
        .arg(mem_mib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned = Instant::now();
    let mut child = c.spawn().map_err(|source| ModelLaunchError::Spawn {
        veil: veil.display().to_string(),
        source,
    })?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let deadline = spawned + timeout;
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((at, line)) => match parse_digest_line(&line) {
                Some(d) => break Some((ms_between(spawned, at), d)),
                None => seen.push(line),
            },
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.ok_or_else(|| ModelLaunchError::NoDigest {
        timeout,
        stderr: seen.join(" | "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reads_digest_and_measured_bytes() {
        let line =
            format!("{DIGEST_LINE}{HEX} (8388608 measured bytes, vCPU signature 0xa00f11)\n");
        assert_eq!(
            parse_digest_line(&line),
            Some(ModelDigest {
                digest: HEX.into(),
                measured_bytes: 8_388_608
            })
        );
    }

    #[test]
    fn other_lines_are_not_digests() {
        for line in [
            "veil: guest failed: triple fault".to_string(),
            format!("{DIGEST_LINE}{} (1 measured bytes, x)", &HEX[..95]),
            format!("{DIGEST_LINE}{}g (1 measured bytes, x)", &HEX[..95]),
            format!("{DIGEST_LINE}{HEX} (many measured bytes, x)"),
            format!("{DIGEST_LINE}{HEX}"),
        ] {
            assert_eq!(parse_digest_line(&line), None, "{line}");
        }
    }

    #[test]
    fn a_veil_without_the_line_is_an_error() {
        // `false` exits at once, printing nothing: no digest line ever comes.
        let err = timed_launch(
            Path::new("false"),
            Path::new("/x.igvm"),
            256,
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(matches!(err, ModelLaunchError::NoDigest { .. }), "{err}");
    }
}
