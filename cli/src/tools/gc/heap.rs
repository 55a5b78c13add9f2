//! One VM's collector over a run, from frequent readings of its `GCState`:
//! the heap's range per interval, cycles, bytes allocated (`lua::Accounting`).
//! Pure bookkeeping, so it is tested without a target.

use serde::Serialize;

use crate::lua::{Accounting, GcReading, GC_STATES};

/// One interval of one VM.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeapPoint {
    /// Seconds from the start of tracing to the end of the interval.
    pub t_secs: f64,
    /// `gc.total` at the last reading of the interval, and its range over the interval.
    pub heap_bytes: u64,
    pub heap_min_bytes: u64,
    pub heap_max_bytes: u64,
    pub threshold_bytes: u64,
    pub estimate_bytes: u64,
    /// The collector's state at the last reading.
    pub state: &'static str,
    /// Atomic phases seen: one per collector cycle (two between the same
    /// two readings count as one).
    pub cycles: u64,
    /// Bytes allocated, from the VM's own accounting (`lua::Accounting`), per second of the interval.
    pub alloc_bytes_per_sec: f64,
}

/// Run totals of one VM.
#[derive(Debug, Default, Clone, Serialize)]
pub struct HeapTotals {
    pub readings: u64,
    /// Readings that failed (the process exited, or its memory changed under us).
    pub failed_readings: u64,
    pub cycles: u64,
    pub allocated_bytes: u64,
    /// When each cycle was seen finished, seconds from the start.
    pub cycles_at_secs: Vec<f64>,
}

#[derive(Debug, Default)]
pub struct Heap {
    pub last: Option<GcReading>,
    /// When `last` was read, seconds from the start.
    last_at: f64,
    accounting: Accounting,
    pub totals: HeapTotals,
    /// This interval so far.
    range: Option<(u64, u64)>,
    cycles: u64,
    allocated: f64,
    /// The whole run's allocation (frees outside the collector netted out).
    allocated_total: f64,
}

impl Heap {
    /// Takes in a reading made `at` seconds from the start.
    pub fn observe(&mut self, r: GcReading, at: f64) {
        self.totals.readings += 1;
        if let Some(prev) = self.last {
            let step = self.accounting.step(&prev, &r, at - self.last_at);
            self.allocated += step.allocated;
            self.allocated_total += step.allocated;
            self.totals.allocated_bytes = self.allocated_total.max(0.0).round() as u64;
            if step.atomic {
                self.cycles += 1;
                self.totals.cycles += 1;
                self.totals.cycles_at_secs.push(at);
            }
        }
        self.range = Some(self.range.map_or((r.total, r.total), |(lo, hi)| (lo.min(r.total), hi.max(r.total))));
        self.last = Some(r);
        self.last_at = at;
    }

    pub fn failed(&mut self) {
        self.totals.failed_readings += 1;
    }

    /// Ends the interval of `secs` seconds at `at`; None when nothing was read in it.
    pub fn close(&mut self, at: f64, secs: f64) -> Option<HeapPoint> {
        let (lo, hi) = self.range.take()?;
        let last = self.last?;
        let point = HeapPoint {
            t_secs: at,
            heap_bytes: last.total,
            heap_min_bytes: lo,
            heap_max_bytes: hi,
            threshold_bytes: last.threshold,
            estimate_bytes: last.estimate,
            state: GC_STATES.get(usize::from(last.state)).copied().unwrap_or("?"),
            cycles: std::mem::take(&mut self.cycles),
            alloc_bytes_per_sec: std::mem::take(&mut self.allocated).max(0.0) / secs.max(1e-9),
        };
        Some(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(total: u64, state: u8, estimate: u64) -> GcReading {
        GcReading::made_up(total, state, estimate)
    }

    #[test]
    fn intervals_carry_range_cycles_and_allocation() {
        let mut h = Heap::default();
        assert_eq!(h.close(0.1, 0.1), None, "nothing read yet");
        // Marking: 500 allocated since the last atomic phase.
        h.observe(r(1000, 1, 500), 0.01);
        // An atomic phase (the estimate jumped to the heap), then sweeping:
        // 100 allocated since it, and half an interval at the rate seen so
        // far (none yet) before it.
        h.observe(r(1500, 4, 1400), 0.02);
        // Swept 800 off both, allocated 0.
        h.observe(r(700, 0, 600), 0.03);
        // Pause: 200 more.
        h.observe(r(900, 0, 600), 0.04);
        let p = h.close(0.1, 0.1).unwrap();
        assert_eq!((p.heap_bytes, p.heap_min_bytes, p.heap_max_bytes), (900, 700, 1500));
        assert_eq!((p.threshold_bytes, p.estimate_bytes, p.state, p.cycles), (1800, 600, "pause", 1));
        assert!((p.alloc_bytes_per_sec - 3000.0).abs() < 1e-6, "{p:?}");
        assert_eq!(h.totals.cycles_at_secs, vec![0.02]);
        // The next interval starts afresh, from the last reading.
        h.observe(r(950, 0, 600), 0.15);
        let p = h.close(0.2, 0.1).unwrap();
        assert_eq!((p.heap_min_bytes, p.heap_max_bytes, p.cycles), (950, 950, 0));
        assert!((p.alloc_bytes_per_sec - 500.0).abs() < 1e-6);
        assert_eq!(h.close(0.3, 0.1), None, "no reading in that interval");
        assert_eq!((h.totals.readings, h.totals.cycles, h.totals.allocated_bytes), (5, 1, 350));
    }
}
