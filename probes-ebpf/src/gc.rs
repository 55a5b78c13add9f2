//! `ljprobe gc`: at each `cpu-clock` tick on a target thread, count which state
//! the VM is in (a trace, the interpreter, C, the GC, the JIT compiler), so the
//! collector's share of the target's CPU comes without any stack walk; and at
//! each of its collector's atomic phases, its accounting (`gc_cycles.rs`).
//! The heap figures themselves are read from user space (`global_State.gc`).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, perf_event, uprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::{PerfEventContext, ProbeContext},
};
use ljprobe_common::{GcCycles, VmLayout, VMSTATE_FIRST_VMST, VMSTATE_NO_VM, VMSTATE_OUTSIDE_LUA, VMSTATE_SLOTS, VMSTATE_TRACE};
use ljprobe_probes::{counters, gc_cycles, regs::user_regs, vm};

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

#[map]
static LAYOUT: Array<VmLayout> = Array::with_max_entries(1, 0);

/// Each target's `global_State`, seeded by user space from a scan of its memory.
#[map]
static VMS: HashMap<u32, u64> = HashMap::with_max_entries(256, 0);

#[map]
static STATES: PerCpuArray<u64> = PerCpuArray::with_max_entries(VMSTATE_SLOTS, 0);

/// Per process: the collector's accounting at each atomic phase (`gc_cycles.rs`).
#[map]
static CYCLES: HashMap<u32, GcCycles> = HashMap::with_max_entries(256, 0);

/// At each atomic phase of a target's collector (a hardware watchpoint on
/// `gc.currentwhite`): every cycle counted, and what was allocated between them.
#[perf_event]
pub fn gc_atomic(_ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(layout) = LAYOUT.get(0) {
        gc_cycles::on_atomic(layout, tgid, &VMS, &CYCLES);
    }
    0
}

/// The same from a uprobe on the atomic phase's store of the flipped white
/// (found in LuaJIT's code by `cli/src/lua/gc_flip.rs`): no debug register.
#[uprobe]
pub fn gc_flip(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(layout) = LAYOUT.get(0) {
        gc_cycles::on_atomic(layout, tgid, &VMS, &CYCLES);
    }
    0
}

#[perf_event]
pub fn gc_sample(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: presence check only.
    if unsafe { TARGETS.get(&tgid) }.is_none() {
        return 0;
    }
    counters::add(&STATES, slot(&ctx, tgid), 1);
    0
}

#[inline(always)]
fn slot(ctx: &PerfEventContext, tgid: u32) -> u32 {
    let Some(layout) = LAYOUT.get(0) else { return VMSTATE_NO_VM };
    let in_register = user_regs(ctx)
        .and_then(|r| r.r14.checked_sub(layout.g2disp as u64))
        .and_then(|g| vm::check_g(layout, g));
    let (found, in_lua) = match in_register {
        Some(v) => (Some(v), true),
        // SAFETY: copied out immediately.
        None => (unsafe { VMS.get(&tgid) }.copied().and_then(|g| vm::check_g(layout, g)), false),
    };
    let Some(found) = found else { return VMSTATE_NO_VM };
    // As in capture::lua: without the dispatch register and without a C frame
    // boundary, the host is running its own code and vmstate is a leftover.
    if !in_lua && vm::read_u64(found.cur_l + layout.l_cframe as u64).unwrap_or(0) == 0 {
        return VMSTATE_OUTSIDE_LUA;
    }
    if found.vmstate >= 0 {
        return VMSTATE_TRACE;
    }
    let vmst = !found.vmstate as u32;
    if vmst < VMSTATE_OUTSIDE_LUA - VMSTATE_FIRST_VMST {
        VMSTATE_FIRST_VMST + vmst
    } else {
        VMSTATE_NO_VM
    }
}
