//! The server's resident memory, read from `/proc`: the idle mode's figure
//! (RSS per stream) and the heartbeat mode's RSS at the end. Linux only, and
//! only when the server runs on this machine.

/// VmRSS of `pid`, or of the process named `agentry-server`, in KiB.
pub(crate) fn server_rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = pid.or_else(|| {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "agentry-server").then(|| e.file_name().to_str()?.parse().ok())?
        })
    })?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
