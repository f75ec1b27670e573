//! GetMetrics (Prometheus text format, as Kata's agent answers it), and the guest-wide
//! settings the host asks for: SetGuestDateTime and the pod's hostname.

/// The agent's metrics: its memory (VmRSS) and how many containers it runs.
pub fn render(containers: usize) -> String {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "# HELP veil_agent_resident_memory_bytes Resident memory of the agent.\n\
         # TYPE veil_agent_resident_memory_bytes gauge\n\
         veil_agent_resident_memory_bytes {}\n\
         # HELP veil_agent_containers Containers the agent runs.\n\
         # TYPE veil_agent_containers gauge\n\
         veil_agent_containers {containers}\n",
        rss_kib * 1024
    )
}

/// Sets the realtime clock (the guest's, when the agent is its PID 1).
pub fn set_clock(sec: i64, usec: i64) -> std::io::Result<()> {
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("time {sec}s {usec}us"),
        ));
    }
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: usec * 1000,
    };
    // SAFETY: clock_settime reads a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the guest's hostname (CreateSandbox): at most 64 bytes of letters, digits, `-`, `.`.
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid hostname"),
        ));
    }
    // SAFETY: sethostname reads `name.len()` bytes from a valid pointer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
