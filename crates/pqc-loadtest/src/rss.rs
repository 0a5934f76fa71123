//! Resident memory and CPU time of a process, from `/proc/<pid>/status`
//! and `/proc/<pid>/stat`.

use std::time::Duration;

use crate::LoadError;

/// Linux reports `utime`/`stime` in `USER_HZ` ticks, 100 per second on
/// every architecture's user ABI.
const USER_HZ: u64 = 100;

/// User + system CPU time `pid` has used so far, all its threads (also
/// those that exited) included. Resolution: 10 ms.
pub fn cpu_time(pid: u32) -> Result<Duration, LoadError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&text)
        .map(|t| Duration::from_millis(t * (1000 / USER_HZ)))
        .ok_or_else(|| LoadError::Usage(format!("cannot parse /proc/{pid}/stat")))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// CPU time used between two readings of [`cpu_time`], when both were taken.
pub fn spent(start: Option<Duration>, end: Option<Duration>) -> Option<Duration> {
    Some(end?.saturating_sub(start?))
}

/// `VmRSS` of `pid` in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64, LoadError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&text).ok_or_else(|| LoadError::Usage(format!("no VmRSS line in /proc/{pid}/status")))
}

/// Parses the `VmRSS:   1234 kB` line.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nVmSwap: 0 kB\n"), Some(2048));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(vm_rss_kib(std::process::id()).is_ok());
    }

    #[test]
    fn parses_cpu_ticks() {
        let line = "4242 (pqc server (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_ticks(line), Some(287));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
        assert!(cpu_time(std::process::id()).is_ok());
    }
}
