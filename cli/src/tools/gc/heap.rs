//! One VM's collector over a run, from frequent readings of its `GCState`:
//! the heap's range per interval, finished cycles, bytes allocated. Pure
//! bookkeeping, so it is tested without a target.

use serde::Serialize;

use crate::lua::{GcReading, GC_STATES};

/// `GCSatomic`: the step that sets `gc.estimate`, which nothing else changes
/// before the sweep.
const ATOMIC: u8 = 2;
/// `GCSsweepstring`, `GCSsweep`: each sweep step takes what it frees off both
/// `gc.total` and `gc.estimate`.
const SWEEPS: [u8; 2] = [3, 4];

/// Did at least one cycle finish between two readings? The collector's state
/// only moves forward within a cycle (pause, propagate, atomic, sweepstring,
/// sweep, finalize), so a lower state means a new cycle began. Seeing the
/// same state up to atomic at both readings with a different `estimate` also
/// means one did: only the atomic step and the sweep change the estimate. A
/// cycle that starts and ends in the sweep between two readings is missed.
pub fn cycle_finished(prev: &GcReading, now: &GcReading) -> bool {
    now.state < prev.state || (now.state == prev.state && now.state <= ATOMIC && now.estimate != prev.estimate)
}

/// Bytes allocated between two readings, at least: the heap's increase, plus
/// within one sweep what the sweep freed meanwhile (the estimate's decrease).
/// Frees outside sweeps, and sweeps across a cycle's end, are not seen.
pub fn allocated_between(prev: &GcReading, now: &GcReading) -> u64 {
    let one_sweep = SWEEPS.contains(&prev.state) && SWEEPS.contains(&now.state) && now.state >= prev.state;
    if one_sweep && now.estimate <= prev.estimate {
        (now.total + prev.estimate).saturating_sub(prev.total + now.estimate)
    } else {
        now.total.saturating_sub(prev.total)
    }
}

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
    pub cycles: u64,
    /// Bytes allocated between readings (`allocated_between`), per second of the interval.
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
    pub totals: HeapTotals,
    /// This interval so far.
    range: Option<(u64, u64)>,
    cycles: u64,
    allocated: u64,
}

impl Heap {
    /// Takes in a reading made `at` seconds from the start.
    pub fn observe(&mut self, r: GcReading, at: f64) {
        self.totals.readings += 1;
        if let Some(prev) = self.last {
            let grew = allocated_between(&prev, &r);
            self.allocated += grew;
            self.totals.allocated_bytes += grew;
            if cycle_finished(&prev, &r) {
                self.cycles += 1;
                self.totals.cycles += 1;
                self.totals.cycles_at_secs.push(at);
            }
        }
        self.range = Some(self.range.map_or((r.total, r.total), |(lo, hi)| (lo.min(r.total), hi.max(r.total))));
        self.last = Some(r);
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
            alloc_bytes_per_sec: std::mem::take(&mut self.allocated) as f64 / secs.max(1e-9),
        };
        Some(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(total: u64, state: u8, estimate: u64) -> GcReading {
        GcReading { total, threshold: total * 2, state, debt: 0, estimate }
    }

    #[test]
    fn cycles_are_seen_when_the_state_goes_back_or_the_estimate_moves() {
        // sweep -> pause, finalize -> propagate: a new cycle.
        assert!(cycle_finished(&r(10, 4, 5), &r(10, 0, 5)));
        assert!(cycle_finished(&r(10, 5, 5), &r(10, 1, 5)));
        // Forward within a cycle: no.
        assert!(!cycle_finished(&r(10, 0, 5), &r(10, 1, 5)));
        assert!(!cycle_finished(&r(10, 1, 5), &r(10, 4, 7)));
        // Pause at both readings: only a new estimate says a cycle ran between.
        assert!(!cycle_finished(&r(10, 0, 5), &r(20, 0, 5)));
        assert!(cycle_finished(&r(10, 0, 5), &r(20, 0, 6)));
        // In the sweep the estimate moves on its own.
        assert!(!cycle_finished(&r(10, 4, 5), &r(9, 4, 4)));
    }

    #[test]
    fn allocation_adds_back_what_one_sweep_freed() {
        // Pause: only the increase counts; a drop is not negative allocation.
        assert_eq!(allocated_between(&r(100, 0, 50), &r(150, 0, 50)), 50);
        assert_eq!(allocated_between(&r(150, 0, 50), &r(120, 0, 50)), 0);
        // In one sweep, 40 freed (the estimate fell by 40) and the total rose by 10: 50 allocated.
        assert_eq!(allocated_between(&r(100, 4, 90), &r(110, 4, 50)), 50);
        assert_eq!(allocated_between(&r(100, 3, 90), &r(110, 4, 50)), 50);
        // Across the atomic step or a cycle's end the estimate was reset: increase only.
        assert_eq!(allocated_between(&r(100, 1, 90), &r(110, 4, 50)), 10);
        assert_eq!(allocated_between(&r(100, 4, 90), &r(110, 3, 50)), 10);
    }

    #[test]
    fn intervals_carry_range_cycles_and_allocation() {
        let mut h = Heap::default();
        assert_eq!(h.close(0.1, 0.1), None, "nothing read yet");
        h.observe(r(1000, 1, 500), 0.01);
        h.observe(r(1500, 4, 900), 0.02);
        h.observe(r(700, 0, 700), 0.03);
        h.observe(r(900, 0, 700), 0.04);
        let p = h.close(0.1, 0.1).unwrap();
        assert_eq!((p.heap_bytes, p.heap_min_bytes, p.heap_max_bytes), (900, 700, 1500));
        assert_eq!((p.threshold_bytes, p.estimate_bytes, p.state, p.cycles), (1800, 700, "pause", 1));
        // +500, then +200; the drop in the sweep is not allocation.
        assert!((p.alloc_bytes_per_sec - 7000.0).abs() < 1e-6);
        assert_eq!(h.totals.cycles_at_secs, vec![0.03]);
        // The next interval starts afresh, from the last reading.
        h.observe(r(950, 0, 700), 0.15);
        let p = h.close(0.2, 0.1).unwrap();
        assert_eq!((p.heap_min_bytes, p.heap_max_bytes, p.cycles), (950, 950, 0));
        assert!((p.alloc_bytes_per_sec - 500.0).abs() < 1e-6);
        assert_eq!(h.close(0.3, 0.1), None, "no reading in that interval");
        assert_eq!((h.totals.readings, h.totals.cycles, h.totals.allocated_bytes), (5, 1, 750));
    }
}
