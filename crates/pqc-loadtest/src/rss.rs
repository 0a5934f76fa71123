//! Resident memory of a process, from `/proc/<pid>/status`.

use crate::LoadError;

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
}
