//! The standard `process_*` metrics of Prometheus clients, read from /proc/self.

use nuage_core::metrics::Metrics;

pub fn register(metrics: &Metrics) {
    metrics.gauge_fn(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        &[],
        || statm_field(1).map_or(f64::NAN, |pages| pages * page_size()),
    );
    metrics.gauge_fn(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        &[],
        || statm_field(0).map_or(f64::NAN, |pages| pages * page_size()),
    );
    metrics.gauge_fn(
        "process_open_fds",
        "Number of open file descriptors.",
        &[],
        || std::fs::read_dir("/proc/self/fd").map_or(f64::NAN, |d| d.count() as f64),
    );
    metrics.counter_fn(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        &[],
        cpu_seconds,
    );
}

fn page_size() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

fn statm_field(i: usize) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    text.split_whitespace().nth(i)?.parse().ok()
}

/// utime + stime, fields 14 and 15 of /proc/self/stat (counted after the command name,
/// which is parenthesised and may hold spaces).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
    match (
        fields.get(11).and_then(|v| v.parse::<f64>().ok()),
        fields.get(12).and_then(|v| v.parse::<f64>().ok()),
    ) {
        (Some(u), Some(s)) => (u + s) / clock_ticks(),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_have_values() {
        let m = Metrics::new();
        register(&m);
        let text = m.render();
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_cpu_seconds_total",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap();
            let value: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(value >= 0.0, "{line}");
        }
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }
}
