//! A process's CPU time and resident memory from `/proc` (Linux), for the
//! load generator's own CPU (`main.rs`) and the service's (`conn_bench`).

/// CPU seconds (user + system, all threads) of `pid` ("self" for this
/// process) so far; `None` where there is no such `/proc` entry.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: utime and
    // stime are the 14th and 15th of the whole line.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ
}

/// Resident memory (KiB) of `pid`.
#[allow(dead_code)] // used by the conn_bench binary only
pub fn rss_kib(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
