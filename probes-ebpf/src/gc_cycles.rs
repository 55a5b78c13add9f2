//! The collector's own accounting, read once a cycle: a uprobe on the atomic
//! phase's store of the flipped white (`cli/src/lua/gc_flip.rs`), or where that
//! store is not found a hardware watchpoint (a perf breakpoint event on the
//! target's thread) on `gc.currentwhite`, which only the atomic phase writes,
//! runs a tool's program just before or right after it (the same fields then).
//! Then `gc.total` is the heap at the atomic phase and `gc.estimate` still the
//! live heap the last cycle left: the atomic phase sets the new estimate a few
//! stores later (GCC orders them so in Debian's and the debug build; see
//! docs/gc.md). Their difference is what was allocated since the previous
//! atomic phase (less frees outside the collector), exactly, however fast
//! cycles come. One trap a cycle: about 20 us on this machine's VM (the uprobe
//! single-steps the store: two traps).

use aya_ebpf::maps::HashMap;
use ljprobe_common::{GcCycles, VmLayout};

use crate::vm::read_u64;

#[inline(always)]
pub fn on_atomic(layout: &VmLayout, tgid: u32, vms: &HashMap<u32, u64>, cycles: &HashMap<u32, GcCycles>) {
    // SAFETY: copied out immediately.
    let Some(g) = (unsafe { vms.get(&tgid) }).copied() else { return };
    let (Some(total), Some(estimate)) =
        (read_u64(g + layout.g_gc_total as u64), read_u64(g + layout.g_gc_estimate as u64))
    else {
        return;
    };
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
    e.cycles += 1;
    e.allocated += total.saturating_sub(estimate);
}
