//! CPU time the hypervisor took from this machine (steal) during a run. Inside a
//! VM a thread the host descheduled still looks on-CPU to the guest, so stolen
//! time lengthens what the tools measure (event-loop iterations, request phases)
//! with no stack to blame, and costs samples. Every run measures it
//! (`collect::run`) so a reader can tell.

use std::fs;

/// The machine's `cpu` line of `/proc/stat` at the start of a run.
pub struct Steal {
    start: Option<(u64, u64)>,
}

impl Steal {
    pub fn start() -> Steal {
        Steal { start: read() }
    }

    /// Percent of all CPU time stolen since `start`; `None` where /proc/stat
    /// cannot be read.
    pub fn pct(&self) -> Option<f64> {
        let ((steal0, total0), (steal1, total1)) = (self.start?, read()?);
        let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
        Some(100.0 * steal1.saturating_sub(steal0) as f64 / total as f64)
    }
}

/// Steal from this much on gets a note: below it, it changes no conclusion.
const NOTE_PCT: f64 = 1.0;

/// A line for the terminal when the run lost enough CPU time to the host to matter.
pub fn note(pct: Option<f64>) -> Option<String> {
    let pct = pct.filter(|&p| p >= NOTE_PCT)?;
    Some(format!(
        "note: the hypervisor took {pct:.1}% of this machine's CPU time during the run (steal); \
         a thread it stops still looks on-CPU here, so measured times include it"
    ))
}

/// (steal, all ticks) from /proc/stat's aggregate line.
fn read() -> Option<(u64, u64)> {
    parse(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time
    // is already inside user and nice.
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    Some((*fields.get(7)?, fields.iter().sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_steal_and_total_from_the_aggregate_line() {
        let stat = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        assert_eq!(parse(stat), Some((30, 1000)));
        assert_eq!(parse("cpu0 1 2 3\n"), None);
        assert_eq!(parse("cpu  1 2 3\n"), None);
    }
}
