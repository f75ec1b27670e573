//! What the sections measured inside one nested-KVM L1 share: the host side writes a plan into
//! the L1 command's scratch directory and runs this same binary there with a hidden
//! `--...-inner PLAN` flag; the inner run writes its figures as JSON, which come back on the
//! command's stdout (the scratch directory goes with the finished command).

use std::path::{Path, PathBuf};

/// `path` made absolute (L1 runs the command in its scratch directory), or as given when it
/// cannot be resolved.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The last `lines` lines of `text`, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The L1 script: this binary with `flag PLAN_FILE`, then the result file on stdout, exiting
/// with the inner run's status.
pub fn inner_script(flag: &str, plan_file: &str, result_file: &str) -> std::io::Result<String> {
    let exe = std::env::current_exe()?;
    Ok(format!(
        "{} {flag} {plan_file}\nstatus=$?\ncat {result_file} 2>/dev/null\nexit $status\n",
        veil_tests::nested::shell_quote(&absolute(&exe).to_string_lossy())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn the_script_runs_the_flag_and_prints_the_result() {
        let script = inner_script("--x-inner", "p.json", "r.json").unwrap();
        assert!(script.contains(" --x-inner p.json\n"), "{script}");
        assert!(script.contains("cat r.json"), "{script}");
        assert!(script.ends_with("exit $status\n"), "{script}");
    }
}
