//! Process figures read from /proc (Linux): the `process_*` metrics of
//! `/metrics`, and what the benchmarks measure of the processes they run
//! (flowmeter-bench uses [`cpu_secs`] and [`status_kb`]). Elsewhere the
//! files are missing and the metrics are left out.

use std::sync::OnceLock;

use fastmetrics::metrics::counter::LazyCounter;
use fastmetrics::metrics::gauge::LazyGauge;

use super::exposition::{ExpositionError, Registry};

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/{pid}/status`.
pub fn status_kb(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
}

/// The fields of `/proc/{pid}/stat` after the command name (which is in
/// parentheses and may hold spaces): field `n` of proc(5) is at `n - 3`.
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU time (user + system) process `pid` has used, in seconds.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime and stime: fields 14 and 15
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// When process `pid` started, in seconds since the Unix epoch.
fn start_time_secs(pid: &str) -> Option<f64> {
    // starttime: field 22, clock ticks after boot
    let after_boot: f64 = stat_fields(pid)?.get(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + after_boot / clock_ticks())
}

/// Open file descriptors of this process.
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The soft limit of open files of this process (`ulimit -n`).
fn max_fds() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on
/// every usual Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The standard process metrics, where /proc has them.
pub(super) fn register(r: &mut Registry) -> Result<(), ExpositionError> {
    if status_kb("self", "VmRSS:").is_none() {
        return Ok(());
    }
    r.register(
        "process_resident_memory_bytes",
        "resident memory of this process (VmRSS)",
        LazyGauge::new(|| status_kb("self", "VmRSS:").map_or(0, |kb| kb as i64 * 1024)),
    )?;
    r.register(
        "process_cpu_seconds_total",
        "CPU time (user + system) this process has used",
        LazyCounter::new(|| cpu_secs("self").unwrap_or(0.0)),
    )?;
    r.register(
        "process_open_fds",
        "open file descriptors of this process",
        LazyGauge::new(|| open_fds().map_or(0, |n| n as i64)),
    )?;
    r.register(
        "process_max_fds",
        "the open-file limit of this process (ulimit -n)",
        LazyGauge::new(|| max_fds().map_or(0, |n| n as i64)),
    )?;
    let started = start_time_secs("self").unwrap_or(0.0);
    r.register(
        "process_start_time_seconds",
        "when this process started, in seconds since the Unix epoch",
        LazyGauge::new(move || started),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_figures_are_sensible() {
        if status_kb("self", "VmRSS:").is_none() {
            return; // no /proc here
        }
        assert!(status_kb("self", "VmRSS:").is_some_and(|kb| kb > 1000));
        assert!(cpu_secs("self").is_some_and(|s| s >= 0.0));
        assert!(open_fds().is_some_and(|n| n >= 3));
        assert!(max_fds().is_some_and(|n| n >= open_fds().unwrap_or(0)));
        let now = chrono::Utc::now().timestamp() as f64;
        let started = start_time_secs("self").unwrap_or(0.0);
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
        assert_eq!(cpu_secs("nonexistent-pid"), None);
    }
}
