//! The server's resident memory and CPU time, read from `/proc`: the idle
//! mode's figure (RSS per stream), the heartbeat mode's RSS at the end, the
//! search mode's CPU per call; and where a phase's CPU went (server,
//! PostgreSQL, the bench itself) for `available --fleet`. Linux only, and only when the server runs on
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
    cpu_ms(&server_pid(pid)?.to_string())
}

/// CPU time of every process named `postgres` on this machine (the server
/// and its backends), in milliseconds; backends that ended meanwhile are
/// not counted, so compare it over spans in which connections stay open.
pub(crate) fn postgres_cpu_ms() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|e| cpu_ms(e.file_name().to_str()?))
        .sum()
}

/// CPU time of this bench process, in milliseconds.
pub(crate) fn own_cpu_ms() -> Option<u64> {
    cpu_ms("self")
}

/// User and system CPU time of the process at `/proc/{pid}`, in milliseconds.
fn cpu_ms(pid: &str) -> Option<u64> {
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
