//! CPU time and resident memory of a process, read from Linux's `/proc`.
//! Elsewhere every reading is `None` and the report leaves the columns
//! empty.

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times. Linux reports
/// them in USER_HZ, which is 100 on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// The largest resident set size since the process started (`VmHWM`),
    /// in bytes: a start-up peak that no sampling caught is in it.
    pub peak_rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status` (`pid` = "self" for
/// this process). `None` when the process is gone or `/proc` is absent.
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after its closing parenthesis are plain numbers, starting with
    // the state (field 3). utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        rss_bytes: kib("VmRSS:")? * 1024,
        peak_rss_bytes: kib("VmHWM:")? * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let s = sample("self").unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_seconds >= 0.0);
        // 64 MiB written page by page, then given back (an allocation this
        // large is its own mapping): the resident size falls again, the
        // high-water mark keeps it.
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        drop(touched);
        let after = sample("self").unwrap();
        assert!(
            after.peak_rss_bytes >= 64 << 20
                && after.peak_rss_bytes >= after.rss_bytes + (32 << 20),
            "{after:?}"
        );
    }
}
