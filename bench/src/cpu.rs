//! CPU time the process has used: beside a wall-clock figure, it tells a slower run on a busy
//! machine from code that does more work.

/// CPU seconds this process has used (user + system), from /proc (Linux; 0 elsewhere),
/// assuming the usual 100 clock ticks per second.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_done_shows_as_cpu_time() {
        let before = process_cpu_seconds();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = process_cpu_seconds() - before;
        // 300 ms of spinning, counted in 10 ms ticks: at least some of it, on a loaded machine.
        assert!(used >= 0.05, "{used} s of CPU after 300 ms of spinning");
    }
}
