//! The standard `process_*` metrics (CPU, memory, file descriptors, threads, start time), read
//! from `/proc/self` at each scrape.
//!
//! prometheus-client has no process collector, and the one crate that offers one for it follows
//! an older prometheus-client; reading three small files is less than a dependency. The start
//! time is the kernel's (boot time plus the process's start in clock ticks), so it changes
//! exactly when the process is started again: a restart by systemd's watchdog shows as a new
//! value, while a SIGHUP reload (in-process) does not.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Encodes the process metrics of this process on each scrape; where `/proc` cannot be read
/// (not Linux), it encodes nothing.
#[derive(Debug)]
pub struct ProcessCollector {
    /// `sysconf(_SC_CLK_TCK)`: the unit of CPU times and of the start time in `/proc/self/stat`.
    ticks_per_second: f64,
    /// `sysconf(_SC_PAGESIZE)`: the unit of the resident set in `/proc/self/stat`.
    page_size: f64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector::new()
    }
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        // SAFETY: sysconf only reads a system constant; an unknown name returns -1, handled below.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        ProcessCollector {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: if page > 0 { page as f64 } else { 4096.0 },
        }
    }

    /// This process now, as far as `/proc` tells.
    fn sample(&self) -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        let mut sample = parse_stat(&stat, self.ticks_per_second, self.page_size, boot_time)?;
        sample.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as i64);
        sample.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l));
        Some(sample)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.sample() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", Some(s.resident_bytes)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", Some(s.virtual_bytes)),
            ("process_open_fds", "Number of open file descriptors.", s.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", s.max_fds),
            ("process_threads", "Number of OS threads in the process.", Some(s.threads)),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                ConstGauge::new(v).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        if let Some(start) = s.start_time_seconds {
            ConstGauge::new(start).encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// What one read of `/proc` found.
#[derive(Debug, Clone, PartialEq)]
struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    start_time_seconds: Option<f64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

/// Parses `/proc/self/stat` (see proc(5)); `boot_time` is `btime` of `/proc/stat`.
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: f64, boot_time: Option<i64>) -> Option<ProcessSample> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field n of proc(5) is `fields[n - 3]`.
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    let start_ticks = field(22);
    Some(ProcessSample {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        threads: field(20)? as i64,
        virtual_bytes: field(23)? as i64,
        resident_bytes: (field(24)? as f64 * page_size) as i64,
        start_time_seconds: boot_time.zip(start_ticks).map(|(boot, t)| boot as f64 + t as f64 / ticks_per_second),
        open_fds: None,
        max_fds: None,
    })
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<i64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line of /proc/self/stat, with a command name that holds a space and a ')'.
    const STAT: &str = "4242 (field watch)) S 1 4242 4242 0 -1 4194560 1907 0 0 0 150 50 0 0 20 0 \
                        7 0 123456 987654144 2048 18446744073709551615 1 1 0 0 0 0 0 4096 17926 0 0 0 17 \
                        1 0 0 0 0 0";

    #[test]
    fn stat_gives_cpu_memory_threads_and_the_start_time() {
        let s = parse_stat(STAT, 100.0, 4096.0, Some(1_700_000_000)).unwrap();
        assert_eq!(s.cpu_seconds, 2.0, "utime 150 + stime 50 ticks");
        assert_eq!(s.threads, 7);
        assert_eq!(s.virtual_bytes, 987_654_144);
        assert_eq!(s.resident_bytes, 2048 * 4096);
        assert_eq!(s.start_time_seconds, Some(1_700_000_000.0 + 1234.56));
    }

    #[test]
    fn a_truncated_stat_is_no_sample() {
        assert_eq!(parse_stat("4242 (fieldwatch) S 1 2 3", 100.0, 4096.0, None), None);
        assert_eq!(parse_stat("garbage", 100.0, 4096.0, None), None);
    }

    #[test]
    fn boot_time_and_the_open_files_limit_are_found() {
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max open files            unlimited            unlimited            files"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_sampled() {
        let s = ProcessCollector::new().sample().unwrap();
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes && s.threads >= 1);
        assert!(s.open_fds.unwrap() > 0 && s.max_fds.unwrap() > 0);
        let start = s.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start > 1_600_000_000.0 && start <= now + 1.0, "{start}");
    }
}
