//! The server's resident memory and CPU time, read from `/proc`: the idle
//! mode's figure (RSS per stream), the heartbeat mode's RSS at the end, the
//! search mode's CPU per call. Linux only, and only when the server runs on
//! this machine.

/// VmRSS of `pid`, or of the process named `agentry-server`, in KiB.
pub(crate) fn server_rss_kib(pid: Option<u32>) -> Option<u64> {
    let pid = server_pid(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User and system CPU time of `pid` (or the process named
/// `agentry-server`) so far, in milliseconds (clock ticks of 10 ms).
pub(crate) fn server_cpu_ms(pid: Option<u32>) -> Option<u64> {
    let pid = server_pid(pid)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

fn server_pid(pid: Option<u32>) -> Option<u32> {
    pid.or_else(|| {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "agentry-server").then(|| e.file_name().to_str()?.parse().ok())?
        })
    })
}
