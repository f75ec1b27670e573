//! `openssl speed -evp sha384 -bytes 4096`: the SHA-384 speed the launch digest is compared
//! with (issue 6's target), run in the same invocation on one core.

use std::process::Command;

/// Errors running or reading `openssl speed`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpensslError {
    #[error("cannot run openssl: {0}")]
    Spawn(String),
    #[error("openssl speed exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
    #[error("no `sha384` result row with a number in openssl's output: {0:?}")]
    NoResult(String),
}

/// Bytes per second from `openssl speed`'s result table. The table's numbers are "in 1000s of
/// bytes per second" with a `k` suffix, e.g. `sha384          326292.82k` (one column per
/// block size; we ask for one).
pub fn parse_speed(output: &str) -> Result<f64, OpensslError> {
    output
        .lines()
        .rev()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            if !words.next()?.eq_ignore_ascii_case("sha384") {
                return None;
            }
            let value = words.next()?.strip_suffix('k')?;
            let kilo: f64 = value.parse().ok()?;
            (kilo.is_finite() && kilo > 0.0).then_some(kilo * 1000.0)
        })
        .ok_or_else(|| OpensslError::NoResult(output.trim().to_string()))
}

/// The command line: SHA-384 through the EVP interface on 4 KiB blocks (a page), for
/// `seconds` (openssl divides by user CPU time, so this is one core's speed).
pub fn command(seconds: u32) -> Command {
    let mut c = Command::new("openssl");
    c.args(["speed", "-evp", "sha384", "-bytes", "4096", "-seconds"])
        .arg(seconds.to_string());
    c
}

/// Runs `openssl speed` once; returns bytes per second.
pub fn measure(seconds: u32) -> Result<f64, OpensslError> {
    let out = command(seconds)
        .output()
        .map_err(|e| OpensslError::Spawn(e.to_string()))?;
    if !out.status.success() {
        return Err(OpensslError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_speed(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape OpenSSL 3.0 prints (numbers made up).
    const OUTPUT: &str = "version: 3.0.22\nbuilt on: Wed Oct 21 09:54:24 2026 UTC\noptions: bn(64,64)\ncompiler: gcc -fPIC -pthread -m64\nCPUINFO: OPENSSL_ia32cap=0xfffa32034f8bffff:0x1b415fdef1bf27eb\nThe 'numbers' are in 1000s of bytes per second processed.\ntype           4096 bytes\nsha384          123456.78k\n";

    #[test]
    fn reads_the_sha384_row_in_bytes_per_second() {
        assert_eq!(parse_speed(OUTPUT), Ok(123_456_780.0));
    }

    #[test]
    fn refuses_output_without_a_result() {
        for text in [
            "",
            "type           4096 bytes\n",
            "sha384          fast\n",
            "sha384          12.5\n",
            "sha384          -4.0k\n",
            "sha256          1000.00k\n",
        ] {
            assert!(
                matches!(parse_speed(text), Err(OpensslError::NoResult(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_command_asks_for_sha384_on_pages() {
        let c = command(2);
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            ["speed", "-evp", "sha384", "-bytes", "4096", "-seconds", "2"]
        );
    }
}
