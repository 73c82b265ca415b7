//! The process's resident memory, as the soak samples it.

/// Resident set size of this process in KiB (`VmRSS` in `/proc/self/status`), or `None` where
/// the platform does not expose it that way (the soak then reports no curve rather than a
/// made-up one).
pub fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vm_rss_line() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  4242 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(4242));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_size() {
        assert!(resident_kib().is_some_and(|kib| kib > 0));
    }
}
