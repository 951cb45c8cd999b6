//! Resident memory of this process, from /proc/self/status, for the simulation's memory figures
//! (included with `#[path]` by the `simscale` example and the `sim_scale` test; the routing
//! crate itself never reads /proc).

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size now, in KiB (`VmRSS`).
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// Peak resident set size, in KiB (`VmHWM`).
pub fn peak_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Resets the peak to the current size (writing 5 to /proc/self/clear_refs, Linux 4.0+), so
/// that the peak measures what follows; false if the kernel refused.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
