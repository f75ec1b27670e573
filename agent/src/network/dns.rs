//! The sandbox's DNS configuration: CreateSandbox's `dns` lines ("nameserver 10.96.0.10",
//! "search default.svc.cluster.local", "options ndots:5"), as Kata's runtime passes them.

use std::path::Path;

use super::NetworkError;

/// Most lines accepted.
pub const MAX_DNS_LINES: usize = 64;
/// Longest line accepted (resolv.conf's own limit on a search line is 256 characters).
const MAX_LINE: usize = 512;

/// The guest's resolver configuration.
pub const GUEST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Checks `lines` and writes them as `path` (`None`: check only, for an agent that is not the
/// guest's init and must not touch its host's resolver); nothing is written for no lines.
pub fn write_resolv_conf(path: Option<&Path>, lines: &[String]) -> Result<(), NetworkError> {
    if lines.is_empty() {
        return Ok(());
    }
    if lines.len() > MAX_DNS_LINES {
        return Err(NetworkError::Invalid(format!(
            "{} dns lines; at most {MAX_DNS_LINES}",
            lines.len()
        )));
    }
    let mut text = String::new();
    for line in lines {
        let keyword = line.split_whitespace().next().unwrap_or_default();
        let printable = line
            .chars()
            .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic());
        if !matches!(keyword, "nameserver" | "search" | "domain" | "options")
            || !printable
            || line.len() > MAX_LINE
        {
            return Err(NetworkError::Invalid(format!(
                "dns line {line:?} is not a nameserver, search, domain or options line"
            )));
        }
        text.push_str(line);
        text.push('\n');
    }
    let Some(path) = path else {
        return Ok(());
    };
    let dns_error = |source| NetworkError::Dns {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(dns_error)?;
    }
    std::fs::write(path, text).map_err(dns_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/resolv.conf");
        let lines = vec![
            "nameserver 198.18.0.53".to_string(),
            "search svc.cluster.local".to_string(),
            "options ndots:5".to_string(),
        ];
        write_resolv_conf(Some(&path), &lines).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "nameserver 198.18.0.53\nsearch svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn bad_lines_are_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        for bad in ["nameserver 1.1.1.1\nnameserver 2.2.2.2", "sortlist x", ""] {
            let err = write_resolv_conf(Some(&path), &[bad.to_string()]).unwrap_err();
            assert!(err.to_string().contains("dns line"), "{err}");
        }
        let many = vec!["nameserver 1.1.1.1".to_string(); MAX_DNS_LINES + 1];
        assert!(write_resolv_conf(Some(&path), &many).is_err());
        assert!(
            write_resolv_conf(None, &many).is_err(),
            "checked even when not written"
        );
        assert!(!path.exists());
        write_resolv_conf(Some(&path), &[]).unwrap();
        assert!(!path.exists(), "no dns lines leave resolv.conf alone");
    }
}
