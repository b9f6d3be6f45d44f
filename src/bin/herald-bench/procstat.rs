//! CPU time and resident memory of processes, read from `/proc`.
//!
//! CPU is `utime + stime` from `/proc/PID/stat` (all threads, including
//! exited ones), in clock ticks of 1/100 s: the kernel reports USER_HZ,
//! which is 100 on every Linux architecture herald targets. Memory is
//! `VmRSS` from `/proc/PID/status`.

use std::fs;

/// Clock ticks per second in `/proc/PID/stat` (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `pid` (a number, or `self`). `None` if the process is gone or
/// `/proc` is not Linux's.
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are plain. utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        rss_bytes: rss_kib * 1024,
    })
}

/// Reads every pid in `pids`; a process that cannot be read counts as zero.
pub fn sample_all(pids: &[u32]) -> Vec<Sample> {
    pids.iter()
        .map(|pid| sample(&pid.to_string()).unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = sample("self").expect("/proc/self is readable");
        assert!(me.rss_bytes > 0);
        assert!(me.cpu_seconds >= 0.0);
    }
}
