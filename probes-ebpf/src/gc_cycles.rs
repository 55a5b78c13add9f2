//! The collector's own accounting, read at each of its state changes: a
//! hardware watchpoint on `global_State.gc.state` (a perf breakpoint event on
//! the target's thread) runs a tool's program right after each write, about
//! five a cycle. When the state becomes `GCSatomic` the estimate is the live
//! heap the last cycle left (nothing changes it until the atomic phase runs);
//! when the state becomes `GCSsweepstring` the atomic phase has just run and
//! `gc.total` is the heap then. Their difference is what was allocated between
//! two atomic phases (less frees outside the collector), exactly, however
//! fast cycles come. Not the new estimate: compilers sink its store past the
//! state's (the debug build's does), so it can still hold the old value here.

use aya_ebpf::maps::HashMap;
use ljprobe_common::{GcCycles, VmLayout};

use crate::vm::read_u64;

const GCS_ATOMIC: u32 = 2;
const GCS_SWEEPSTRING: u32 = 3;

#[inline(always)]
pub fn on_state_write(layout: &VmLayout, tgid: u32, vms: &HashMap<u32, u64>, cycles: &HashMap<u32, GcCycles>) {
    // SAFETY: copied out immediately.
    let Some(g) = (unsafe { vms.get(&tgid) }).copied() else { return };
    let Some(state) = read_u64(g + layout.g_gc_state as u64).map(|w| (w & 0xff) as u32) else { return };
    let field = if state == GCS_ATOMIC { layout.g_gc_estimate } else { layout.g_gc_total };
    let Some(value) = read_u64(g + field as u64) else { return };
    let entry = match cycles.get_ptr_mut(&tgid) {
        Some(e) => e,
        None => {
            let _ = cycles.insert(&tgid, &GcCycles::default(), 0);
            match cycles.get_ptr_mut(&tgid) {
                Some(e) => e,
                None => return,
            }
        }
    };
    // SAFETY: the map's value for this process; its one VM runs on one thread
    // at a time, so only this program writes it now.
    let e = unsafe { &mut *entry };
    if state == GCS_ATOMIC {
        e.estimate_at_atomic = value;
    } else if state == GCS_SWEEPSTRING && e.last_state == GCS_ATOMIC {
        e.cycles += 1;
        e.allocated += value.saturating_sub(e.estimate_at_atomic);
    }
    e.last_state = state;
}
