//! The allocator and collector fields of a live VM's `global_State` (lj_obj.h:
//! `GCState`, `lua_Alloc allocf`): what `ljprobe alloc` probes and `ljprobe gc`
//! samples. Read from the target's memory; nothing here stops it.

use serde::Serialize;

use super::Memory;

/// Offsets inside `global_State`. The same in OpenResty's 2.1 and upstream 2.1
/// GC64 on x86_64 (both checked with gdb on `-g` builds, see FIELD-NOTES): the
/// fields OpenResty adds come later in the struct.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcLayout {
    /// `lua_Alloc allocf`: every byte of the Lua heap goes through it.
    pub allocf: u64,
    pub allocd: u64,
    /// `gc.total`: bytes in use (GCSize, u64 in GC64).
    pub total: u64,
    /// `gc.threshold`: the collector steps when `total` reaches it.
    pub threshold: u64,
    /// `gc.currentwhite` (u8): flipped by the atomic phase, once a cycle.
    pub currentwhite: u64,
    /// `gc.state` (u8): `GCSpause` .. `GCSfinalize`.
    pub state: u64,
    /// `gc.debt`: how far the incremental collector is behind.
    pub debt: u64,
    /// `gc.estimate`: the live heap as the last cycle measured it.
    pub estimate: u64,
    /// `gc.stepmul`, `gc.pause` (u32 each, percent).
    pub stepmul: u64,
    pub pause: u64,
}

/// `GCSpause` .. `GCSfinalize` in lj_gc.h's order, as `ljprobe gc` names them.
pub const GC_STATES: [&str; 6] = ["pause", "propagate", "atomic", "sweepstring", "sweep", "finalize"];

/// One reading of the collector's fields.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GcReading {
    pub total: u64,
    pub threshold: u64,
    pub state: u8,
    pub debt: u64,
    pub estimate: u64,
}

impl GcReading {
    /// A reading made up for tests: a threshold of twice the heap, no debt.
    #[cfg(test)]
    pub fn made_up(total: u64, state: u8, estimate: u64) -> GcReading {
        GcReading { total, threshold: total * 2, state, debt: 0, estimate }
    }
}

impl GcLayout {
    /// One consistent-enough reading: the fields are read in one copy of the
    /// `GCState` block, so they come from (nearly) the same moment.
    pub fn read<M: Memory>(&self, mem: &M, g: u64) -> Option<GcReading> {
        let start = self.total;
        let end = self.estimate + 8;
        let block = mem.read_bytes(g + start, (end - start) as usize)?;
        let u64_at = |off: u64| {
            let i = (off - start) as usize;
            u64::from_ne_bytes(block[i..i + 8].try_into().expect("8 bytes"))
        };
        let state = block[(self.state - start) as usize];
        (usize::from(state) < GC_STATES.len()).then_some(GcReading {
            total: u64_at(self.total),
            threshold: u64_at(self.threshold),
            state,
            debt: u64_at(self.debt),
            estimate: u64_at(self.estimate),
        })
    }

    /// The allocator function the VM calls (`G->allocf`).
    pub fn allocf<M: Memory>(&self, mem: &M, g: u64) -> Option<u64> {
        mem.read_u64(g + self.allocf).filter(|&a| a != 0)
    }
}

/// What a VM allocated, from its own accounting (lj_gc.c): every allocation
/// adds to `gc.total`; the collector's atomic phase sets `gc.estimate =
/// gc.total` (less userdata awaiting finalizers), and each sweep takes what it
/// frees off both. So `gc.total - gc.estimate` is what was allocated since the
/// last atomic phase, less what was freed outside the collector (a table's old
/// hash part, a shrunk buffer). Between two readings in one cycle its increase
/// is what was allocated; across an atomic phase, what follows the phase is
/// exact and what came before it is taken at the recent rate for half the
/// interval (the phase falls anywhere in it).
#[derive(Debug, Default, Clone)]
pub struct Accounting {
    /// Bytes a second over recent readings within one cycle.
    rate: f64,
}

/// One interval between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Bytes allocated, less freed outside the collector (negative when those frees won).
    pub allocated: f64,
    /// The collector went through an atomic phase: one more cycle.
    pub atomic: bool,
}

impl Accounting {
    pub fn step(&mut self, prev: &GcReading, now: &GcReading, secs: f64) -> Step {
        let since_atomic = now.total as f64 - now.estimate as f64;
        if atomic_between(prev, now) {
            return Step { allocated: since_atomic + self.rate * secs / 2.0, atomic: true };
        }
        let allocated = since_atomic - (prev.total as f64 - prev.estimate as f64);
        if secs > 0.0 {
            self.rate = 0.8 * self.rate + 0.2 * (allocated.max(0.0) / secs);
        }
        Step { allocated, atomic: false }
    }
}

/// The collector went through its atomic phase between two readings: only
/// there does the estimate grow (sweeps and finalizers lower it); or the state
/// passed from marking to sweeping. Two phases between two readings count as one.
pub fn atomic_between(prev: &GcReading, now: &GcReading) -> bool {
    now.estimate > prev.estimate || (prev.state <= 2 && now.state >= 3 && now.estimate != prev.estimate)
}

/// What a VM has allocated so far by its collector's accounting, less frees
/// outside the collector: the bytes before each atomic phase, added up in the
/// kernel at each of them (`GcCycles`, read by `cycles`; see
/// `probes-ebpf/src/gc_cycles.rs`), plus `gc.total - gc.estimate` now (what
/// followed the last one).
/// Read twice around the VM's fields so that no atomic phase falls between;
/// None when either cannot be read.
pub fn allocated_so_far<M: Memory>(
    layout: &GcLayout,
    mem: &M,
    g: u64,
    cycles: impl Fn() -> Option<ljprobe_common::GcCycles>,
) -> Option<Accounted> {
    for _ in 0..3 {
        let before = cycles().unwrap_or_default();
        let now = layout.read(mem, g)?;
        let after = cycles().unwrap_or_default();
        if before == after {
            let since_atomic = now.total as f64 - now.estimate as f64;
            return Some(Accounted { allocated: after.allocated as f64 + since_atomic, cycles: after.cycles, heap: now.total });
        }
    }
    None
}

/// A VM's accounting at one moment (`allocated_so_far`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accounted {
    /// Allocated so far, less frees outside the collector.
    pub allocated: f64,
    pub cycles: u64,
    /// `gc.total` then: with two readings, allocated less the heap's growth is what was freed.
    pub heap: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(total: u64, state: u8, estimate: u64) -> GcReading {
        GcReading::made_up(total, state, estimate)
    }

    #[test]
    fn allocation_is_the_growth_of_total_less_estimate() {
        let mut a = Accounting::default();
        // Pause: the heap grew by 50.
        assert_eq!(a.step(&r(100, 0, 50), &r(150, 0, 50), 0.001).allocated, 50.0);
        // A sweep freed 40 (both fell by 40) while 10 were allocated.
        assert_eq!(a.step(&r(150, 4, 90), &r(120, 4, 50), 0.001).allocated, 10.0);
        // A free outside the collector: the heap fell alone.
        assert_eq!(a.step(&r(120, 0, 50), &r(110, 0, 50), 0.001).allocated, -10.0);
    }

    #[test]
    fn an_atomic_phase_counts_a_cycle_and_estimates_what_came_before_it() {
        let mut a = Accounting::default();
        // 1000 bytes a millisecond, steadily.
        for _ in 0..50 {
            a.step(&r(0, 0, 0), &r(1000, 0, 0), 0.001);
        }
        // The estimate jumped: an atomic phase, 300 allocated since.
        let s = a.step(&r(5000, 1, 100), &r(5300, 4, 5000), 0.001);
        assert!(s.atomic);
        assert!((s.allocated - 800.0).abs() < 1.0, "{s:?}");
        // Marking to sweeping with a new estimate, even a lower one.
        assert!(atomic_between(&r(100, 1, 90), &r(100, 3, 80)));
        // Sweeping on: the estimate falls, no new cycle.
        assert!(!atomic_between(&r(100, 3, 90), &r(100, 4, 80)));
    }
}
